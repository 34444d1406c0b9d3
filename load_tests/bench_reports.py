"""Report query benchmark: a large synthetic event log, then the time of each report query.

    .venv/bin/python load_tests/bench_reports.py [--events 1000000] [--days 30] [--runs 5]
        [--keep DIR] [--warm [--warm-segments customer.tier]] [--drop-segments] [--prepare]
        [--only TEXT]

Starts an embedded PostgreSQL in a temporary folder (or uses DATABASE_URL, in a new database
it drops afterwards), applies the migrations, writes at least --events contact events with
COPY, ANALYZEs, then times the report queries of service/reports.py: the summary (the whole
log, then one day of it), the touchpoint matrix, journeys with drop-outs, and the trend; then,
with every customer given a tier in the directory, the summary and matrix of one tier and
the summary, matrix, journeys, trend (from midnight, by day) and candidates split by tier.
Before them it times the first summary, matrix and journeys over the whole log, and then the
first of each split by tier, which compute and keep the day roll-ups (by tier, for the
splits) the later runs read (service/reporting/rollups.py).
With --warm the roll-ups are first dropped and computed by the service's background pass
(`rollups.warm`, timed), with --warm-segments also those by the listed attributes (as
SWITCHBOARD_REPORT_WARM_SEGMENTS does), so the first reports read them; --drop-segments
deletes the roll-ups by segment a kept log has, so that its first splits compute them again;
--prepare first computes those of each split as the background preparation does (what a
client sending `Prefer: respond-async` waits for), timed.
Prints the median and the fastest of --runs runs of each; results go in load_tests/REPORTS.md.
With --keep DIR the embedded server's data stays in DIR and its database is kept: a later run
with the same DIR and --events applies any new migration and times the queries again without
writing the log again (10M events take 10 to 25 minutes to write).

The log looks like real traffic: customers who come back on other channels within and outside
their type's repeat window, self-service that resolves, fails or is left, escalations that are
accepted, abandoned or still waiting, agents' wrap-up corrections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from service import settings  # noqa: E402
from service.infra.migrate import migrate  # noqa: E402
from service.reporting import candidates, experiments, reports, rollups  # noqa: E402
from service.reporting.reports import ReportRules, Window  # noqa: E402
from service.rules.loader import load_rules  # noqa: E402

COLUMNS = ("id", "occurred_at", "kind", "contact_id", "customer_id", "channel", "contact_type",
           "route_path", "reason", "data")
CHANNELS = (("sms", 40), ("voice", 40), ("chat", 20))
HANDLING = (("resolved", 45), ("failed", 20), ("asked_for_agent", 8), ("routed_to_agent", 7),
            ("left", 15), ("unclassified", 5))
REASONS = {"failed": "self_service_failed", "asked_for_agent": "requested_agent",
           "routed_to_agent": "repeat_contact", "unclassified": "low_confidence"}
COMEBACK = 0.3  # a customer's next contact: same type, soon (often another channel)
UNCLEAR = ("hello?", "blorp", "12345", "is anyone there", "what's the weather like")


EXPERIMENT = "bench_wording"


def examples_by_type(catalog) -> dict[str, list[str]]:
    examples: dict[str, list[str]] = {}
    for text, contact_type in catalog.training:
        examples.setdefault(contact_type, []).append(text)
    return examples


def pick(rng: random.Random, table) -> str:
    names, weights = zip(*table)
    return rng.choices(names, weights)[0]


class Contact:
    """The events of one synthetic contact, appended as rows ready for COPY."""

    def __init__(self, rows: list[tuple], customer: uuid.UUID, channel: str, at: datetime):
        self.rows, self.customer, self.channel, self.now = rows, customer, channel, at
        self.id, self.type, self.route = uuid.uuid4(), None, None
        self.event("contact_started", 0, address="+15550000000")

    def event(self, kind: str, gap_s: float, reason: str | None = None, **data) -> None:
        self.now += timedelta(seconds=gap_s)
        self.rows.append((uuid.uuid4(), self.now, kind, self.id, self.customer, self.channel,
                          self.type, self.route, reason, json.dumps(data)))

    def play(self, rng: random.Random, handling: str, contact_type: str, said: str) -> None:
        self.event("received", 1, text=said, input="message")
        if handling == "unclassified":
            self.event("classification_missed", 1, reason="low_confidence", misses=1)
            self.event("received", 20, text=said, input="message")
            self.event("classification_missed", 1, reason="low_confidence", misses=2)
            return self.escalate(rng, "low_confidence", "general")
        self.type, self.route = contact_type, f"root > {contact_type[:6]}"
        self.event("classified", 0.1, confidence=0.9, via="classifier")
        if self.id.int % 4 == 0:  # a quarter of the contacts in a two-arm experiment
            self.event("experiment_assigned", 0, experiment=EXPERIMENT,
                       arm=("catalog", "short")[self.id.int % 8 // 4])
        to_agent = handling == "routed_to_agent"
        self.event("routed", 0, queue="orders", self_service=not to_agent, reason=None,
                   route_path=self.route)
        if to_agent:
            return self.escalate(rng, "repeat_contact", "orders")
        self.event("self_service_started", 0, step="answer")
        getattr(self, handling)(rng)

    def resolved(self, rng) -> None:
        self.event("received", rng.uniform(10, 120), text="yes", input="message")
        self.event("self_service_resolved", 0, step="answer")
        self.event("ended", 0, outcome="self_service_resolved")

    def failed(self, rng) -> None:
        self.event("received", rng.uniform(10, 120), text="no", input="message")
        self.event("self_service_failed", 0, step="answer")
        self.escalate(rng, "self_service_failed", "orders")

    def asked_for_agent(self, rng) -> None:
        self.event("received", rng.uniform(5, 60), text="agent", input="message")
        self.escalate(rng, "requested_agent", "orders")

    def left(self, rng) -> None:
        outcome = {"voice": "hung_up_in_ivr", "sms": "idle_timeout", "chat": "customer_left"}
        self.event("ended", rng.uniform(20, 1800), outcome=outcome[self.channel])

    def escalate(self, rng, reason: str, queue: str) -> None:
        self.event("escalated", 0, reason=reason, queue=queue, priority=5)
        self.event("queued", 0, queue=queue, position=rng.randint(1, 9))
        fate = rng.random()
        if fate < 0.7:
            self.event("agent_accepted", rng.expovariate(1 / 45), agent_id="a1")
            self.event("wrap_up", rng.uniform(60, 900), resolved=fate < 0.6,
                       corrected_contact_type=None, classified_as=self.type)
            self.event("ended", 0, outcome="agent_resolved" if fate < 0.6 else "agent_unresolved")
        elif fate < 0.95:
            self.event("ended", rng.expovariate(1 / 120), outcome="abandoned_in_queue")


def customer_rows(rng: random.Random, examples: dict[str, list[str]], start: datetime,
                  days: int) -> list[tuple]:
    """One customer's contacts: a first one, then maybe come-backs and later unrelated ones."""
    rows: list[tuple] = []
    customer = uuid.uuid4()
    at = start + timedelta(seconds=rng.uniform(0, days * 86400))
    rows.append((uuid.uuid4(), at, "customer_created", None, customer, "sms", None, None, None,
                 '{"identity_kind": "phone", "identity_value": "+15550000000"}'))
    types = sorted(examples)
    contact_type = rng.choice(types)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        handling = pick(rng, HANDLING)
        said = rng.choice(UNCLEAR if handling == "unclassified" else examples[contact_type])
        Contact(rows, customer, pick(rng, CHANNELS), at).play(rng, handling, contact_type, said)
        if rng.random() < COMEBACK:
            at += timedelta(hours=rng.uniform(0.5, 96))  # some outside the 72 h window
        else:
            at += timedelta(days=rng.uniform(1, 20))
            contact_type = rng.choice(types)
    return rows


