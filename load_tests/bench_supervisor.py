"""Supervisor view benchmark: what one read of /api/supervisor costs with many agents.

    .venv/bin/python load_tests/bench_supervisor.py [--agents 300] [--waiting 50] [--runs 30]
                                                    [--held 0]

Starts embedded PostgreSQL and Valkey in a temporary folder (or uses DATABASE_URL and
REDIS_URL, whose data it changes: use scratch servers), runs the service in-process, adds
--agents agents (each registered, with an open console, available), sends --waiting customers
asking for a person through the signed SMS webhook (the free agents get offers), has --held
of them accepted (held contacts, listed under their agents; outbound texts go to the local
Twilio stand-in), then reads /api/supervisor --runs times, and times the snapshot with and
without the held contacts (what the page reads against what the gauges read). Prints the
median and slowest HTTP time of a read, and the Redis time of the state script for all
agents and for one agent (INFO commandstats: the time Valkey is busy with it, during which it
serves nobody else). Results go in load_tests/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio as redis  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from service.agents.desk import add_agent  # noqa: E402
from service.agents.queues import PREFIX  # noqa: E402
from service.app import create_app  # noqa: E402
from service.appkeys import ACTIVITY, HANDOFF, PG, ROUTER  # noqa: E402
from service.infra.embedded import servers  # noqa: E402
from service.infra.tokens import create_token  # noqa: E402
from service.reporting.supervisor import snapshot  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.conftest import AUTH_TOKEN, PUBLIC_URL  # noqa: E402 (what the driver signs with)
from tests.twilio_driver import text  # noqa: E402
from tests.twilio_standin import start_standin  # noqa: E402


async def staff(client: TestClient, agents: int) -> list[str]:
    """`agents` agents with an open console each, available."""
    app = client.app
    async with app[PG].acquire() as conn:
        for i in range(agents):
            await add_agent(conn, f"Agent {i:04d}", ["care"])
        rows = await conn.fetch("SELECT id, name, skills, capacity FROM agents")
    ids = []
    for row in rows:
        agent = {"id": str(row["id"]), "name": row["name"], "skills": list(row["skills"]),
                 "capacity": json.loads(row["capacity"])}
        await app[ROUTER].register_agent(agent)
        await app[ACTIVITY].connected(agent["id"])
        await app[ROUTER].set_presence(agent["id"], "available")
        ids.append(agent["id"])
    return ids


async def accept_offers(client: TestClient, held: int) -> int:
    """The agents offered a contact accept it, up to `held`; how many they hold."""
    app = client.app
    [flat] = await app[ROUTER].batcher.execute(("HGETALL", PREFIX + "offered"))
    offers = list(zip(flat[::2], flat[1::2]))[:held]
    for contact, agent in offers:
        await app[HANDOFF].accept({"id": agent.decode(), "name": "Agent"}, contact.decode())
    return len(offers)


async def snapshot_ms(client: TestClient, runs: int, with_contacts: bool) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await snapshot(client.app, with_contacts=with_contacts)
        times.append((time.perf_counter() - started) * 1000)
    return times


async def script_us(store: redis.Redis, run) -> float:
    """Valkey's own time for the scripts `run` sends, per call (µs)."""
    await store.config_resetstat()
    await run()
    stats = await store.info("commandstats")
    return stats["cmdstat_evalsha"]["usec_per_call"]


async def bench(args: argparse.Namespace, database_url: str, redis_url: str, data: Path) -> None:
    standin, _ = await start_standin()
    settings = Settings(public_url=PUBLIC_URL, database_url=database_url, redis_url=redis_url,
                        twilio_auth_token=AUTH_TOKEN, rules_dir=ROOT / "routing_rules",
                        twilio_api_base_url=standin.url, twilio_account_sid="AC" + "1" * 32,
                        data_dir=data, log_format="console", log_level="warning")
    store = redis.from_url(redis_url)
    await store.flushdb()
    async with TestClient(TestServer(create_app(settings))) as client:
        ids = await staff(client, args.agents)
        for i in range(args.waiting):
            await text(client, f"+1555557{i:04d}", "I want to talk to a human")
        held = await accept_offers(client, args.held)
        async with client.app[PG].acquire() as conn:
            token = await create_token(conn, "supervisor", "bench")
        headers = {"Authorization": f"Bearer {token}"}
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            response = await client.get("/api/supervisor", headers=headers)
            assert response.status == 200, await response.text()
            await response.read()
            times.append((time.perf_counter() - started) * 1000)
        page = await snapshot_ms(client, args.runs, with_contacts=True)
        gauges = await snapshot_ms(client, args.runs, with_contacts=False)
        activity = client.app[ACTIVITY]
        every = [await script_us(store, lambda: activity.observe(ids)) for _ in range(args.runs)]
        one = [await script_us(store, lambda: activity.observe(ids[:1]))
               for _ in range(args.runs)]
    await store.aclose()
    await standin.stop()
    print(f"agents {args.agents}, contacts asking {args.waiting}, held {held}, "
          f"reads {args.runs}")
    print(f"GET /api/supervisor: median {statistics.median(times):.1f} ms, "
          f"slowest {max(times):.1f} ms")
    print(f"snapshot with the held contacts (the page): median {statistics.median(page):.1f} "
          f"ms, slowest {max(page):.1f} ms; without (the gauges): median "
          f"{statistics.median(gauges):.1f} ms, slowest {max(gauges):.1f} ms")
    print(f"state script, all agents: median {statistics.median(every) / 1000:.2f} ms, "
          f"slowest {max(every) / 1000:.2f} ms of Valkey time")
    print(f"state script, one agent (after a console frame): median "
          f"{statistics.median(one):.0f} µs, slowest {max(one):.0f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=300)
    parser.add_argument("--waiting", type=int, default=50)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--held", type=int, default=0, help="offers accepted (held contacts)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-supervisor-") as folder, \
            servers(os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL"),
                    Path(folder) / "servers") as urls:
        asyncio.run(bench(args, urls.database_url, urls.redis_url, Path(folder) / "data"))


if __name__ == "__main__":
    main()
