"""How long erasing one customer takes on a large event log (service/conversations/erasure.py).

    .venv/bin/python load_tests/bench_erasure.py [--events 1000000] [--customers 10] [--keep DIR]

Writes the synthetic log of bench_reports.py (at least --events events over 30 days, every
customer with a phone address), gives --customers random customers of it a directory entry and
a few Redis keys, then times, per customer, a dry run and the erasure itself against embedded
PostgreSQL and Valkey, and prints the plan of the statement that finds the customer's events:
by customer, by contact and, for a failed or muted turn's events that carry only the address,
among the events with no customer id, all through indexes, so the time should not grow with
the log. Prints the median and the slowest of each; results go in load_tests/REPORTS.md
("Erasing a customer").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import redis.asyncio as redis  # noqa: E402
from bench_reports import database, examples_by_type, fill  # noqa: E402

from service.conversations import erasure  # noqa: E402
from service.infra.embedded import embedded_valkey  # noqa: E402
from service.infra.migrate import migrate  # noqa: E402
from service.rules.loader import load_rules  # noqa: E402


async def directory_entries(conn: asyncpg.Connection, client: redis.Redis,
                            customers: int) -> list[str]:
    """Random customers of the log, each given a row, a phone and the keys a texter leaves."""
    chosen = [str(r["customer_id"]) for r in await conn.fetch(
        "SELECT DISTINCT customer_id FROM contact_facts WHERE customer_id IS NOT NULL "
        "ORDER BY customer_id LIMIT $1", customers)]
    for number, customer in enumerate(chosen):
        phone = f"+1555{number:07d}"
        await conn.execute("INSERT INTO customers (id, display_name) VALUES ($1, 'Ana Silva') "
                           "ON CONFLICT DO NOTHING", customer)
        await conn.execute("INSERT INTO customer_identities (kind, value, customer_id) "
                           "VALUES ('phone', $1, $2) ON CONFLICT DO NOTHING", phone, customer)
        await client.set(f"sb:{{phone:{phone}}}:ident", "{}")
        await client.hset(f"sb:{{phone:{phone}}}:contacts", "c", "{}")
        await client.hset(f"sb:{{cust:{customer}}}:contacts", "c", "{}")
    return chosen


async def bench(url: str, redis_url: str, events: int, customers: int) -> None:
    conn = await asyncpg.connect(url)
    client = redis.from_url(redis_url)
    try:
        await migrate(conn)
        if not await conn.fetchval("SELECT EXISTS (SELECT FROM contact_events)"):
            catalog = load_rules(ROOT / "routing_rules", with_classifier=False).catalog
            print(f"writing {events:,}+ events (COPY)")
            await fill(conn, events, 30, examples_by_type(catalog),
                       datetime(2024, 4, 1, tzinfo=timezone.utc))
        total = await conn.fetchval("SELECT count(*) FROM contact_events")
        chosen = await directory_entries(conn, client, customers)
        async with asyncpg.create_pool(url, min_size=1, max_size=2) as pool:
            dry, real = [], []
            for customer in chosen:
                began = time.perf_counter()
                counted = await erasure.erase(pool, client, customer, by="bench", dry_run=True)
                dry.append(time.perf_counter() - began)
                began = time.perf_counter()
                done = await erasure.erase(pool, client, customer, by="bench")
                real.append(time.perf_counter() - began)
                assert done.counts == counted.counts, (done.counts, counted.counts)
        print(f"log: {total:,} events; {len(chosen)} customers erased")
        plan = await conn.fetch(f"EXPLAIN SELECT count(*) FROM contact_events "
                                f"WHERE {erasure.EVENTS_OF}", chosen[0], [], ["+15550000000"],
                                ["+15550000000"])
        print("  plan of the events' statement:", "; ".join(
            line for r in plan if "Scan" in (line := r[0].strip().lstrip("-> "))))
        for name, seconds in (("dry run", dry), ("erasure", real)):
            print(f"  {name:8} median {statistics.median(seconds) * 1000:7.0f} ms, "
                  f"slowest {max(seconds) * 1000:7.0f} ms")
    finally:
        await conn.close()
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=10)
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the embedded server's data and the log here, to time again")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        redis_url = stack.enter_context(embedded_valkey(folder))
        url = stack.enter_context(database(args.keep, args.events))
        asyncio.run(bench(url, redis_url, args.events, args.customers))


if __name__ == "__main__":
    main()
