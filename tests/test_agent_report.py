"""The agent performance report end to end: two agents on the real agent socket, customers
through signed SMS webhooks, offers accepted, declined and left to expire, wrap-ups resolved and
not, a transfer and a survey answer; the figures read back from /api/reports/agents and
`switchboard report agents` on real PostgreSQL and Valkey.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone

import pytest

from service.agents.desk import add_agent
from service.appkeys import EVENTS
from service.infra.tokens import create_token
from tests.conftest import _clean_tables, with_settings
from tests.test_agents import ALL_SKILLS, AgentSocket, instance, login
from tests.test_ops_api import cli, use_servers
from tests.test_surveys import (
    CSAT_ALWAYS,
    rules_with,
    twilio,  # noqa: F401 (fixture)
)
from tests.twilio_driver import text

ASKS_FOR_A_PERSON = "I want to talk to a human"
A, B, C, D = "+15555550601", "+15555550602", "+15555550603", "+15555550604"
OFFER_TIMEOUT_S = 3  # short, so a missed offer expires soon; long enough for a loaded machine


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


@pytest.fixture
def agent_service(settings, tmp_path, twilio, redis_client, db):  # noqa: F811
    """A service on the shipped rules with CSAT surveys after agents, a short offer timeout."""
    async def start():
        await _clean_tables(settings.database_url)
        await db.execute("DELETE FROM agents")
        return instance(with_settings(
            settings, rules_dir=rules_with(tmp_path, CSAT_ALWAYS), twilio_api_base_url=twilio[1],
            twilio_account_sid="AC" + "1" * 32, offer_timeout_s=OFFER_TIMEOUT_S))
    return start


async def report(client, token: str | None, **window) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.get("/api/reports/agents", params=window, headers=headers)
    return response.status, await response.json()


async def presence(agent: AgentSocket, status: str) -> None:
    await agent.send(type="presence", status=status)
    await agent.next("presence")


async def accept(agent: AgentSocket, offer: dict) -> None:
    await agent.send(type="accept", contact_id=offer["contact_id"])
    await agent.next("assigned")


async def wrap_up(agent: AgentSocket, offer: dict, resolved: bool, correction=None) -> None:
    await agent.send(type="wrap_up", contact_id=offer["contact_id"], resolved=resolved,
                     contact_type=correction, note="")
    await agent.next("wrapped_up")


async def play_the_scenario(client, db) -> dict:
    """Dana declines A, misses B, takes C and transfers it, handles D (re-typed, CSAT 4); Eli
    takes A, B and C and wraps them up, two resolved. Returns the moments between the parts."""
    dana = await login(client, db, "Dana", ALL_SKILLS)
    eli = await login(client, db, "Eli", ALL_SKILLS, available=False)
    moments = {"start": time.time()}

    await text(client, A, ASKS_FOR_A_PERSON)
    a = await dana.next("offer")
    await dana.send(type="decline", contact_id=a["contact_id"])
    await presence(eli, "available")
    assert (await eli.next("offer"))["contact_id"] == a["contact_id"]
    await accept(eli, a)
    await presence(eli, "away")

    await text(client, B, ASKS_FOR_A_PERSON)
    b = await dana.next("offer")
    withdrawn = await dana.next("offer_withdrawn", timeout=OFFER_TIMEOUT_S + 5)
    assert (withdrawn["contact_id"], withdrawn["reason"]) == (b["contact_id"], "timeout")
    await presence(eli, "available")
    assert (await eli.next("offer"))["contact_id"] == b["contact_id"]
    await accept(eli, b)
    await presence(eli, "away")

    await text(client, C, ASKS_FOR_A_PERSON)
    c = await dana.next("offer")
    await accept(dana, c)
    await dana.send(type="transfer", contact_id=c["contact_id"], queue=c["queue"], mode="cold")
    assert (await dana.next("transfer_result"))["status"] == "transferred"
    await presence(eli, "available")
    assert (await eli.next("offer"))["contact_id"] == c["contact_id"]
    await accept(eli, c)
    await presence(eli, "away")
    for offer, resolved in ((a, True), (b, False), (c, True)):
        await wrap_up(eli, offer, resolved)
    await asyncio.sleep(0.05)
    moments["middle"] = time.time()
    await asyncio.sleep(0.05)

    await text(client, D, ASKS_FOR_A_PERSON)
    d = await dana.next("offer")
    await accept(dana, d)
    await asyncio.sleep(0.05)
    moments["d_accepted"] = time.time()  # between D's accept and its wrap-up
    await asyncio.sleep(0.05)
    await wrap_up(dana, d, resolved=True, correction="track_order")
    assert await text(client, D, "4 thanks") == ["Thank you for your feedback!"]
    await asyncio.sleep(0.05)
    moments["end"] = time.time()
    assert await client.app[EVENTS].flush()
    return moments


async def handle_times(db, name: str) -> list[float]:
    """Seconds from each of the agent's wrap-ups back to their own accept, from the raw log."""
    agent_id = str(await db.fetchval("SELECT id FROM agents WHERE name = $1", name))
    rows = await db.fetch("SELECT kind, contact_id, occurred_at FROM contact_events "
                          "WHERE kind IN ('agent_accepted', 'wrap_up') AND data->>'agent_id' = $1 "
                          "ORDER BY occurred_at, seq", agent_id)
    accepted = {}
    seconds = []
    for row in rows:
        if row["kind"] == "agent_accepted":
            accepted[row["contact_id"]] = row["occurred_at"]
        else:
            seconds.append((row["occurred_at"] - accepted[row["contact_id"]]).total_seconds())
    return seconds