async def fill(conn: asyncpg.Connection, events: int, days: int,
               examples: dict[str, list[str]], start: datetime) -> int:
    """At least `events` events; customers' first words are the catalog's own examples."""
    rng, written, batch = random.Random(5), 0, []
    while written < events:
        batch += customer_rows(rng, examples, start, days)
        if len(batch) >= 50_000 or written + len(batch) >= events:
            await conn.copy_records_to_table("contact_events", records=batch, columns=COLUMNS)
            written += len(batch)
            if written % 500_000 < len(batch) or written >= events:
                print(f"  {written:,} events, {time.strftime('%H:%M:%S')}", flush=True)
            batch = []
    await conn.execute("ANALYZE contact_events")
    return written


async def timed(runs: int, query) -> tuple[float, float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        await query()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), min(seconds)


async def bench(url: str, events: int, days: int, runs: int, warm: bool = False,
                only: str | None = None, warm_segments: tuple[str, ...] = (),
                drop_segments: bool = False, prepare: bool = False) -> None:
    catalog = load_rules(ROOT / "routing_rules", with_classifier=False).catalog
    rules = ReportRules.from_catalog(catalog)
    start = datetime(2024, 4, 1, tzinfo=timezone.utc)
    conn = await asyncpg.connect(url)
    try:
        began = time.perf_counter()
        await migrate(conn)
        print(f"  migrations in {time.perf_counter() - began:.1f} s")
        if await conn.fetchval("SELECT EXISTS (SELECT FROM contact_events)"):
            print("  the kept log is already written")
            await conn.execute("ANALYZE")
        else:
            print(f"writing {events:,}+ events over {days} days (COPY)")
            began = time.perf_counter()
            written = await fill(conn, events, days, examples_by_type(catalog), start)
            print(f"  {written:,} events in {time.perf_counter() - began:.1f} s")
        contacts = await conn.fetchval(
            "SELECT count(*) FROM contact_events WHERE kind = 'contact_started'")
        print(f"  {contacts:,} contacts")
        first, last = await conn.fetchrow(
            "SELECT min(occurred_at), max(occurred_at) FROM contact_events")
        whole = Window(first, last + timedelta(seconds=1))
        day = Window(start + timedelta(days=10), start + timedelta(days=11))
        whole_days = on_midnights(whole)
        cases = [("summary, whole log", lambda: reports.summary(conn, whole, rules)),
                 ("summary, one day", lambda: reports.summary(conn, day, rules)),
                 ("matrix, whole log", lambda: reports.matrix(conn, whole, rules)),
                 ("journeys + drop-outs, whole log",
                  lambda: reports.journeys(conn, whole, rules)),
                 ("trend by day, whole log", lambda: reports.trend(conn, whole, rules)),
                 ("summary from raw events (reference)", lambda: reports.summary(
                     conn, whole, rules, queries=reports.FROM_EVENTS)),
                 ("summary, tier gold, whole log", lambda: reports.summary(
                     conn, whole, rules.with_segment("tier", "gold"))),
                 ("summary split by tier, whole log", lambda: reports.split(
                     reports.summary, conn, whole, rules, "tier")),
                 ("matrix split by tier, whole log", lambda: reports.split(
                     reports.matrix, conn, whole, rules, "tier")),
                 ("matrix, tier gold, whole log", lambda: reports.matrix(
                     conn, whole, rules.with_segment("tier", "gold"))),
                 ("journeys split by tier, whole log", lambda: reports.split(
                     reports.journeys, conn, whole, rules, "tier")),
                 ("summary split by tier, one day", lambda: reports.split(
                     reports.summary, conn, day, rules, "tier")),
                 ("trend split by tier, whole log", lambda: reports.split(
                     reports.trend, conn, whole_days, rules, "tier")),
                 ("candidates split by tier, whole log", lambda: reports.split(
                     candidates.candidates, conn, whole, rules, "tier")),
                 ("candidates, whole log", lambda: candidates.candidates(conn, whole, rules)),
                 ("experiment arms, whole log", lambda: experiments.arm_counts(
                     conn, whole, rules, [EXPERIMENT]))]
        await give_customers_tiers(conn)
        await conn.execute("ANALYZE contact_facts")
        await time_computing_the_rollups(conn, whole, rules, warm, warm_segments, drop_segments,
                                         prepare)
        report = await reports.summary(conn, whole, rules)
        reference = await reports.summary(conn, whole, rules, queries=reports.FROM_EVENTS)
        assert report["totals"] == reference["totals"], "served and reference figures differ"
        print("  totals:", json.dumps({k: report["totals"][k] for k in (
            "contacts", "self_service_resolved", "false_deflections", "escalated", "abandoned")}))
        print(f"\n{'query':<34}{'median':>10}{'fastest':>10}   ({runs} runs)")
        for name, query in cases:
            if only and only not in name:
                continue
            median, fastest = await timed(runs, query)
            print(f"{name:<34}{median * 1000:>8.0f} ms{fastest * 1000:>7.0f} ms")
    finally:
        await conn.close()


