"""Ops reporting end to end: known scenarios through the public endpoints (signed SMS and voice
webhooks, the chat and agent WebSockets), every figure read back through the report API.

Time: the events of a customer's turn carry the orchestrator's clock (`service.conversations.conversation`
reads `time.time()`), so the tests hold that clock to place contacts days apart, e.g. a repeat
outside the 72 h window. No contact event is written except by the service itself.
Agent-side events (accept, wrap-up) carry the real time, so the scenario that involves an
agent runs at the real time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import time as real_time
from datetime import datetime, timedelta, timezone
from typing import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import service.conversations.conversation
from service.agents.desk import add_agent
from service.app import create_app
from service.appkeys import EVENTS
from service.infra.tokens import create_token, revoke_token, role_of
from service.reporting import cli as cli_ops
from service.reporting import ops_api, reports
from service.settings import settings_from_env
from tests.conftest import AUTH_TOKEN, PUBLIC_URL, _clean_tables
from tests.twilio_driver import Call, text

SMS_ONLY = "+15555550201"      # texted 96 h apart: the repeat is outside the window
SMS_THEN_CALL = "+15555550202"  # texted, then called about it an hour later: false deflection
KEYPAD = "+15555550203"        # solved it on the phone keypad: contained in the IVR
HUNG_UP = "+15555550204"       # hung up at the greeting
WANTS_A_PERSON = "+15555550206"
HOUR = 3600


def ops_app(settings) -> web.Application:
    """The service with the ops routes, whether or not app.py has wired them yet."""
    app = create_app(settings)
    if not any(r.canonical == "/api/reports/summary" for r in app.router.resources()):
        app.router.add_routes(ops_api.routes())
    return app


@pytest.fixture
async def ops_client(settings, redis_client) -> AsyncIterator[TestClient]:
    await _clean_tables(settings.database_url)
    async with TestClient(TestServer(ops_app(settings))) as client:
        yield client


@pytest.fixture
async def ops_token(db, ops_client) -> str:
    return await create_token(db, "ops", "tests")


class HeldClock:
    """Stands in for the `time` module of service.conversations.conversation: turns happen when we say."""

    def __init__(self):
        self.now: float | None = None

    def time(self) -> float:
        return real_time.time() if self.now is None else self.now

    def at(self, moment: float) -> "HeldClock":
        self.now = moment
        return self

    def advance(self, seconds: float) -> "HeldClock":
        self.now += seconds
        return self

    def release(self) -> None:
        self.now = None

    def __getattr__(self, name: str):
        return getattr(real_time, name)


@pytest.fixture
def clock(monkeypatch) -> HeldClock:
    held = HeldClock()
    monkeypatch.setattr(service.conversations.conversation, "time", held)
    return held


async def events_landed(app: web.Application) -> None:
    """Every event emitted so far is in PostgreSQL. The writer's own task flushes every 0.2 s;
    a flush() racing it could copy the same spool segment twice, so let it finish first."""
    await asyncio.sleep(0.6)
    assert await app[EVENTS].flush()


def iso(epoch: float) -> str:
    return reports.iso(datetime.fromtimestamp(epoch, timezone.utc))


async def get(client: TestClient, path: str, token: str | None, **query) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.get(path, params=query, headers=headers)
    return response.status, await response.json()


# ---- the known week -----------------------------------------------------------------------

class AgentSocket:
    def __init__(self, ws):
        self.ws = ws

    async def next(self, kind: str) -> dict:
        while True:
            frame = await asyncio.wait_for(self.ws.receive_json(), 10)
            assert frame["type"] != "error", frame
            if frame["type"] == kind:
                return frame


async def agent_takes_the_chat(client: TestClient, db) -> None:
    token = await add_agent(db, "Dana", ["accounts"])
    agent = AgentSocket(await client.ws_connect("/agent/ws"))
    await agent.ws.send_json({"type": "auth", "token": token})
    await agent.next("ready")
    await agent.ws.send_json({"type": "presence", "status": "available"})
    offer = await agent.next("offer")
    await agent.ws.send_json({"type": "accept", "contact_id": offer["contact_id"]})
    await agent.next("assigned")
    await agent.ws.send_json({"type": "wrap_up", "contact_id": offer["contact_id"],
                              "resolved": True, "note": "sent a reset link"})
    await agent.next("wrapped_up")
    await agent.ws.close()


async def chat_until(ws, state: str) -> list[str]:
    said = []
    while True:
        frame = await asyncio.wait_for(ws.receive_json(), 10)
        if frame["type"] == "message":
            said.append(frame["text"])
        if frame["type"] == "status" and frame["state"] == state:
            return said


async def sms_answer_accepted(client, clock: HeldClock, phone: str, at: float) -> None:
    clock.at(at)
    assert (await text(client, phone, "I need to track my order"))[-1] == \
        "Did that help? Reply YES or NO."
    clock.advance(40)
    assert (await text(client, phone, "yes"))[0].startswith("Great, glad that helped")


async def known_week(client: TestClient, db, clock: HeldClock) -> dict:
    """Eight contacts of six customers over four days; returns the report window."""
    base = math.floor(real_time.time() / HOUR) * HOUR - 100 * HOUR
    await sms_answer_accepted(client, clock, SMS_ONLY, base)

    clock.at(base + 88 * HOUR)
    call = await Call(client, KEYPAD).dial()
    clock.advance(5)
    await call.press("2")  # cancel an order: the answer
    clock.advance(20)
    await call.press("1")  # yes, that helped
    assert call.verbs() == ["Say", "Hangup"]
    clock.advance(1)
    await call.hang_up()

    clock.at(base + 89 * HOUR)
    call = await Call(client, HUNG_UP).dial()
    clock.advance(8)
    await call.hang_up()

    await sms_answer_accepted(client, clock, SMS_THEN_CALL, base + 90 * HOUR)
    clock.at(base + 91 * HOUR)
    call = await Call(client, SMS_THEN_CALL).dial()
    assert call.said()[0].startswith("Welcome back.")
    clock.advance(5)
    await call.press("1")  # yes, it is about that: to a person
    assert call.twiml.find("Enqueue").text == "orders"
    clock.advance(5)
    await call.hold()
    clock.advance(60)
    await call.leave_queue("hangup")
    clock.advance(1)
    await call.hang_up()

    await sms_answer_accepted(client, clock, SMS_ONLY, base + 96 * HOUR)  # 96 h later: new
    clock.at(base + 97 * HOUR)
    assert "Customer care team" in (await text(client, WANTS_A_PERSON,
                                               "Can I talk to a real person please"))[0]

    clock.release()  # the agent's events carry the real time: so does this chat
    ws = await client.ws_connect("/chat/ws")
    await ws.send_json({"type": "start", "session": None})
    await chat_until(ws, "self_service")
    await ws.send_json({"type": "message", "text": "I forgot my password and can't log in"})
    assert "Did that help?" in await chat_until(ws, "self_service")
    await ws.send_json({"type": "message", "text": "no"})
    await chat_until(ws, "queued")
    await agent_takes_the_chat(client, db)
    await chat_until(ws, "closed")
    await ws.close()
    await events_landed(client.app)
    return {"from": iso(base - HOUR), "to": iso(real_time.time() + HOUR), "base": base}


def figures(contacts, offered, resolved, false, escalated, abandoned, accepted, in_level,
            voice, contained) -> dict:
    counts = dict.fromkeys(reports.COUNT_FIELDS, 0) | dict(zip(
        reports.COUNT_FIELDS, (contacts, offered, resolved, false, escalated, abandoned,
                               accepted, in_level, voice, contained)))
    return reports.figures(counts)


# The matrix's survey split of a cell without surveys.
UNSURVEYED = {who: {"surveys_sent": 0, "survey_responses": 0, "survey_response_rate": None,
                    "csat": None, "nps": None} for who in ("self_service", "agent", "abandoned")}


async def test_summary_of_the_known_week(ops_client, db, clock, ops_token):
    week = await known_week(ops_client, db, clock)
    status, report = await get(ops_client, "/api/reports/summary", ops_token,
                               **{"from": week["from"], "to": week["to"]})
    assert status == 200
    assert (report["metric_version"], report["from"], report["to"]) == \
        ("2", week["from"], week["to"])
    assert report["service_level_s"] == 60 and report["definitions"] == reports.DEFINITIONS
    assert report["totals"] == {
        "contacts": 8, "self_service_offered": 5, "self_service_resolved": 4,
        "false_deflections": 1, "escalated": 3, "abandoned": 1, "accepted": 1,
        "accepted_in_service_level": 1, "voice_contacts": 3, "voice_contained": 2,
        "transferred": 0, "callbacks_requested": 0, "callbacks_completed": 0,
        "deflection_rate": 0.5, "true_deflection_rate": 0.375, "containment_rate": 2 / 3,
        "abandonment_rate": 1 / 3, "service_level": 1 / 3} | {
        k: v for k, v in figures(0, 0, 0, 0, 0, 0, 0, 0, 0, 0).items()
        if k.startswith(("survey", "csat", "nps"))}
    assert report["by_contact_type"] == {
        "cancel_order": figures(1, 1, 1, 0, 0, 0, 0, 0, 1, 1),
        "recover_password": figures(1, 1, 0, 0, 1, 0, 1, 1, 0, 0),
        "track_order": figures(4, 3, 3, 1, 1, 1, 0, 0, 1, 0),  # the 96 h repeat: no
        "unclassified": figures(2, 0, 0, 0, 1, 0, 0, 0, 1, 1)}
    assert report["by_channel"] == {
        "chat": figures(1, 1, 0, 0, 1, 0, 1, 1, 0, 0),
        "sms": figures(4, 3, 3, 1, 1, 0, 0, 0, 0, 0),
        "voice": figures(3, 1, 1, 0, 1, 1, 0, 0, 3, 2)}
    assert report["by_queue"] == {
        "accounts": figures(1, 1, 0, 0, 1, 0, 1, 1, 0, 0),
        "general": figures(1, 0, 0, 0, 1, 0, 0, 0, 0, 0),
        "none": figures(1, 0, 0, 0, 0, 0, 0, 0, 1, 1),
        "orders": figures(5, 4, 4, 1, 1, 1, 0, 0, 2, 1)}
    assert report["by_route"] == {
        "none": figures(1, 0, 0, 0, 0, 0, 0, 0, 1, 1),
        "root": figures(1, 0, 0, 0, 1, 0, 0, 0, 0, 0),
        "root > accounts": figures(1, 1, 0, 0, 1, 0, 1, 1, 0, 0),
        "root > orders": figures(4, 4, 4, 1, 0, 0, 0, 0, 1, 1),
        "root > orders > repeat": figures(1, 0, 0, 0, 1, 1, 0, 0, 1, 0)}
    assert report["escalation_reasons"] == {"repeat_contact": 1, "requested_agent": 1,
                                            "self_service_failed": 1}


async def test_matrix_of_the_known_week(ops_client, db, clock, ops_token):
    week = await known_week(ops_client, db, clock)
    status, report = await get(ops_client, "/api/reports/matrix", ops_token,
                               **{"from": week["from"], "to": week["to"]})
    assert status == 200 and report["metric_version"] == "2"
    rows = report["rows"]
    chat_median = rows[1].pop("median_resolution_s")  # the agent's part ran on the real clock
    assert 0 < chat_median < 30
    handled = {(r["contact_type"], r["channel"]): {who: f["contacts"] for who, f in
                                                   r["by_handling"].items()} for r in rows}
    assert handled["track_order", "sms"] == {"self_service": 3, "agent": 0, "abandoned": 0}
    assert handled["recover_password", "chat"] == {"self_service": 0, "agent": 1,
                                                   "abandoned": 0}
    for row in rows:  # by_handling has every figure; the surveys' are compared below
        row["by_handling"] = {who: {k: v for k, v in figures.items() if k in UNSURVEYED["agent"]}
                              for who, figures in row["by_handling"].items()}
    assert rows == [
        {"contact_type": "cancel_order", "label": "Cancel an order", "channel": "voice",
         **figures(1, 1, 1, 0, 0, 0, 0, 0, 1, 1), "median_resolution_s": 25.0,
         "by_handling": UNSURVEYED},
        {"contact_type": "recover_password", "label": "Reset a password", "channel": "chat",
         **figures(1, 1, 0, 0, 1, 0, 1, 1, 0, 0), "by_handling": UNSURVEYED},
        {"contact_type": "track_order", "label": "Track an order", "channel": "sms",
         **figures(3, 3, 3, 1, 0, 0, 0, 0, 0, 0), "median_resolution_s": 40.0,
         "by_handling": UNSURVEYED},
        {"contact_type": "track_order", "label": "Track an order", "channel": "voice",
         **figures(1, 0, 0, 0, 1, 1, 0, 0, 1, 0), "median_resolution_s": None,
         "by_handling": UNSURVEYED},
        {"contact_type": "unclassified", "label": "unclassified", "channel": "sms",
         **figures(1, 0, 0, 0, 1, 0, 0, 0, 0, 0), "median_resolution_s": None,
         "by_handling": UNSURVEYED},
        {"contact_type": "unclassified", "label": "unclassified", "channel": "voice",
         **figures(1, 0, 0, 0, 0, 0, 0, 0, 1, 1), "median_resolution_s": None,
         "by_handling": UNSURVEYED}]


async def test_journeys_of_the_known_week(ops_client, db, clock, ops_token):
    week = await known_week(ops_client, db, clock)
    status, report = await get(ops_client, "/api/reports/journeys", ops_token,
                               **{"from": week["from"], "to": week["to"]})
    assert status == 200 and report["limit_per_contact_type"] == 5
    assert report["journeys"] == [
        {"contact_type": "track_order", "path": "sms:self_service",
         "steps": ["sms:self_service"], "journeys": 2, "cross_channel": False},
        {"contact_type": "cancel_order", "path": "voice:self_service",
         "steps": ["voice:self_service"], "journeys": 1, "cross_channel": False},
        {"contact_type": "recover_password", "path": "chat:agent", "steps": ["chat:agent"],
         "journeys": 1, "cross_channel": False},
        {"contact_type": "track_order", "path": "sms:self_service -> voice:abandoned",
         "steps": ["sms:self_service", "voice:abandoned"], "journeys": 1,
         "cross_channel": True}]
    assert report["dropouts"] == [
        {"contact_type": "recover_password", "channel": "chat", "step": "answer",
         "exit": "self_service_failed", "contacts": 1},
        {"contact_type": "unclassified", "channel": "sms", "step": "greeting",
         "exit": "requested_agent", "contacts": 1},
        {"contact_type": "unclassified", "channel": "voice", "step": "greeting",
         "exit": "hung_up_in_ivr", "contacts": 1}]


async def test_hourly_trend_of_the_known_week(ops_client, db, clock, ops_token):
    week = await known_week(ops_client, db, clock)
    start = week["base"] + 88 * HOUR
    status, report = await get(ops_client, "/api/reports/trend", ops_token, bucket="hour",
                               **{"from": iso(start), "to": iso(start + 4 * HOUR)})
    assert status == 200 and report["bucket"] == "hour"
    assert [{k: p[k] for k in ("start", "contacts", "deflection_rate", "containment_rate",
                               "abandonment_rate")} for p in report["points"]] == [
        {"start": iso(start), "contacts": 1, "deflection_rate": 1.0, "containment_rate": 1.0,
         "abandonment_rate": None},  # the keypad caller
        {"start": iso(start + HOUR), "contacts": 1, "deflection_rate": 0.0,
         "containment_rate": 1.0, "abandonment_rate": None},  # hung up at the greeting
        {"start": iso(start + 2 * HOUR), "contacts": 1, "deflection_rate": 1.0,
         "containment_rate": None, "abandonment_rate": None},  # the text, answered
        {"start": iso(start + 3 * HOUR), "contacts": 1, "deflection_rate": 0.0,
         "containment_rate": 0.0, "abandonment_rate": 1.0}]  # the call about it, abandoned
    assert report["points"][2]["false_deflections"] == 1


# ---- authorization and parameters ---------------------------------------------------------

REPORTS = ("summary", "matrix", "journeys", "trend")


@pytest.mark.parametrize("name", REPORTS)
async def test_reports_need_an_ops_token(ops_client, db, name):
    path = f"/api/reports/{name}"
    for headers in ({}, {"Authorization": "Bearer not-a-token"},
                    {"Authorization": "Basic b3BzOm9wcw=="}, {"Authorization": "Bearer "}):
        response = await ops_client.get(path, headers=headers)
        assert response.status == 401, headers
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="switchboard"'
        assert "switchboard tokens add --role ops" in (await response.json())["error"]
    agent_token = await create_token(db, "agent", "console")
    status, body = await get(ops_client, path, agent_token)
    assert status == 403
    assert body["error"] == "tokens of role 'agent' cannot read reports; use an ops token"


async def test_a_revoked_token_stops_working(ops_client, db, ops_token):
    assert (await get(ops_client, "/api/reports/summary", ops_token))[0] == 200
    assert await revoke_token(db, ops_token)
    assert (await get(ops_client, "/api/reports/summary", ops_token))[0] == 401


@pytest.mark.parametrize("query, message", [
    ({"from": "last tuesday"}, "'from' is not a date or time: 'last tuesday' (use ISO 8601, "
                               "e.g. 2024-05-01 or 2024-05-01T09:00:00Z)"),
    ({"from": "2024-05-01", "to": "2024-02-30"}, "'to' is not a date or time: '2024-02-30'"),
    ({"from": "2024-05-08", "to": "2024-05-01"},
     "'from' (2024-05-08T00:00:00Z) must be before 'to' (2024-05-01T00:00:00Z)"),
    ({"service_level_s": "soon"}, "'service_level_s' must be a number from 1 to 86400, not "
                                  "'soon'"),
    ({"service_level_s": "0"}, "'service_level_s' must be a number from 1 to 86400"),
])
@pytest.mark.parametrize("name", REPORTS)
async def test_bad_parameters_are_a_400_that_says_why(ops_client, ops_token, name, query,
                                                      message):
    status, body = await get(ops_client, f"/api/reports/{name}", ops_token, **query)
    assert status == 400
    assert body["error"].startswith(message)


@pytest.mark.parametrize("path, message", [
    ("/api/reports/journeys?limit=0", "'limit' must be a whole number from 1 to 100, not '0'"),
    ("/api/reports/journeys?limit=2.5", "'limit' must be a whole number"),
    ("/api/reports/trend?bucket=minute", "'bucket' must be one of hour, day, week"),
    ("/api/reports/trend?bucket=hour&from=2020-01-01&to=2024-01-01", "more than 1000 points"),
])
async def test_report_specific_parameters(ops_client, ops_token, path, message):
    response = await ops_client.get(path, headers={"Authorization": f"Bearer {ops_token}"})
    assert response.status == 400
    assert message in (await response.json())["error"]


async def test_defaults_are_the_last_seven_days(ops_client, ops_token):
    status, report = await get(ops_client, "/api/reports/summary", ops_token)
    assert status == 200
    start = datetime.fromisoformat(report["from"])
    end = datetime.fromisoformat(report["to"])
    assert end - start == timedelta(days=7)
    assert abs(end - datetime.now(timezone.utc)) < timedelta(minutes=1)
    assert report["totals"]["contacts"] == 0 and report["totals"]["deflection_rate"] is None


async def test_reports_are_not_cached_and_the_database_failing_is_a_503(ops_client, ops_token,
                                                                        monkeypatch):
    response = await ops_client.get("/api/reports/summary",
                                    headers={"Authorization": f"Bearer {ops_token}"})
    assert response.headers["Cache-Control"] == "no-store"

    async def broken(*args, **kwargs):
        raise ConnectionRefusedError("connection refused")

    monkeypatch.setattr(reports, "summary", broken)
    status, body = await get(ops_client, "/api/reports/summary", ops_token)
    assert (status, body) == (503, {"error": "the event log cannot be read right now; try "
                                             "again"})


async def test_the_dashboard_page_and_its_files_need_no_token(ops_client):
    page = await ops_client.get("/ops")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    assert '<script type="module" src="/ops/ops.js">' in html and "/ops/ops.css" in html
    urls = set(re.findall(r"https?://[^\s\"'`)]+", html))
    sheets = re.findall(r'<link rel="stylesheet" href="([^"]+)">', html)
    assert sheets == ["/static/theme.css", "/static/chrome.css", "/ops/ops.css"]
    files = [("/ops/ops.js", "application/javascript")] + [(s, "text/css") for s in sheets]
    for path, kind in files:  # the modules ops.js imports are followed too
        response = await ops_client.get(path)
        assert (response.status, response.content_type) == (200, kind)
        body = await response.text()
        urls |= set(re.findall(r"https?://[^\s\"'`)]+", body))
        files += [(module, "application/javascript") for module in
                  re.findall(r'^import .* from "(/static/[^"]+)";', body, re.MULTILINE)
                  if (module, "application/javascript") not in files]
    assert ("/static/ops_heatmap.js", "application/javascript") in files
    assert urls == {"http://www.w3.org/2000/svg"}  # a namespace name: nothing is fetched


async def test_report_requests_are_counted_for_prometheus(ops_client, ops_token):
    await get(ops_client, "/api/reports/matrix", None)
    await get(ops_client, "/api/reports/matrix", ops_token)
    exported = await (await ops_client.get("/metrics")).text()
    assert 'switchboard_ops_api_requests_total{endpoint="matrix",status="401"}' in exported
    assert 'switchboard_ops_api_requests_total{endpoint="matrix",status="200"}' in exported
    assert 'switchboard_report_query_seconds_count{report="matrix"}' in exported


async def test_live_counters_of_contact_events(ops_client):
    from service.reporting.events import Event
    from service.reporting.metrics import observe_events

    observe_events([Event("escalated", "c1", "u1", "voice", reason="requested_agent"),
                    Event("ended", "c1", "u1", "voice", data={"outcome": "abandoned_in_queue"}),
                    Event("ended", "c2", "u2", "sms", data={"outcome": "self_service_resolved"})])
    exported = await (await ops_client.get("/metrics")).text()
    for line in ('switchboard_escalations_total{channel="voice",reason="requested_agent"}',
                 'switchboard_contacts_ended_total{channel="voice",outcome="abandoned_in_queue"}',
                 'switchboard_contacts_ended_total{channel="sms",outcome="self_service_resolved"}',
                 'switchboard_contact_events_total{channel="voice",kind="ended"}'):
        assert line in exported


async def test_queues_now_waiting_longest_wait_and_agents(ops_client, db, ops_token):
    from service.appkeys import QUEUE_LOAD

    await text(ops_client, "+15555550301", "I want to talk to a person")
    await asyncio.sleep(0.3)
    await text(ops_client, "+15555550302", "I need to track my order")
    await text(ops_client, "+15555550302", "no")
    billing_agent = AgentSocket(await ops_client.ws_connect("/agent/ws"))  # offered nothing
    await billing_agent.ws.send_json({"type": "auth",
                                      "token": await add_agent(db, "Bo", ["billing"])})
    await billing_agent.next("ready")
    await billing_agent.ws.send_json({"type": "presence", "status": "available"})
    await billing_agent.next("presence")

    status, now = await get(ops_client, "/api/queues", ops_token)
    assert status == 200 and now["agents_available"] == 1
    general, orders, billing = (now["queues"][q] for q in ("general", "orders", "billing"))
    assert (general["waiting"], orders["waiting"], billing["waiting"]) == (1, 1, 0)
    assert (general["label"], billing["longest_wait_s"]) == ("Customer care", None)
    assert general["longest_wait_s"] > orders["longest_wait_s"] >= 0
    assert datetime.fromisoformat(now["as_of"]) <= datetime.now(timezone.utc)
    assert (await get(ops_client, "/api/queues", None))[0] == 401

    await ops_client.app[QUEUE_LOAD].refresh()
    exported = await (await ops_client.get("/metrics")).text()
    assert 'switchboard_queue_waiting{queue="orders"} 1.0' in exported
    assert 'switchboard_queue_waiting{queue="billing"} 0.0' in exported
    await billing_agent.ws.close()


# ---- command line -------------------------------------------------------------------------

def use_servers(monkeypatch, settings) -> None:
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
    monkeypatch.setenv("SWITCHBOARD_PUBLIC_URL", PUBLIC_URL)


def switchboard(argv: list[str]) -> int:
    """The ops commands as `switchboard` runs them (built here until __main__ registers them)."""
    parser = argparse.ArgumentParser(prog="switchboard")
    cli_ops.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args, settings_from_env())


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(switchboard, list(argv))


async def test_tokens_add_prints_the_token_alone_on_its_last_line(monkeypatch, capsys, settings,
                                                                  db, ops_client):
    use_servers(monkeypatch, settings)
    assert await cli("tokens", "add", "--role", "ops", "--name", "wallboard") == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert token.startswith("sb_ops_") and len(token) == 50
    assert await role_of(db, token) == "ops"
    stored = await db.fetchrow("SELECT name, token_hash FROM api_tokens WHERE name = 'wallboard'")
    assert token not in stored["token_hash"]  # only the hash is kept
    assert (await get(ops_client, "/api/reports/summary", token))[0] == 200


def test_tokens_add_needs_the_ops_role(capsys):
    with pytest.raises(SystemExit):
        switchboard(["tokens", "add", "--role", "admin"])
    assert "invalid choice: 'admin'" in capsys.readouterr().err


async def test_report_command_in_three_formats(monkeypatch, capsys, settings, ops_client,
                                               ops_token, clock):
    clock.at(datetime(2024, 5, 6, 9, tzinfo=timezone.utc).timestamp())
    await text(ops_client, SMS_ONLY, "I need to track my order")
    await text(ops_client, SMS_ONLY, "yes")
    clock.advance(60)
    await text(ops_client, WANTS_A_PERSON, "Can I talk to a real person please")
    await events_landed(ops_client.app)
    use_servers(monkeypatch, settings)
    window = ("--from", "2024-05-06", "--to", "2024-05-07")
    capsys.readouterr()  # the service's own log lines so far

    assert await cli("report", *window, "--format", "json") == 0
    report = json.loads(capsys.readouterr().out)
    _, from_api = await get(ops_client, "/api/reports/summary", ops_token, **{
        "from": "2024-05-06", "to": "2024-05-07"})
    assert {**report, "as_of": None} == {**from_api, "as_of": None}
    assert report["totals"]["contacts"] == 2 and report["totals"]["deflection_rate"] == 0.5

    assert await cli("report", *window, "--format", "csv") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("metric_version,from,to,group,key,contacts,self_service_offered,"
                        "self_service_resolved,false_deflections,escalated,abandoned,accepted,"
                        "accepted_in_service_level,voice_contacts,voice_contained,"
                        "surveys_sent,survey_responses,csat_responses,csat_points,"
                        "nps_responses,nps_promoters,nps_detractors,transferred,"
                        "callbacks_requested,callbacks_completed,deflection_rate,true_deflection_rate,containment_rate,"
                        "abandonment_rate,service_level,survey_response_rate,csat,nps")
    assert lines[1] == "2,2024-05-06T00:00:00Z,2024-05-07T00:00:00Z,total,,2,1,1,0,1,0,0,0,0," \
                       "0,0,0,0,0,0,0,0,0,0,0,0.5,0.5,,0.0,0.0,,,"
    assert "2,2024-05-06T00:00:00Z,2024-05-07T00:00:00Z,escalation_reason,requested_agent,,,,," \
           "1" + "," * 23 in lines

    assert await cli("report", *window) == 0
    table = capsys.readouterr().out
    assert "Switchboard report, metric version 2" in table
    assert "contacts that started from 2024-05-06T00:00:00Z to 2024-05-07T00:00:00Z" in table
    assert [line.split() for line in table.splitlines() if line.startswith("total")] == [
        ["total", "2", "1", "1", "0", "1", "0", "0", "50.0%", "50.0%", "-", "0.0%", "0.0%"],
        ["total", "0", "0", "-", "-", "-"]]  # satisfaction surveys: none sent
    assert "  requested_agent" in table


async def test_report_command_refuses_a_bad_window(monkeypatch, capsys, settings):
    use_servers(monkeypatch, settings)
    assert await cli("report", "--from", "2024-05-07", "--to", "2024-05-01") == 2
    assert "'from' (2024-05-07T00:00:00Z) must be before 'to'" in capsys.readouterr().err


async def test_demo_sends_traffic_through_the_public_endpoints(monkeypatch, capsys, settings,
                                                               redis_client, db):
    from tests.browser import serve

    await _clean_tables(settings.database_url)
    use_servers(monkeypatch, settings)
    app = ops_app(settings)
    async with serve(app) as base_url:
        agent_token = await add_agent(db, "Demo", ["care", "orders", "accounts", "billing",
                                                   "shipping"])
        assert await cli("demo", "--contacts", "24", "--seed", "7", "--url", base_url,
                         "--agent-token", agent_token) == 0
        out = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sent ")]
        await events_landed(app)
        token = await create_token(db, "ops")
        async with aiohttp.ClientSession() as http, http.get(
                f"{base_url}/api/reports/summary",
                headers={"Authorization": f"Bearer {token}"}) as response:
            report = await response.json()
    assert out[0].startswith(f"sent 24 contacts to {base_url}: ")
    sent = dict(part.split(" ")[::-1] for part in out[0].split(": ")[1].split(", "))
    assert report["totals"]["contacts"] == 24
    assert {channel: figures["contacts"] for channel, figures in report["by_channel"].items()} \
        == {channel: int(n) for channel, n in sent.items()}
    assert report["totals"]["self_service_resolved"] > 0
