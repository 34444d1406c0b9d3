"""The composition root: create_app(settings) wires resources, channels and routes.

Each long-lived resource is one async context manager in `app.cleanup_ctx`, stored under a
typed AppKey; cleanup runs exactly for the resources whose start-up succeeded.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from typing import AsyncIterator

import aiohttp
import asyncpg
import structlog
from aiohttp import hdrs, web

from channels.base import Channel, ChannelConfig
from channels.twilio_rest import TwilioRest
from service import WEB_DIR
from service.agents.activity import CONSOLE_REFRESH_S, ActivityLog
from service.agents.bus import Bus
from service.agents.desk import AgentDesk
from service.agents.queues import Dispatcher, QueueLoad
from service.appkeys import (
    ACTIVITY,
    AGENT_DESK,
    AUTH_THROTTLE,
    BUS,
    CHANNEL_LIST,
    CONVERSATIONS,
    CUSTOMER_LOOKUPS,
    EVENTS,
    FALLBACK,
    FILES,
    HANDOFF,
    LOOKUPS,
    OUTBOX,
    PG,
    PREPARING,
    QUEUE_LOAD,
    REDIS,
    REDIS_BATCH,
    ROUTER,
    RULES,
    SETTINGS,
)
from service.channel_list import CHANNEL_TYPES
from service.conversations.context import ContextStore
from service.conversations.conversation import Conversations
from service.conversations.customers import find_customer, lookup_pool
from service.conversations.fallback import FallbackContacts
from service.conversations.handoff import Handoff
from service.conversations.outbox import Outbox, RetryPolicy
from service.infra import health as api
from service.infra.auth_throttle import AuthThrottle
from service.infra.files import PgFileStore
from service.infra.ids import new_hex
from service.infra.migrate import migrate
from service.infra.redis_batch import batcher_for
from service.infra.redis_url import client_for, close_client, publisher_for, subscriber_for
from service.model import ChannelTraits, Inbound, Reply
from service.reporting import (
    agent_report,
    attachments_api,
    contacts_api,
    erasure_api,
    experiments,
    experiments_api,
    metrics,
    notes_api,
    ops_api,
    partitions,
    rollups,
    saved_replies_report,
    supervisor,
)
from service.reporting.events import EventWriter
from service.reporting.preparing import Preparations
from service.rules.flows import HttpLookups
from service.rules.holder import RulesHolder
from service.rules.versions import LoadCause
from service.settings import Settings

log = structlog.get_logger(__name__)

IDLE_SWEEP_INTERVAL_S = 30
HANDOFF_SWEEP_INTERVAL_S = 1
QUEUE_LOAD_INTERVAL_S = 1  # how old the waiting.<queue> figures routing sees may be
TURN_TIMEOUT_S = 10  # well inside Twilio's 15 s, so the caller still gets the fallback TwiML



def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[request_context, never_5xx_to_twilio])
    app[SETTINGS] = settings
    twilio = TwilioRest(settings.twilio_account_sid, settings.twilio_auth_token,
                        settings.twilio_api_base_url, settings.twilio_timeout_s)
    app[FILES] = PgFileStore(lambda: app[PG])
    app.cleanup_ctx.extend([postgres, file_store, customer_lookups, redis_client, rules,
                            event_writer, messaging(twilio), flow_lookups, outbox,
                            conversations, background_sweeps])
    config = ChannelConfig(settings.public_url, settings.twilio_auth_token,
                           fallback_queue=lambda: default_queue(app),
                           subscribe=lambda topic: app[BUS].subscription(topic),
                           publish=lambda topic, frame: app[BUS].publish(topic, frame),
                           chat_identity_secret=settings.chat_identity_secret,
                           chat_origins=settings.chat_origins, twilio=twilio,
                           message_status=lambda status: app[OUTBOX].on_status(status),
                           call_outcome=lambda outcome: app[HANDOFF].callbacks.on_outcome(
                               outcome), files=app[FILES])
    app[CHANNEL_LIST] = [cls(config, lambda inbound: handle_turn(app, inbound))
                         for cls in CHANNEL_TYPES]
    for channel in app[CHANNEL_LIST]:
        app.router.add_routes(channel.routes())
    app.router.add_routes(api.routes())
    app.router.add_routes(ops_api.routes())
    app.router.add_routes(experiments_api.routes())
    app.router.add_routes(erasure_api.routes())
    app.router.add_routes(supervisor.routes())
    app.router.add_routes(agent_report.routes())
    app.router.add_routes(saved_replies_report.routes())
    app.router.add_routes(notes_api.routes())
    app.router.add_routes(attachments_api.routes())
    app.router.add_routes(contacts_api.routes())
    app.router.add_routes(pages())
    app.on_shutdown.append(close_websockets)
    app.on_response_prepare.append(content_security_policy)
    return app


# Pages load their scripts, styles and sockets from this origin only (chat.html has one inline
# style block; the widget's own styles live in its shadow root), and no other site may frame them.
# blob: images are customers' photos the console fetched with its token (attachments_api.py).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")


async def content_security_policy(request: web.Request, response: web.StreamResponse) -> None:
    """Every HTML page goes out with the Content-Security-Policy above."""
    # The header as set, not response.content_type: that parses it, on every response.
    if response.headers.get(hdrs.CONTENT_TYPE, "")[:9].lower() == "text/html":
        response.headers.setdefault("Content-Security-Policy", CSP)


def pages() -> list[web.RouteDef]:
    def page(name: str):
        async def serve(request: web.Request) -> web.FileResponse:
            return web.FileResponse(WEB_DIR / name)
        return serve

    async def agent_ws(request: web.Request) -> web.WebSocketResponse:
        return await request.app[AGENT_DESK].websocket(request)

    return [web.get("/agent", page("agent.html")), web.get("/chat", page("chat.html")),
            web.get("/chat/widget.js", page("widget.js")), web.get("/agent/ws", agent_ws),
            web.static("/static", WEB_DIR)]


async def handle_turn(app: web.Application, inbound: Inbound) -> Reply:
    """Hand one inbound message to the orchestrator; a failure is recorded, then re-raised."""
    inbound = app[RULES].current.redactor.inbound(inbound)  # before anything keeps the text
    structlog.contextvars.bind_contextvars(channel=inbound.channel)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(TURN_TIMEOUT_S):
            reply = await app[CONVERSATIONS].handle(inbound)
    except Exception as exc:
        metrics.TURNS.labels(inbound.channel, "failed").inc()
        app[CONVERSATIONS].record_failure(inbound, exc)
        await app[FALLBACK].record(inbound)  # the contact the channel's apology answers counts
        raise
    structlog.contextvars.bind_contextvars(contact_id=reply.contact_id)
    metrics.child(metrics.TURNS, inbound.channel, reply.state).inc()
    metrics.child(metrics.TURN_SECONDS, inbound.channel).observe(time.perf_counter() - started)
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
        request_id=request.headers.get("X-Request-Id") or new_hex(16),
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


async def close_websockets(app: web.Application) -> None:
    if AGENT_DESK in app:
        await app[AGENT_DESK].close_all()
    for channel in app[CHANNEL_LIST]:
        if hasattr(channel, "shutdown"):
            await channel.shutdown()


# ---- resources ----------------------------------------------------------------------------

async def postgres(app: web.Application) -> AsyncIterator[None]:
    pool = await asyncpg.create_pool(app[SETTINGS].database_url, min_size=1, max_size=8)
    async with pool.acquire() as conn:
        await migrate(conn)
    app[PG] = pool
    yield
    await pool.close()


async def file_store(app: web.Application) -> AsyncIterator[None]:
    """Uploaded files: the shared signing key read (or made) once PostgreSQL is migrated."""
    await app[FILES].start()
    yield


async def customer_lookups(app: web.Application) -> AsyncIterator[None]:
    app[CUSTOMER_LOOKUPS] = await lookup_pool(app[SETTINGS].database_url)
    yield
    await app[CUSTOMER_LOOKUPS].close()


async def redis_client(app: web.Application) -> AsyncIterator[None]:
    url = app[SETTINGS].redis_url
    client = client_for(url, socket_timeout=2, socket_connect_timeout=2,
                        health_check_interval=30)
    app[REDIS] = client
    app[REDIS_BATCH] = batcher_for(url)
    yield
    await app[REDIS_BATCH].close()
    await close_client(client)


async def rules(app: web.Application) -> AsyncIterator[None]:
    holder = await RulesHolder.load(app[SETTINGS].rules_dir, app[PG])
    app[RULES] = holder
    listening = asyncio.create_task(holder.listen(app[SETTINGS].database_url))
    loop = asyncio.get_running_loop()

    def on_sighup() -> None:
        asyncio.ensure_future(reload_and_record(app, LoadCause("signal", "SIGHUP")))

    try:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    except (RuntimeError, ValueError):  # not the main thread (tests)
        pass
    yield
    listening.cancel()
    await asyncio.gather(listening, return_exceptions=True)
    try:
        loop.remove_signal_handler(signal.SIGHUP)
    except (RuntimeError, ValueError):
        pass


async def reload_and_record(app: web.Application,
                            cause: LoadCause = LoadCause("signal", "SIGHUP")) -> bool:
    """Reload the rules (all or nothing); the load is recorded with its cause either way."""
    return (await app[RULES].reload(cause)).ok


async def event_writer(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with app[PG].acquire() as conn:
        await partitions.maintain(conn, settings.event_retention_days)
    upkeep = asyncio.create_task(
        partitions.keep_maintained(app[PG], settings.event_retention_days), name="partitions")
    background = [upkeep]
    if settings.report_warm_days:  # the reports' day roll-ups, computed before they are asked
        warmer = rollups.Warmer(app[PG], lambda: ops_api.report_rules(app),
                                settings.report_warm_days,
                                attributes=settings.report_warm_segments)
        app[RULES].on_reloaded.append(warmer.ask)
        background.append(asyncio.create_task(warmer.run(), name="rollups.warm"))
    app[PREPARING] = Preparations(app[PG])
    writer = EventWriter(app[PG], settings.spool_dir, settings.event_flush_interval_s)
    await writer.start()
    app[EVENTS] = writer
    yield
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    await app[PREPARING].close()
    await writer.close()


def messaging(twilio: TwilioRest):
    """The pub/sub bus between instances, and closing the Twilio channels' REST client."""
    async def resource(app: web.Application) -> AsyncIterator[None]:
        app[BUS] = Bus(app[REDIS], subscriber_for(app[REDIS]), publisher_for(app[REDIS]))
        yield
        await app[BUS].close()
        await twilio.close()
    return resource