def on_midnights(window: Window) -> Window:
    """The window widened to whole UTC days (a trend from midnight reads the roll-ups)."""
    first = datetime.combine(window.start.astimezone(timezone.utc).date(), datetime.min.time(),
                             tzinfo=timezone.utc)
    return Window(first, first + timedelta(days=(window.end - first).days + 1))


async def time_computing_the_rollups(conn: asyncpg.Connection, whole: Window,
                                     rules: ReportRules, warm: bool = False,
                                     warm_segments: tuple[str, ...] = (),
                                     drop_segments: bool = False, prepare: bool = False) -> None:
    """The first reports over the whole log compute and keep its days' roll-ups (once per
    set of rules; then only days whose facts change are computed again)."""
    if drop_segments:  # a kept log: time the first reports by tier again
        await conn.execute("DELETE FROM report_rollups WHERE segment_by IS NOT NULL")
    kept = await conn.fetchval("SELECT count(*) FROM report_rollups")
    print(f"  day roll-ups kept before the first reports: {kept}")
    if warm:  # what the service's background pass does before anyone asks
        await conn.execute("DELETE FROM report_rollups")
        days = [(whole.start + n * rollups.DAY).date()
                for n in range((whole.end - whole.start).days + 1)]
        began = time.perf_counter()
        computed = await rollups.warm(conn, rules, days, warm_segments)
        print(f"  warm pass from no roll-ups (segments: {', '.join(warm_segments) or 'none'}):"
              f" {computed} day roll-ups in {time.perf_counter() - began:.1f} s")
    for name, report in (("summary", reports.summary), ("matrix", reports.matrix),
                         ("journeys", reports.journeys)):
        began = time.perf_counter()
        await report(conn, whole, rules)
        print(f"  first {name}, whole log: {(time.perf_counter() - began) * 1000:.0f} ms")
    if prepare:
        await time_preparing(conn, whole, rules)
    for name, report in (("summary", reports.summary), ("matrix", reports.matrix),
                         ("journeys", reports.journeys), ("trend", reports.trend),
                         ("candidates", candidates.candidates)):  # the roll-ups by tier
        began = time.perf_counter()
        await reports.split(report, conn, on_midnights(whole) if report is reports.trend
                            else whole, rules, "tier")
        print(f"  first {name} split by tier, whole log: "
              f"{(time.perf_counter() - began) * 1000:.0f} ms")
    print("  day roll-ups kept:", await conn.fetchval("SELECT count(*) FROM report_rollups"))


