"""Dependencies taken away under a trickle of traffic, at full length: Valkey stopped 30 s,
PostgreSQL stopped 60 s, Twilio's REST API down 60 s (503, then 429 with Retry-After, then
refused connections).

Each outage has servers of its own (a dedicated Valkey per outage, a dedicated PostgreSQL for
the PostgreSQL one, a database of its own on the session's server for the others; see
tests/dedicated_servers.py), so the three run at the same time and the module costs about
the longest outage plus recovery, not their sum; the session's servers are never touched.
The service runs in this process; webhooks are signed and posted as Twilio posts them, chats
and agents use the real sockets, and the counts are read back through the report API.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from service.agents.desk import add_agent
from service.app import create_app
from service.appkeys import EVENTS, HANDOFF, SETTINGS
from service.infra.migrate import migrate
from service.infra.tokens import create_token
from service.reporting import reports
from service.settings import Settings
from tests.conftest import AUTH_TOKEN, NO_TWILIO, PUBLIC_URL, RULES_DIR
from tests.dedicated_servers import dedicated_postgres, dedicated_valkey
from tests.test_agents import ALL_SKILLS
from tests.twilio_driver import SERVICE_NUMBER, Call, check_twiml, messages, post_signed, sms_params
from tests.twilio_standin import TwilioStandIn

VALKEY_OUTAGE_S = 30
POSTGRES_OUTAGE_S = 60
TWILIO_OUTAGE_S = 60
BEFORE_S, AFTER_S = 4, 8  # traffic before the outage and after the server is back
DELIVERED_WITHIN_S = 30  # every agent message Twilio lacked, once it is back
CHANNELS = ("sms", "whatsapp", "voice", "chat")


# ---- one service on servers of its own ----------------------------------------------------

@dataclass
class World:
    client: TestClient
    db: asyncpg.Connection | None
    database_url: str
    ops_token: str
    started_at: datetime


@asynccontextmanager
async def world(database_url: str, redis_url: str, data_dir: Path,
                twilio_url: str = NO_TWILIO) -> AsyncIterator[World]:
    settings = Settings(public_url=PUBLIC_URL, database_url=database_url, redis_url=redis_url,
                        twilio_auth_token=AUTH_TOKEN, twilio_account_sid="AC" + "1" * 32,
                        twilio_api_base_url=twilio_url, rules_dir=RULES_DIR,
                        data_dir=data_dir, log_format="console", offer_timeout_s=30)
    conn = await asyncpg.connect(database_url)
    await migrate(conn)
    token = await create_token(conn, "ops", "outage test")
    await conn.close()
    async with TestClient(TestServer(create_app(settings))) as client:
        yield World(client, None, database_url, token, datetime.now(timezone.utc))


@asynccontextmanager
async def own_database(admin_url: str) -> AsyncIterator[str]:
    """A fresh database on the session's PostgreSQL server, dropped afterwards."""
    name = f"switchboard_outage_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def all_written(w: World, timeout_s: float = 60) -> None:
    """Wait until the event spool is empty (every event in PostgreSQL)."""
    deadline = time.monotonic() + timeout_s
    while not await w.client.app[EVENTS].flush():
        assert time.monotonic() < deadline, "the spool was not written within a minute"
        await asyncio.sleep(0.5)


async def reported(w: World) -> dict[str, Any]:
    """The report API's summary over the whole test."""
    window = {"from": reports.iso(w.started_at - timedelta(minutes=1)),
              "to": reports.iso(datetime.now(timezone.utc) + timedelta(minutes=1))}
    response = await w.client.get("/api/reports/summary", params=window,
                                  headers={"Authorization": f"Bearer {w.ops_token}"})
    assert response.status == 200, await response.text()
    return await response.json()


# ---- a trickle of contacts on every channel -----------------------------------------------

