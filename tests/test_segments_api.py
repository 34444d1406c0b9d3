"""Reports split or filtered by a customer attribute, through the HTTP API and the CLI, on
traffic sent through the signed webhooks; the matrix as CSV.

The figures themselves are held equal to the raw-event computation on random traffic in
test_reports.py (`split_figures_equal_the_raw_events`); here: the parameters, their errors,
the shapes, and that the API, the CLI and the CSV agree.
"""

from __future__ import annotations

import csv
import io
import json
import random
from datetime import datetime, timedelta, timezone

from service.conversations.customers import upsert_customer
from service.reporting import export, ops_api, reports
from service.reporting.reports import Window
from tests.test_ops_api import (  # noqa: F401 (fixtures)
    cli,
    events_landed,
    get,
    ops_client,
    ops_token,
    use_servers,
)
from tests.test_report_rollups import DAY, traffic
from tests.test_reports import Contact, insert, without_clock
from tests.twilio_driver import text

GOLD_A, GOLD_B, SILVER, UNKNOWN = ("+15555550501", "+15555550502", "+15555550503",
                                   "+15555550504")


async def tiered_traffic(client, db, redis_client) -> None:
    for phone, tier in ((GOLD_A, "gold"), (GOLD_B, "gold"), (SILVER, "silver")):
        await upsert_customer(db, redis_client, identities=[("phone", phone)],
                              display_name=None, attributes={"tier": tier})
    for phone in (GOLD_A, GOLD_B, SILVER, UNKNOWN):
        await text(client, phone, "I need to track my order")
        await text(client, phone, "yes")
    await text(client, GOLD_B, "Can I talk to a real person please")
    await events_landed(client.app)


async def test_reports_split_and_filtered_by_tier(ops_client, ops_token, db, redis_client):
    await tiered_traffic(ops_client, db, redis_client)
    status, split = await get(ops_client, "/api/reports/summary", ops_token,
                              segment_by="customer.tier")
    assert status == 200 and split["segment_by"] == "customer.tier"
    assert [(s["value"], s["totals"]["contacts"], s["totals"]["self_service_resolved"])
            for s in split["segments"]] == [(None, 1, 1), ("gold", 3, 2), ("silver", 1, 1)]
    status, gold = await get(ops_client, "/api/reports/summary", ops_token,
                             segment_by="customer.tier", segment="gold")
    assert gold["segment"] == {"by": "customer.tier", "value": "gold"}
    assert gold["totals"] == split["segments"][1]["totals"]
    assert gold["totals"]["escalated"] == 1
    _, unset = await get(ops_client, "/api/reports/summary", ops_token,
                         segment_by="customer.tier", segment="")
    assert unset["totals"]["contacts"] == 1 and unset["segment"]["value"] is None
    for name in ("matrix", "journeys", "trend", "candidates"):
        status, report = await get(ops_client, f"/api/reports/{name}", ops_token,
                                   segment_by="customer.tier")
        assert status == 200 and [s["value"] for s in report["segments"]] == \
            [None, "gold", "silver"], name
    _, journeys = await get(ops_client, "/api/reports/journeys", ops_token,
                            segment_by="customer.tier", segment="silver")
    assert journeys["flows"]["track_order"]["journeys"] == 1
    _, attributes = await get(ops_client, "/api/reports/attributes", ops_token)
    assert attributes["attributes"] == {"customer.tier": {"gold": 3, "silver": 1}}


async def test_bad_segment_parameters_are_a_400_that_says_why(ops_client, ops_token):
    for query, message in (
            ({"segment_by": "tier"}, "'segment_by' must name a customer attribute as "
                                     "customer.<name>"),
            ({"segment_by": "customer.ti er"}, "must name a customer attribute"),
            ({"segment": "gold"}, "'segment' needs 'segment_by'")):
        status, body = await get(ops_client, "/api/reports/summary", ops_token, **query)
        assert status == 400 and message in body["error"], query
    status, _ = await get(ops_client, "/api/reports/matrix.csv", None)
    assert status == 401


async def test_a_split_into_too_many_segments_is_refused(ops_client, ops_token, db,
                                                         redis_client):
    for number in range(21):
        phone = f"+155555507{number:02d}"
        await upsert_customer(db, redis_client, identities=[("phone", phone)],
                              display_name=None, attributes={"code": f"c{number}"})
        await text(ops_client, phone, "I need to track my order")
    await events_landed(ops_client.app)
    status, body = await get(ops_client, "/api/reports/summary", ops_token,
                             segment_by="customer.code")
    assert status == 400 and "customer.code takes 21 values in this window; a split shows " \
        "at most 20" in body["error"]
    status, one = await get(ops_client, "/api/reports/summary", ops_token,
                            segment_by="customer.code", segment="c7")
    assert status == 200 and one["totals"]["contacts"] == 1


