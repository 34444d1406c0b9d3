"""Signing in, as a contact centre's auditors check it: disabling an agent closes their open
consoles at once (and within seconds when the bus missed it); failed sign-ins are throttled
per address on the agent socket and the ops API."""

from __future__ import annotations

import asyncio
import time

from aiohttp import WSMsgType

from service.__main__ import _close_consoles
from service.agents import desk
from service.agents.desk import disable_agent
from service.infra import auth_throttle
from service.infra.tokens import create_token
from tests.test_agents import app_settings, instance, login, twilio  # noqa: F401 (fixtures)


async def _closed(ws, within: float) -> tuple[int, str]:
    """The close the socket gets within `within` seconds (frames before it are skipped)."""
    async with asyncio.timeout(within):
        while (msg := await ws.receive()).type == WSMsgType.TEXT:
            pass
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), msg
    return ws.close_code, (msg.extra or "")


async def _sign_in(client, token: str) -> dict:
    ws = await client.ws_connect("/agent/ws")
    await ws.send_json({"type": "auth", "token": token})
    frame = await ws.receive_json(timeout=5)
    await ws.close()
    return frame


async def test_disabling_an_agent_closes_their_consoles_on_every_instance_at_once(
        app_settings, db, redis_client):  # noqa: F811
    async with instance(app_settings) as one, instance(app_settings) as two:
        first, second = await login(one, db, name="Dana Revoked"), await login(two, db, name="Eve Stays")
        again = await login(two, db, name="Dana Stays")
        dana_id = await disable_agent(db, "Dana Revoked")
        began = time.monotonic()
        assert await _close_consoles(app_settings.redis_url, dana_id)
        assert (await _closed(first.ws, within=2))[0] == desk.REVOKED
        assert time.monotonic() - began < 2
        await second.send(type="presence", status="away")  # others keep working
        assert (await second.next("presence"))["status"] == "away"
        assert not again.ws.closed


async def test_a_disabled_agent_is_closed_even_when_the_bus_missed_it(
        app_settings, db, redis_client, monkeypatch):  # noqa: F811
    monkeypatch.setattr(desk, "RECHECK_S", 0.3)
    async with instance(app_settings) as client:
        agent = await login(client, db, name="Dana Revoked")
        await disable_agent(db, "Dana Revoked")  # nothing published
        assert (await _closed(agent.ws, within=3))[0] == desk.REVOKED


async def test_disable_names_exactly_one_agent_or_changes_nothing(app_settings, db):  # noqa: F811
    async with instance(app_settings) as client:
        await login(client, db, name="Sam Twice", available=False)
        await login(client, db, name="Sam Twice", available=False)
        for name, problem in (("Sam Twice", "2 agents are named 'Sam Twice'"),
                              ("Nobody", "no enabled agent is named 'Nobody'")):
            try:
                await disable_agent(db, name)
            except ValueError as exc:
                assert problem in str(exc)
            else:
                raise AssertionError(f"disabling {name} should have failed")
        assert await db.fetchval(
            "SELECT count(*) FROM agents WHERE name = 'Sam Twice' AND disabled_at IS NULL") == 2


async def test_failed_agent_sign_ins_are_throttled_per_address(
        app_settings, db, redis_client):  # noqa: F811
    async with instance(app_settings) as client:
        for _ in range(auth_throttle.LIMIT):
            assert (await _sign_in(client, "guessed-token"))["code"] == "unauthorized"
        good = await desk.add_agent(db, "Dana", ["orders"])
        refused = await _sign_in(client, good)  # even the right token, until the window ends
        assert refused["code"] == "rate_limited"
        assert 0 < await redis_client.ttl("sb:{authfail:127.0.0.1}") <= auth_throttle.WINDOW_S
        await redis_client.delete("sb:{authfail:127.0.0.1}")  # the window ended
        assert (await _sign_in(client, good))["type"] == "ready"


async def test_failed_ops_tokens_are_throttled_with_retry_after(
        app_settings, db, redis_client):  # noqa: F811
    token = await create_token(db, "ops", "tests")
    async with instance(app_settings) as client:
        async def summary(bearer: str):
            return await client.get("/api/reports/summary",
                                    headers={"Authorization": f"Bearer {bearer}"})
        for _ in range(auth_throttle.LIMIT):  # a page asking before it has a token: not counted
            assert (await client.get("/api/reports/summary")).status == 401
        assert (await summary(token)).status == 200
        statuses = [(await summary(f"wrong-{n}")).status for n in range(auth_throttle.LIMIT)]
        assert statuses == [401] * auth_throttle.LIMIT
        refused = await summary(token)
        assert refused.status == 429
        assert refused.headers["Retry-After"] == str(auth_throttle.WINDOW_S)
        assert "too many failed sign-ins" in (await refused.json())["error"]