def channel_traits(app: web.Application) -> dict[str, ChannelTraits]:
    return {channel.traits.name: channel.traits for channel in app[CHANNEL_LIST]}


def outbound_channels(app: web.Application) -> dict[str, Channel]:
    return {channel.traits.name: channel for channel in app[CHANNEL_LIST]}


async def outbox(app: web.Application) -> AsyncIterator[None]:
    """The durable outbox and its worker; stopping lets attempts under way finish."""
    settings = app[SETTINGS]
    policy = RetryPolicy(base_s=settings.outbox_retry_base_s,
                         max_s=settings.outbox_retry_max_s,
                         give_up_s=settings.outbox_give_up_s,
                         lease_s=max(60.0, 3 * settings.twilio_timeout_s),
                         poll_s=min(1.0, settings.outbox_retry_base_s))
    app[OUTBOX] = Outbox(app[PG], outbound_channels(app), app[BUS].publish, app[EVENTS], policy)
    worker = asyncio.create_task(app[OUTBOX].run(), name="outbox")
    yield
    await app[OUTBOX].stop(worker, grace_s=2 * settings.twilio_timeout_s + 1)


async def flow_lookups(app: web.Application) -> AsyncIterator[None]:
    """The HTTP client self-service flows look things up with (each look-up has its timeout)."""
    async with aiohttp.ClientSession(raise_for_status=False) as session:
        app[LOOKUPS] = HttpLookups(session)
        yield


