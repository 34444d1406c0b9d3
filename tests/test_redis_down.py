"""Redis unreachable: every contact is still answered (the fallback), counted in the event
log, chats are answered rather than refused, and the instance stays ready."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from service.app import create_app
from service.appkeys import EVENTS
from tests.conftest import _clean_tables, with_settings
from tests.test_two_processes import free_port
from tests.twilio_driver import Call, text


async def test_with_redis_down_every_contact_is_answered_and_counted(settings, db):
    await _clean_tables(settings.database_url)
    down = with_settings(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with TestClient(TestServer(create_app(down))) as client:
        ready = await client.get("/readyz")
        body = await ready.json()
        assert ready.status == 200 and body["ready"] and body["degraded"]
        assert body["checks"]["postgres"] == "ok" and body["checks"]["redis"].startswith("error")

        for n in range(3):
            [answer] = await text(client, f"+1555555030{n}", "where is my order")
            assert answer.startswith("Sorry, something went wrong")
        await text(client, "+15555550300", "hello?")  # the same texter: the same contact

        call = await Call(client, "+15555550310").dial()  # held for an agent
        assert "Enqueue" in call.verbs()

        ws = await client.ws_connect("/chat/ws")
        await ws.send_json({"type": "start", "session": None})
        assert (await ws.receive_json())["type"] == "session"
        assert (await ws.receive_json())["text"].startswith("Sorry, something went wrong")
        assert (await ws.receive_json())["type"] == "status"
        await ws.send_json({"type": "message", "text": "anyone?"})
        assert (await ws.receive_json())["text"].startswith("Sorry, something went wrong")
        await ws.close()
        assert await client.app[EVENTS].flush()

    started = await db.fetch("SELECT channel, count(*) AS n FROM contact_events "
                             "WHERE kind = 'contact_started' GROUP BY channel")
    assert {r["channel"]: r["n"] for r in started} == {"sms": 3, "voice": 1, "chat": 1}
    outcomes = await db.fetch("SELECT channel, outcome, escalation_reason FROM contacts")
    assert sorted((r["channel"], r["outcome"]) for r in outcomes) == [
        ("chat", "technical_fallback"), ("sms", "technical_fallback"),
        ("sms", "technical_fallback"), ("sms", "technical_fallback"), ("voice", None)]
    heard = await db.fetchval("SELECT count(*) FROM contact_events WHERE kind = 'received'")
    assert heard == 5  # the 4 texts and the chat message, each once
