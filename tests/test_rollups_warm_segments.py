"""Segmented report roll-ups kept warm (service/reporting/rollups.py `warm`, `Warmer`): the
attributes configured (SWITCHBOARD_REPORT_WARM_SEGMENTS) are warm before anyone asks, an
attribute a report rolled up once is warmed for the later days, a pass with nothing to do
computes nothing, a customer changing value after a pass still gives exact figures, another
session's lock skips the pass, and an attribute with too many values is left; the trend and
candidates splits read the warm roll-ups once for all values, equal to the raw events."""

from __future__ import annotations

import asyncio
import json
import random
import time
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta
from typing import AsyncIterator

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from service.app import create_app
from service.infra.tokens import create_token
from service.reporting import candidates, metrics, ops_api, reports, rollups
from service.reporting.reports import ReportRules, Window
from service.settings import SettingsError, settings_from_env
from tests.conftest import _clean_tables, service_logs, with_settings
from tests.test_reports import customer_id, insert, without_clock
from tests.test_rollups_warm import (
    DAY,
    LOCK_RULES,
    midnight,
    past_contacts,
    past_window,
    today,
)

TIERS = ("gold", "silver", "bronze")
SERVED = (reports.summary, reports.matrix, reports.journeys, reports.trend,
          candidates.candidates)


async def give_tiers(conn, seed: int = 5) -> dict:
    """Each customer of past_contacts() a tier (and a language), a few none; returns them."""
    rng = random.Random(seed)
    customers = list(dict.fromkeys(contact.customer for contact in past_contacts()))
    given = {customer: ({"tier": rng.choice(TIERS), "language": rng.choice(("en", "fr"))}
                        if rng.random() < 0.85 else {}) for customer in customers}
    await conn.executemany(
        "INSERT INTO customers (id, attributes) VALUES ($1, $2::jsonb) "
        "ON CONFLICT (id) DO UPDATE SET attributes = EXCLUDED.attributes",
        [(customer, json.dumps(attributes)) for customer, attributes in given.items()])
    return given


async def tiered_log(settings, conn) -> None:
    await _clean_tables(settings.database_url)
    await insert(conn, *past_contacts())
    await give_tiers(conn)


async def kept_by(conn, attribute: str) -> dict[str, dict[date, object]]:
    """When each segmented roll-up by the attribute was computed, per report and day."""
    rows = await conn.fetch("SELECT report, day, computed_at FROM report_rollups "
                            "WHERE segment_by = $1", attribute)
    kept: dict[str, dict[date, object]] = {name: {} for name in rollups.SEGMENTED}
    for row in rows:
        kept[row["report"]][row["day"]] = row["computed_at"]
    return kept


async def assert_splits_equal_events(conn, window: Window, rules: ReportRules,
                                     attribute: str = "tier") -> dict:
    """Each rolled-up report split by the attribute equals the raw-event computation;
    returns the served split summary."""
    first = None
    for report in SERVED:
        served = await reports.split(report, conn, window, rules, attribute)
        reference = await reports.split(report, conn, window, rules, attribute,
                                        queries=reports.FROM_EVENTS)
        assert without_clock(served) == without_clock(reference), report.__name__
        first = first or served
    return first  # the summary's


def started(contact) -> datetime:
    return contact.rows[0][1]


def contacts_by_value(split: dict) -> dict:
    return {part["value"]: part["totals"]["contacts"] for part in split["segments"]}


@asynccontextmanager
async def service_on_tiered_log(settings, conn, **changes) -> AsyncIterator[TestClient]:
    """The whole service started on a log of past_contacts() whose customers have tiers."""
    await tiered_log(settings, conn)
    async with TestClient(TestServer(create_app(with_settings(settings, **changes)))) as client:
        yield client


async def test_configured_attributes_are_warm_before_anyone_asks(settings, db, redis_client,
                                                                 capsys):
    with service_logs(capsys, "info") as logs:
        async with service_on_tiered_log(settings, db, report_warm_segments=("tier",)) as client:
            rules = ops_api.report_rules(client.app)
            days = set(rollups.recent_days(settings.report_warm_days))
            kept = await warmed_by(db, "tier", days)
            window = past_window()
            token = await create_token(db, "ops", "tests")
            response = await client.get("/api/reports/summary", params={
                "from": reports.iso(window.start), "to": reports.iso(window.end),
                "segment_by": "customer.tier"}, headers={"Authorization": f"Bearer {token}"})
            assert response.status == 200, await response.text()
            served = await response.json()
            reference = await reports.split(reports.summary, db, window, rules, "tier",
                                            queries=reports.FROM_EVENTS)
            assert without_clock(served) == json.loads(json.dumps(without_clock(reference)))
            assert sum(contacts_by_value(served).values()) == len(past_contacts())
            assert set(contacts_by_value(served)) >= {"gold", "silver", "bronze"}
            assert await kept_by(db, "tier") == kept  # served from the warm roll-ups as kept
            assert not any((await kept_by(db, "language")).values())  # never configured nor asked
        lines = [json.loads(line) for line in logs().splitlines() if line.startswith("{")]
    segment_passes = [line for line in lines if line.get("event") == "reports.warmed_segments"]
    assert segment_passes and all(line["attribute"] == "tier" for line in segment_passes)
    assert sum(line["computed"] for line in segment_passes) >= 35 * len(rollups.SEGMENTED)


