"""`switchboard simulate` on a large event log: how long a replay of past traffic takes.

    .venv/bin/python load_tests/bench_simulate.py [--events 1000000] [--days 30]

Writes the same synthetic log as bench_reports.py (customers' first words are the example
deployment's own catalog examples, so the classifier does real work), then replays one day
and the whole log through routing_rules/, timing each phase: reading the contacts (one row
each from contact_replay), the replay itself (understanding + routing, one core) and the
comparison. Then reads the whole log the reference way, from the raw events, and checks that
its report is the same. Prints the load average and the peak memory of the process; results
go in load_tests/REPORTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "load_tests"))

import asyncpg  # noqa: E402
from bench_reports import database, examples_by_type, fill  # noqa: E402

from service.infra.migrate import migrate  # noqa: E402
from service.reporting import simulate  # noqa: E402
from service.reporting.reports import Window  # noqa: E402
from service.rules.loader import load_rules  # noqa: E402


async def bench(url: str, events: int, days: int) -> None:
    rules = load_rules(ROOT / "routing_rules")
    start = datetime(2024, 4, 1, tzinfo=timezone.utc)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        print(f"writing {events:,}+ events over {days} days (COPY)")
        began = time.perf_counter()
        await fill(conn, events, days, examples_by_type(rules.catalog), start)
        print(f"  written in {time.perf_counter() - began:.1f} s; load average "
              f"{_load()}")
        await conn.execute("ANALYZE contact_facts; ANALYZE contact_replay")
        windows = [("one day", Window(start + timedelta(days=10), start + timedelta(days=11))),
                   (f"whole log ({days} days)", Window(start, start + timedelta(days=days + 30)))]
        print(f"\n{'window':<24}{'contacts':>10}{'read':>9}{'replay':>9}{'compare':>9}"
              f"{'total':>9}{'per contact':>13}")
        for name, window in windows:
            report = await run(conn, rules, name, window, simulate.load_past)
        began = time.perf_counter()
        reference = await run(conn, rules, "  from raw events", window,
                              simulate.load_past_from_events)
        assert report == reference, "the report differs from the raw-event reference"
        print(f"\nthe same report from the raw events ({time.perf_counter() - began:.1f} s); "
              f"load average {_load()}")
    finally:
        await conn.close()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of this process: {peak_mib:,.0f} MiB")


async def run(conn: asyncpg.Connection, rules, name: str, window: Window, load) -> dict:
    began = _clocks()
    contacts, earlier = await load(conn, window, simulate.longest_repeat_window_h(rules))
    read = _clocks()
    replayed = simulate.replay(rules, contacts, earlier)
    replay = _clocks()
    report = simulate.compare(window, contacts, replayed, None, rules, None)
    done = _clocks()
    per_contact_ms = (replay[0] - read[0]) / max(len(replayed), 1) * 1000
    print(f"{name:<24}{len(contacts):>10,}{read[0] - began[0]:>8.1f}s"
          f"{replay[0] - read[0]:>8.1f}s{done[0] - replay[0]:>8.1f}s{done[0] - began[0]:>8.1f}s"
          f"{per_contact_ms:>10.4f} ms")
    print(f"{'  (CPU of this process)':<34}{read[1] - began[1]:>8.1f}s"
          f"{replay[1] - read[1]:>8.1f}s{done[1] - replay[1]:>8.1f}s{done[1] - began[1]:>8.1f}s")
    assert report["replayed"] == len(replayed)
    return report


def _clocks() -> tuple[float, float]:
    """Wall-clock time, and the CPU time of this process (what a loaded machine changes less:
    the read's share in PostgreSQL is not in it)."""
    return time.perf_counter(), time.process_time()


def _load() -> str:
    return ", ".join(f"{figure:.1f}" for figure in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    with database() as url:
        asyncio.run(bench(url, args.events, args.days))


if __name__ == "__main__":
    main()
