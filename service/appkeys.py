"""Typed keys for what the application holds: one place, imported by app and handlers."""

import asyncpg
import redis.asyncio as redis
from aiohttp import web
from redis.asyncio.cluster import RedisCluster

from service.agents.activity import ActivityLog
from service.agents.bus import Bus
from service.agents.desk import AgentDesk
from service.agents.queues import Dispatcher, QueueLoad
from service.conversations.conversation import Conversations
from service.conversations.fallback import FallbackContacts
from service.conversations.handoff import Handoff
from service.conversations.outbox import Outbox
from service.infra.auth_throttle import AuthThrottle
from service.infra.files import PgFileStore
from service.infra.redis_batch import ClusterBatcher, CommandBatcher
from service.reporting.events import EventWriter
from service.reporting.preparing import Preparations
from service.rules.flows import HttpLookups
from service.rules.holder import RulesHolder
from service.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
PG = web.AppKey("pg", asyncpg.Pool)
CUSTOMER_LOOKUPS = web.AppKey("customer_lookups", asyncpg.Pool)  # the hot path's look-up
REDIS = web.AppKey[redis.Redis | RedisCluster]("redis")
REDIS_BATCH = web.AppKey[CommandBatcher | ClusterBatcher]("redis_batch")
RULES = web.AppKey("rules", RulesHolder)
EVENTS = web.AppKey("events", EventWriter)
PREPARING = web.AppKey("preparing", Preparations)  # reports by segment answered later
BUS = web.AppKey("bus", Bus)
ROUTER = web.AppKey("router", Dispatcher)
QUEUE_LOAD = web.AppKey("queue_load", QueueLoad)
HANDOFF = web.AppKey("handoff", Handoff)
OUTBOX = web.AppKey("outbox", Outbox)
LOOKUPS = web.AppKey("lookups", HttpLookups)
CONVERSATIONS = web.AppKey("conversations", Conversations)
FALLBACK = web.AppKey("fallback", FallbackContacts)
AGENT_DESK = web.AppKey("agent_desk", AgentDesk)
AUTH_THROTTLE = web.AppKey("auth_throttle", AuthThrottle)
ACTIVITY = web.AppKey("activity", ActivityLog)
FILES = web.AppKey("files", PgFileStore)  # uploads kept by the service (infra/files.py)
CHANNEL_LIST = web.AppKey("channel_list", list)  # the channel instances, in listed order