async def warmed_by(conn, attribute: str, days: set[date], timeout_s: float = 90) -> dict:
    """Wait until every segmented report has a roll-up by the attribute of each of `days`."""
    deadline = time.monotonic() + timeout_s
    while True:
        kept = await kept_by(conn, attribute)
        if all(days <= set(of_report) for of_report in kept.values()):
            return kept
        if time.monotonic() > deadline:
            raise AssertionError(f"never warmed by {attribute}: "
                                 f"{ {name: len(got) for name, got in kept.items()} }")
        await asyncio.sleep(0.2)


async def test_an_attribute_a_report_rolled_up_is_warmed_for_the_later_days(settings, db):
    await tiered_log(settings, db)
    days = rollups.recent_days(10)
    assert await rollups.warm(db, LOCK_RULES, days) == 10 * len(rollups.BY_NAME)
    assert not await db.fetchval("SELECT count(*) FROM report_rollups "
                                 "WHERE segment_by IS NOT NULL")  # nothing asked, none set

    older = Window(midnight(today() - 7 * DAY), midnight(today() - 5 * DAY))
    await assert_splits_equal_events(db, older, LOCK_RULES)  # the first ask: two days kept
    assert set((await kept_by(db, "tier"))["groupings"]) == {today() - 7 * DAY,
                                                             today() - 6 * DAY}
    computed = await rollups.warm(db, LOCK_RULES, days)
    assert computed == 8 * len(rollups.SEGMENTED)  # the recent days but the two it kept
    kept = await kept_by(db, "tier")
    assert all(set(days) <= set(of_report) for of_report in kept.values()), kept
    assert not any((await kept_by(db, "language")).values())

    recent = Window(midnight(today() - 4 * DAY), midnight(today()))
    served = await assert_splits_equal_events(db, recent, LOCK_RULES)
    assert sum(contacts_by_value(served).values()) == \
        sum(1 for c in past_contacts() if started(c) >= recent.start)
    assert await kept_by(db, "tier") == kept  # the reports read what the pass kept

    # Nothing to do (asked and configured alike): nothing computed, nothing stored again.
    assert await rollups.warm(db, LOCK_RULES, days, ("tier",)) == 0
    assert await kept_by(db, "tier") == kept


async def test_a_pass_with_nothing_to_warm_by_segment_computes_nothing(settings, db):
    await tiered_log(settings, db)
    days = rollups.recent_days(8)
    await rollups.warm(db, LOCK_RULES, days)
    assert await rollups.warmed_attributes(db) == []
    assert await rollups.warm(db, LOCK_RULES, days) == 0
    assert not await db.fetchval("SELECT count(*) FROM report_rollups "
                                 "WHERE segment_by IS NOT NULL")


async def test_customers_changing_value_after_a_pass_still_get_exact_figures(
        settings, db):
    await tiered_log(settings, db)
    days = rollups.recent_days(10)
    await rollups.warm(db, LOCK_RULES, days, ("tier",))
    window = Window(midnight(today() - 7 * DAY), midnight(today()))
    before = contacts_by_value(await assert_splits_equal_events(db, window, LOCK_RULES))
    kept = await kept_by(db, "tier")

    # The refund customer (two contacts, 6 and 4 days back) goes to a tier they were not in.
    customer = customer_id("warm-refund")
    old = await db.fetchval("SELECT attributes->>'tier' FROM customers WHERE id = $1", customer)
    new = next(tier for tier in TIERS if tier != old)
    await db.execute("UPDATE customers SET attributes = attributes || jsonb_build_object("
                     "'tier', $2::text) WHERE id = $1", customer, new)
    moved = sum(1 for c in past_contacts() if c.customer == customer)
    # Asked before the next pass: the report computes the stale days itself, exactly.
    after = contacts_by_value(await assert_splits_equal_events(db, window, LOCK_RULES))
    assert after[new] == before.get(new, 0) + moved
    assert after.get(old, 0) == before.get(old, 0) - moved

    # Changed again, then a pass: it computes that customer's days (and the journeys they
    # reach) again, nothing else, and the reports equal the raw events.
    kept = await kept_by(db, "tier")
    third = next(tier for tier in TIERS if tier not in (old, new))
    await db.execute("UPDATE customers SET attributes = attributes || jsonb_build_object("
                     "'tier', $2::text) WHERE id = $1", customer, third)
    their_days = {started(c).date() for c in past_contacts() if c.customer == customer}
    computed = await rollups.warm(db, LOCK_RULES, days, ("tier",))
    now = await kept_by(db, "tier")
    changed = {day for day in now["groupings"] if now["groupings"][day] != kept["groupings"][day]}
    assert changed == their_days
    assert len(their_days) <= computed < 10 * len(rollups.SEGMENTED)
    await assert_splits_equal_events(db, window, LOCK_RULES)
    assert await kept_by(db, "tier") == now


