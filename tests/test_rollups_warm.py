"""The report roll-ups kept warm (service/reporting/rollups.py `warm`, `Warmer`): a started
service computes the roll-ups of the recent days under its rules, again after a reload that
changes them, not at all with SWITCHBOARD_REPORT_WARM_DAYS=0, and one session at a time."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import time
import uuid
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import AsyncIterator

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from service.app import create_app, reload_and_record
from service.appkeys import PG
from service.infra.migrate import migrate
from service.infra.tokens import create_token
from service.reporting import ops_api, reports, rollups
from service.reporting.reports import ReportRules, Window
from service.settings import Settings
from tests.conftest import (
    RULES_DIR,
    _clean_tables,
    _with_database,
    service_logs,
    with_settings,
)
from tests.test_reports import Contact, insert, random_contact, without_clock

DAY = timedelta(days=1)
H = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
PAST = (1, 3, 6)  # the days before today with random contacts
WITH_CONTACTS = {1, 3, 4, 6}  # and the refund asked again 50 h after the first, 6 days back
CHANGED_TYPE = "get_refund"  # its repeat window is 168 h in routing_rules/catalog.yaml


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def today() -> date:
    return datetime.now(timezone.utc).date()


def past_contacts() -> list[Contact]:
    """Random traffic on the PAST days, and a refund asked for again 50 h after self-service
    answered it: a false deflection under a 168 h repeat window, none under 24 h."""
    rng = random.Random(7)
    contacts = []
    for back in PAST:
        noon = midnight(today() - back * DAY) + 12 * H
        contacts += [random_contact(rng, f"warm-{back}-{n}", noon + n * 7 * MINUTE)
                     for n in range(12)]
    first = midnight(today() - 6 * DAY) + 9 * H
    answered = Contact("warm-refund", "sms", first).classified(CHANGED_TYPE).routed("billing")
    again = Contact("warm-refund", "voice", first + 50 * H).classified(CHANGED_TYPE)
    again.routed("billing").offered().failed().escalated("self_service_failed", "billing")
    return [*contacts, answered.offered().resolved(), again.accepted(after_s=20)]


@asynccontextmanager
async def service_on_log(settings: Settings, **changes) -> AsyncIterator[TestClient]:
    """The whole service started on an event log that already holds past_contacts()."""
    await _clean_tables(settings.database_url)
    conn = await asyncpg.connect(settings.database_url)
    try:
        await insert(conn, *past_contacts())
    finally:
        await conn.close()
    async with TestClient(TestServer(create_app(with_settings(settings, **changes)))) as client:
        yield client


async def kept_days(conn, rules: ReportRules) -> dict[str, set[date]]:
    """The days of each report's roll-ups kept under these rules."""
    kept: dict[str, set[date]] = {name: set() for name in rollups.BY_NAME}
    for name, rollup in rollups.BY_NAME.items():
        rows = await conn.fetch("SELECT day FROM report_rollups WHERE rules = $1 "
                                "AND report = $2", rollups.fingerprint(rollup, rules), name)
        kept[name] = {row["day"] for row in rows}
    return kept


async def warmed(conn, rules: ReportRules, days: list[date], timeout_s: float = 60) -> None:
    """Wait until every report has a roll-up of each of `days` under these rules."""
    deadline = time.monotonic() + timeout_s
    while True:
        kept = await kept_days(conn, rules)
        if all(set(days) <= kept_days_of for kept_days_of in kept.values()):
            return
        if time.monotonic() > deadline:
            missing = {name: sorted(set(days) - got) for name, got in kept.items()}
            raise AssertionError(f"never warmed: {missing}")
        await asyncio.sleep(0.1)


async def summary_over_api(client: TestClient, token: str, window: Window) -> dict:
    response = await client.get("/api/reports/summary", headers={
        "Authorization": f"Bearer {token}"}, params={"from": reports.iso(window.start),
                                                     "to": reports.iso(window.end)})
    assert response.status == 200, await response.text()
    return await response.json()


async def from_events(conn, window: Window, rules: ReportRules) -> dict:
    reference = await reports.summary(conn, window, rules, queries=reports.FROM_EVENTS)
    return json.loads(json.dumps(without_clock(reference)))


def past_window() -> Window:
    """The whole days from the oldest PAST day to today's midnight."""
    return Window(midnight(today() - max(PAST) * DAY), midnight(today()))


