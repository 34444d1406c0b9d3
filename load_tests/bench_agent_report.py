"""Agent report benchmark: the agent performance report (service/reporting/agent_report.py)
over a large event log, with its query plan.

    .venv/bin/python load_tests/bench_agent_report.py [--events 1000000] [--days 30]
        [--agents 40] [--runs 5] [--keep DIR]

Writes bench_reports.py's synthetic log (whose own escalations are accepted by one agent and
wrapped up, with no offers, declines, expiries, transfers or survey answers) with the agent part
of each escalated contact played by --agents agents of the directory: of the 70% accepted, an
offer to another agent first declined (20%) or left to expire (10%), the offer and accept, a
cold transfer to a colleague (5%), the wrap-up (10% re-typed), a CSAT answer (30%); and each
agent's working days as agent_status_changed events (`shifts`: time in status). ANALYZEs,
prints the plans of the report's two queries over one day (the partitions and indexes they
read), then the median
and fastest of --runs runs over one hour, one day, one week and the whole log. Results go in
load_tests/REPORTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "load_tests"))

import asyncpg  # noqa: E402
import bench_reports  # noqa: E402
from bench_reports import database, examples_by_type, fill, timed  # noqa: E402

from service.infra.migrate import migrate  # noqa: E402
from service.reporting import agent_report  # noqa: E402
from service.reporting.reports import Window  # noqa: E402
from service.rules.loader import load_rules  # noqa: E402


class AgentContact(bench_reports.Contact):
    """bench_reports' contact, its agent part played by agents of the directory: offers,
    declines, expiries, accepts, transfers, wrap-ups and CSAT answers."""
    agents: list[str] = []

    def escalate(self, rng, reason: str, queue: str) -> None:
        self.event("escalated", 0, reason=reason, queue=queue, priority=5)
        self.event("queued", 0, queue=queue, position=rng.randint(1, 9))
        fate = rng.random()
        if fate >= 0.7:
            if fate < 0.95:
                self.event("ended", rng.expovariate(1 / 120), outcome="abandoned_in_queue")
            return
        first, agent = rng.sample(self.agents, 2)
        refusal = rng.random()
        if refusal < 0.3:  # another agent is offered it first and declines or misses it
            self.event("offered", rng.expovariate(1 / 20), queue=queue, agent_id=first)
            self.event("offer_declined" if refusal < 0.2 else "offer_expired",
                       rng.uniform(2, 30), queue=queue, agent_id=first)
        self.event("offered", rng.expovariate(1 / 20), queue=queue, agent_id=agent)
        self.event("agent_accepted", rng.uniform(1, 15), queue=queue, agent_id=agent,
                   waited_s=30)
        if rng.random() < 0.05:  # handed on cold to a colleague, who wraps it up
            self.event("transferred", rng.uniform(30, 300), reason="agent_transfer",
                       from_agent=agent, to_queue=queue, to_agent=None, mode="cold", note="")
            agent = rng.choice([a for a in self.agents if a != agent])
            self.event("offered", 5, queue=queue, agent_id=agent)
            self.event("agent_accepted", rng.uniform(1, 15), queue=queue, agent_id=agent,
                       waited_s=5)
        retyped = rng.random() < 0.1
        self.event("wrap_up", rng.uniform(60, 900), agent_id=agent, resolved=fate < 0.6,
                   corrected_contact_type="cancel_order" if retyped else None,
                   classified_as=self.type, note="")
        self.event("ended", 0, outcome="agent_resolved" if fate < 0.6 else "agent_unresolved")
        if rng.random() < 0.3:
            self.survey_event("survey_sent", 1, {"kind": "csat", "after": "agent"})
            self.survey_event("survey_answered", rng.uniform(10, 600), {
                "kind": "csat", "score": rng.randint(1, 5), "comment": "", "input": "message"})

    def survey_event(self, kind: str, gap_s: float, data: dict) -> None:
        """A survey event: its data has a `kind` of its own, which event() takes as the
        event's."""
        self.event(kind, gap_s)
        self.rows[-1] = (*self.rows[-1][:-1], json.dumps(data))


REASONS = ("break", "lunch", "meeting", "training", "other")