async def test_a_pass_while_another_session_warms_computes_no_segments(settings, db):
    await tiered_log(settings, db)
    days = rollups.recent_days(6)
    holder = await asyncpg.connect(settings.database_url)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", rollups.WARM_LOCK_KEY)
        assert await asyncio.wait_for(rollups.warm(db, LOCK_RULES, days, ("tier",)), 30) == 0
        assert await db.fetchval("SELECT count(*) FROM report_rollups") == 0
    finally:
        await holder.close()
    assert await rollups.warm(db, LOCK_RULES, days, ("tier",)) == \
        6 * (len(rollups.BY_NAME) + len(rollups.SEGMENTED))
    assert await db.fetchval("SELECT pg_try_advisory_lock($1)", rollups.WARM_LOCK_KEY)
    assert await db.fetchval("SELECT pg_advisory_unlock($1)", rollups.WARM_LOCK_KEY)


async def test_an_attribute_with_too_many_values_is_left_and_the_others_warmed(
        settings, db, capsys):
    await tiered_log(settings, db)
    await db.execute("UPDATE customers SET attributes = attributes || jsonb_build_object("
                     "'account', id::text)")  # one value per customer
    days = rollups.recent_days(7)
    with service_logs(capsys, "info") as logs:
        computed = await rollups.warm(db, LOCK_RULES, days, ("account", "tier"))
        lines = [json.loads(line) for line in logs().splitlines() if line.startswith("{")]
    assert computed == 7 * (len(rollups.BY_NAME) + len(rollups.SEGMENTED))
    assert not any((await kept_by(db, "account")).values())
    assert all(set(days) <= set(got) for got in (await kept_by(db, "tier")).values())
    skipped = [line for line in lines if line.get("event") == "reports.warm_segments_skipped"]
    assert [line["attribute"] for line in skipped] == ["account"]


def test_warm_segments_setting_lists_attributes_and_refuses_bad_ones():
    assert settings_from_env({}).report_warm_segments == ()
    assert settings_from_env({"SWITCHBOARD_REPORT_WARM_SEGMENTS":
                              "customer.tier, customer.region,customer.tier"}
                             ).report_warm_segments == ("tier", "region")
    too_many = ",".join(f"customer.a{n}" for n in range(rollups.MAX_WARMED_ATTRIBUTES + 1))
    for raw, says in (("tier", "is not a customer attribute"),
                      ("customer.tier,customer.bad name", "'customer.bad name'"),
                      (too_many, f"at most {rollups.MAX_WARMED_ATTRIBUTES}")):
        with pytest.raises(SettingsError) as caught:
            settings_from_env({"SWITCHBOARD_REPORT_WARM_SEGMENTS": raw})
        problem = caught.value.problems[0]
        assert problem.startswith(f"SWITCHBOARD_REPORT_WARM_SEGMENTS={raw!r}: ") and \
            says in problem, problem


def reads(label: str) -> float:
    """How many report queries (or roll-up reads) of this label ran so far."""
    return metrics.REGISTRY.get_sample_value("switchboard_report_query_seconds_count",
                                             {"report": label}) or 0


async def test_trend_and_candidates_splits_read_the_warm_roll_ups_once_for_all_values(
        settings, db):
    await tiered_log(settings, db)
    await rollups.warm(db, LOCK_RULES, rollups.recent_days(10), ("tier",))
    kept = await kept_by(db, "tier")
    assert all(kept["trend"]) and all(kept["candidates"])
    half_past = Window(midnight(today() - 6 * DAY) + timedelta(minutes=30),
                       midnight(today() - DAY))
    for window, options in ((past_window(), {}), (past_window(), {"bucket": "hour"}),
                            (past_window(), {"bucket": "week"}),
                            (half_past, {"bucket": "day"})):
        before = reads("trend")
        served = await reports.split(reports.trend, db, window, LOCK_RULES, "tier", **options)
        read = reads("trend") - before
        reference = await reports.split(reports.trend, db, window, LOCK_RULES, "tier",
                                        queries=reports.FROM_EVENTS, **options)
        assert without_clock(served) == without_clock(reference), options
        assert len(served["segments"]) >= 3
        # one read of the roll-ups for every value; a window off the hour: a query per value
        assert read == (len(served["segments"]) if window is half_past else 1), options
        assert sum(point["contacts"] for part in served["segments"]
                   for point in part["points"]) == \
            sum(1 for c in past_contacts() if window.start <= started(c) < window.end)

    before = reads("candidates")
    served = await reports.split(candidates.candidates, db, past_window(), LOCK_RULES, "tier")
    assert reads("candidates") - before == 1
    reference = await reports.split(candidates.candidates, db, past_window(), LOCK_RULES,
                                    "tier", queries=reports.FROM_EVENTS)
    assert without_clock(served) == without_clock(reference)
    assert any(row["agent_minutes"] > 0 for part in served["segments"] for row in part["rows"])
    gold = await candidates.candidates(db, past_window(), LOCK_RULES.with_segment("tier", "gold"))
    assert gold["rows"] == next(part["rows"] for part in served["segments"]
                                if part["value"] == "gold")
    assert await kept_by(db, "tier") == kept  # all read from what the pass kept