async def test_a_started_service_warms_the_recent_days_and_reports_read_them(
        settings, db, redis_client, capsys):
    with service_logs(capsys, "info") as logs:
        async with service_on_log(settings) as client:
            rules = ops_api.report_rules(client.app)
            days = rollups.recent_days(settings.report_warm_days)
            await warmed(db, rules, days)
            assert len(days) == 35 and all(day < today() for day in days)
            groupings = await db.fetch(
                "SELECT day, rows, computed_at FROM report_rollups WHERE report = 'groupings' "
                "AND rules = $1", rollups.fingerprint(rollups.GROUPINGS, rules))
            with_contacts = {row["day"] for row in groupings if json.loads(row["rows"])}
            assert with_contacts == {today() - back * DAY for back in WITH_CONTACTS}
            assert not await db.fetchval("SELECT count(*) FROM report_rollups "
                                         "WHERE day >= $1", today())

            token = await create_token(db, "ops", "tests")
            window = past_window()
            served = await summary_over_api(client, token, window)
            reference = await from_events(db, window, rules)
            assert without_clock(served) == reference
            assert served["totals"]["contacts"] == len(past_contacts())
            assert served["totals"]["false_deflections"] >= 1
            after = await db.fetch("SELECT day, rows, computed_at FROM report_rollups WHERE "
                                   "report = 'groupings' AND rules = $1",
                                   rollups.fingerprint(rollups.GROUPINGS, rules))
            assert sorted(after) == sorted(groupings)  # served from the warm roll-ups as kept
        lines = [json.loads(line) for line in logs().splitlines() if line.startswith("{")]
    passes = [line for line in lines if line.get("event") == "reports.warmed"]
    assert passes and passes[0]["computed"] == 35 * len(rollups.BY_NAME)
    assert passes[0]["days"] == 35 and passes[0]["seconds"] >= 0


async def test_a_reload_that_changes_a_repeat_window_warms_under_the_new_rules(
        settings, db, redis_client, tmp_path):
    directory = tmp_path / "rules"
    shutil.copytree(RULES_DIR, directory)
    async with service_on_log(settings, rules_dir=directory) as client:
        days = rollups.recent_days(settings.report_warm_days)
        before = ops_api.report_rules(client.app)
        await warmed(db, before, days)
        assert before.repeat_windows_h[CHANGED_TYPE] == 168

        shorter(directory / "catalog.yaml", CHANGED_TYPE, 24)
        token = await create_token(db, "ops", "tests")
        response = await client.post("/api/rules/reload",
                                     headers={"Authorization": f"Bearer {token}"})
        assert response.status == 200, await response.text()
        after = ops_api.report_rules(client.app)
        assert after.repeat_windows_h[CHANGED_TYPE] == 24
        assert all(rollups.fingerprint(r, after) != rollups.fingerprint(r, before)
                   for r in rollups.BY_NAME.values())
        await warmed(db, after, days)  # no report asked: the reload alone warmed them

        window = past_window()
        served = await summary_over_api(client, token, window)
        assert without_clock(served) == await from_events(db, window, after)
        old = await from_events(db, window, before)
        assert served["totals"]["false_deflections"] < old["totals"]["false_deflections"]


def shorter(catalog: Path, contact_type: str, hours: int) -> None:
    """Set the first repeat window after `contact_type:` in the catalog to `hours`."""
    text = catalog.read_text()
    at = text.index(f"  {contact_type}:\n")
    window = text.index("repeat_window_h: 168", at)
    catalog.write_text(text[:window] + f"repeat_window_h: {hours}" + text[window + 20:])


async def test_warm_days_at_zero_computes_nothing(settings, db, redis_client, capsys):
    with service_logs(capsys, "info") as logs:
        async with service_on_log(settings, report_warm_days=0) as client:
            assert await reload_and_record(client.app)  # a reload asks no pass either
            await asyncio.sleep(5)  # a warm pass of this log takes well under a second
            assert await db.fetchval("SELECT count(*) FROM report_rollups") == 0
            # reports still work, computing the roll-ups they need themselves
            rules = ops_api.report_rules(client.app)
            await reports.summary(client.app[PG], past_window(), rules)
            assert await db.fetchval("SELECT count(*) FROM report_rollups") > 0
        assert "reports.warmed" not in logs()


LOCK_RULES = ReportRules({CHANGED_TYPE: 168}, service_level_s=60)