async def conversations(app: web.Application) -> AsyncIterator[None]:
    pool, settings = app[PG], app[SETTINGS]
    find = functools.partial(find_customer, app[CUSTOMER_LOOKUPS])  # the hot path's only query
    current_rules = lambda: app[RULES].current  # noqa: E731
    traits = channel_traits(app)
    context = idle_context(app)
    app[ROUTER] = Dispatcher(app[REDIS_BATCH], settings.offer_timeout_s,
                             {name: t.default_capacity for name, t in traits.items()})
    app[QUEUE_LOAD] = QueueLoad(app[ROUTER], lambda: current_rules().tree.queues)
    app[HANDOFF] = Handoff(current_rules, context, app[ROUTER], app[BUS], app[EVENTS],
                           outbound_channels(app), app[OUTBOX],
                           rules_for=lambda held: app[RULES].for_contact(held),
                           files=app[FILES])
    app[OUTBOX].call_failed = app[HANDOFF].callbacks.on_outcome
    app[CONVERSATIONS] = Conversations(
        rules=current_rules, context=context, handoff=app[HANDOFF], events=app[EVENTS],
        channels=traits, find_customer=find,
        lookups=app[LOOKUPS], queue_load=lambda: app[QUEUE_LOAD].waiting,
        canary=lambda: app[RULES].canary, rules_for=lambda held: app[RULES].for_contact(held))
    app[FALLBACK] = FallbackContacts(app[EVENTS], find, lambda: default_queue(app), traits,
                                     settings.sms_idle_timeout_s)
    app[AUTH_THROTTLE] = AuthThrottle(app[REDIS_BATCH])
    app[ACTIVITY] = ActivityLog(app[REDIS_BATCH], traits, app[EVENTS].emit)
    app[AGENT_DESK] = AgentDesk(pool, app[HANDOFF], app[BUS], lambda: [
        {"id": t.id, "label": t.label} for t in current_rules().catalog.types.values()],
        app[AUTH_THROTTLE], app[ACTIVITY], app[OUTBOX],
        away_reasons=lambda: current_rules().away_reasons)
    yield


