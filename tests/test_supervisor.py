"""The supervisor view end to end: agents on the agent WebSocket of two instances, contacts
through the signed webhooks and the chat socket, figures read back from /api/supervisor and
/metrics on real PostgreSQL and Valkey; the queue's service-level target checked in
routes.yaml with file and line.
"""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

import service.agents.activity
from service.agents.desk import add_agent
from service.appkeys import RULES
from service.infra.tokens import create_token, role_of
from tests.conftest import ROOT, service_with_rules, with_settings
from tests.test_agents import (
    ALL_SKILLS,
    instance,
    login,
    open_chat,
    twilio,  # noqa: F401 (fixture)
)
from tests.test_agents import app_settings as agent_settings  # noqa: F401 (fixture)
from tests.test_ops_api import cli, clock, events_landed, use_servers  # noqa: F401 (fixture)
from tests.test_redis_ha import shape_url  # noqa: F401 (fixture)
from tests.test_rules_validation import ROUTES, errors
from tests.twilio_driver import Call, text


@pytest.fixture
async def supervised(agent_settings, db):  # noqa: F811
    """The agent test set-up, with an empty agent directory: the view lists every agent."""
    await db.execute("DELETE FROM agents")
    return agent_settings


async def view(client, token: str) -> dict:
    response = await client.get("/api/supervisor", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200, await response.text()
    return await response.json()


def by_name(snapshot: dict) -> dict[str, dict]:
    return {agent["name"]: agent for agent in snapshot["agents"]}


def stamped_between(agent: dict, start: float, end: float) -> bool:
    from datetime import datetime
    since = datetime.fromisoformat(agent["since"]).timestamp()
    return start - 0.001 <= since <= end + 0.001


async def until(check, timeout: float = 5):
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.1)


async def observed(client, token: str, since: float) -> dict[str, dict]:
    """The view's agents, read after an action that began at `since`; each stamp of that
    action lies between the two (made by the console's frame or by this read)."""
    seen = by_name(await view(client, token))
    observed.window = (since, time.time())
    return seen


def stamped_in_window(agent: dict) -> bool:
    start, end = observed.window
    return stamped_between(agent, start, end)


