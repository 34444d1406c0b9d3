"""Real `switchboard serve` processes under traffic: SIGTERM finishes what is in flight and
flushes the spool; `kill -9` loses no answered contact (the spool is adopted on restart); a
rolling restart of two instances refuses no webhook and moves chat and agent sockets to the
other instance; a `kill -9` of one of two loses nothing once Twilio retries what it took."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import aiohttp

from service.agents.desk import add_agent
from service.conversations.prompts import RESOLVED
from service.infra.migrate import migrate
from tests.conftest import AUTH_TOKEN, PUBLIC_URL, _clean_tables
from tests.test_two_processes import ROOT, free_port, next_frame, wait_until_ready
from tests.twilio_driver import messages, sign, sms_params


@asynccontextmanager
async def serving(database_url: str, redis_url: str, data_dir: Path):
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url,
           "SWITCHBOARD_PORT": str(port), "SWITCHBOARD_DATA_DIR": str(data_dir),
           "SWITCHBOARD_LOG_LEVEL": "warning", "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
           "SWITCHBOARD_PUBLIC_URL": PUBLIC_URL}
    process = subprocess.Popen([sys.executable, "-m", "service", "serve"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await wait_until_ready(http, base, process)
            yield process, base, http
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)


async def texted(http, base: str, number: str, body: str) -> list[str] | None:
    params = sms_params(body, number)
    headers = {"X-Twilio-Signature": sign("/twilio/sms", params),
               "Content-Type": "application/x-www-form-urlencoded"}
    try:
        async with http.post(f"{base}/twilio/sms", data=urlencode(params),
                             headers=headers) as response:
            assert response.status == 200, response.status
            return messages(await response.text())
    except aiohttp.ClientConnectionError:
        return None  # refused: the process was going away (Twilio would retry elsewhere)


async def contacts_started(db) -> int:
    return await db.fetchval("SELECT count(*) FROM contact_events WHERE kind = 'contact_started'")


async def test_sigterm_finishes_webhooks_in_flight_and_flushes_the_spool(
        database_url, redis_url, db, redis_client, tmp_path):
    await _clean_tables(database_url)
    async with serving(database_url, redis_url, tmp_path / "a") as (process, base, http):
        sends = [asyncio.create_task(texted(http, base, f"+155555504{n:02d}", "track my order"))
                 for n in range(40)]
        await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        answers = await asyncio.gather(*sends)
        assert process.wait(timeout=60) == 0
    answered = [a for a in answers if a is not None]
    assert answered and all(a for a in answered)  # every answered webhook got its TwiML
    assert await contacts_started(db) == len(answered)  # flushed before exit, none lost
    assert list((tmp_path / "a" / "spool").glob("*.jsonl")) == []


async def test_kill_9_during_traffic_loses_no_answered_contact(database_url, redis_url, db,
                                                               redis_client, tmp_path):
    await _clean_tables(database_url)
    data = tmp_path / "shared"
    async with serving(database_url, redis_url, data) as (process, base, http):
        answers = [await texted(http, base, f"+155555505{n:02d}", "track my order")
                   for n in range(30)]
        assert all(answers)
        process.kill()  # SIGKILL: no shutdown, the spool stays on disk
        process.wait(timeout=10)
    async with serving(database_url, redis_url, data) as (process, base, http):
        for _ in range(100):  # the new process adopts the dead one's spool segments
            if await contacts_started(db) == 30:
                break
            await asyncio.sleep(0.1)
        assert await contacts_started(db) == 30
        # The conversation lives on in Redis: "yes" answers the first process's question.
        assert await texted(http, base, "+15555550500", "yes") == [RESOLVED["text"]]


# ---- two instances behind a load balancer --------------------------------------------------

class Instance:
    """One `switchboard serve` process, stopped and started again on the same port and
    data folder (its spool), as a supervisor restarts it."""

    def __init__(self, database_url: str, redis_url: str, data_dir: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url,
                    "SWITCHBOARD_PORT": str(self.port), "SWITCHBOARD_DATA_DIR": str(data_dir),
                    "SWITCHBOARD_LOG_LEVEL": "warning", "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
                    "SWITCHBOARD_PUBLIC_URL": PUBLIC_URL}
        self.spool = data_dir / "spool"
        self.process: subprocess.Popen | None = None

    async def start(self, http: aiohttp.ClientSession) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "service", "serve"], cwd=ROOT,
                                        env=self.env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        # Each process trains the classifier as it starts: two at once on a loaded machine.
        await wait_until_ready(http, self.base, self.process, timeout_s=120)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def exited(self) -> int:
        assert self.process is not None
        return await asyncio.to_thread(self.process.wait, 60)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


class Balancer:
    """Spreads webhooks over the instances as a load balancer does: one connection per
    request, and a refused connection (nothing was sent) goes to the next instance.
    A request an instance took and never answered is `lost`, as Twilio would see it."""

    def __init__(self, http: aiohttp.ClientSession, instances: list[Instance]):
        self.http, self.instances = http, instances
        self._turn = itertools.count()

    async def post(self, path: str, params: dict[str, str]) -> str | None:
        headers = {"X-Twilio-Signature": sign(path, params),
                   "Content-Type": "application/x-www-form-urlencoded"}
        for _ in range(200):
            base = self.instances[next(self._turn) % len(self.instances)].base
            try:
                async with self.http.post(f"{base}{path}", data=urlencode(params),
                                          headers=headers) as response:
                    assert response.status == 200, response.status
                    return await response.text()
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(0.05)  # not listening: the next instance
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                return None  # taken, then the connection dropped: no answer
        raise AssertionError("no instance took the request")


@dataclass
class SmsTrickle:
    """A new texter every `every_s` through the balancer; every answer kept."""
    balancer: Balancer
    prefix: str
    every_s: float = 0.2
    answered: list[str] = field(default_factory=list)
    lost: list[dict[str, str]] = field(default_factory=list)  # no answer: Twilio retries

    async def run(self, stop: asyncio.Event) -> None:
        sends = []
        n = 0
        while not stop.is_set():
            sends.append(asyncio.create_task(self._one(sms_params(
                "track my order", f"+1555{self.prefix}{n:05d}"))))
            n += 1
            await asyncio.sleep(self.every_s)
        await asyncio.gather(*sends)

    async def _one(self, params: dict[str, str]) -> None:
        twiml = await self.balancer.post("/twilio/sms", params)
        if twiml is None:
            self.lost.append(params)
        else:
            assert messages(twiml), twiml
            self.answered.append(params["From"])

    async def retry_lost(self) -> None:
        """Twilio's retry of each delivery that got no answer: the same MessageSid."""
        lost, self.lost = self.lost, []
        for params, twiml in zip(lost, await asyncio.gather(
                *(self.balancer.post("/twilio/sms", params) for params in lost))):
            assert twiml is not None and messages(twiml), twiml
            self.answered.append(params["From"])


