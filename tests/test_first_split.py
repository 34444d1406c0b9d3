"""The first report split by a customer attribute nobody asked for before
(service/reporting/rollups.py, preparing.py): its days' segmented roll-ups are computed in one
statement per report kind over all the days (one scan of the facts, one join with the
customers), equal to the raw events for the summary, matrix, journeys, trend and candidates,
and to what the background preparation computes a few days at a time; a client that sends
`Prefer: respond-async` gets 202 with the progress (the same on every instance) while they
are computed under the warming lock, then the same figures as the synchronous answer."""

from __future__ import annotations

import asyncio
import json
import random
import time
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import AsyncIterator

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from service.app import create_app
from service.infra.tokens import create_token
from service.reporting import candidates, ops_api, reports, rollups
from service.reporting.reports import Window
from tests.conftest import _clean_tables, with_settings
from tests.test_report_rollups import DAY, RULES, give_tiers, traffic
from tests.test_reports import insert, without_clock
from tests.test_rollups_warm import midnight, today

H = timedelta(hours=1)
SPLIT_REPORTS = {"summary": reports.summary, "matrix": reports.matrix,
                 "journeys": reports.journeys, "trend": reports.trend,
                 "candidates": candidates.candidates}
PAST_DAYS = 9


def past_start():
    return midnight(today() - PAST_DAYS * DAY)


async def random_past_log(conn, seed: int = 41) -> list:
    """Random traffic starting over the last PAST_DAYS days (a few come-backs later),
    customers with a tier and a language; returns the customers."""
    rng = random.Random(seed)
    contacts = traffic(rng, 90, past_start() + 2 * H, (PAST_DAYS - 1) * 24 - 4)
    await insert(conn, *contacts)
    return await give_tiers(conn, rng, contacts)


async def stored(conn, attribute: str) -> dict:
    """The stored rows of every segmented roll-up by the attribute, per report, day and value
    (each value's rows in a set order: they are added up in any)."""
    rows = await conn.fetch("SELECT report, day, rows FROM report_rollups WHERE segment_by = $1",
                            attribute)
    return {(row["report"], row["day"]): {
        value: sorted(json.dumps(in_order(part), sort_keys=True) for part in parts)
        for value, parts in json.loads(row["rows"]).items()} for row in rows}


def in_order(part: dict) -> dict:
    """A stored row with its lists (the medians' resolution times) in a set order."""
    return {key: sorted(value) if isinstance(value, list) else value
            for key, value in part.items()}