async def test_agents_on_two_instances_are_seen_with_their_state_contacts_and_time(
        supervised, db):
    async with instance(supervised) as one, instance(supervised) as two:
        token = await create_token(db, "supervisor", "floor")
        await add_agent(db, "Finn", ["care"])  # never connects
        start = time.time()
        dana = await login(one, db, "Dana", ALL_SKILLS)
        seen = await observed(two, token, start)
        assert seen["Finn"] | {"id": None} == {
            "id": None, "name": "Finn", "skills": ["care"], "state": "offline",
            "presence": "away", "since": None, "in_state_s": None, "reason": None,
            "reason_label": None, "reason_limit_s": None, "over_limit": False,
            "contacts": {}, "offers": 0,
            "capacity": {"sms": 3, "voice": 1, "chat": 3, "whatsapp": 3}, "held": []}
        assert seen["Dana"]["state"] == "available" and stamped_in_window(seen["Dana"])
        dana_available = seen["Dana"]["since"]

        start = time.time()
        eli = await login(two, db, "Eli", ALL_SKILLS, available=False)
        await eli.send(type="presence", status="away", reason="meeting")
        assert (await eli.next("presence"))["reason"] == "meeting"
        seen = await observed(one, token, start)
        assert seen["Eli"]["state"] == "away" and stamped_in_window(seen["Eli"])
        assert (seen["Eli"]["reason"], seen["Eli"]["reason_label"]) == ("meeting", "Meeting")
        assert seen["Dana"]["since"] == dana_available

        await text(one, "+15555550401", "I want to talk to a human")
        sms = await dana.next("offer")
        offered = by_name(await view(two, token))["Dana"]
        assert (offered["state"], offered["offers"], offered["contacts"]) == ("available", 1, {})
        assert offered["since"] == dana_available  # an offer is not work yet
        start = time.time()
        await dana.send(type="accept", contact_id=sms["contact_id"])
        await dana.next("assigned")
        seen = await observed(two, token, start)
        assert seen["Dana"]["state"] == "busy" and stamped_in_window(seen["Dana"])
        busy_since = seen["Dana"]["since"]

        chat, _ = await open_chat(two)  # the customer's chat is on the other instance
        await chat.next("message")
        await chat.send(type="message", text="I want to talk to a human")
        offer = await dana.next("offer")
        assert offer["channel"] == "chat"
        await dana.send(type="accept", contact_id=offer["contact_id"])
        await dana.next("assigned")

        snapshot = await view(two, token)
        seen = by_name(snapshot)
        assert seen["Dana"]["state"] == "busy" and seen["Dana"]["presence"] == "available"
        assert seen["Dana"]["contacts"] == {"chat": 1, "sms": 1}
        # each held contact is listed (its keys spread over the cluster's nodes)
        assert {(c["contact_id"], c["channel"]) for c in seen["Dana"]["held"]} == \
            {(sms["contact_id"], "sms"), (offer["contact_id"], "chat")}
        assert seen["Dana"]["offers"] == 0
        assert seen["Dana"]["since"] == busy_since  # busy since the first contact
        assert snapshot["agents_by_state"] == {"available": 0, "busy": 1, "away": 1,
                                               "offline": 1}
        assert snapshot["away_by_reason"] == [{"reason": "meeting", "label": "Meeting",
                                               "count": 1}]
        assert [a["name"] for a in snapshot["agents"]] == ["Dana", "Eli", "Finn"]
        elsewhere = (await view(one, token))["agents"]  # the other instance sees the same
        assert [(a["state"], a["since"], a["contacts"]) for a in elsewhere] == \
            [(a["state"], a["since"], a["contacts"]) for a in snapshot["agents"]]

        start = time.time()
        await eli.ws.close()

        async def eli_offline():
            return by_name(await view(one, token))["Eli"]["state"] == "offline"
        assert await until(eli_offline)
        assert stamped_between(by_name(await view(one, token))["Eli"], start, time.time())

        await dana.send(type="wrap_up", contact_id=sms["contact_id"], resolved=True)
        await dana.next("wrapped_up")
        still = by_name(await view(one, token))["Dana"]
        assert (still["state"], still["contacts"], still["since"]) == \
            ("busy", {"chat": 1}, busy_since)
        await dana.send(type="presence", status="away")  # taking no more, still has the chat
        await dana.next("presence")
        assert by_name(await view(one, token))["Dana"]["presence"] == "away"
        start = time.time()
        await dana.send(type="wrap_up", contact_id=offer["contact_id"], resolved=True)
        await dana.next("wrapped_up")
        done = (await observed(two, token, start))["Dana"]
        assert (done["state"], done["contacts"]) == ("away", {})
        assert stamped_in_window(done) and 0 <= done["in_state_s"] < 5