class Console:
    """An agent's console: signs in, goes available, re-syncs after a reconnect."""

    def __init__(self, http: aiohttp.ClientSession, token: str):
        self.http, self.token = http, token
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def connect(self, base: str) -> dict:
        self.ws = await self.http.ws_connect(f"{base}/agent/ws")
        await self.ws.send_json({"type": "auth", "token": self.token})
        ready = await next_frame(self.ws, "ready")
        await self.ws.send_json({"type": "presence", "status": "available"})
        return ready

    async def next(self, kind: str) -> dict:
        assert self.ws is not None
        return await next_frame(self.ws, kind)


class Visitor:
    """A chat visitor whose page reconnects with its session token."""

    def __init__(self, http: aiohttp.ClientSession):
        self.http = http
        self.session: str | None = None
        self.contact_id: str | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def connect(self, base: str) -> dict:
        self.ws = await self.http.ws_connect(f"{base}/chat/ws")
        await self.ws.send_json({"type": "start", "session": self.session})
        frame = await next_frame(self.ws, "session")
        self.session = self.session or frame["session"]
        assert frame["session"] == self.session
        self.contact_id = self.contact_id or frame["contact_id"]
        assert frame["contact_id"] == self.contact_id  # the same contact, resumed
        return frame

    async def next(self, kind: str) -> dict:
        assert self.ws is not None
        return await next_frame(self.ws, kind)


async def told_to_reconnect(ws: aiohttp.ClientWebSocketResponse) -> bool:
    """Read until the server closes the socket; whether it said `reconnect` first."""
    told = False
    while True:
        message = await asyncio.wait_for(ws.receive(), 30)
        if message.type == aiohttp.WSMsgType.TEXT:
            told = told or message.json()["type"] == "reconnect"
        else:
            return told


async def agent_and_chat_together(console: Console, visitor: Visitor, base: str) -> str:
    """A chat visitor asks for a person on `base` and the console takes the contact."""
    await visitor.connect(base)
    await visitor.ws.send_json({"type": "message", "text": "I want to talk to a human"})
    while (await visitor.next("status"))["state"] != "queued":
        pass
    offer = await console.next("offer")
    await console.ws.send_json({"type": "accept", "contact_id": offer["contact_id"]})
    await console.next("assigned")
    return offer["contact_id"]