TIME_IN_STATUS = ("available_s", "busy_s", "away_s", "away_reasons_s")  # test_away_reasons.py


def without_timing(figures: dict) -> dict:
    return {k: v for k, v in figures.items()
            if not k.startswith("handle_time") and k not in TIME_IN_STATUS}


async def test_the_report_counts_what_each_agent_did(agent_service, db):
    async with await agent_service() as client:
        moments = await play_the_scenario(client, db)
        token = await create_token(db, "supervisor", "floor")
        status, body = await report(client, token, **{"from": iso(moments["start"]),
                                                     "to": iso(moments["end"])})
        assert status == 200, body
        dana, eli = body["agents"]
        assert (dana["name"], eli["name"]) == ("Dana", "Eli")
        assert without_timing(dana) == {
            "id": dana["id"], "name": "Dana", "offers": 4, "accepted": 2, "declined": 1,
            "expired": 1, "acceptance_rate": 0.5, "handled": 1, "resolved": 1,
            "resolved_rate": 1.0, "transfers_out": 1, "retyped": 1, "csat": 4.0,
            "csat_responses": 1}
        assert without_timing(eli) == {
            "id": eli["id"], "name": "Eli", "offers": 3, "accepted": 3, "declined": 0,
            "expired": 0, "acceptance_rate": 1.0, "handled": 3, "resolved": 2,
            "resolved_rate": pytest.approx(2 / 3), "transfers_out": 0, "retyped": 0,
            "csat": None, "csat_responses": 0}
        assert without_timing(body["team"]) == {
            "id": None, "name": None, "offers": 7, "accepted": 5, "declined": 1, "expired": 1,
            "acceptance_rate": pytest.approx(5 / 7), "handled": 4, "resolved": 3,
            "resolved_rate": 0.75, "transfers_out": 1, "retyped": 1, "csat": 4.0,
            "csat_responses": 1}

        # time in status (test_away_reasons.py checks it to the second): both held contacts,
        # waited for offers, and none of it outside the window; the team's is their sum
        span = moments["end"] - moments["start"]
        for agent in (dana, eli):
            assert agent["busy_s"] > 0 and agent["available_s"] > 0
            assert agent["available_s"] + agent["busy_s"] + agent["away_s"] <= span + 0.01
        assert body["team"]["busy_s"] == pytest.approx(dana["busy_s"] + eli["busy_s"], abs=0.01)

        eli_seconds, dana_seconds = await handle_times(db, "Eli"), await handle_times(db, "Dana")
        assert len(eli_seconds) == 3 and len(dana_seconds) == 1
        assert all(s > 0 for s in eli_seconds + dana_seconds)
        assert eli["handle_time_mean_s"] == pytest.approx(sum(eli_seconds) / 3, abs=0.001)
        assert eli["handle_time_median_s"] == pytest.approx(sorted(eli_seconds)[1], abs=0.001)
        assert dana["handle_time_mean_s"] == dana["handle_time_median_s"] == pytest.approx(
            dana_seconds[0], abs=0.001)
        every = sorted(eli_seconds + dana_seconds)
        assert body["team"]["handle_time_median_s"] == pytest.approx(
            (every[1] + every[2]) / 2, abs=0.001)
        assert set(body["definitions"]) >= {"window", "acceptance_rate", "handle_time_mean_s",
                                            "csat", "team", "retyped", "transfers_out"}
        assert body["metric_version"] == "2"