async def time_preparing(conn: asyncpg.Connection, whole: Window, rules: ReportRules) -> None:
    """What a client preferring an asynchronous answer waits for: the roll-ups by tier each
    split reads, computed as the service's background preparation does (rollups.prepare, a
    few days per statement), one report after the other; and how long a progress check takes."""
    days = rollups.kept_days(whole)
    for name in ("summary", "matrix", "journeys", "trend", "candidates"):
        names = rollups.read_by(name, on_midnights(whole), split=True)
        began = time.perf_counter()
        progress = await rollups.progress(conn, rules, names, whole, "tier")
        checked = time.perf_counter() - began
        began = time.perf_counter()
        await rollups.prepare(conn, rules, names, days, "tier")
        print(f"  prepared the {name} split by tier ({progress.days_done} of "
              f"{progress.days_to_do} days ready, checked in {checked * 1000:.0f} ms): "
              f"{(time.perf_counter() - began) * 1000:.0f} ms")


async def give_customers_tiers(conn: asyncpg.Connection) -> None:
    """Every customer in the directory with a tier (a tenth without), for the segments."""
    await conn.execute("""
        INSERT INTO customers (id, attributes)
        SELECT customer_id, CASE WHEN abs(hashtext(customer_id::text)) % 10 = 0 THEN '{}'::jsonb
            ELSE jsonb_build_object('tier', (ARRAY['standard', 'silver', 'gold'])[
                1 + abs(hashtext(customer_id::text)) % 3]) END
        FROM (SELECT DISTINCT customer_id FROM contact_events) c
        ON CONFLICT (id) DO UPDATE SET attributes = EXCLUDED.attributes""")
    await conn.execute("ANALYZE customers")


