"""Why an agent is away, end to end: the presence frame's reason on the real agent socket
(with a reason, an unknown one, an old console's none), the supervisor view's reason, time and
limit, the agent report's time in each status on a scripted timeline (the activity clock held,
so the event log's timestamps say when), and away_reasons.yaml's errors with file and line.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime, timezone

import pytest

import service.agents.activity
import service.reporting.supervisor
from service.appkeys import RULES
from service.infra.tokens import create_token, hash_token, new_token
from service.rules.away_reasons import DEFAULT_REASONS, load_away_reasons
from service.rules.loader import load_rules
from tests.conftest import ROOT, service_with_rules
from tests.test_agents import app_settings as agent_settings  # noqa: F401 (fixture)
from tests.test_agents import login, twilio  # noqa: F401 (fixture)
from tests.test_ops_api import HeldClock, cli, events_landed, use_servers
from tests.test_rules_validation import errors
from tests.test_supervisor import by_name, supervised, until, view  # noqa: F401 (fixture)

SHIPPED = [("break", "Break", 15), ("lunch", "Lunch", 60), ("meeting", "Meeting", None),
           ("training", "Training", None), ("after_call_work", "After-call work", 10),
           ("other", "Other", None)]


@pytest.fixture
def activity_clock(monkeypatch) -> HeldClock:
    """When agents' statuses change: the activity script's stamps and the supervisor view's
    reads (its gauges observe too) follow this clock. Consoles kept alive while it is held
    live for days, so moving it by hours does not close them."""
    held = HeldClock()
    monkeypatch.setattr(service.agents.activity, "CONSOLE_TTL_S", 10 * 86400)
    monkeypatch.setattr(service.agents.activity, "time", held)
    monkeypatch.setattr(service.reporting.supervisor, "time", held)
    return held


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


async def error_of(agent, **frame) -> dict:
    await agent.send(**frame)
    while True:
        reply = await agent.ws.receive_json(timeout=5)
        if reply["type"] == "error":
            return reply
        assert reply["type"] != "presence", reply


async def test_the_presence_frame_carries_a_reason_checked_against_the_rules(supervised, db):
    async with service_with_rules(supervised, ROOT / "routing_rules") as client:
        token = await create_token(db, "supervisor", "floor")
        dana = await login(client, db, "Dana", available=False)
        await dana.send(type="presence", status="away", reason="lunch")
        answer = await dana.next("presence")
        assert answer | {"since": None} == {"type": "presence", "status": "away",
                                            "reason": "lunch", "reason_label": "Lunch",
                                            "since": None}
        assert answer["since"].endswith("Z")
        seen = by_name(await view(client, token))["Dana"]
        assert (seen["state"], seen["reason"], seen["reason_label"], seen["reason_limit_s"],
                seen["over_limit"]) == ("away", "lunch", "Lunch", 3600, False)

        refused = await error_of(dana, type="presence", status="away", reason="siesta")
        assert refused["code"] == "unknown_reason"
        assert "'siesta'" in refused["message"] and "break, lunch, meeting" in refused["message"]
        assert by_name(await view(client, token))["Dana"]["reason"] == "lunch"  # unchanged
        refused = await error_of(dana, type="presence", status="available", reason="lunch")
        assert refused["code"] == "bad_frame"

        await dana.send(type="presence", status="away")  # an old console: no reason
        assert (await dana.next("presence"))["reason"] == "other"
        assert by_name(await view(client, token))["Dana"]["reason_label"] == "Other"
        await dana.send(type="presence", status="available")
        assert (await dana.next("presence"))["reason"] is None
        seen = by_name(await view(client, token))["Dana"]
        assert (seen["state"], seen["reason"], seen["over_limit"]) == ("available", None, False)


async def test_the_ready_frame_lists_the_reasons_and_the_one_in_force(supervised, db):
    async with service_with_rules(supervised, ROOT / "routing_rules") as client:
        dana = await login(client, db, "Dana", available=False)
        await dana.send(type="presence", status="away", reason="training")
        await dana.next("presence")
        ready = await _second_console(client, db, "Dana")  # the first stays open
        assert [(r["id"], r["label"], r["limit_min"]) for r in ready["away_reasons"]] == SHIPPED
        assert (ready["agent"]["status"], ready["agent"]["reason"],
                ready["agent"]["reason_label"]) == ("away", "training", "Training")
        assert ready["agent"]["since"].endswith("Z")


async def _second_console(client, db, name: str) -> dict:
    """A new console for the named agent (a fresh token: only hashes are kept)."""
    token = new_token("agent")
    await db.execute("UPDATE agents SET token_hash = $1 WHERE name = $2", hash_token(token), name)
    ws = await client.ws_connect("/agent/ws")
    await ws.send_json({"type": "auth", "token": token})
    while True:
        frame = await ws.receive_json(timeout=5)
        if frame["type"] == "ready":
            await ws.close()
            return frame


async def test_the_supervisor_view_flags_an_agent_over_the_reasons_limit(
        supervised, db, activity_clock):
    async with service_with_rules(supervised, ROOT / "routing_rules") as client:
        token = await create_token(db, "supervisor", "floor")
        dana = await login(client, db, "Dana", available=False)
        eli = await login(client, db, "Eli", available=False)
        fay = await login(client, db, "Fay", available=False)
        activity_clock.at(time.time() - 16 * 60)  # 16 minutes ago Dana went on a break
        await dana.send(type="presence", status="away", reason="break")
        await dana.next("presence")
        activity_clock.at(time.time() - 12 * 60)
        await eli.send(type="presence", status="away", reason="lunch")
        await eli.next("presence")
        activity_clock.release()
        await fay.send(type="presence", status="away", reason="break")
        await fay.next("presence")

        snapshot = await view(client, token)
        seen = by_name(snapshot)
        assert (seen["Dana"]["reason"], seen["Dana"]["over_limit"]) == ("break", True)
        assert 16 * 60 - 1 <= seen["Dana"]["in_state_s"] < 16 * 60 + 30
        assert (seen["Eli"]["reason_label"], seen["Eli"]["over_limit"]) == ("Lunch", False)
        assert (seen["Fay"]["reason"], seen["Fay"]["over_limit"]) == ("break", False)
        assert snapshot["agents_by_state"]["away"] == 3
        assert snapshot["away_by_reason"] == [
            {"reason": "break", "label": "Break", "count": 2},
            {"reason": "lunch", "label": "Lunch", "count": 1}]


async def test_the_agent_report_counts_time_in_each_status_within_the_window(
        supervised, db, activity_clock, monkeypatch, capsys):
    """A scripted shift: away with no reason from before the window, available (from before
    the window: counts from its start), lunch, a break, available again past the window's end."""
    start = (time.time() // 3600 - 72) * 3600  # a whole hour three days ago
    end = start + 3600
    async with service_with_rules(supervised, ROOT / "routing_rules") as client:
        ops = await create_token(db, "ops", "reports")
        activity_clock.at(start - 15 * 60)
        dana = await login(client, db, "Dana", available=False)  # away, no reason given
        activity_clock.at(start - 10 * 60)
        await dana.send(type="presence", status="available")
        await dana.next("presence")
        for at, frame in ((start + 20 * 60, {"status": "away", "reason": "lunch"}),
                          (start + 50 * 60, {"status": "away", "reason": "break"}),
                          (start + 55 * 60, {"status": "available"}),
                          (end + 30 * 60, {"status": "away", "reason": "meeting"})):
            activity_clock.at(at)
            await dana.send(type="presence", **frame)
            await dana.next("presence")
        # Gus signs in for half an hour and is disabled after: listed for his time alone
        activity_clock.at(start + 10 * 60)
        gus = await login(client, db, "Gus", available=False)
        activity_clock.at(start + 40 * 60)
        await gus.ws.close()

        async def gus_offline():
            return by_name(await view(client, ops))["Gus"]["state"] == "offline"
        assert await until(gus_offline)
        await db.execute("UPDATE agents SET disabled_at = now() WHERE name = 'Gus'")
        activity_clock.release()
        await events_landed(client.app)
        dana_id = by_name(await view(client, ops))["Dana"]["id"]

        changes = await db.fetch(
            "SELECT occurred_at, data FROM contact_events WHERE kind = 'agent_status_changed' "
            "AND data->>'agent_id' = $1 ORDER BY occurred_at", dana_id)
        steps = [(json.loads(r["data"])["from"], json.loads(r["data"])["from_reason"],
                  json.loads(r["data"])["to"], json.loads(r["data"])["reason"],
                  json.loads(r["data"])["seconds"]) for r in changes]
        assert steps == [(None, None, "away", None, None),
                         ("away", None, "available", None, 300.0),
                         ("available", None, "away", "lunch", 1800.0),
                         ("away", "lunch", "away", "break", 1800.0),
                         ("away", "break", "available", None, 300.0),
                         ("available", None, "away", "meeting", 2100.0)]
        assert changes[2]["occurred_at"].timestamp() == start + 20 * 60

        response = await client.get("/api/reports/agents", params={"from": iso(start),
                                    "to": iso(end)}, headers={"Authorization": f"Bearer {ops}"})
        assert response.status == 200
        report = await response.json()
        [mine] = [a for a in report["agents"] if a["id"] == dana_id]
        assert (mine["available_s"], mine["busy_s"], mine["away_s"], mine["away_reasons_s"]) == \
            (1500.0, 0.0, 2100.0, {"break": 300.0, "lunch": 1800.0})
        assert mine["offers"] == 0 and mine["handled"] == 0  # the old columns as they were
        [gus] = [a for a in report["agents"] if a["name"] == "Gus"]
        assert (gus["offers"], gus["available_s"], gus["away_s"], gus["away_reasons_s"]) == \
            (0, 0.0, 1800.0, {})
        assert report["team"]["away_reasons_s"]["lunch"] >= 1800.0
        assert "away_reasons_s" in report["definitions"]

        # a window inside one status: the whole window, from a change before it to one after
        inside = await client.get("/api/reports/agents", params={
            "from": iso(start + 25 * 60), "to": iso(start + 35 * 60)},
            headers={"Authorization": f"Bearer {ops}"})
        [mine] = [a for a in (await inside.json())["agents"] if a["id"] == dana_id]
        assert (mine["available_s"], mine["away_s"], mine["away_reasons_s"]) == \
            (0.0, 600.0, {"lunch": 600.0})
        # a window after the last change: its status runs on to the window's end
        later = await client.get("/api/reports/agents", params={
            "from": iso(end + 60 * 60), "to": iso(end + 90 * 60)},
            headers={"Authorization": f"Bearer {ops}"})
        [mine] = [a for a in (await later.json())["agents"] if a["id"] == dana_id]
        assert mine["away_reasons_s"] == {"meeting": 1800.0}

        use_servers(monkeypatch, supervised)
        capsys.readouterr()
        arguments = ("report", "agents", "--from", iso(start), "--to", iso(end))
        assert await cli(*arguments) == 0
        table = capsys.readouterr().out.splitlines()
        head = table[2]
        assert head.split()[-6:] == ["available", "busy", "away", "away", "by", "reason"]
        [row] = [line for line in table if line.startswith("Dana")]
        assert row.split()[-7:] == ["25m", "0s", "35m", "break", "5m,", "lunch", "30m"]
        assert await cli(*arguments, "--format", "csv") == 0
        lines = capsys.readouterr().out.splitlines()
        header = lines[0].split(",")
        [dana_row] = [line for line in lines if dana_id in line]
        assert header[-4:] == ["available_s", "busy_s", "away_s", "away_reasons_s"]
        assert dana_row.endswith('1500.0,0.0,2100.0,"{""break"": 300.0, ""lunch"": 1800.0}"')


def test_without_a_file_the_default_reasons_apply(tmp_path):
    assert load_away_reasons(tmp_path, str(tmp_path)) == DEFAULT_REASONS
    assert [r.id for r in DEFAULT_REASONS.reasons] == ["break", "lunch", "meeting", "training",
                                                       "other"]
    shipped = load_rules(ROOT / "routing_rules", with_classifier=False).away_reasons
    assert [(r.id, r.label, r.limit_s and r.limit_s // 60) for r in shipped.reasons] == SHIPPED
    bank = load_rules(ROOT / "routing_rules" / "bank", with_classifier=False).away_reasons
    assert bank.get("fraud_callback").limit_s == 20 * 60


REASON_CASES = [
    ("bad id", "  - {id: Coffee Break, label: Coffee}\n",
     ["away_reasons.yaml:3: id must be snake_case (a-z, 0-9, _), not 'Coffee Break' "
      "(away_reasons -> 1 -> id)"]),
    ("duplicate", "  - id: break\n    label: Another break\n",
     ["away_reasons.yaml:3: duplicate away reason 'break' (away_reasons -> 1 -> id)"]),
    ("limit not minutes", "  - {id: lunch, label: Lunch, limit_min: 1h}\n",
     ["away_reasons.yaml:3: limit_min must be a whole number of minutes from 1 to 1440, "
      "not '1h' (away_reasons -> 1 -> limit_min)"]),
    ("label missing", "  - id: lunch\n    limit_min: 30\n",
     ["away_reasons.yaml:3: missing required key 'label' (away_reasons -> 1)"]),
    ("unknown key", "  - {id: lunch, label: Lunch, colour: red}\n",
     ["away_reasons.yaml:3: unknown key 'colour' (away_reasons -> 1 -> colour)"]),
    ("empty label", "  - id: lunch\n    label: ''\n",
     ["away_reasons.yaml:4: label must be text of 1 to 40 characters "
      "(away_reasons -> 1 -> label)"]),
]


@pytest.mark.parametrize("written,expected", [c[1:] for c in REASON_CASES],
                         ids=[c[0] for c in REASON_CASES])
def test_a_bad_away_reason_names_file_line_and_key_path(tmp_path, written, expected):
    (tmp_path / "away_reasons.yaml").write_text(
        "away_reasons:\n  - {id: break, label: Break, limit_min: 15}\n" + written)
    assert errors(tmp_path) == expected


def test_the_reasons_must_be_a_list(tmp_path):
    (tmp_path / "away_reasons.yaml").write_text("away_reasons:\n  break: Break\n")
    assert errors(tmp_path) == [
        "away_reasons.yaml:1: expected a list of 1 to 20 reasons (away_reasons)"]
    (tmp_path / "away_reasons.yaml").write_text("reasons: []\n")
    assert errors(tmp_path) == [
        "away_reasons.yaml:1: unknown key 'reasons' (reasons)",
        "away_reasons.yaml:1: missing required key 'away_reasons'"]


async def test_a_bad_file_on_reload_leaves_the_reasons_in_force(supervised, db, tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "routing_rules", rules)
    async with service_with_rules(supervised, rules) as client:
        holder = client.app[RULES]
        before = holder.current
        (rules / "away_reasons.yaml").write_text("away_reasons:\n  - {id: nap, label: ''}\n")
        failed = await holder.reload()
        assert not failed.ok and any("away_reasons.yaml:2: label must be text" in problem
                                     for problem in failed.errors)
        assert holder.current is before and holder.current.away_reasons.get("nap") is None
        dana = await login(client, db, "Dana", available=False)
        refused = await error_of(dana, type="presence", status="away", reason="nap")
        assert refused["code"] == "unknown_reason"
        (rules / "away_reasons.yaml").write_text("away_reasons:\n  - {id: nap, label: Nap}\n")
        await holder.reload()
        await dana.send(type="presence", status="away", reason="nap")
        assert (await dana.next("presence"))["reason_label"] == "Nap"
        await dana.send(type="presence", status="away")  # an old console, and no `other` listed
        assert (await dana.next("presence"))["reason"] is None
        assert by_name(await view(client, await create_token(db, "ops", "x")))["Dana"][
            "reason"] is None