async def test_a_first_split_computes_each_kind_in_one_statement_equal_to_the_raw_events(
        settings, db, monkeypatch):
    await _clean_tables(settings.database_url)
    await random_past_log(db)
    window = Window(past_start() + 5 * H, midnight(today()) - 2 * H)  # edges, 7 whole days
    days = rollups.whole_days(window)[0]
    for attribute in ("tier", "language"):
        for name, report in SPLIT_REPORTS.items():
            served = await reports.split(report, db, window, RULES, attribute)
            reference = await reports.split(report, db, window, RULES, attribute,
                                            queries=reports.FROM_EVENTS)
            assert without_clock(served) == without_clock(reference), (attribute, name)
            assert len(served["segments"]) >= 3
            for part in served["segments"]:
                alone = await report(db, window,
                                     RULES.with_segment(attribute, part["value"] or ""))
                assert {k: v for k, v in alone.items() if k in part} == \
                    {k: v for k, v in part.items() if k != "value"}, (attribute, name)
        # every kind's days were computed together, by one statement (one transaction's now())
        computed = await db.fetch("SELECT report, count(DISTINCT computed_at) AS times, "
                                  "array_agg(day ORDER BY day) AS days FROM report_rollups "
                                  "WHERE segment_by = $1 GROUP BY 1", attribute)
        assert {row["report"] for row in computed} == set(rollups.SEGMENTED), attribute
        assert all(row["times"] == 1 and set(row["days"]) >= set(days)
                   for row in computed), computed

    # The background preparation, a few days per statement, stores exactly the same rows.
    monkeypatch.setattr(rollups, "PREPARE_DAYS_PER_STATEMENT", 3)
    in_one_statement = await stored(db, "tier")
    await db.execute("DELETE FROM report_rollups WHERE segment_by = 'tier'")
    every_day = sorted({day for _, day in in_one_statement})
    assert len(every_day) > rollups.PREPARE_DAYS_PER_STATEMENT
    computed = await rollups.prepare(db, RULES, tuple(rollups.SEGMENTED), every_day, "tier")
    assert computed == len(in_one_statement)
    assert await stored(db, "tier") == in_one_statement
    times = await db.fetchval("SELECT count(DISTINCT computed_at) FROM report_rollups "
                              "WHERE segment_by = 'tier' AND report = 'groupings'")
    assert times == -(-len(every_day) // rollups.PREPARE_DAYS_PER_STATEMENT)


# ---- Prefer: respond-async ------------------------------------------------------------------

@asynccontextmanager
async def instance(settings) -> AsyncIterator[TestClient]:
    """One instance of the service (no background warming, so only the reports compute)."""
    app = create_app(with_settings(settings, report_warm_days=0))
    if not any(r.canonical == "/api/reports/summary" for r in app.router.resources()):
        app.router.add_routes(ops_api.routes())
    async with TestClient(TestServer(app)) as client:
        yield client


async def ask(client: TestClient, token: str, name: str, window: Window, prefer: bool = True,
              **query) -> tuple[int, dict, dict]:
    headers = {"Authorization": f"Bearer {token}"}
    if prefer:
        headers["Prefer"] = "respond-async, wait=1"
    response = await client.get(f"/api/reports/{name}", headers=headers, params={
        "from": reports.iso(window.start), "to": reports.iso(window.end), **query})
    return response.status, await response.json(), dict(response.headers)


async def until_answered(client: TestClient, token: str, name: str, window: Window,
                         timeout_s: float = 90, **query) -> tuple[dict, list[int]]:
    """Ask with the preference until the report comes; returns it and the days done seen."""
    seen, deadline = [], time.monotonic() + timeout_s
    while True:
        status, body, _ = await ask(client, token, name, window, **query)
        if status == 200:
            return body, seen
        assert status == 202, body
        seen.append(body["days_done"])
        assert time.monotonic() < deadline, f"never ready: {body}"
        await asyncio.sleep(0.2)


async def test_a_client_preferring_async_gets_progress_then_the_synchronous_figures(
        settings, db, database_url):
    await _clean_tables(settings.database_url)
    await random_past_log(db, seed=42)
    window = Window(past_start(), midnight(today()) + 3 * H)  # 9 whole days, then today's
    holder = await asyncpg.connect(database_url)
    try:
        async with instance(settings) as first, instance(settings) as second:
            token = await create_token(db, "ops", "tests")
            rules = ops_api.report_rules(first.app)
            # Another session (the warmer of some instance) holds the lock: nothing is
            # computed, every instance says so.
            await holder.execute("SELECT pg_advisory_lock($1)", rollups.WARM_LOCK_KEY)
            for client in (first, second, first):
                status, body, headers = await ask(client, token, "summary", window,
                                                  segment_by="customer.tier")
                assert status == 202, body
                assert body == {"status": "preparing", "segment_by": "customer.tier",
                                "days_done": 0, "days_to_do": PAST_DAYS}
                assert headers["Preference-Applied"] == "respond-async"
                assert headers["Retry-After"] == "1"
            await asyncio.sleep(1.5)
            assert not await db.fetchval("SELECT count(*) FROM report_rollups")
            await holder.execute("SELECT pg_advisory_unlock($1)", rollups.WARM_LOCK_KEY)

            answered, seen = await until_answered(first, token, "summary", window,
                                                  segment_by="customer.tier")
            assert seen == sorted(seen)  # progress only goes forward
            kept = dict(await db.fetch("SELECT day, computed_at FROM report_rollups WHERE "
                                       "segment_by = 'tier' AND report = 'groupings'"))
            assert len(kept) == PAST_DAYS
            # the other instance reads what the first prepared, without the preference too
            status, synchronous, _ = await ask(second, token, "summary", window, prefer=False,
                                               segment_by="customer.tier")
            assert status == 200
            assert without_clock(answered) == without_clock(synchronous)
            reference = await reports.split(reports.summary, db, window, rules, "tier",
                                            queries=reports.FROM_EVENTS)
            assert without_clock(answered) == json.loads(json.dumps(without_clock(reference)))
            status, _, _ = await ask(second, token, "summary", window,
                                     segment_by="customer.tier")
            assert status == 200  # ready: answered at once
            assert dict(await db.fetch("SELECT day, computed_at FROM report_rollups WHERE "
                                       "segment_by = 'tier' AND report = 'groupings'")) == kept

            # Each report of one segment: prepared as needed, then the synchronous figures.
            for name, report in SPLIT_REPORTS.items():
                answered, seen = await until_answered(second, token, name, window,
                                                      segment_by="customer.language",
                                                      segment="fr")
                if name == "summary":
                    assert seen and seen[0] == 0
                status, synchronous, _ = await ask(first, token, name, window, prefer=False,
                                                   segment_by="customer.language",
                                                   segment="fr")
                assert status == 200 and without_clock(answered) == without_clock(synchronous)
                reference = await report(db, window, rules.with_segment("language", "fr"),
                                         queries=reports.FROM_EVENTS)
                assert without_clock(answered) == \
                    json.loads(json.dumps(without_clock(reference))), name
    finally:
        await holder.close()


async def test_without_the_preference_or_a_segment_the_answer_is_synchronous(
        settings, db):
    await _clean_tables(settings.database_url)
    await random_past_log(db, seed=43)
    window = Window(past_start(), midnight(today()))
    async with instance(settings) as client:
        token = await create_token(db, "ops", "tests")
        status, split, headers = await ask(client, token, "matrix", window, prefer=False,
                                           segment_by="customer.tier")
        assert status == 200 and "Preference-Applied" not in headers
        assert [part["value"] for part in split["segments"]] == [None, "bronze", "gold",
                                                                 "silver"]
        status, whole, _ = await ask(client, token, "summary", window)  # no segment: as ever
        assert status == 200 and "segments" not in whole
        # a segment's trend that does not start on the hour reads the facts: nothing to
        # prepare (its split would prepare the contacts per value, for the values)
        off_hour = Window(window.start + timedelta(minutes=30), window.end)
        status, trend, _ = await ask(client, token, "trend", off_hour,
                                     segment_by="customer.language", segment="fr")
        assert status == 200 and trend["segment"] == {"by": "customer.language", "value": "fr"}
        status, _, _ = await ask(client, token, "trend", off_hour,
                                 segment_by="customer.language")
        assert status == 202
        response = await client.get("/api/reports/matrix.csv", headers={  # a download waits
            "Authorization": f"Bearer {token}", "Prefer": "respond-async"}, params={
            "from": reports.iso(window.start), "to": reports.iso(window.end),
            "segment_by": "customer.language"})
        assert response.status == 200 and response.content_type == "text/csv"


async def test_an_attribute_with_too_many_values_is_answered_as_without_the_preference(
        settings, db):
    await _clean_tables(settings.database_url)
    customers = await random_past_log(db, seed=44)
    await db.executemany("UPDATE customers SET attributes = attributes || $2::jsonb "
                         "WHERE id = $1", [(cid, json.dumps({"account": f"a{n}"}))
                                           for n, cid in enumerate(customers)])
    window = Window(past_start(), midnight(today()))
    async with instance(settings) as client:
        token = await create_token(db, "ops", "tests")
        status, body, _ = await ask(client, token, "summary", window,
                                    segment_by="customer.account")
        assert status == 202 and body["days_done"] == 0
        deadline = time.monotonic() + 60
        while status == 202:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
            status, body, _ = await ask(client, token, "summary", window,
                                        segment_by="customer.account")
        assert status == 400 and "customer.account takes" in body["error"]
        assert not await db.fetchval("SELECT count(*) FROM report_rollups "
                                     "WHERE segment_by = 'account'")
