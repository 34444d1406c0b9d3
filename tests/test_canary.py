"""Canaries end to end against the real PostgreSQL and Redis: a rules directory started on a
share of new contacts (CLI and API), customers texting through the signed webhook, a guardrail
that trips and rolls the canary back by itself (event, rules audit, API, `rules history`), and
a canary that holds and is promoted."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from service.__main__ import main
from service.appkeys import PG, RULES
from service.conversations import prompts
from service.infra.tokens import create_token
from service.rules import versions
from tests.conftest import ROOT, _clean_tables, with_settings
from tests.test_agents import instance
from tests.test_ops_api import events_landed
from tests.test_rules_audit import eventually
from tests.twilio_driver import SERVICE_NUMBER, text

ASK = "I need to track my order"
CONFIRM = prompts.CONFIRM["text"]
ORDERS_ROUTE = "      queue: orders\n      routes:\n"


def copy_rules(target: Path) -> Path:
    shutil.copytree(ROOT / "routing_rules", target, ignore=shutil.ignore_patterns("bank"))
    return target


def orders_to_agents(directory: Path) -> Path:
    """A canary that sends every order question to an agent: true deflection falls."""
    routes = (directory / "routes.yaml").read_text()
    assert ORDERS_ROUTE in routes
    (directory / "routes.yaml").write_text(routes.replace(
        ORDERS_ROUTE, "      queue: orders\n      self_service: false\n      reason: rule\n"
                      "      routes:\n"))
    return directory


def reworded(directory: Path) -> Path:
    """A canary that words the order-tracking answer its own way."""
    catalog = (directory / "catalog.yaml").read_text()
    old = "        Every order is listed under Orders at example.com/orders"
    assert old in catalog
    (directory / "catalog.yaml").write_text(catalog.replace(
        old, "        CANARY: every order is listed under Orders at example.com/orders"))
    return directory


@pytest.fixture
def canary_env(monkeypatch, settings, tmp_path):
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("SWITCHBOARD_RULES_DIR", str(tmp_path / "stable"))


@pytest.fixture
def serving(settings, tmp_path, redis_client):
    async def start():
        await _clean_tables(settings.database_url)
        stable = copy_rules(tmp_path / "stable")
        return instance(with_settings(settings, rules_dir=stable, canary_check_s=0.3))
    return start


async def cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


async def arm(redis_client, phone: str) -> dict | None:
    raw = await redis_client.get(f"sb:{{phone:{phone}}}:conv:sms:{SERVICE_NUMBER}")
    return json.loads(raw).get("canary") if raw else None


async def canary_api(client, token: str) -> dict:
    response = await client.get("/api/rules/canary", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200
    return (await response.json())["canary"]


async def test_a_canary_whose_guardrail_trips_rolls_back_by_itself(
        serving, db, redis_client, tmp_path, capsys, canary_env):
    canary_dir = orders_to_agents(copy_rules(tmp_path / "candidate"))
    async with await serving() as client:
        holder, pool = client.app[RULES], client.app[PG]
        token = await create_token(db, "ops", "tests")
        stable_digest = holder.current.digest
        stable_version = (await versions.in_force(pool)).id

        code, out, err = await cli(capsys, "rules", "canary", str(canary_dir), "--share", "0.5",
                                   "--guardrail", "true_deflection:-0.05", "--guardrail",
                                   "csat:-0.3", "--min-contacts", "3")
        assert code == 0, err
        assert "decides 50% of new contacts" in out
        running = await eventually(lambda: _value(holder.canary), timeout_s=120)
        canary_id = running.id
        # a second canary is refused while one runs; nothing changes
        code, _, err = await cli(capsys, "rules", "canary", str(canary_dir), "--share", "0.2")
        assert code == 1 and f"canary {canary_id} is running: promote or abort it first" in err

        counts = {"canary": 0, "stable": 0}
        for i in range(60):
            if counts["canary"] >= 3 and counts["stable"] >= 1:
                break
            phone = f"+1555222{i:04d}"
            said = await text(client, phone, ASK)
            held = await arm(redis_client, phone)
            assert held["id"] == canary_id
            counts[held["arm"]] += 1
            if held["arm"] == "canary":  # the canary's rules send it to an agent
                assert "in line" in said[-1]
            else:
                assert said[-1] == CONFIRM
                await text(client, phone, "yes")
        await events_landed(client.app)

        # The guardrail trips once 3 canary contacts are in: rolled back on its own.
        await eventually(lambda: _is(holder.canary, None), timeout_s=60)
        found = await canary_api(client, token)
        assert (found["id"], found["state"], found["ended_by"]) == (canary_id, "rolled_back",
                                                                    "guardrail")
        assert found["end_reason"].startswith("true_deflection down 1.000 (canary 0.000, "
                                              "stable 1.000; allowed 0.05)")
        assert found["arms"]["canary"]["contacts"] == counts["canary"]
        assert found["arms"]["stable"]["contacts"] == counts["stable"]
        assert found["arms"]["canary"]["escalated"] == counts["canary"]
        [deflection, csat] = found["guardrails"]
        assert (deflection["guardrail"], deflection["tripped"], deflection["change"]) == \
            ("true_deflection:-0.05", True, -1.0)
        assert (csat["guardrail"], csat["judged"], csat["tripped"]) == ("csat:-0.3", False,
                                                                        False)

        # recorded as an event ...
        await events_landed(client.app)
        [event] = await db.fetch("SELECT reason, data FROM contact_events "
                                 "WHERE kind = 'canary_rolled_back'")
        data = json.loads(event["data"])
        assert event["reason"] == "guardrail" and data["canary"] == canary_id
        assert data["explanation"] == found["end_reason"]
        # ... and in the rules audit, by `rules history` too
        code, out, _ = await cli(capsys, "rules", "history", "--format", "json", "--limit", "2")
        rolled, started = json.loads(out)
        assert (started["cause"], started["canary"], started["previous_version"]) == \
            ("canary", canary_id, stable_version)
        assert started["actor"].endswith(f": canary {canary_id} started on 50% of new contacts "
                                         "(true_deflection:-0.05, csat:-0.3; after 3)")
        assert "+      self_service: false\n" in started["diff"]
        assert (rolled["cause"], rolled["canary"], rolled["version"],
                rolled["previous_version"]) == ("canary", canary_id, stable_version,
                                                started["version"])
        assert rolled["actor"] == f"guardrail: canary {canary_id} rolled back: " \
                                  f"{found['end_reason']}"
        code, out, _ = await cli(capsys, "rules", "history")
        assert f"guardrail: canary {canary_id} rolled back" in out
        code, out, _ = await cli(capsys, "rules", "canary-status")
        assert f"Canary {canary_id} (rolled back)" in out and "TRIPPED" in out
        # the rules in force never changed; new contacts are all theirs again
        assert holder.current.digest == stable_digest
        assert (await versions.in_force(pool)).id == stable_version
        assert (await text(client, "+15552229999", ASK))[-1] == CONFIRM
        assert await arm(redis_client, "+15552229999") is None
        # and the experiments report shows the canary's end
        response = await client.get("/api/reports/experiments",
                                    headers={"Authorization": f"Bearer {token}"})
        assert (await response.json())["canary"]["state"] == "rolled_back"
        code, _, err = await cli(capsys, "rules", "abort")
        assert code == 1 and "no canary is running" in err


async def test_a_canary_that_holds_can_be_promoted(serving, db, redis_client, tmp_path):
    canary_dir = reworded(copy_rules(tmp_path / "candidate"))
    async with await serving() as client:
        holder = client.app[RULES]
        stable_dir = holder.current.directory
        token = await create_token(db, "ops", "release-bot")
        auth = {"Authorization": f"Bearer {token}"}

        # bad input changes nothing: an invalid directory, a bad guardrail, no token
        broken = copy_rules(tmp_path / "broken")
        (broken / "routes.yaml").write_text((broken / "routes.yaml").read_text().replace(
            "queue: orders", "queue: order"))
        response = await client.post("/api/rules/canary", headers=auth, json={
            "directory": str(broken), "share": 0.5, "guardrails": [], "min_contacts": 2})
        assert response.status == 422
        assert any(e.startswith(f"{broken}/routes.yaml:") and "unknown queue 'order'" in e
                   for e in (await response.json())["errors"])
        response = await client.post("/api/rules/canary", headers=auth, json={
            "directory": str(canary_dir), "share": 0.5, "guardrails": ["speed:-1"]})
        assert response.status == 400 and "true_deflection" in (await response.json())["error"]
        response = await client.post("/api/rules/canary", json={
            "directory": str(canary_dir), "share": 0.5})
        assert response.status == 401
        assert await db.fetchval("SELECT count(*) FROM rule_canaries") == 0

        response = await client.post("/api/rules/canary", headers=auth, json={
            "directory": str(canary_dir), "share": 0.5, "guardrails": ["true_deflection:-0.5"],
            "min_contacts": 2})
        assert response.status == 200, await response.text()
        canary_id = (await response.json())["canary"]["id"]
        assert holder.canary is not None and holder.canary.id == canary_id

        counts = {"canary": 0, "stable": 0}
        for i in range(60):
            if counts["canary"] >= 2 and counts["stable"] >= 1:
                break
            phone = f"+1555111{i:04d}"
            said = await text(client, phone, ASK)
            held = await arm(redis_client, phone)
            counts[held["arm"]] += 1
            assert said[0].startswith("CANARY") == (held["arm"] == "canary")
            assert (await text(client, phone, "yes"))[0] == prompts.RESOLVED["text"]
        await events_landed(client.app)
        await asyncio.sleep(1.5)  # several guardrail checks
        found = await canary_api(client, token)
        assert found["state"] == "running"
        [guard] = found["guardrails"]
        assert guard["judged"] and not guard["tripped"] and guard["change"] == 0

        response = await client.post("/api/rules/canary/promote", headers=auth)
        assert response.status == 200, await response.text()
        assert (await response.json())["canary"]["state"] == "promoted"
        assert (stable_dir / "catalog.yaml").read_text() == \
            (canary_dir / "catalog.yaml").read_text()
        await eventually(lambda: _value(holder.current.catalog.types["track_order"].answer
                                        .startswith("CANARY")), timeout_s=120)
        assert holder.canary is None
        said = await text(client, "+15551119999", ASK)
        assert said[0].startswith("CANARY") and await arm(redis_client, "+15551119999") is None
        # the promoted rules are swapped in before the load is recorded: wait for the record
        load = await eventually(lambda: _newest_load_if(client.app[PG], "promoted"))
        assert (load.cause, load.actor, load.canary_id) == \
            ("canary", f"release-bot: promoted canary {canary_id}", None)
        assert "+        CANARY: every order is listed" in load.diff
        response = await client.post("/api/rules/canary/abort", headers=auth)
        assert response.status == 409


async def _value(value):
    return value


async def _newest_load_if(pool, said: str):
    """The newest rules load once its actor says `said`."""
    load = (await versions.history(pool, limit=1))[0]
    return load if said in load.actor else None


async def _is(actual, expected) -> bool:
    return actual is expected


async def test_arms_and_the_canary_add_no_redis_round_trip(settings, redis_client, tmp_path,
                                                          db, monkeypatch):
    """A first message classified into an experiment's type while a canary runs: its arm and
    its canary share are hashes in process, so the turn still costs two round trips."""
    from service.appkeys import REDIS_BATCH
    from tests.test_experiments import EXPERIMENTS, SHORT, rules_dir

    await _clean_tables(settings.database_url)
    stable = rules_dir(tmp_path, EXPERIMENTS)
    candidate = reworded(shutil.copytree(stable, tmp_path / "candidate"))
    async with instance(with_settings(settings, rules_dir=stable)) as client:
        token = await create_token(db, "ops", "tests")
        response = await client.post("/api/rules/canary", json={
            "directory": str(candidate), "share": 0.5, "min_contacts": 100},
            headers={"Authorization": f"Bearer {token}"})
        assert response.status == 200
        batcher, sent, phone = client.app[REDIS_BATCH], [], "+15557770001"
        execute = batcher.execute

        async def counted(*commands, **options):
            if any(phone in str(arg) for c in commands for arg in c):
                sent.append(commands)
            return await execute(*commands, **options)

        monkeypatch.setattr(batcher, "execute", counted)
        said = await text(client, phone, ASK)
        assert said[-1] == CONFIRM
        held = await arm(redis_client, phone)
        assert held["arm"] in ("canary", "stable")
        assert said[0] == SHORT or said[0].startswith("CANARY") or "Every order" in said[0]
        assert len(sent) == 2  # read, then write: nothing more for the arm or the canary
        await events_landed(client.app)
        kinds = [r["kind"] for r in await db.fetch(
            "SELECT kind FROM contact_events WHERE kind IN ('canary_assigned', "
            "'experiment_assigned') ORDER BY occurred_at, seq")]
        assert kinds == ["canary_assigned", "experiment_assigned"]


async def test_every_instance_follows_the_canary_its_abort_and_its_rollback(
        settings, redis_client, db, tmp_path, capsys, canary_env):
    """Two instances on one PostgreSQL and Redis: a canary started at the command line runs on
    both; aborted by hand, then another rolled back by a guardrail, it leaves both, recorded
    once."""
    await _clean_tables(settings.database_url)
    stable = copy_rules(tmp_path / "stable")
    worse = orders_to_agents(copy_rules(tmp_path / "candidate"))
    shared = with_settings(settings, rules_dir=stable, canary_check_s=0.3)
    async with instance(shared) as one, instance(shared) as two:
        holders = (one.app[RULES], two.app[RULES])
        start = ("rules", "canary", str(worse), "--share", "0.5", "--guardrail",
                 "true_deflection:-0.05", "--min-contacts", "2")
        assert (await cli(capsys, *start))[0] == 0
        first = await eventually(lambda: _value(all(h.canary for h in holders)), 120)
        assert first and holders[0].canary.id == holders[1].canary.id
        running = holders[0].canary.id  # the abort may reach the instances before we look
        code, out, _ = await cli(capsys, "rules", "abort")
        assert code == 0 and f"canary {running} aborted" in out
        await eventually(lambda: _value(not any(h.canary for h in holders)), 60)
        [aborted] = await versions.history(db, limit=1)
        assert aborted.cause == "canary" and aborted.actor.endswith("aborted")

        assert (await cli(capsys, *start))[0] == 0
        await eventually(lambda: _value(all(h.canary for h in holders)), 120)
        second = holders[0].canary.id
        counts = {"canary": 0, "stable": 0}
        for i in range(60):  # customers reach either instance
            if counts["canary"] >= 2 and counts["stable"] >= 1:
                break
            client, phone = (one, two)[i % 2], f"+1555888{i:04d}"
            said = await text(client, phone, ASK)
            held = await arm(redis_client, phone)
            counts[held["arm"]] += 1
            if said[-1] == CONFIRM:
                await text(client, phone, "yes")
        await events_landed(one.app)
        await events_landed(two.app)
        await eventually(lambda: _value(not any(h.canary for h in holders)), 60)
        await asyncio.sleep(1)  # every instance has looked at least twice more
        rows = await db.fetch("SELECT state, ended_by FROM rule_canaries ORDER BY id")
        assert [tuple(r) for r in rows] == [("aborted", rows[0]["ended_by"]),
                                           ("rolled_back", "guardrail")]
        rollbacks = await db.fetchval("SELECT count(*) FROM rule_loads WHERE canary_id = $1 "
                                      "AND actor LIKE 'guardrail:%'", second)
        await events_landed(one.app)
        await events_landed(two.app)
        events = await db.fetchval("SELECT count(*) FROM contact_events "
                                   "WHERE kind = 'canary_rolled_back'")
        assert (rollbacks, events) == (1, 1)
