"""Months of the event log: created ahead, dropped after the retention period.

`contact_events` has one partition per calendar month (UTC), `contact_events_YYYY_MM`, and a
default partition for events of a month not created yet (migrations/004). Every instance runs
`maintain` at start and hourly; an advisory lock makes one do the work at a time.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import asyncpg
import structlog

from service.conversations import erasure

log = structlog.get_logger(__name__)

MONTHS_AHEAD = 2
EVERY_S = 3600
LOCK_KEY = 0x5B_0A_7E
MONTH_NAME = re.compile(r"^contact_events_(\d{4})_(\d{2})$")


@dataclass(frozen=True)
class Maintained:
    created: tuple[str, ...]
    dropped: tuple[str, ...]


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(timezone.utc)
    return datetime(moment.year, moment.month, 1, tzinfo=timezone.utc)


def next_month(start: datetime) -> datetime:
    return month_start(start + timedelta(days=32))


async def maintain(conn: asyncpg.Connection, retention_days: int,
                   now: datetime | None = None) -> Maintained:
    """Create this month and MONTHS_AHEAD more; drop months wholly older than the retention
    (0 keeps everything), with their contacts' facts and replay rows; fold the day roll-ups'
    record of fact changes (rollups.py) into a row per day; scrub what landed for erased
    customers since (erasure.py)."""
    now = now or datetime.now(timezone.utc)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        created, month = [], month_start(now)
        for _ in range(MONTHS_AHEAD + 1):
            name = await conn.fetchval("SELECT contact_events_add_month($1)", month)
            if name:
                created.append(name)
            month = next_month(month)
        dropped = await _drop_older(conn, now - timedelta(days=retention_days)) \
            if retention_days else []
        await conn.execute("SELECT report_fact_changes_compact()")  # a row per day
        await erasure.reapply(conn)
    if created or dropped:
        log.info("events.partitions", created=created, dropped=dropped)
    return Maintained(tuple(created), tuple(dropped))


async def _drop_older(conn: asyncpg.Connection, cutoff: datetime) -> list[str]:
    dropped, boundary = [], None
    for name in await months(conn):
        match = MONTH_NAME.match(name)
        if match is None:  # months() lists only names of this shape
            continue
        end = next_month(datetime(int(match[1]), int(match[2]), 1, tzinfo=timezone.utc))
        if end <= cutoff:
            await conn.execute(f'DROP TABLE "{name}"')
            dropped.append(name)
            boundary = max(boundary or end, end)
    if boundary is not None:  # what the default partition caught before it goes too
        await conn.execute("DELETE FROM contact_events_default WHERE occurred_at < $1", boundary)
        await conn.execute("DELETE FROM contact_replay WHERE started_at < $1", boundary)
        await conn.execute("DELETE FROM contact_facts WHERE started_at < $1", boundary)
        await conn.execute("DELETE FROM contact_arms WHERE assigned_at < $1", boundary)
        await conn.execute("DELETE FROM report_rollups WHERE day < "
                           "($1::timestamptz AT TIME ZONE 'UTC')::date", boundary)
    return dropped


async def months(conn: asyncpg.Connection) -> list[str]:
    """The month partitions, oldest first."""
    rows = await conn.fetch("""SELECT c.relname FROM pg_inherits i
                               JOIN pg_class c ON c.oid = i.inhrelid
                               WHERE i.inhparent = 'contact_events'::regclass""")
    return sorted(r["relname"] for r in rows if MONTH_NAME.match(r["relname"]))


async def keep_maintained(pool: asyncpg.Pool, retention_days: int) -> None:
    """Run `maintain` every EVERY_S seconds until cancelled; failures are logged and retried."""
    while True:
        await asyncio.sleep(EVERY_S)
        try:
            async with pool.acquire(timeout=30) as conn:
                await maintain(conn, retention_days)
        except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
            log.warning("events.partitions_failed", error=str(exc))
