"""The event log loses nothing: not in a PostgreSQL outage, not when the process crashes."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from service.infra.migrate import migrate
from service.reporting.events import Event, EventWriter

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def pool(database_url):
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
        async with pool.acquire() as conn:
            await migrate(conn)
            await conn.execute("TRUNCATE contact_events")
        yield pool


async def stored_kinds(pool) -> list[str]:
    rows = await pool.fetch("SELECT kind FROM contact_events ORDER BY seq")
    return [r["kind"] for r in rows]


def event(kind: str, contact_id: str = "00000000-0000-0000-0000-000000000001") -> Event:
    return Event(kind=kind, contact_id=contact_id,
                 customer_id="00000000-0000-0000-0000-0000000000c1", channel="sms",
                 data={"address": "+15550001111"})


async def test_events_reach_postgres_in_order_and_contacts_are_projected(pool, tmp_path):
    writer = EventWriter(pool, tmp_path / "spool", flush_interval_s=60)
    await writer.start()
    writer.emit(event("contact_started"), event("received"))
    writer.emit(Event(kind="ended", contact_id="00000000-0000-0000-0000-000000000001",
                      customer_id=None, channel="sms", data={"outcome": "self_service_resolved"}))
    assert await writer.flush()
    await writer.close()
    assert await stored_kinds(pool) == ["contact_started", "received", "ended"]
    contact = await pool.fetchrow("SELECT outcome, ended_at FROM contacts")
    assert contact["outcome"] == "self_service_resolved" and contact["ended_at"] is not None
    assert list((tmp_path / "spool").iterdir()) == []


async def test_postgres_outage_keeps_events_on_disk_until_it_returns(pool, tmp_path, server_urls,
                                                                    database_url):
    name = urlsplit(database_url).path.lstrip("/")
    admin = await asyncpg.connect(server_urls[0])
    writer = EventWriter(pool, tmp_path / "spool", flush_interval_s=60)
    await writer.start()
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = $1 AND pid <> pg_backend_pid()", name)
        writer.emit(event("contact_started"), event("received"))
        assert not await writer.flush()
        spooled = list((tmp_path / "spool").glob("*.jsonl"))
        assert sum(len(p.read_bytes().splitlines()) for p in spooled) == 2
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    writer.emit(event("classified"))
    assert await writer.flush()
    await writer.close()
    assert await stored_kinds(pool) == ["contact_started", "received", "classified"]


CRASHING_WRITER = textwrap.dedent("""
    import asyncio, os, sys
    import asyncpg
    from service.reporting.events import Event, EventWriter

    async def main():
        pool = await asyncpg.create_pool(sys.argv[1], min_size=1, max_size=1)
        writer = EventWriter(pool, __import__("pathlib").Path(sys.argv[2]), flush_interval_s=60)
        await writer.start()
        for kind in ("contact_started", "received", "escalated"):
            writer.emit(Event(kind=kind, contact_id="00000000-0000-0000-0000-000000000002",
                              customer_id="00000000-0000-0000-0000-0000000000c2", channel="sms"))
        os._exit(9)  # die before any flush: no cleanup, no atexit

    asyncio.run(main())