async def test_the_matrix_csv_has_the_json_figures(ops_client, ops_token, db, redis_client):
    await tiered_traffic(ops_client, db, redis_client)
    headers = {"Authorization": f"Bearer {ops_token}"}
    _, matrix = await get(ops_client, "/api/reports/matrix", ops_token)
    response = await ops_client.get("/api/reports/matrix.csv", headers=headers)
    assert response.status == 200 and response.content_type == "text/csv"
    assert response.headers["Content-Disposition"].startswith(
        'attachment; filename="touchpoint-matrix-')
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert tuple(rows[0]) == export.COLUMNS
    assert len(rows) == 4 * len(matrix["rows"])
    [cell] = [c for c in matrix["rows"] if c["contact_type"] == "track_order"]
    rows = [r for r in rows if r["contact_type"] == "track_order"]
    assert [(r["contact_type"], r["channel"], r["handled_by"], r["contacts"],
             r["self_service_resolved"], r["true_deflection_rate"]) for r in rows] == [
        ("track_order", "sms", "all", "4", "4", "1.0"),
        ("track_order", "sms", "self_service", "4", "4", "1.0"),
        ("track_order", "sms", "agent", "0", "0", ""),
        ("track_order", "sms", "abandoned", "0", "0", "")]
    assert rows[0]["median_resolution_s"] == str(cell["median_resolution_s"])
    split = await ops_client.get("/api/reports/matrix.csv", headers=headers,
                                 params={"segment_by": "customer.tier"})
    rows = list(csv.DictReader(io.StringIO(await split.text())))
    assert {(r["segment_by"], r["segment"], r["handled_by"], r["contacts"]) for r in rows
            if r["handled_by"] == "all" and r["contact_type"] == "track_order"} == {("customer.tier", "", "all", "1"),
                                             ("customer.tier", "gold", "all", "2"),
                                             ("customer.tier", "silver", "all", "1")}


async def test_cli_report_by_tier_equals_the_api(ops_client, ops_token, db, redis_client,
                                                 monkeypatch, settings, capsys):
    await tiered_traffic(ops_client, db, redis_client)
    use_servers(monkeypatch, settings)
    capsys.readouterr()
    assert await cli("report", "--by", "customer.tier", "--format", "json") == 0
    report = json.loads(capsys.readouterr().out)
    _, from_api = await get(ops_client, "/api/reports/summary", ops_token,
                            segment_by="customer.tier", **{"from": report["from"],
                                                           "to": report["to"]})
    assert {**report, "as_of": None} == {**from_api, "as_of": None}

    assert await cli("report", "--by", "customer.tier") == 0
    table = capsys.readouterr().out
    assert "customers with customer.tier = gold" in table
    assert "customers with customer.tier = (not set)" in table
    totals = [line.split()[:2] for line in table.splitlines() if line.startswith("total ")]
    assert totals[::2] == [["total", "1"], ["total", "3"], ["total", "1"]]

    assert await cli("report", "--by", "customer.tier", "--segment", "gold", "--format",
                     "csv") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("segment_by,segment,metric_version,from,to,group,key,contacts")
    assert lines[1].startswith("customer.tier,gold,2,") and ",total,,3," in lines[1]

    assert await cli("report", "--by", "customer.tier", "--format", "csv") == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("segment_by,") for line in lines) == 1  # one header
    assert [line.split(",")[1] for line in lines if ",total,," in line] == ["", "gold", "silver"]

    assert await cli("candidates", "--by", "customer.tier", "--segment", "gold") == 0
    assert "customers with customer.tier = gold" in capsys.readouterr().out
    assert await cli("report", "--by", "tier") == 2
    assert "--by must name a customer attribute" in capsys.readouterr().err
    assert await cli("report", "--segment", "gold") == 2
    assert "--segment needs --by" in capsys.readouterr().err


