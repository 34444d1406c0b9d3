"""The composition root: create_app(settings) wires resources, channels and routes.

Each long-lived resource is one async context manager in `app.cleanup_ctx`, stored under a
typed AppKey; cleanup runs exactly for the resources whose start-up succeeded.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from typing import AsyncIterator

import asyncpg
import redis.asyncio as redis
import structlog
from aiohttp import web

from channels.base import REGISTRY, ChannelConfig
from channels import twilio_sms, twilio_voice  # noqa: F401  (registers the channels)
from service import api, metrics
from service.appkeys import CONVERSATIONS, EVENTS, PG, QUEUES, REDIS, RULES, SETTINGS
from service.context import ContextStore
from service.conversation import Conversations
from service.customers import find_customer
from service.events import EventWriter
from service.migrate import migrate
from service.model import Inbound, Reply
from service.queues import Queues
from service.rules_holder import RulesHolder
from service.settings import Settings

log = structlog.get_logger(__name__)

IDLE_SWEEP_INTERVAL_S = 30


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[request_context, never_5xx_to_twilio])
    app[SETTINGS] = settings
    app.cleanup_ctx.extend([postgres, redis_client, rules, event_writer, conversations,
                            idle_sweeper])
    config = ChannelConfig(settings.public_url, settings.twilio_auth_token,
                           fallback_queue=lambda: default_queue(app))
    for channel_cls in REGISTRY.values():
        channel = channel_cls(config, lambda inbound: handle_turn(app, inbound))
        app.router.add_routes(channel.routes())
    app.router.add_routes(api.routes())
    return app


async def handle_turn(app: web.Application, inbound: Inbound) -> Reply:
    """Hand one inbound message to the orchestrator; a failure is recorded, then re-raised."""
    structlog.contextvars.bind_contextvars(channel=inbound.channel)
    started = time.perf_counter()
    try:
        reply = await asyncio.wait_for(app[CONVERSATIONS].handle(inbound), timeout=10)
    except Exception as exc:
        metrics.TURNS.labels(inbound.channel, "failed").inc()
        app[CONVERSATIONS].record_failure(inbound, exc)
        raise
    structlog.contextvars.bind_contextvars(contact_id=reply.contact_id)
    metrics.TURNS.labels(inbound.channel, reply.state).inc()
    metrics.TURN_SECONDS.labels(inbound.channel).observe(time.perf_counter() - started)
    return reply


def default_queue(app: web.Application) -> str:
    """The root route's queue: where a contact goes when nothing else can be decided."""
    try:
        return app[RULES].current.tree.root.settings.queue
    except KeyError:  # rules not loaded yet
        return "general"


@web.middleware
async def request_context(request: web.Request, handler) -> web.StreamResponse:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        request_id=request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16],
        path=request.path)
    return await handler(request)


@web.middleware
async def never_5xx_to_twilio(request: web.Request, handler) -> web.StreamResponse:
    """Twilio must never see a 5xx: the last line of defence answers with empty TwiML."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        if not request.path.startswith("/twilio/"):
            raise
        log.exception("twilio.unhandled_error")
        return web.Response(text='<?xml version="1.0" encoding="UTF-8"?><Response />',
                            content_type="text/xml")


# ---- resources ----------------------------------------------------------------------------

async def postgres(app: web.Application) -> AsyncIterator[None]:
    pool = await asyncpg.create_pool(app[SETTINGS].database_url, min_size=1, max_size=8)
    async with pool.acquire() as conn:
        await migrate(conn)
    app[PG] = pool
    yield
    await pool.close()


async def redis_client(app: web.Application) -> AsyncIterator[None]:
    client = redis.from_url(app[SETTINGS].redis_url, socket_timeout=2,
                            socket_connect_timeout=2, health_check_interval=30)
    app[REDIS] = client
    yield
    await client.aclose()


async def rules(app: web.Application) -> AsyncIterator[None]:
    holder = await RulesHolder.load(app[SETTINGS].rules_dir)
    await holder.record_version(app[PG])
    app[RULES] = holder
    loop = asyncio.get_running_loop()

    def on_sighup() -> None:
        asyncio.ensure_future(reload_and_record(app))

    try:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    except (RuntimeError, ValueError):  # not the main thread (tests): reload via the API
        pass
    yield
    try:
        loop.remove_signal_handler(signal.SIGHUP)
    except (RuntimeError, ValueError):
        pass


async def reload_and_record(app: web.Application) -> bool:
    ok = await app[RULES].reload()
    if ok:
        await app[RULES].record_version(app[PG])
    return ok


async def event_writer(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    writer = EventWriter(app[PG], settings.spool_dir, settings.event_flush_interval_s)
    await writer.start()
    app[EVENTS] = writer
    yield
    await writer.close()


async def conversations(app: web.Application) -> AsyncIterator[None]:
    pool = app[PG]
    app[QUEUES] = Queues(app[REDIS])
    app[CONVERSATIONS] = Conversations(
        rules=lambda: app[RULES].current,
        context=ContextStore(app[REDIS], app[SETTINGS].sms_idle_timeout_s),
        queues=app[QUEUES],
        events=app[EVENTS],
        find_customer=lambda kind, value: find_customer(pool, kind, value))
    yield


async def idle_sweeper(app: web.Application) -> AsyncIterator[None]:
    """Ends SMS conversations that went quiet, so they count as contacts that ended."""
    conversations_ = app[CONVERSATIONS]
    context = ContextStore(app[REDIS], app[SETTINGS].sms_idle_timeout_s)

    async def sweep_forever() -> None:
        while True:
            await asyncio.sleep(IDLE_SWEEP_INTERVAL_S)
            try:
                now = time.time()
                for key in await context.idle_conversations(now):
                    await conversations_.end_idle(key, now)
            except Exception:
                log.exception("sms.idle_sweep_failed")

    task = asyncio.create_task(sweep_forever(), name="idle-sweeper")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