@dataclass
class Trickle:
    """One new contact a second on each channel; every answer checked as it comes."""
    client: TestClient
    prefix: str  # two digits: this trickle's numbers never meet another's
    sent: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)

    def number(self, channel: str, n: int) -> str:
        return f"+1555{self.prefix}{CHANNELS.index(channel)}{n:04d}"

    async def run(self, seconds: float) -> None:
        began = time.monotonic()
        n = len(self.tasks) // len(CHANNELS)
        while time.monotonic() - began < seconds:
            for channel in CHANNELS:
                self.tasks.append(asyncio.create_task(self._contact(channel, n)))
            n += 1
            await asyncio.sleep(1.0)

    async def finished(self) -> None:
        await asyncio.gather(*self.tasks)
        assert not self.problems, "\n".join(self.problems[:20])

    async def _contact(self, channel: str, n: int) -> None:
        number = self.number(channel, n)
        self.sent[channel] += 1
        try:
            await asyncio.wait_for(CONTACT[channel](self.client, number), 30)
        except (AssertionError, asyncio.TimeoutError, aiohttp.ClientError) as exc:
            self.problems.append(f"{channel} {number}: {type(exc).__name__}: {exc}")


async def _texted(client: TestClient, path: str, params: dict[str, str]) -> None:
    response = await post_signed(client, path, params)
    body = await response.text()
    assert response.status == 200, f"HTTP {response.status}: {body[:200]}"
    assert response.content_type == "text/xml"
    check_twiml(body)
    assert messages(body), f"no answer: {body[:200]}"


async def sms_contact(client: TestClient, number: str) -> None:
    await _texted(client, "/twilio/sms", sms_params("where is my order", number))


async def whatsapp_contact(client: TestClient, number: str) -> None:
    params = sms_params("where is my order", f"whatsapp:{number}")
    params.update(To=f"whatsapp:{SERVICE_NUMBER}", ProfileName="Ana", WaId=number[1:])
    await _texted(client, "/twilio/whatsapp", params)


async def voice_contact(client: TestClient, number: str) -> None:
    call = await Call(client, number).dial()  # Call checks 200 and the TwiML of every step
    assert call.verbs(), call.raw
    await asyncio.sleep(0.3)
    await call.hang_up()


async def chat_contact(client: TestClient, number: str) -> None:
    ws = await client.ws_connect("/chat/ws")  # refused: WSServerHandshakeError
    try:
        await ws.send_json({"type": "start", "session": None})
        kinds: list[str] = []
        while "message" not in kinds:
            frame = await asyncio.wait_for(ws.receive_json(), 15)
            assert frame["type"] != "error", frame
            kinds.append(frame["type"])
        assert kinds[0] == "session", kinds
    finally:
        await ws.close()


CONTACT: dict[str, Callable[[TestClient, str], Awaitable[None]]] = {
    "sms": sms_contact, "whatsapp": whatsapp_contact, "voice": voice_contact,
    "chat": chat_contact}


async def degraded(w: World, dependency: str) -> None:
    response = await w.client.get("/readyz")
    body = await response.json()
    assert response.status == 200 and body["degraded"], body
    assert body["checks"][dependency].startswith("error"), body


async def every_contact_counted(w: World, trickle: Trickle) -> dict[str, Any]:
    await all_written(w)
    report = await reported(w)
    by_channel = {ch: report["by_channel"].get(ch, {}).get("contacts", 0) for ch in CHANNELS}
    assert by_channel == dict(trickle.sent), (by_channel, dict(trickle.sent))
    assert report["totals"]["contacts"] == sum(trickle.sent.values())
    return report


# ---- the outages --------------------------------------------------------------------------

@dataclass
class Stage:
    """One outage's service and the server it takes away (started before any traffic)."""
    w: World
    server: Any = None
    standin: TwilioStandIn | None = None


