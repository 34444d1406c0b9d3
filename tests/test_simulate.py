"""`switchboard simulate` replays contacts made through the public endpoints."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from service.__main__ import main
from service.appkeys import EVENTS
from tests.twilio_driver import Call, text

ROOT = Path(__file__).resolve().parent.parent
ANA, BEN, CAL, DEE, EVE = (f"+1555555070{i}" for i in range(5))


@pytest.fixture
async def past_traffic(client):
    """Six contacts with known first decisions under the example rules."""
    await text(client, ANA, "I need to track my order")  # self-service
    await text(client, ANA, "yes")
    await text(client, ANA, "I need to track my order")  # again: a repeat, to an agent
    await text(client, BEN, "blorp")  # not understood: a clarifying question
    await text(client, CAL, "I want to talk to a person")
    await (await Call(client, DEE).dial()).press("1")  # track an order, by key
    await (await Call(client, EVE).dial()).hang_up()  # left at the greeting
    assert await client.app[EVENTS].flush()


@pytest.fixture
def candidate(tmp_path) -> Path:
    """Orders by phone go to an agent; repeat contacts about orders get self-service again."""
    rules = tmp_path / "candidate"
    shutil.copytree(ROOT / "routing_rules", rules)
    routes = (rules / "routes.yaml").read_text()
    old = """    - name: orders
      matchers: ['contact_type =~ "(cancel|change|place|track)_order|.*shipping_address|delivery_.*"']
      queue: orders
      routes:
        - name: repeat
          matchers: ['repeat_contact = true']
"""
    new = """    - name: orders
      matchers: ['contact_type =~ "(cancel|change|place|track)_order|.*shipping_address|delivery_.*"']
      queue: orders
      routes:
        - name: by phone
          matchers: ['channel = voice']
"""
    assert old in routes
    (rules / "routes.yaml").write_text(routes.replace(old, new).replace(
        "reason: repeat_contact\n\n    - name: accounts", "reason: rule\n\n    - name: accounts"))
    return rules


async def simulate(monkeypatch, capsys, database_url, *args: str) -> tuple[int, str, str]:
    monkeypatch.setenv("DATABASE_URL", database_url)
    code = await asyncio.to_thread(main, ["simulate", *args])
    out, err = capsys.readouterr()
    return code, out, err


async def test_the_rules_in_force_reproduce_every_recorded_decision(
        past_traffic, monkeypatch, capsys, database_url):
    code, out, err = await simulate(monkeypatch, capsys, database_url, "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["contacts"], report["replayed"]) == (6, 5)
    assert report["not_replayed"] == {"ended_before_a_decision": 1}
    assert report["baseline"] == "recorded"
    assert report["changed"] == {"first_decision": 0, "contact_type": 0, "route": 0, "queue": 0}
    decisions = {k: v["baseline"] for k, v in report["first_decisions"].items()}
    assert decisions == {"self_service": 2, "agent:repeat_contact": 1,
                         "agent:requested_agent": 1, "clarify:out_of_scope": 1}
    assert all(v["baseline"] == v["simulated"] for v in report["first_decisions"].values())
    assert report["examples"] == []
    assert "replaying 6 contacts" in err


async def test_a_candidate_shows_what_it_changes(past_traffic, candidate, monkeypatch, capsys,
                                                 database_url):
    code, out, err = await simulate(monkeypatch, capsys, database_url, "--rules",
                                    str(candidate), "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["rules"]["directory"] == str(candidate)
    assert report["changed"] == {"first_decision": 2, "contact_type": 0, "route": 2, "queue": 0}
    assert report["first_decisions"]["self_service"] == {"baseline": 2, "simulated": 2}
    assert report["first_decisions"]["agent:repeat_contact"] == {"baseline": 1, "simulated": 0}
    assert report["first_decisions"]["agent:rule"] == {"baseline": 0, "simulated": 1}
    assert report["queues"]["orders"] == {"baseline": 1, "simulated": 1}
    assert sorted((c["from"], c["to"], c["contacts"]) for c in
                  report["first_decision_changes"]) == [
        ("agent:repeat_contact", "self_service", 1), ("self_service", "agent:rule", 1)]
    examples = {e["said"]: (e["channel"], e["baseline"]["route_path"],
                            e["simulated"]["route_path"]) for e in report["examples"]}
    assert examples == {
        "I need to track my order": ("sms", "root > orders > repeat", "root > orders"),
        "[pressed 1]": ("voice", "root > orders", "root > orders > by phone")}


async def test_against_other_rules_and_as_a_table(past_traffic, candidate, monkeypatch, capsys,
                                                  database_url):
    code, out, err = await simulate(monkeypatch, capsys, database_url, "--rules",
                                    str(candidate), "--against", str(ROOT / "routing_rules"))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].startswith(f"baseline: {ROOT / 'routing_rules'} (digest ")
    assert lines[2] == "contacts 6, replayed 5, ended before a decision 1"
    rows = [line.split() for line in lines]
    assert ["agent:rule", "0", "1", "+1"] in rows and ["orders", "1", "1", "+0"] in rows
    assert "changed, of 5 replayed: first decision 2, contact type 0, route 2, queue 0" in lines
    assert any(line.endswith("'[pressed 1]': self_service (track_order, root > orders) -> "
                             "agent:rule (track_order, root > orders > by phone)")
               for line in lines)


async def test_bad_input_is_refused_before_any_work(monkeypatch, capsys, database_url, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(ROOT / "routing_rules", broken)
    (broken / "routes.yaml").write_text(
        (broken / "routes.yaml").read_text().replace("queue: billing\n", "queue: biling\n", 1))
    code, out, err = await simulate(monkeypatch, capsys, database_url, "--rules", str(broken))
    assert (code, out) == (1, "")
    assert f"the rules in {broken} are invalid" in err and "unknown queue 'biling'" in err
    code, _, err = await simulate(monkeypatch, capsys, database_url, "--from", "2026-11-10",
                                  "--to", "2026-11-01")
    assert code == 2 and "must be before" in err
    code, _, err = await simulate(monkeypatch, capsys, database_url, "--examples", "-1")
    assert code == 2 and "--examples must be 0 or more" in err