def shifts(agents: list[str], start, days: int, rng) -> list[tuple]:
    """Each agent's working days as agent_status_changed rows (id, occurred_at, kind, data):
    signed in about 8 hours from about 08:00, alternating available and busy every few
    minutes, two breaks and a lunch (now and then a meeting or training), then offline."""
    import uuid

    rows = []
    for agent in agents:
        for day in range(days):
            at = start + timedelta(days=day, hours=8, minutes=rng.uniform(-30, 30))
            end = at + timedelta(hours=8)
            status, reason, since = "offline", None, None
            pauses = sorted(rng.uniform(0, 8 * 3600) for _ in range(3))

            def change(to: str, why: str | None) -> None:
                nonlocal status, reason, since
                seconds = None if since is None else round((at - since).total_seconds(), 3)
                rows.append((uuid.uuid4(), at, "agent_status_changed", json.dumps({
                    "agent_id": agent, "from": status if since else None, "to": to,
                    "from_reason": reason, "reason": why, "seconds": seconds})))
                status, reason, since = to, why, at

            change("away", None)
            while at < end:
                at += timedelta(seconds=rng.uniform(5, 60))
                if pauses and (at - (end - timedelta(hours=8))).total_seconds() > pauses[0]:
                    pauses.pop(0)
                    why = "lunch" if len(pauses) == 1 else rng.choice(
                        ("break", "break", "meeting", "training"))
                    change("away", why)
                    at += timedelta(minutes=45 if why == "lunch" else rng.uniform(5, 20))
                change("available", None)
                at += timedelta(seconds=rng.expovariate(1 / 120))
                change("busy", None)
                at += timedelta(seconds=rng.expovariate(1 / 300))
            change("offline", None)
    return rows


async def bench(url: str, events: int, days: int, agents: int, runs: int) -> None:
    from datetime import datetime, timezone

    catalog = load_rules(ROOT / "routing_rules", with_classifier=False).catalog
    start = datetime(2024, 4, 1, tzinfo=timezone.utc)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        if not await conn.fetchval("SELECT EXISTS (SELECT FROM contact_events)"):
            AgentContact.agents = [str(r["id"]) for r in await conn.fetch(
                """INSERT INTO agents (id, name, skills, token_hash)
                   SELECT gen_random_uuid(), 'Agent ' || lpad(n::text, 3, '0'), '{care}',
                          'bench-' || n
                   FROM generate_series(1, $1::int) n RETURNING id""", agents)]
            bench_reports.Contact = AgentContact  # customer_rows plays these
            for month in range(days // 28 + 3):  # the log's months as the service keeps them
                await conn.execute("SELECT contact_events_add_month($1)",
                                   start + timedelta(days=31 * month))
            print(f"writing {events:,}+ events over {days} days (COPY)")
            began = time.perf_counter()
            await fill(conn, events, days, examples_by_type(catalog), start)
            print(f"  written in {time.perf_counter() - began:.1f} s")
            import random
            changes = shifts(AgentContact.agents, start, days, random.Random(7))
            await conn.copy_records_to_table(
                "contact_events", records=changes,
                columns=("id", "occurred_at", "kind", "data"))
            print(f"  and {len(changes):,} agent_status_changed (shifts of {agents} agents)")
        await conn.execute("ANALYZE")
        total, agent_events = await conn.fetchrow(
            f"""SELECT count(*), count(*) FILTER (WHERE kind IN
                ({', '.join(repr(k) for k in agent_report.AGENT_EVENTS)}))
                FROM contact_events""")
        print(f"  {total:,} events, {agent_events:,} of them agent events")
        first, last = await conn.fetchrow(
            "SELECT min(occurred_at), max(occurred_at) FROM contact_events")
        day = Window(start + timedelta(days=10), start + timedelta(days=11))
        plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + agent_report.QUERY,
                                day.start, day.end)
        partial = await conn.fetchval(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = "
            "'contact_events_2024_04'::regclass AND indpred IS NOT NULL "
            "AND pg_get_indexdef(indexrelid) LIKE '%offer_expired%'")
        print(f"\nmigration 020's index on the window's partition: {partial}")
        print("plan, one day:\n" + "\n".join(r[0] for r in plan))
        plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "
                                + agent_report.STATUS_QUERY, day.start, day.end)
        print("\ntime in status, plan, one day:\n" + "\n".join(r[0] for r in plan))
        whole = Window(first, last + timedelta(seconds=1))
        report = await agent_report.agent_report(conn, whole)
        team = report["team"]
        print("\nwhole log, team:", {k: team[k] for k in ("offers", "accepted", "declined",
                                                           "expired", "handled", "transfers_out",
                                                           "csat_responses", "available_s",
                                                           "busy_s", "away_s",
                                                           "away_reasons_s")})
        cases = [("one hour", Window(day.start, day.start + timedelta(hours=1))),
                 ("one day", day), ("one week", Window(day.start, day.start + timedelta(days=7))),
                 ("whole log", whole)]
        print(f"\n{'agent report over':<20}{'median':>10}{'fastest':>10}   ({runs} runs)")
        for name, window in cases:
            median, fastest = await timed(runs, lambda w=window: agent_report.agent_report(
                conn, w))
            print(f"{name:<20}{median * 1000:>8.0f} ms{fastest * 1000:>7.0f} ms")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--agents", type=int, default=40)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the embedded server's data and the log here, to time again")
    args = parser.parse_args()
    with database(args.keep, args.events) as url:
        asyncio.run(bench(url, args.events, args.days, args.agents, args.runs))


if __name__ == "__main__":
    main()