@asynccontextmanager
async def valkey_stage(admin_url: str, workdir: Path) -> AsyncIterator[Stage]:
    async with AsyncExitStack() as stack:
        valkey = stack.enter_context(dedicated_valkey(workdir / "valkey"))
        database = await stack.enter_async_context(own_database(admin_url))
        yield Stage(await stack.enter_async_context(
            world(database, valkey.url, workdir / "data")), valkey)


@asynccontextmanager
async def postgres_stage(workdir: Path) -> AsyncIterator[Stage]:
    async with AsyncExitStack() as stack:
        postgres = stack.enter_context(dedicated_postgres())
        valkey = stack.enter_context(dedicated_valkey(workdir / "valkey"))
        yield Stage(await stack.enter_async_context(
            world(postgres.url, valkey.url, workdir / "data")), postgres)


@asynccontextmanager
async def twilio_stage(admin_url: str, workdir: Path) -> AsyncIterator[Stage]:
    async with AsyncExitStack() as stack:
        standin = TwilioStandIn()
        await standin.start()
        stack.push_async_callback(standin.stop)
        valkey = stack.enter_context(dedicated_valkey(workdir / "valkey"))
        database = await stack.enter_async_context(own_database(admin_url))
        yield Stage(await stack.enter_async_context(
            world(database, valkey.url, workdir / "data", standin.url)), standin=standin)


async def valkey_outage(stage: Stage) -> dict[str, Any]:
    w, valkey = stage.w, stage.server
    trickle = Trickle(w.client, "11")
    await trickle.run(BEFORE_S)
    valkey.stop()
    stopped = time.monotonic()
    traffic = asyncio.create_task(trickle.run(VALKEY_OUTAGE_S))
    await asyncio.sleep(VALKEY_OUTAGE_S / 2)
    await degraded(w, "redis")
    await traffic
    valkey.start()
    back = time.monotonic()
    await trickle.run(AFTER_S)
    await trickle.finished()
    report = await every_contact_counted(w, trickle)
    return {"outage_s": back - stopped, "sent": dict(trickle.sent),
            "contacts": report["totals"]["contacts"]}


async def postgres_outage(stage: Stage) -> dict[str, Any]:
    w, postgres = stage.w, stage.server
    trickle = Trickle(w.client, "22")
    await trickle.run(BEFORE_S)
    await asyncio.to_thread(postgres.stop)
    stopped = time.monotonic()
    traffic = asyncio.create_task(trickle.run(POSTGRES_OUTAGE_S))
    await asyncio.sleep(POSTGRES_OUTAGE_S / 2)
    await degraded(w, "postgres")
    assert not await w.client.app[EVENTS].flush()  # spooled on disk meanwhile
    spool = w.client.app[SETTINGS].spool_dir
    assert any(p.stat().st_size for p in spool.glob("*.jsonl")), list(spool.iterdir())
    await traffic
    await asyncio.to_thread(postgres.start)
    back = time.monotonic()
    await trickle.run(AFTER_S)
    await trickle.finished()
    report = await every_contact_counted(w, trickle)
    return {"outage_s": back - stopped, "sent": dict(trickle.sent),
            "contacts": report["totals"]["contacts"]}


@dataclass
class Desk:
    """Agents who accept every offer, answer each texter twice and wrap up."""
    client: TestClient
    accepted: list[str] = field(default_factory=list)
    sent: list[tuple[str, str]] = field(default_factory=list)  # (contact, text)
    problems: list[str] = field(default_factory=list)
    sockets: list[aiohttp.ClientWebSocketResponse] = field(default_factory=list)

    async def work(self, token: str) -> None:
        ws = await self.client.ws_connect("/agent/ws")
        self.sockets.append(ws)
        await ws.send_json({"type": "auth", "token": token})
        await ws.send_json({"type": "presence", "status": "available"})
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            frame = message.json()
            if frame["type"] == "error":
                self.problems.append(f"error frame: {frame}")
            elif frame["type"] == "offer":
                await ws.send_json({"type": "accept", "contact_id": frame["contact_id"]})
            elif frame["type"] == "assigned":
                contact = frame["contact_id"]
                self.accepted.append(contact)
                for n in (1, 2):
                    text = f"Agent reply {n} to {contact}"
                    self.sent.append((contact, text))
                    await ws.send_json({"type": "message", "contact_id": contact, "text": text})
                await ws.send_json({"type": "wrap_up", "contact_id": contact,
                                    "resolved": True, "note": ""})

    async def close(self) -> None:
        for ws in self.sockets:
            await ws.close()