""")


async def test_events_of_a_crashed_process_are_replayed_once(pool, tmp_path, database_url):
    spool = tmp_path / "spool"
    crashed = subprocess.run([sys.executable, "-c", CRASHING_WRITER, database_url, str(spool)],
                             cwd=ROOT, capture_output=True, timeout=60)
    assert crashed.returncode == 9, crashed.stderr.decode()
    assert await stored_kinds(pool) == []

    survivor = EventWriter(pool, spool, flush_interval_s=60)
    await survivor.start()
    assert await survivor.flush()
    await survivor.close()
    assert await stored_kinds(pool) == ["contact_started", "received", "escalated"]

    again = EventWriter(pool, spool, flush_interval_s=60)  # nothing left to replay
    await again.start()
    assert await again.flush()
    await again.close()
    assert len(await stored_kinds(pool)) == 3


async def test_a_replayed_segment_is_written_once(pool, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    line = event("received").to_line()
    (spool / "1-1-a.jsonl").write_bytes(line)
    (spool / "2-1-b.jsonl").write_bytes(line)  # the same event twice, as after a lost ack
    writer = EventWriter(pool, spool, flush_interval_s=60)
    await writer.start()
    assert await writer.flush()
    await writer.close()
    assert await stored_kinds(pool) == ["received"]


async def test_a_replayed_old_event_leaves_the_projections_as_the_newer_events_left_them(
        pool, tmp_path):
    contact = "00000000-0000-0000-0000-000000000001"
    first, second = (Event(kind="classified", contact_id=contact, customer_id=None,
                           channel="sms", contact_type=kind, data={"confidence": 0.9})
                     for kind in ("billing", "orders"))
    writer = EventWriter(pool, tmp_path / "spool", flush_interval_s=60)
    await writer.start()
    writer.emit(event("contact_started"), first)
    writer.emit(second)
    assert await writer.flush()
    await writer.close()
    (tmp_path / "spool" / "1-1-a.jsonl").write_bytes(first.to_line())  # a lost ack, replayed
    again = EventWriter(pool, tmp_path / "spool", flush_interval_s=60)
    await again.start()
    assert await again.flush()
    await again.close()
    assert await stored_kinds(pool) == ["contact_started", "classified", "classified"]
    assert await pool.fetchval("SELECT contact_type FROM contacts") == "orders"
    assert await pool.fetchval("SELECT (contact_type).value FROM contact_facts") == "orders"


async def test_an_event_postgres_rejects_does_not_block_the_others(pool, tmp_path):
    writer = EventWriter(pool, tmp_path / "spool", flush_interval_s=60)
    await writer.start()
    writer.emit(Event(kind="received", contact_id="not-a-uuid", customer_id=None, channel="sms"))
    assert await writer.flush()
    writer.emit(event("received"))
    assert await writer.flush()
    await writer.close()
    assert await stored_kinds(pool) == ["received"]
    [dead] = list((tmp_path / "spool" / "rejected").iterdir())
    assert b"not-a-uuid" in dead.read_bytes()


async def test_postgres_stores_each_field_as_it_was_emitted(pool, tmp_path):
    awkward = "tab\there, comma, \"quotes\", back\\slash, \x01\x02 control, é ü 中文 😀\nnew line"
    data = {"text": awkward, "nested": {"list": [1, 2.5, None, True, "x"]}, "big": 2**62,
            "confidence": 0.87, "empty": {}, awkward: "as a key"}
    sent = Event(kind="received", contact_id="00000000-0000-0000-0000-000000000003",
                 customer_id=None, channel="chat", contact_type="billing",
                 route_path="billing/ü", reason=awkward, data=data, occurred_at=1763812345.123456)
    writer = EventWriter(pool, tmp_path / "spool", flush_interval_s=60)
    await writer.start()
    writer.emit(sent)
    assert await writer.flush()
    await writer.close()
    row = await pool.fetchrow("SELECT * FROM contact_events")
    assert str(row["id"]) == sent.id and str(row["contact_id"]) == sent.contact_id
    assert row["customer_id"] is None and row["route_path"] == "billing/ü"
    assert (row["kind"], row["channel"], row["contact_type"]) == ("received", "chat", "billing")
    assert row["reason"] == awkward and json.loads(row["data"]) == data
    assert row["occurred_at"] == datetime.fromtimestamp(sent.occurred_at, timezone.utc)


async def test_a_line_cut_short_by_a_crash_is_left_out(pool, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    whole, cut = event("received").to_line(), event("ended").to_line()
    (spool / "1-1-a.jsonl").write_bytes(whole + cut[:len(cut) // 2])
    writer = EventWriter(pool, spool, flush_interval_s=60)
    await writer.start()
    assert await writer.flush()
    await writer.close()
    assert await stored_kinds(pool) == ["received"] and writer.written == 1


async def test_closing_during_a_background_flush_loses_nothing_and_leaks_no_file(pool, tmp_path):
    """Shutdown can land at any point of a flush in progress: mid-open, mid-COPY, mid-commit."""
    emitted = 0
    for delay in range(40):
        writer = EventWriter(pool, tmp_path / "spool", flush_interval_s=0.0005)
        await writer.start()
        for _ in range(3):
            writer.emit(event("received", contact_id=f"00000000-0000-0000-0000-{emitted:012d}"))
            emitted += 1
            await asyncio.sleep(0.0005)
        for _ in range(delay):
            await asyncio.sleep(0)
        await writer.close()
        gc.collect()  # an unclosed file object warns here; warnings are errors in this suite
    assert len(await stored_kinds(pool)) == emitted
    assert list((tmp_path / "spool").iterdir()) == []