async def test_a_pass_while_another_session_warms_computes_nothing(settings, db):
    await _clean_tables(settings.database_url)
    await insert(db, *past_contacts())
    days = rollups.recent_days(10) + [today()]  # today is not over: never kept
    holder = await asyncpg.connect(settings.database_url)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", rollups.WARM_LOCK_KEY)
        started = time.monotonic()
        assert await asyncio.wait_for(rollups.warm(db, LOCK_RULES, days), 30) == 0
        assert time.monotonic() - started < 10  # skipped, not waiting for the lock
        assert await db.fetchval("SELECT count(*) FROM report_rollups") == 0
    finally:
        await holder.close()  # its lock goes with its session

    assert await rollups.warm(db, LOCK_RULES, days) == 10 * len(rollups.BY_NAME)
    kept = await kept_days(db, LOCK_RULES)
    assert all(got == set(days[:10]) for got in kept.values()), kept
    assert await rollups.warm(db, LOCK_RULES, days) == 0  # all still exact
    other = await asyncpg.connect(settings.database_url)
    try:  # the pass let go of the lock
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", rollups.WARM_LOCK_KEY)
    finally:
        await other.close()


async def test_a_pass_cancelled_midway_lets_go_of_the_lock(settings, db):
    """Shutdown cancels a pass between or inside statements: what it kept is kept, the lock
    is free for the next session, and the pool closes."""
    await _clean_tables(settings.database_url)
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        passing = asyncio.create_task(rollups.warm(pool, LOCK_RULES, rollups.recent_days(3000)))
        for _ in range(200):
            if await db.fetchval("SELECT count(*) FROM report_rollups"):
                break
            await asyncio.sleep(0.02)
        passing.cancel()
        await asyncio.gather(passing, return_exceptions=True)
        assert passing.cancelled()
        assert await db.fetchval("SELECT count(*) FROM report_rollups") < 3000 * 4
        assert await db.fetchval("SELECT pg_try_advisory_lock($1)", rollups.WARM_LOCK_KEY)
        assert await db.fetchval("SELECT pg_advisory_unlock($1)", rollups.WARM_LOCK_KEY)
    finally:
        await asyncio.wait_for(pool.close(), 30)


async def test_two_passes_at_once_compute_each_day_once(settings, db):
    await _clean_tables(settings.database_url)
    await insert(db, *past_contacts())
    days = rollups.recent_days(12)
    pool = await asyncpg.create_pool(settings.database_url, min_size=2, max_size=2)
    try:
        results = await asyncio.gather(*(rollups.warm(pool, LOCK_RULES, days)
                                         for _ in range(2)))
    finally:
        await pool.close()
    assert sorted(results) == [0, 12 * len(rollups.BY_NAME)]


async def test_only_the_days_whose_facts_changed_are_warmed_again(settings, db):
    await _clean_tables(settings.database_url)
    await insert(db, *past_contacts())
    days = rollups.recent_days(10)
    await rollups.warm(db, LOCK_RULES, days)
    query = ("SELECT day, computed_at FROM report_rollups WHERE report = 'groupings' "
             "AND rules = $1")
    key = rollups.fingerprint(rollups.GROUPINGS, LOCK_RULES)
    before = dict(await db.fetch(query, key))
    changed = today() - 3 * DAY
    late = Contact("warm-late", "chat", midnight(changed) + 20 * H).classified(CHANGED_TYPE)
    await insert(db, late.routed("billing").offered().resolved())
    computed = await rollups.warm(db, LOCK_RULES, days)
    after = dict(await db.fetch(query, key))
    assert {day for day in days if after[day] != before[day]} == {changed}
    # the day in each of the three per-contact reports, and the journeys that may reach it
    assert 3 < computed < len(days) * len(rollups.BY_NAME)


async def test_a_failed_pass_is_logged_and_the_next_one_warms(settings, server_urls, capsys):
    """PostgreSQL refusing: the pass fails with a log line; the next tick succeeds."""
    admin = await asyncpg.connect(server_urls[0])
    name = f"switchboard_warm_{uuid.uuid4().hex[:8]}"
    url = _with_database(settings.database_url, name)
    pool = await asyncpg.create_pool(url, min_size=0, max_size=1)
    warmer = rollups.Warmer(pool, lambda: LOCK_RULES, 5, every_s=0.2)
    running = asyncio.create_task(warmer.run())
    try:
        with service_logs(capsys, "info") as logs:
            await asyncio.sleep(1)
            assert "reports.warm_failed" in logs()  # the database does not exist yet
            await admin.execute(f'CREATE DATABASE "{name}"')
            conn = await asyncpg.connect(url)
            await migrate(conn)
            for _ in range(300):
                if await conn.fetchval("SELECT count(*) FROM report_rollups") == \
                        5 * len(rollups.BY_NAME):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the warmer never warmed after PostgreSQL came back")
            await conn.close()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        assert running.cancelled()  # cancelled cleanly, not ended by an error
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await pool.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