async def texters(client: TestClient, seconds: float, first: int, problems: list[str]
                  ) -> int:
    """One new texter a second asking for a person; how many."""
    n = 0
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        number = f"+155533{first + n:05d}"
        try:
            await _texted(client, "/twilio/sms",
                          sms_params("I want to talk to a human", number))
        except AssertionError as exc:
            problems.append(f"{number}: {exc}")
        n += 1
        await asyncio.sleep(1.0)
    return n


async def twilio_outage(stage: Stage) -> dict[str, Any]:
    w, standin = stage.w, stage.standin
    assert standin is not None
    async with AsyncExitStack() as stack:
        conn = await asyncpg.connect(w.database_url)
        stack.push_async_callback(conn.close)
        desk = Desk(w.client)
        stack.push_async_callback(desk.close)
        agents = [asyncio.create_task(desk.work(await add_agent(conn, f"Agent {i}", ALL_SKILLS)))
                  for i in range(4)]
        problems: list[str] = []
        count = await texters(w.client, BEFORE_S, 0, problems)
        phase = TWILIO_OUTAGE_S / 3
        traffic = asyncio.create_task(texters(w.client, TWILIO_OUTAGE_S, count, problems))
        taken_at_outage = len(standin.messages)
        standin.fail_with = 503
        await asyncio.sleep(phase)
        standin.fail_with, standin.retry_after = 429, "5"
        await asyncio.sleep(phase)
        standin.fail_with, standin.retry_after = None, None
        await standin.stop()  # connections refused
        count += await traffic
        taken_before = len(standin.messages)
        await standin.start()
        back = time.monotonic()
        while True:
            expected = set(desk.sent)
            bodies = Counter(m["Body"] for m in standin.messages)
            if all(bodies[t] for _, t in expected) and len(desk.accepted) == count:
                break
            if time.monotonic() - back >= DELIVERED_WITHIN_S + 15:
                missing = [t for _, t in expected if not bodies[t]]
                raise AssertionError(
                    f"{len(missing)} agent messages of {len(expected)} not delivered, "
                    f"{len(desk.accepted)} of {count} contacts accepted "
                    f"{DELIVERED_WITHIN_S + 15} s after recovery; "
                    f"{(problems + desk.problems)[:5]}; their outbox rows: "
                    f"{await _outbox_rows(conn, missing)}")
            await asyncio.sleep(0.2)
        delivered_s = time.monotonic() - back
        await asyncio.sleep(2)  # anything sent twice would arrive now
        for task in agents:
            task.cancel()
        assert not problems and not desk.problems, problems + desk.problems
        assert len(desk.accepted) == count == len(set(desk.accepted))
        bodies = Counter(m["Body"] for m in standin.messages)
        assert all(bodies[t] == 1 for _, t in expected), \
            [t for _, t in expected if bodies[t] != 1]
        hellos = Counter(m["To"] for m in standin.messages
                         if m["Body"].startswith("You're now talking with"))
        assert len(hellos) == count and set(hellos.values()) == {1}, hellos
        left = await conn.fetchrow("SELECT count(*) FILTER (WHERE state = 'queued') AS queued,"
                                   " count(*) FILTER (WHERE state = 'failed') AS failed "
                                   "FROM outbox")
        assert (left["queued"], left["failed"]) == (0, 0), dict(left)
        assert delivered_s <= DELIVERED_WITHIN_S, delivered_s
        return {"contacts": count, "agent_messages": len(expected),
                "taken_during_outage": taken_before - taken_at_outage, "all_delivered_after_s": delivered_s}


