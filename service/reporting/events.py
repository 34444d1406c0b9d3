"""The append-only event log: every step of every contact, written to PostgreSQL in batches.

Nothing is lost on a crash or an outage: each event is appended to a spool segment on local
disk as it is emitted (a plain write(2), so a crashed process leaves it behind), the segment
is copied to PostgreSQL with COPY in one transaction, and only then deleted. Segments that
fail stay on disk, in order, and are retried; segments left by a dead process are replayed
at start. Event ids make the replay idempotent.

The writer never decodes an event: a segment's lines go to PostgreSQL as they are and are
unpacked there, so a flush hardly holds the event loop.
"""

from __future__ import annotations

import asyncio
import fcntl
import operator
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import structlog

from service.infra.ids import new_hex, new_uuid
from service.reporting import metrics

log = structlog.get_logger(__name__)

# Errors about the data itself: retrying cannot help. Connection trouble is retried.
REJECTED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, ValueError, TypeError)

COLUMNS = ("id", "occurred_at", "kind", "contact_id", "customer_id", "channel", "contact_type",
           "route_path", "reason", "data")

_columns = operator.attrgetter(*COLUMNS)


_LINE = orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE


@dataclass(slots=True)  # not frozen: a frozen one takes twice as long to create
class Event:
    kind: str
    contact_id: str | None
    customer_id: str | None
    channel: str | None
    contact_type: str | None = None
    route_path: str | None = None
    reason: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_uuid)
    occurred_at: float = field(default_factory=time.time)

    def to_line(self) -> bytes:
        return orjson.dumps(_columns(self), option=_LINE)


def _lines(events: tuple[Event, ...]) -> bytes:
    return b"".join([orjson.dumps(_columns(e), option=_LINE) for e in events])


