"""Typed keys for what the application holds: one place, imported by app and handlers."""

import asyncpg
import redis.asyncio as redis
from aiohttp import web

from service.conversation import Conversations
from service.events import EventWriter
from service.queues import Queues
from service.rules_holder import RulesHolder
from service.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
PG = web.AppKey("pg", asyncpg.Pool)
REDIS = web.AppKey("redis", redis.Redis)
RULES = web.AppKey("rules", RulesHolder)
EVENTS = web.AppKey("events", EventWriter)
QUEUES = web.AppKey("queues", Queues)
CONVERSATIONS = web.AppKey("conversations", Conversations)