async def test_the_window_takes_only_the_events_that_happened_in_it(agent_service, db):
    async with await agent_service() as client:
        moments = await play_the_scenario(client, db)
        token = await create_token(db, "ops", "wallboard")
        _, before = await report(client, token, **{"from": iso(moments["start"]),
                                                  "to": iso(moments["middle"])})
        _, after = await report(client, token, **{"from": iso(moments["middle"]),
                                                 "to": iso(moments["end"])})
        early = {a["name"]: without_timing(a) for a in before["agents"]}
        late = {a["name"]: without_timing(a) for a in after["agents"]}
        assert early["Dana"] | {"id": None} == {
            "id": None, "name": "Dana", "offers": 3, "accepted": 1, "declined": 1,
            "expired": 1, "acceptance_rate": pytest.approx(1 / 3), "handled": 0,
            "resolved": 0, "resolved_rate": None, "transfers_out": 1, "retyped": 0,
            "csat": None, "csat_responses": 0}
        assert late["Dana"] | {"id": None} == {
            "id": None, "name": "Dana", "offers": 1, "accepted": 1, "declined": 0, "expired": 0,
            "acceptance_rate": 1.0, "handled": 1, "resolved": 1, "resolved_rate": 1.0,
            "transfers_out": 0, "retyped": 1, "csat": 4.0, "csat_responses": 1}
        assert (early["Eli"]["handled"], late["Eli"]["handled"]) == (3, 0)
        assert late["Eli"]["offers"] == 0 and after["agents"][1]["handle_time_mean_s"] is None

        # D accepted before the window, wrapped up in it: handled, with its whole handle time
        _, straddling = await report(client, token, **{"from": iso(moments["d_accepted"]),
                                                      "to": iso(moments["end"])})
        dana = straddling["agents"][0]
        assert (dana["offers"], dana["accepted"], dana["handled"]) == (0, 0, 1)
        [seconds] = await handle_times(db, "Dana")
        assert seconds > 0.1
        assert dana["handle_time_mean_s"] == pytest.approx(seconds, abs=0.001)

        _, later = await report(client, token, **{"from": iso(moments["end"] + 1),
                                                 "to": iso(moments["end"] + 3600)})
        assert [a["offers"] + a["handled"] for a in later["agents"]] == [0, 0]  # listed, idle
        assert later["team"]["offers"] == 0 and later["team"]["acceptance_rate"] is None


async def test_tokens_and_bad_windows(agent_service, db):
    async with await agent_service() as client:
        agent = await login(client, db, "Dana", ALL_SKILLS)
        await agent.ws.close()
        agent_token = await add_agent(db, "Finn", ["care"])  # signs in to the console only
        status, body = await report(client, None)
        assert status == 401 and "ops or supervisor token" in body["error"]
        status, body = await report(client, agent_token)
        assert status == 401 and "ops or supervisor token" in body["error"]
        status, body = await report(client, await create_token(db, "agent", "not for this"))
        assert status == 403 and body["error"] == (
            "tokens of role 'agent' cannot read the agent report; use an ops or supervisor token")
        ops = await create_token(db, "ops", "wallboard")
        before = await db.fetchval("SELECT count(*) FROM contact_events")
        for window, message in (({"from": "yesterday"}, "'from' is not a date or time"),
                                ({"from": "2024-05-07", "to": "2024-05-01"},
                                 "must be before 'to'"),
                                ({"to": "2024-13-01"}, "'to' is not a date or time")):
            status, body = await report(client, ops, **window)
            assert status == 400 and message in body["error"], body
        assert await db.fetchval("SELECT count(*) FROM contact_events") == before
        status, body = await report(client, ops)  # the last seven days by default
        assert status == 200 and [a["name"] for a in body["agents"]] == ["Dana", "Finn"]


async def test_the_command_prints_what_the_api_answers(agent_service, db, monkeypatch,
                                                       capsys, settings):
    async with await agent_service() as client:
        moments = await play_the_scenario(client, db)
        token = await create_token(db, "ops", "wallboard")
        window = {"from": iso(moments["start"]), "to": iso(moments["end"])}
        _, from_api = await report(client, token, **window)
    use_servers(monkeypatch, settings)
    capsys.readouterr()
    arguments = ("report", "agents", "--from", window["from"], "--to", window["to"])
    assert await cli(*arguments, "--format", "json") == 0
    assert json.loads(capsys.readouterr().out) == from_api

    assert await cli(*arguments, "--format", "csv") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("metric_version,from,to,team,id,name,offers,accepted,declined,")
    assert [line.split(",")[3:11] for line in lines[1:]] == [
        ["false", from_api["agents"][0]["id"], "Dana", "4", "2", "1", "1", "0.5"],
        ["false", from_api["agents"][1]["id"], "Eli", "3", "3", "0", "0", "1.0"],
        ["true", "", "", "7", "5", "1", "1", str(5 / 7)]]

    assert await cli(*arguments) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("Agents, ")
    rows = {line.split()[0]: line.split() for line in table[3:]}
    assert rows["Dana"][1:6] == ["4", "2", "1", "1", "50.0%"]
    assert rows["team"][1:4] == ["7", "5", "1"] and "4.00 (1)" in " ".join(rows["Dana"])

    assert await cli("report", "agents", "--from", "2024-05-07", "--to", "2024-05-01") == 2
    assert "must be before 'to'" in capsys.readouterr().err