async def test_demo_fills_the_segments_and_the_surveys(monkeypatch, capsys, settings,
                                                       redis_client, db, tmp_path):
    """`switchboard demo` against a service with surveys: customers carry a tier and a
    language, and answer their surveys, so the new panels have something to show."""
    from tests.browser import serve
    from tests.conftest import _clean_tables, with_settings
    from tests.test_ops_api import ops_app
    from tests.test_surveys import CSAT_ALWAYS, rules_with

    await _clean_tables(settings.database_url)
    use_servers(monkeypatch, settings)
    rules = rules_with(tmp_path, CSAT_ALWAYS)
    monkeypatch.setenv("SWITCHBOARD_RULES_DIR", str(rules))
    app = ops_app(with_settings(settings, rules_dir=rules))
    async with serve(app) as base_url:
        assert await cli("demo", "--contacts", "30", "--seed", "11", "--url", base_url) == 0
        capsys.readouterr()
        await events_landed(app)
        assert await cli("report", "--by", "customer.tier", "--format", "json") == 0
    report = json.loads(capsys.readouterr().out)
    segments = {s["value"]: s["totals"] for s in report["segments"]}
    assert {"standard", "silver", "gold"} & set(segments) and len(segments) >= 3
    assert sum(t["contacts"] for t in segments.values()) == 30
    assert sum(t["surveys_sent"] for t in segments.values()) > \
        sum(t["survey_responses"] for t in segments.values()) > 0
    named = await db.fetchval("SELECT count(*) FROM customers WHERE display_name IS NOT NULL "
                              "AND attributes ? 'language'")
    assert named > 0


async def test_split_reports_over_past_days_follow_a_tier_change(ops_client, ops_token, db,
                                                                 redis_client):
    """Past days of traffic (written to the log directly: the webhooks only make today's),
    tiers set through the directory: splits over whole days and an edge are served from the
    roll-ups by tier, equal to the raw-event computation; a customer moved to another tier
    moves all their contacts in the next report, only their days computed again; a contact
    through the webhooks meanwhile (a new customer, no attributes) recomputes no past day."""
    midnight = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    start = midnight - 4 * DAY + timedelta(hours=9)
    ana = [Contact("ana-api", "sms", start + n * DAY).classified("track_order")
           .routed("orders").offered().resolved() for n in range(2)]
    contacts = [*ana, *traffic(random.Random(31), 30, start, 60)]
    await insert(db, *contacts)
    customers = list(dict.fromkeys(c.customer for c in contacts))
    await db.executemany("INSERT INTO customers (id) VALUES ($1)",  # as the event writer does
                         [(cid,) for cid in customers])
    for number, cid in enumerate(customers):
        await upsert_customer(db, redis_client, identities=[("phone", f"+1555556{number:04d}")],
                              display_name=None, customer_id=str(cid),
                              attributes={"tier": "silver" if number == 0 else
                                          ("gold", "silver")[number % 2]})
    window = Window(start - timedelta(hours=3), midnight)  # an edge, then three whole days
    bounds = {"from": reports.iso(window.start), "to": reports.iso(window.end)}
    rules = ops_api.report_rules(ops_client.app)

    async def served_equals_events() -> dict:
        found = {}
        for name, report in (("summary", reports.summary), ("matrix", reports.matrix),
                             ("journeys", reports.journeys)):
            status, served = await get(ops_client, f"/api/reports/{name}", ops_token,
                                       segment_by="customer.tier", **bounds)
            reference = await reports.split(report, db, window, rules, "tier",
                                            queries=reports.FROM_EVENTS)
            assert status == 200
            assert without_clock(served) == without_clock(json.loads(json.dumps(reference)))
            found[name] = served
        return {s["value"]: s["totals"]["contacts"] for s in found["summary"]["segments"]}

    before = await served_equals_events()
    assert list(before) == ["gold", "silver"]
    whole_days = [(midnight - n * DAY).date() for n in (3, 2, 1)]
    # (the service's warmer may also warm older days by tier, now that a report asked for it)
    kept = dict(await db.fetch("SELECT day, computed_at FROM report_rollups WHERE "
                               "segment_by = 'tier' AND report = 'groupings' "
                               "AND day >= $1", whole_days[0]))
    assert sorted(kept) == whole_days

    await text(ops_client, "+15555550777", "I need to track my order")
    await events_landed(ops_client.app)
    await upsert_customer(db, redis_client, identities=[("phone", "+15555560000")],
                          display_name=None, attributes={"tier": "gold"})
    after = await served_equals_events()
    assert (after["gold"] - before["gold"], after["silver"] - before["silver"]) == (2, -2)
    now_kept = dict(await db.fetch("SELECT day, computed_at FROM report_rollups WHERE "
                                   "segment_by = 'tier' AND report = 'groupings' "
                                   "AND day >= $1", whole_days[0]))
    assert {day for day in kept if now_kept[day] != kept[day]} == {(start + DAY).date()}
