"""Outages and reloads: callers still get answers, nothing is lost, bad rules change nothing."""

from __future__ import annotations

import asyncio
import shutil
import time
from urllib.parse import urlsplit

import asyncpg
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest

from service.app import create_app, reload_and_record
from service.appkeys import CONVERSATIONS, EVENTS, REDIS_BATCH, RULES
from service.conversations.context import IDLE_INDEX, LEGACY_IDLE_INDEX, ContextStore
from service.reporting import metrics
from tests.conftest import RULES_DIR, _clean_tables, service_with_rules, with_settings
from tests.twilio_driver import Call, text

CALLER = "+15555550177"


async def test_postgres_outage_during_a_call_loses_no_event(settings, server_urls, db,
                                                            redis_client):
    await _clean_tables(settings.database_url)
    name = urlsplit(settings.database_url).path.lstrip("/")
    admin = await asyncpg.connect(server_urls[0])
    async with TestClient(TestServer(create_app(settings))) as client:
        try:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = $1", name)
            call = await Call(client, CALLER).dial()
            assert call.said()[0].startswith("Thanks for calling.")
            await call.press("1")
            await call.press("1")
            assert call.verbs() == ["Say", "Hangup"]
            assert not await client.app[EVENTS].flush()
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await admin.close()
        assert await client.app[EVENTS].flush()
    conn = await asyncpg.connect(settings.database_url)
    kinds = [r["kind"] for r in await conn.fetch("SELECT kind FROM contact_events ORDER BY seq")]
    await conn.close()
    assert kinds[-4:] == ["received", "self_service_resolved", "ended", "replied"]
    assert kinds.count("replied") == 3  # the greeting, the answer, the goodbye
    assert kinds.count("contact_started") == 1


async def test_a_bad_reload_keeps_the_rules_in_force(settings, tmp_path, redis_client):
    rules_copy = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules_copy)
    async with service_with_rules(settings, rules_copy) as client:
        app = client.app
        before = app[RULES].current
        routes = rules_copy / "routes.yaml"
        routes.write_text(routes.read_text().replace("queue: billing", "queue: biling"))
        assert not await reload_and_record(app)
        assert app[RULES].current is before
        assert b"switchboard_rules_last_reload_successful 0.0" in generate_latest(
            metrics.REGISTRY)
        assert (await text(client, CALLER, "I want a refund"))[1] == \
            "Did that help? Reply YES or NO."

        routes.write_text(routes.read_text().replace("queue: biling", "queue: general")
                          .replace("self_service: true\n  routes:", "self_service: false\n  routes:"))
        assert await reload_and_record(app)
        assert app[RULES].current is not before
        assert b"switchboard_rules_last_reload_successful 1.0" in generate_latest(
            metrics.REGISTRY)


async def test_quiet_sms_conversations_are_ended_by_the_sweeper(settings, db, redis_client):
    await _clean_tables(settings.database_url)
    app = create_app(with_settings(settings, sms_idle_timeout_s=1))
    async with TestClient(TestServer(app)) as client:
        await text(client, CALLER, "I need to track my order")
        context = ContextStore(app[REDIS_BATCH], idle_timeout_s=1)
        assert await context.idle_conversations(time.time()) == []
        await asyncio.sleep(1.1)
        now = time.time()
        [key] = await context.idle_conversations(now)
        await app[CONVERSATIONS].end_idle(key, now)
        assert await app[EVENTS].flush()
        assert await context.idle_conversations(time.time()) == []
    outcome = await db.fetchval("SELECT outcome FROM contacts")
    assert outcome == "idle_timeout"


async def test_conversations_indexed_under_the_old_idle_key_are_still_swept(settings, db,
                                                                           redis_client):
    await _clean_tables(settings.database_url)
    app = create_app(with_settings(settings, sms_idle_timeout_s=1))
    async with TestClient(TestServer(app)) as client:
        await text(client, CALLER, "I need to track my order")
        [(key, last_at)] = await redis_client.zrange(IDLE_INDEX, 0, -1, withscores=True)
        await redis_client.zrem(IDLE_INDEX, key)  # as a deployment before the rename left it
        await redis_client.zadd(LEGACY_IDLE_INDEX, {key: last_at})
        context = ContextStore(app[REDIS_BATCH], idle_timeout_s=1)
        await asyncio.sleep(1.1)
        assert await context.idle_conversations(time.time()) == [key.decode()]
        assert await redis_client.zcard(LEGACY_IDLE_INDEX) == 0