@contextlib.contextmanager
def database(keep: Path | None, events: int) -> Iterator[str]:
    """A fresh database on DATABASE_URL's server or an embedded one; with `keep`, a kept one."""
    import os
    from urllib.parse import urlsplit, urlunsplit

    from service.infra.embedded import embedded_postgres

    with contextlib.ExitStack() as stack:
        folder = keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        admin = os.environ.get("DATABASE_URL") or stack.enter_context(embedded_postgres(folder))
        if keep:
            name = f"switchboard_bench_{events}"
            asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"', missing_only=name))
        else:
            name = f"switchboard_bench_{uuid.uuid4().hex[:8]}"
            asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
        try:
            yield urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
        finally:
            if not keep:
                asyncio.run(_admin(admin, f'DROP DATABASE "{name}" WITH (FORCE)'))


async def _admin(url: str, sql: str, missing_only: str | None = None) -> None:
    conn = await asyncpg.connect(url)
    try:
        if missing_only and await conn.fetchval(
                "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", missing_only):
            return
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the embedded server's data and the log here, to time again")
    parser.add_argument("--warm", action="store_true",
                        help="first compute the roll-ups as the service's background pass "
                             "does (rollups.warm), timed, instead of by the first reports")
    parser.add_argument("--warm-segments", default=(), metavar="customer.NAME,...",
                        type=settings.PARSERS["report_warm_segments"],
                        help="with --warm, also warm the roll-ups by these customer "
                             "attributes, as SWITCHBOARD_REPORT_WARM_SEGMENTS does")
    parser.add_argument("--drop-segments", action="store_true",
                        help="first delete the kept roll-ups by segment, so that on a kept log "
                             "the first splits by tier compute theirs again")
    parser.add_argument("--prepare", action="store_true",
                        help="compute the roll-ups by tier of each split first as the "
                             "background preparation does (Prefer: respond-async), timed")
    parser.add_argument("--only", default=None, metavar="TEXT",
                        help="time only the queries whose name contains TEXT (e.g. tier)")
    args = parser.parse_args()
    with database(args.keep, args.events) as url:
        asyncio.run(bench(url, args.events, args.days, args.runs, args.warm, args.only,
                          args.warm_segments, args.drop_segments, args.prepare))


if __name__ == "__main__":
    main()
