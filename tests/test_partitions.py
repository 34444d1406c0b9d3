"""The event log's months: created ahead, old ones dropped with their facts, nothing lost."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from service.reporting import partitions, reports
from service.reporting.reports import ReportRules, Window
from tests.test_reports import Contact, insert, log_db  # noqa: F401 (fixture)

NOW = datetime(2026, 3, 15, 12, tzinfo=timezone.utc)
RULES = ReportRules({"track_order": 72})


async def test_months_are_created_ahead_and_old_ones_dropped_by_retention(log_db):
    await partitions.maintain(log_db, retention_days=0, now=NOW)
    names = await partitions.months(log_db)
    assert {"contact_events_2026_03", "contact_events_2026_04", "contact_events_2026_05"} <= \
        set(names)
    old = Contact("ana", "sms", datetime(2025, 12, 20, tzinfo=timezone.utc))
    old.classified("track_order").routed("orders").offered().resolved()
    kept = Contact("ben", "sms", datetime(2026, 2, 10, tzinfo=timezone.utc))
    kept.classified("track_order").routed("orders").offered().resolved()
    far = Contact("cat", "sms", datetime(2027, 1, 5, tzinfo=timezone.utc)).classified(
        "track_order")  # no month yet: the default partition keeps it
    await insert(log_db, old, kept, far)
    # A month created after its events landed takes them over from the default partition.
    assert await log_db.fetchval("SELECT contact_events_add_month('2025-12-01Z')") == \
        "contact_events_2025_12"
    assert await log_db.fetchval("SELECT count(*) FROM contact_events_2025_12") == len(old.rows)
    everything = Window(datetime(2025, 1, 1, tzinfo=timezone.utc), NOW + timedelta(days=400))
    before = await reports.summary(log_db, everything, RULES)
    assert before["totals"]["contacts"] == 3
    assert await log_db.fetchval("SELECT count(*) FROM contact_replay") == 3

    done = await partitions.maintain(log_db, retention_days=60, now=NOW)  # cutoff 2026-01-14
    assert "contact_events_2025_12" in done.dropped
    assert "contact_events_2026_01" not in done.dropped  # not wholly older than the cutoff
    after = await reports.summary(log_db, everything, RULES)
    reference = await reports.summary(log_db, everything, RULES,
                                      queries=reports.FROM_EVENTS)
    assert after["totals"]["contacts"] == 2
    assert after["totals"] == reference["totals"]
    assert await log_db.fetchval("SELECT count(*) FROM contact_events") == \
        len(kept.rows) + len(far.rows)
    assert {r[0] for r in await log_db.fetch("SELECT contact_id FROM contact_replay")} == \
        {kept.id, far.id}


async def test_keeping_everything_drops_nothing(log_db):
    await insert(log_db, Contact("ana", "sms", datetime(2020, 1, 2, tzinfo=timezone.utc)))
    await log_db.fetchval("SELECT contact_events_add_month('2020-01-02Z')")
    done = await partitions.maintain(log_db, retention_days=0, now=NOW)
    assert done.dropped == ()
    assert await log_db.fetchval("SELECT count(*) FROM contact_events") == 1