class _Segment:
    """One spool file, locked by the process writing it."""

    def __init__(self, path: Path, create: bool):
        flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT | os.O_EXCL if create else 0)
        self.path = path
        self.fd = os.open(path, flags, 0o600)
        self.count = 0

    def try_lock(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def append(self, data: bytes, count: int) -> None:
        os.write(self.fd, data)
        self.count += count

    def whole_lines(self) -> int:
        """Cut off a line a crash left unfinished: it could never be read. Returns the size."""
        size = os.fstat(self.fd).st_size
        if size and os.pread(self.fd, 1, size - 1) != b"\n":
            with open(self.path, "rb") as handle:
                size = handle.read().rfind(b"\n") + 1
            os.ftruncate(self.fd, size)
        return size

    def remove(self) -> None:
        os.unlink(self.path)
        os.close(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class EventWriter:
    def __init__(self, pool: asyncpg.Pool, spool_dir: Path, flush_interval_s: float = 0.2,
                 batch_max: int = 5000):
        self._pool = pool
        self._spool = spool_dir
        self._interval = flush_interval_s
        self._batch_max = batch_max
        self._backlog: list[_Segment] = []  # sealed segments, oldest first
        self._current: _Segment | None = None
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self.written = 0

    async def start(self) -> None:
        self._spool.mkdir(parents=True, exist_ok=True)
        self._recover()
        self._current = self._new_segment()
        self._task = asyncio.create_task(self._run(), name="event-writer")

    def emit(self, *events: Event) -> None:
        """Record events durably on local disk now; PostgreSQL follows within a flush interval."""
        assert self._current is not None, "EventWriter.start() was not awaited"
        metrics.observe_events(events)
        self._current.append(_lines(events), len(events))
        if self._current.count >= self._batch_max:
            self._wake.set()

    async def flush(self) -> bool:
        """Seal the current segment and write everything pending. True when nothing is left."""
        async with self._flushing:  # the background task and a caller must not copy twice
            return await self._flush()

    async def _flush(self) -> bool:
        if self._current is not None and self._current.count:
            self._backlog.append(self._current)
            self._current = self._new_segment()
        while self._backlog:
            segment = self._backlog[0]
            try:
                written = await self._write(segment)
            except REJECTED as exc:
                self._set_aside(segment, exc)
                continue
            except Exception as exc:  # any other failure: the segment stays on disk, retried
                log.warning("events.flush_failed", error=str(exc), pending=len(self._backlog))
                return False
            segment.remove()
            self._backlog.pop(0)
            self.written += written
        return True

    async def close(self) -> None:
        if self._task:
            async with self._flushing:  # never cancel a COPY halfway: it would leak its file
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        done = await self.flush()
        if not done:
            log.error("events.left_in_spool", segments=len(self._backlog), spool=str(self._spool))
        for segment in self._backlog:
            segment.close()
        if self._current is not None:
            self._current.remove()  # empty after flush()
            self._current = None

    async def _run(self) -> None:
        backoff = self._interval
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            backoff = self._interval if await self.flush() else min(backoff * 2, 5.0)

    async def _write(self, segment: _Segment) -> int:
        if not await asyncio.to_thread(segment.whole_lines):
            return 0
        with open(segment.path, "rb") as lines:  # asyncpg leaks a file it opens when cancelled
            return await self._copy(lines)

    async def _copy(self, lines) -> int:
        async with self._pool.acquire(timeout=5) as conn, conn.transaction():
            await conn.execute(STAGE_SQL)
            # asyncpg reads the file in a thread, piecewise. CSV has no backslash escapes, and
            # with control bytes as delimiter and quote it takes each line verbatim: the
            # ASCII-only JSON of to_line never contains them.
            status = await conn.copy_to_table(
                "incoming_lines", source=lines, columns=["line"], format="csv",
                delimiter="\x02", quote="\x01")
            await conn.execute(UNPACK_SQL + PROJECT_SQL)
        return int(status.split()[-1])  # "COPY <rows>"

    def _set_aside(self, segment: _Segment, error: Exception) -> None:
        """PostgreSQL refuses this data for good: keep it for ops, unblock what follows."""
        rejected = self._spool / "rejected"
        rejected.mkdir(exist_ok=True)
        os.rename(segment.path, rejected / segment.path.name)
        segment.close()
        self._backlog.pop(0)
        log.error("events.segment_rejected", segment=segment.path.name, error=str(error))

    def _new_segment(self) -> _Segment:
        name = f"{time.time_ns()}-{os.getpid()}-{new_hex(8)}.jsonl"
        segment = _Segment(self._spool / name, create=True)
        segment.try_lock()
        return segment

    def _recover(self) -> None:
        """Adopt segments no live process holds: left by a crash or a failed shutdown."""
        for path in sorted(self._spool.glob("*.jsonl")):
            segment = _Segment(path, create=False)
            if segment.try_lock():
                self._backlog.append(segment)
            else:
                segment.close()
        if self._backlog:
            log.info("events.recovering", segments=len(self._backlog))


STAGE_SQL = """
CREATE TEMP TABLE IF NOT EXISTS incoming_lines (line jsonb, n bigserial) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS incoming_events (LIKE contact_events INCLUDING DEFAULTS,
                                                 batch_order bigserial) ON COMMIT DELETE ROWS;
"""

# A spooled line is the JSON array of COLUMNS (Event.to_line), parsed once, by PostgreSQL.
UNPACK_SQL = """
INSERT INTO incoming_events (batch_order, id, occurred_at, kind, contact_id, customer_id, channel,
                             contact_type, route_path, reason, data)
SELECT n, (line->>0)::uuid, to_timestamp((line->>1)::float8), line->>2, (line->>3)::uuid,
       (line->>4)::uuid, line->>5, line->>6, line->>7, line->>8, line->9
FROM incoming_lines;
"""

# Events are the record; customers are a projection of them, kept in the same transaction (so
# is contact_facts, by the insert's trigger; `contacts` is a view over it). Every statement is
# idempotent, so a replayed segment changes nothing twice: an event already in the log is not
# inserted again (the primary key's own check: a join against the log cost a scan of the
# month's partition on every batch), and the projections read only the events this batch added.
PROJECT_SQL = """
WITH added AS (
    INSERT INTO contact_events (id, occurred_at, kind, contact_id, customer_id, channel,
                                contact_type, route_path, reason, data)
    SELECT id, occurred_at, kind, contact_id, customer_id, channel, contact_type, route_path,
           reason, data
    FROM incoming_events ORDER BY batch_order
    ON CONFLICT DO NOTHING
    RETURNING id, occurred_at
)
DELETE FROM incoming_events i
WHERE NOT EXISTS (SELECT FROM added a WHERE a.id = i.id AND a.occurred_at = i.occurred_at);

INSERT INTO customers (id, created_at)
SELECT DISTINCT ON (customer_id) customer_id, occurred_at FROM incoming_events
WHERE kind = 'customer_created' AND customer_id IS NOT NULL ORDER BY customer_id, occurred_at
ON CONFLICT DO NOTHING;

INSERT INTO customer_identities (kind, value, customer_id)
SELECT DISTINCT ON (data->>'identity_kind', data->>'identity_value')
       data->>'identity_kind', data->>'identity_value', customer_id
FROM incoming_events WHERE kind = 'customer_created' AND customer_id IS NOT NULL
ON CONFLICT DO NOTHING;
"""