def idle_context(app: web.Application) -> ContextStore:
    """The conversation store, with the idle timeout for the channels that idle out."""
    return ContextStore(app[REDIS_BATCH], app[SETTINGS].sms_idle_timeout_s,
                        [name for name, t in channel_traits(app).items() if t.idles_out])


async def background_sweeps(app: web.Application) -> AsyncIterator[None]:
    """Housekeeping every instance runs; Redis decides which instance acts on what."""
    context = idle_context(app)

    async def end_idle() -> None:
        now = time.time()
        for key in await context.idle_conversations(now):
            await app[CONVERSATIONS].end_idle(key, now)

    tasks = [asyncio.create_task(_every(IDLE_SWEEP_INTERVAL_S, end_idle, "idle_sweep")),
             asyncio.create_task(_every(HANDOFF_SWEEP_INTERVAL_S, app[HANDOFF].sweep,
                                        "handoff.sweep")),
             asyncio.create_task(_every(QUEUE_LOAD_INTERVAL_S, app[QUEUE_LOAD].refresh,
                                        "queue_load.refresh")),
             asyncio.create_task(_every(CONSOLE_REFRESH_S, app[ACTIVITY].refresh,
                                        "activity.refresh")),
             asyncio.create_task(_every(supervisor.GAUGE_REFRESH_S,
                                        lambda: supervisor.refresh_gauges(app),
                                        "supervisor.gauges")),
             asyncio.create_task(_every(app[SETTINGS].canary_check_s,
                                        lambda: guard_canary(app), "canary.guard"))]
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def guard_canary(app: web.Application) -> None:
    """Follow the canary and roll it back when a guardrail trips (every instance may)."""
    rules = app[RULES]
    await experiments.guard_canary(app[PG], rules, app[EVENTS], ops_api.report_rules(app))


async def _every(interval_s: float, job, name: str) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await job()
        except Exception:
            log.exception(f"{name}_failed")