async def _outbox_rows(conn: asyncpg.Connection, texts: list[str]) -> list[dict[str, Any]]:
    """Where the outbox has the messages with these texts, and the jobs ahead of them."""
    rows = await conn.fetch(
        """SELECT seq, contact_id, action, state, attempts, payload->>'text' AS text,
                  extract(epoch FROM next_attempt_at - now())::int AS due_in_s,
                  extract(epoch FROM lease_until - now())::int AS lease_left_s,
                  maybe_sent_since IS NOT NULL AS maybe_sent, failure
           FROM outbox WHERE contact_id IN (SELECT contact_id FROM outbox
                                            WHERE payload->>'text' = ANY($1::text[]))
           ORDER BY seq""", texts)
    return [dict(row) for row in rows]


# ---- the tests: the outages run together, each test reads its own outcome ------------------

@pytest.fixture(scope="module")
async def outages(server_urls, tmp_path_factory) -> dict[str, Any]:
    admin_url = server_urls[0]
    root = tmp_path_factory.mktemp("outages")
    async with AsyncExitStack() as stack:  # one after another: servers, migrations, rules
        stages = [await stack.enter_async_context(valkey_stage(admin_url, root / "valkey")),
                  await stack.enter_async_context(postgres_stage(root / "postgres")),
                  await stack.enter_async_context(twilio_stage(admin_url, root / "twilio"))]
        began = time.monotonic()
        results = await asyncio.gather(valkey_outage(stages[0]), postgres_outage(stages[1]),
                                       twilio_outage(stages[2]), return_exceptions=True)
        print(f"outages: {time.monotonic() - began:.0f} s of traffic for all three: {results}")
    return dict(zip(("valkey", "postgres", "twilio"), results))


def outcome(outages: dict[str, Any], name: str) -> dict[str, Any]:
    result = outages[name]
    if isinstance(result, BaseException):
        raise result
    return result


async def test_valkey_stopped_30_s_every_webhook_answered_every_contact_counted(outages):
    result = outcome(outages, "valkey")
    assert result["outage_s"] >= VALKEY_OUTAGE_S
    assert result["contacts"] == sum(result["sent"].values()) >= 4 * VALKEY_OUTAGE_S


async def test_postgres_stopped_60_s_events_spooled_then_every_contact_counted(outages):
    result = outcome(outages, "postgres")
    assert result["outage_s"] >= POSTGRES_OUTAGE_S
    assert result["contacts"] == sum(result["sent"].values()) >= 4 * POSTGRES_OUTAGE_S


async def test_twilio_down_60_s_accepts_never_fail_and_every_text_goes_once(outages):
    result = outcome(outages, "twilio")
    assert result["taken_during_outage"] <= 3  # at most sends already under way
    assert result["contacts"] >= TWILIO_OUTAGE_S - 5
    assert result["all_delivered_after_s"] <= DELIVERED_WITHIN_S


# ---- PostgreSQL down at the moment an agent accepts and replies ---------------------------