async def still_talking(console: Console, visitor: Visitor, contact_id: str, words: str) -> None:
    await console.ws.send_json({"type": "message", "contact_id": contact_id, "text": words})
    while (frame := await visitor.next("message"))["text"] != words:
        assert frame["from"] in ("customer", "agent", "bot"), frame  # the replayed transcript
    await visitor.ws.send_json({"type": "message", "text": f"thanks for: {words}"})
    assert (await console.next("message"))["text"] == f"thanks for: {words}"


async def all_counted(db, expected: int) -> None:
    for _ in range(300):  # the live instance writes its spool every 200 ms
        if await contacts_started(db) >= expected:
            break
        await asyncio.sleep(0.1)
    assert await contacts_started(db) == expected


@dataclass
class TwoInstances:
    """Two service processes on one PostgreSQL and Redis, an agent and a chat visitor talking
    through the first, and texters trickling in through a balancer over both."""
    http: aiohttp.ClientSession
    one: Instance
    two: Instance
    console: Console
    visitor: Visitor
    contact_id: str
    trickle: SmsTrickle
    stop: asyncio.Event
    traffic: "asyncio.Task[None]"

    async def end_traffic(self) -> None:
        self.stop.set()
        await self.traffic


@asynccontextmanager
async def two_instances_under_traffic(database_url, redis_url, db, tmp_path, numbers: str,
                                      **trickle_options):
    await _clean_tables(database_url)
    await migrate(db)
    token = await add_agent(db, "Dana", ["accounts", "care"])
    one, two = (Instance(database_url, redis_url, tmp_path / name) for name in ("one", "two"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        try:
            await asyncio.gather(one.start(http), two.start(http))
            console, visitor = Console(http, token), Visitor(http)
            await console.connect(one.base)
            contact_id = await agent_and_chat_together(console, visitor, one.base)
            trickle = SmsTrickle(Balancer(http, [one, two]), numbers, **trickle_options)
            stop = asyncio.Event()
            run = TwoInstances(http, one, two, console, visitor, contact_id, trickle, stop,
                               asyncio.create_task(trickle.run(stop)))
            yield run
            if not stop.is_set():
                await run.end_traffic()
        finally:
            one.stop()
            two.stop()


async def test_rolling_restart_refuses_no_webhook_and_sockets_move_to_the_other_instance(
        database_url, redis_url, db, redis_client, tmp_path):
    async with two_instances_under_traffic(database_url, redis_url, db, tmp_path, "61") as run:
        console, visitor = run.console, run.visitor
        for going, staying in ((run.one, run.two), (run.two, run.one)):
            await asyncio.sleep(1)
            going.signal(signal.SIGTERM)
            # Both sockets are told to reconnect, and carry on on the other instance.
            assert await told_to_reconnect(console.ws)
            assert await told_to_reconnect(visitor.ws)
            await console.connect(staying.base)
            assert (await console.next("assigned"))["contact_id"] == run.contact_id
            await visitor.connect(staying.base)
            await still_talking(console, visitor, run.contact_id,
                                f"still here after {going.port}")
            assert await going.exited() == 0
            assert list(going.spool.glob("*.jsonl")) == []  # flushed before it exited
            await going.start(run.http)
        await asyncio.sleep(1)
        await run.end_traffic()
    assert run.trickle.lost == []  # every webhook an instance took was answered
    assert len(run.trickle.answered) == len(set(run.trickle.answered)) > 20
    await all_counted(db, len(run.trickle.answered) + 1)  # and the chat, once


async def test_kill_9_of_one_instance_of_two_under_traffic_loses_nothing(
        database_url, redis_url, db, redis_client, tmp_path):
    async with two_instances_under_traffic(database_url, redis_url, db, tmp_path, "62",
                                           every_s=0.05) as run:
        one, two, console, visitor = run.one, run.two, run.console, run.visitor
        await asyncio.sleep(2)
        one.signal(signal.SIGKILL)  # no shutdown: its spool and its claims stay behind
        assert await one.exited() == -signal.SIGKILL
        assert not await told_to_reconnect(console.ws)  # dropped, not told
        await console.connect(two.base)
        assert (await console.next("assigned"))["contact_id"] == run.contact_id
        await visitor.connect(two.base)
        await still_talking(console, visitor, run.contact_id, "still here")
        await asyncio.sleep(1)
        await run.end_traffic()
        await run.trickle.retry_lost()  # what the dead instance took, retried on the other
        await one.start(run.http)  # adopts the dead process's spool
    assert len(run.trickle.answered) == len(set(run.trickle.answered)) > 20
    await all_counted(db, len(run.trickle.answered) + 1)
    assert list(one.spool.glob("*.jsonl")) == []