async def test_service_level_counts_accepted_within_target_abandoned_and_waiting_too_long(
        supervised, db, clock):  # noqa: F811
    async with instance(supervised) as client:
        token = await create_token(db, "ops", "wallboard")
        general = client.app[RULES].current.tree.queues["general"].service_level
        target = general.target_s
        assert target >= 15  # the scenario below places contacts around it
        dana = await login(client, db, "Dana", ["care"], {"sms": 2, "voice": 0, "chat": 0},
                           available=False)
        start = time.time()
        clock.at(start - target - 15)
        await text(client, "+15555550501", "I want to talk to a human")  # accepted too late
        clock.at(start - target - 5)
        abandoned = await Call(client, "+15555550502").dial()
        await abandoned.press("0")
        await abandoned.hold()
        await abandoned.leave_queue("hangup")
        await abandoned.hang_up()
        clock.at(start - target - 20)
        await (await Call(client, "+15555550503").dial()).press("0")  # waits past the target
        clock.at(start - 5)
        await text(client, "+15555550504", "I want to talk to a human")  # accepted in time
        clock.release()
        await (await Call(client, "+15555550505").dial()).press("0")  # waits, within target

        await dana.send(type="presence", status="available")
        offers = [await dana.next("offer") for _ in range(2)]  # the two texts; no calls
        for offer in offers:
            await dana.send(type="accept", contact_id=offer["contact_id"])
            await dana.next("assigned")
        assert time.time() - start < target - 5  # the in-time contact was inside its target
        await events_landed(client.app)

        snapshot = await view(client, token)
        queue = snapshot["queues"]["general"]
        longest = queue.pop("longest_wait_s")
        assert target + 20 <= longest <= time.time() - start + target + 20.1
        assert queue == {"label": "Customer care", "waiting": 2, "waiting_over_target": 1,
                         "accepted": 2, "accepted_within_target": 1, "abandoned": 1,
                         "service_level": 1 / 4, "target_s": target, "goal": general.goal,
                         "below_goal": True}
        assert snapshot["queues"]["billing"] == {
            "label": "Billing and refunds", "waiting": 0, "longest_wait_s": None,
            "waiting_over_target": 0, "accepted": 0, "accepted_within_target": 0,
            "abandoned": 0, "service_level": None, "target_s": 60, "goal": 0.8,
            "below_goal": False}
        assert by_name(snapshot)["Dana"]["contacts"] == {"sms": 2}

        exported = gauges(await (await client.get("/metrics")).text())
        assert exported["switchboard_queue_service_level", "general"] == 0.25
        assert exported["switchboard_queue_service_level_goal", "general"] == general.goal
        assert exported["switchboard_queue_abandoned_last_hour", "general"] == 1
        assert exported["switchboard_queue_longest_wait_seconds", "general"] == longest
        assert exported["switchboard_queue_longest_wait_seconds", "billing"] == 0
        assert exported["switchboard_agents", "busy"] == 1
        assert exported["switchboard_agents", "offline"] == 0
        level = exported["switchboard_queue_service_level", "billing"]
        assert level != level  # NaN: nothing to judge yet, so no alert fires


def gauges(exported: str) -> dict[tuple[str, str], float]:
    """(metric, its one label's value) -> value, for the gauges of the supervisor view."""
    found = {}
    for family in text_string_to_metric_families(exported):
        for sample in family.samples:
            if sample.labels and len(sample.labels) == 1:
                found[sample.name, next(iter(sample.labels.values()))] = sample.value
    return found


async def test_only_ops_and_supervisor_tokens_read_the_view(supervised, db):
    async with instance(supervised) as client:
        supervisor = await create_token(db, "supervisor", "floor")
        ops = await create_token(db, "ops", "ops")
        agent = await create_token(db, "agent", "not for this")
        response = await client.get("/api/supervisor")
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="switchboard"'
        assert "tokens add --role supervisor" in (await response.json())["error"]
        bad = await client.get("/api/supervisor", headers={"Authorization": "Bearer sb_x"})
        assert bad.status == 401
        refused = await client.get("/api/supervisor",
                                   headers={"Authorization": f"Bearer {agent}"})
        assert refused.status == 403
        assert (await refused.json())["error"] == (
            "tokens of role 'agent' cannot read the supervisor view; use an ops or "
            "supervisor token")
        for token in (supervisor, ops):
            assert set(await view(client, token)) == {"as_of", "window_s", "agents_by_state",
                                                      "away_by_reason", "agents", "queues"}
        reports = await client.get("/api/reports/summary",
                                   headers={"Authorization": f"Bearer {supervisor}"})
        assert reports.status == 403  # a supervisor sees the floor, not the reports
        page = await client.get("/supervisor")
        assert page.status == 200 and "Content-Security-Policy" in page.headers