async def test_postgres_down_as_an_agent_accepts_and_replies_nothing_is_lost_silently(
        tmp_path):
    """The outbox cannot record: the customer is still connected (one unrecorded attempt,
    its state shown to the agent), a typed text is refused with `not_recorded` and leaves
    no trace (nothing sent, not in the transcript, no event), and sent again once
    PostgreSQL is back it goes out once."""
    standin = TwilioStandIn()
    await standin.start()
    number = "+15554440001"
    async with AsyncExitStack() as stack:
        stack.push_async_callback(standin.stop)
        postgres = stack.enter_context(dedicated_postgres())
        valkey = stack.enter_context(dedicated_valkey(tmp_path / "valkey"))
        w = await stack.enter_async_context(
            world(postgres.url, valkey.url, tmp_path / "data", standin.url))
        conn = await asyncpg.connect(postgres.url)
        token = await add_agent(conn, "Dana", ALL_SKILLS)
        await conn.close()
        ws = await w.client.ws_connect("/agent/ws")
        await ws.send_json({"type": "auth", "token": token})
        await ws.send_json({"type": "presence", "status": "available"})
        await _texted(w.client, "/twilio/sms", sms_params("I want to talk to a human", number))
        offer = await frame_of(ws, "offer")
        contact = offer["contact_id"]

        await asyncio.to_thread(postgres.stop)
        await ws.send_json({"type": "accept", "contact_id": contact})
        assert (await frame_of(ws, "assigned"))["contact_id"] == contact  # the accept stands
        greeting = await frame_of(ws, "message_status", state="sent")
        assert greeting["text"] == "You're now talking with Dana."
        assert [m["Body"] for m in standin.messages] == [greeting["text"]]  # connected
        await ws.send_json({"type": "message", "contact_id": contact, "text": "Hello there"})
        refused = await frame_of(ws, "error")
        assert (refused["code"], refused["contact_id"]) == ("not_recorded", contact)
        assert "not sent" in refused["message"]
        assert len(standin.messages) == 1  # nothing went out
        assert "Hello there" not in [line["text"] for line in
                                     (await w.client.app[HANDOFF].conversation(contact))[1]
                                     ["transcript"]]

        await asyncio.to_thread(postgres.start)
        for _ in range(100):  # the pool's connections were cut: the next acquire reconnects
            await ws.send_json({"type": "message", "contact_id": contact,
                                "text": "Hello there"})
            if (await frame_of(ws, "message_status", "error"))["type"] == "message_status":
                break
            await asyncio.sleep(0.2)
        await frame_of(ws, "message_status", state="sent")
        assert [m["Body"] for m in standin.messages] == [greeting["text"], "Hello there"]
        await all_written(w)
        conn = await asyncpg.connect(postgres.url)
        said = await conn.fetch("SELECT data->>'text' AS text FROM contact_events "
                                "WHERE kind = 'agent_message'")
        await conn.close()
        assert [r["text"] for r in said] == ["Hello there"]
        await ws.close()


async def frame_of(ws, *kinds: str, **match: Any) -> dict[str, Any]:
    """The next frame of one of `kinds` (with the `match`ing fields), skipping the others."""
    while True:
        frame = await asyncio.wait_for(ws.receive_json(), 15)
        if frame["type"] in kinds and all(frame.get(k) == v for k, v in match.items()):
            return frame


async def test_valkey_down_an_agents_frames_are_refused_and_the_console_stays_open(
        server_urls, tmp_path):
    async with AsyncExitStack() as stack:
        valkey = stack.enter_context(dedicated_valkey(tmp_path / "valkey"))
        database = await stack.enter_async_context(own_database(server_urls[0]))
        w = await stack.enter_async_context(world(database, valkey.url, tmp_path / "data"))
        conn = await asyncpg.connect(database)
        token = await add_agent(conn, "Dana", ALL_SKILLS)
        await conn.close()
        ws = await w.client.ws_connect("/agent/ws")
        await ws.send_json({"type": "auth", "token": token})
        await ws.send_json({"type": "presence", "status": "away"})
        await frame_of(ws, "presence")  # signed in and served
        valkey.stop()
        for status in ("available", "away"):  # each refused; the socket stays open
            await ws.send_json({"type": "presence", "status": status})
            assert (await frame_of(ws, "error"))["code"] == "unavailable"
        valkey.start()
        for _ in range(50):  # the hot-path connection reconnects on its next batch
            await ws.send_json({"type": "presence", "status": "available"})
            if (await frame_of(ws, "presence", "error"))["type"] == "presence":
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("presence still refused after Valkey came back")
        await ws.close()
