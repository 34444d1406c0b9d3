"""How fast the outbox delivers once Twilio recovers, with the default retry settings.

    .venv/bin/python load_tests/outbox_recovery.py [--outages 3,10,30] [--messages 3]
        [--contacts 1]

Starts embedded PostgreSQL and Valkey (in a temporary folder), the Twilio stand-in of the
tests, and the whole service in this process with its default outbox settings (first retry
after 0.5-1 s, doubling, at most 300 s). For each outage length: an agent accepts an SMS
contact (one agent per contact, `--contacts` of them), Twilio stops taking connections, each
agent sends `--messages` texts, Twilio comes back after the outage; reported: seconds from
recovery until the first and the last text reached Twilio, the most attempts one text took,
whether each went out once and each contact's in order. Then, with Twilio healthy, the time
from an agent's text to Twilio taking it (recorded in PostgreSQL first), over 50 texts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.app import create_app  # noqa: E402
from service.appkeys import OUTBOX  # noqa: E402
from service.infra.embedded import servers  # noqa: E402
from service.infra.logs import configure_logging  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.test_agents import login  # noqa: E402
from tests.test_outbox import Console  # noqa: E402
from tests.twilio_driver import text  # noqa: E402
from tests.twilio_standin import start_standin  # noqa: E402

PUBLIC_URL = "https://switchboard.example.test"


async def wait_for(predicate, timeout_s: float) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError("not delivered in time")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def accepted_contact(client, db, number: str, name: str) -> tuple[Console, str]:
    agent = await login(client, db, name)
    await text(client, number, "I forgot my password and can't log in")
    await text(client, number, "no")
    offer = await agent.next("offer")
    console = Console(agent)
    await console.send(type="accept", contact_id=offer["contact_id"])
    await console.wait(lambda f: f["type"] == "assigned")
    await console.send(type="presence", status="away")  # the next contact goes to a new agent
    return console, offer["contact_id"]


async def outage(client, db, standin, seconds: float, messages: int, contacts: int,
                 n: int) -> dict:
    held = [await accepted_contact(client, db, f"+1555{n:03d}{c:04d}", f"Agent{n}-{c}")
            for c in range(contacts)]
    await asyncio.sleep(0.2)
    await standin.stop()
    words = []
    for c, (console, contact_id) in enumerate(held):
        for i in range(messages):
            words.append(f"outage {seconds}s contact {c} text {i}")
            await console.send(type="message", contact_id=contact_id, text=words[-1])
    for console, _ in held:
        await console.wait(lambda f: f["type"] == "message_status" and f["state"] == "queued"
                           and f["text"].endswith(f"text {messages - 1}"))
    await asyncio.sleep(seconds)
    await standin.start()
    recovered = time.monotonic()
    delays = []
    for line in words:
        await wait_for(lambda: line in standin.bodies(), timeout_s=400)
        delays.append(time.monotonic() - recovered)
    attempts = await db.fetch("SELECT attempts FROM outbox WHERE action = 'send' AND "
                              "contact_id = ANY($1::text[])", [c for _, c in held])
    for console, _ in held:
        await console.ws.close()
    sent = standin.bodies()
    in_order = all(sent.index(a) < sent.index(b) for a, b in zip(words, words[1:])
                   if a.rsplit(" text ", 1)[0] == b.rsplit(" text ", 1)[0])
    return {"outage_s": seconds, "contacts": contacts, "texts": len(words),
            "first_after_recovery_s": round(min(delays), 2),
            "last_after_recovery_s": round(max(delays), 2),
            "max_attempts": max(r["attempts"] for r in attempts),
            "each_once": all(sent.count(w) == 1 for w in words), "in_order": in_order}


def timed(outbox, name: str, spent: list[float]) -> None:
    """Wrap one of the outbox's steps to add its duration (ms) to `spent`."""
    step = getattr(outbox, name)

    async def measured(*args, **kwargs):
        started = time.perf_counter()
        try:
            return await step(*args, **kwargs)
        finally:
            spent.append((time.perf_counter() - started) * 1000)
    setattr(outbox, name, measured)


async def healthy_latency(client, db, standin, count: int = 50) -> tuple[list[float], dict]:
    console, contact_id = await accepted_contact(client, db, "+15554449999", "Healthy")
    steps = {"record": [], "settle": []}
    timed(client.app[OUTBOX], "_record", steps["record"])
    timed(client.app[OUTBOX], "_sent", steps["settle"])  # the UPDATE, the pull-forward, the frame
    took = []
    for i in range(count):
        words = f"healthy text {i}"
        started = time.monotonic()
        await console.send(type="message", contact_id=contact_id, text=words)
        await wait_for(lambda: words in standin.bodies(), timeout_s=10)
        took.append((time.monotonic() - started) * 1000)
    return took, {name: round(statistics.median(ms), 2) for name, ms in steps.items()}


async def run(args) -> None:
    with tempfile.TemporaryDirectory() as tmp, servers(None, None, Path(tmp)) as urls:
        standin, _ = await start_standin()
        settings = Settings(public_url=PUBLIC_URL, database_url=urls.database_url,
                            redis_url=urls.redis_url, twilio_auth_token=standin.auth_token,
                            twilio_account_sid="AC" + "1" * 32,
                            twilio_api_base_url=standin.url, offer_timeout_s=60,
                            rules_dir=ROOT / "routing_rules", data_dir=Path(tmp) / "data",
                            log_format="console", log_level="error")
        configure_logging(settings.log_format, settings.log_level)
        db = await asyncpg.connect(urls.database_url)
        async with TestClient(TestServer(create_app(settings))) as client:
            for n, seconds in enumerate(args.outages):
                print(await outage(client, db, standin, seconds, args.messages, args.contacts,
                                   n), flush=True)
            if not args.healthy:
                return
            took, steps = await healthy_latency(client, db, standin)
            print({"outbox_steps_ms_p50": steps,
                   "healthy_ms_p50": round(statistics.median(took), 1),
                   "healthy_ms_p95": round(sorted(took)[int(len(took) * 0.95) - 1], 1),
                   "healthy_ms_max": round(max(took), 1)})
        await db.close()
        await standin.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outages", default="3,10,30",
                        type=lambda raw: [float(x) for x in raw.split(",") if x])
    parser.add_argument("--messages", type=int, default=3, help="texts per contact")
    parser.add_argument("--contacts", type=int, default=1, help="contacts held by agents")
    parser.add_argument("--no-healthy", dest="healthy", action="store_false",
                        help="skip the healthy-Twilio latency run")
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