async def test_a_console_whose_instance_stops_refreshing_turns_offline(supervised, db,
                                                                       monkeypatch):
    monkeypatch.setattr(service.agents.activity, "CONSOLE_TTL_S", 0.5)
    async with instance(with_settings(supervised)) as client:
        token = await create_token(db, "supervisor", "floor")
        await login(client, db, "Gil", ALL_SKILLS)
        assert by_name(await view(client, token))["Gil"]["state"] == "available"
        await asyncio.sleep(0.7)  # longer than the entry lives, shorter than a refresh
        assert by_name(await view(client, token))["Gil"]["state"] == "offline"


SERVICE_LEVEL_CASES = [
    ("target not a number", "{target_s: soon, goal: 0.8}",
     ["routes.yaml:5: target_s must be a positive whole number of seconds, not 'soon' "
      "(queues -> general -> service_level -> target_s)"]),
    ("goal above one", "{target_s: 20, goal: 80}",
     ["routes.yaml:5: goal must be a fraction above 0 and at most 1 (0.8 is 80%), not 80 "
      "(queues -> general -> service_level -> goal)"]),
    ("goal missing", "{target_s: 20}",
     ["routes.yaml:5: missing required key 'goal' (queues -> general -> service_level)"]),
    ("unknown key", "{target_s: 20, goal: 0.8, window: 1h}",
     ["routes.yaml:5: unknown key 'window' (queues -> general -> service_level -> window)"]),
    ("not a mapping", "20",
     ["routes.yaml:5: expected a mapping (queues -> general -> service_level)"]),
]


@pytest.mark.parametrize("written,expected", [c[1:] for c in SERVICE_LEVEL_CASES],
                         ids=[c[0] for c in SERVICE_LEVEL_CASES])
def test_a_bad_service_level_target_names_file_line_and_key_path(tmp_path, written, expected):
    routes = ROUTES.replace("    skills: [care]\n",
                            f"    skills: [care]\n    service_level: {written}\n", 1)
    assert errors(tmp_path, routes=routes) == expected


async def test_tokens_add_makes_a_supervisor_token_the_view_accepts(monkeypatch, capsys,
                                                                    supervised, db):
    use_servers(monkeypatch, supervised)
    async with instance(supervised) as client:
        assert await cli("tokens", "add", "--role", "supervisor", "--name", "floor") == 0
        token = capsys.readouterr().out.strip().splitlines()[-1]
        assert token.startswith("sb_supervisor_") and await role_of(db, token) == "supervisor"
        assert (await view(client, token))["agents"] == []


@pytest.fixture
def on_each_shape(supervised, shape_url):
    return with_settings(supervised, redis_url=shape_url)


async def test_agents_are_seen_alike_on_a_cluster_and_behind_sentinels(on_each_shape, db):
    await test_agents_on_two_instances_are_seen_with_their_state_contacts_and_time(
        on_each_shape, db)


async def test_a_contact_that_overflowed_and_left_counts_for_the_queue_it_left(
        supervised, db, tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "routing_rules", rules)
    routes = (rules / "routes.yaml").read_text()
    (rules / "routes.yaml").write_text(routes.replace(
        "    service_level: {target_s: 20, goal: 0.8}\n",
        "    service_level: {target_s: 20, goal: 0.8}\n    timeout_s: 1\n    overflow: accounts\n",
        1))
    async with service_with_rules(supervised, rules) as client:
        token = await create_token(db, "supervisor", "floor")
        call = await (await Call(client, "+15555550701").dial()).press("0")
        await call.hold()

        async def overflowed():
            queues = (await view(client, token))["queues"]
            return (queues["general"]["waiting"], queues["accounts"]["waiting"]) == (0, 1)
        assert await until(overflowed)
        await call.leave_queue("hangup")
        await call.hang_up()
        await events_landed(client.app)
        queues = (await view(client, token))["queues"]
        assert (queues["general"]["abandoned"], queues["accounts"]["abandoned"]) == (0, 1)
        assert (queues["accounts"]["service_level"], queues["accounts"]["below_goal"]) == \
            (0.0, True)
        assert queues["general"]["service_level"] is None
