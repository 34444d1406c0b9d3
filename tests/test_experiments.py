"""Experiments end to end against the real PostgreSQL and Redis: customers text, call and write
on WhatsApp through the signed webhooks; the arms, figures, intervals and verdicts are read back
through the report API and the CLI, and checked against values computed here from what the
customers did (the intervals by their textbook formulas, not the service's code)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import shutil
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest

from service.__main__ import main
from service.appkeys import PG, RULES
from service.conversations import prompts
from service.infra.tokens import create_token
from service.reporting import reports
from service.rules.experiments import load_experiments
from service.rules.yamlfile import ConfigError
from tests.conftest import ROOT, _clean_tables, with_settings
from tests.test_agents import instance
from tests.test_ops_api import clock, events_landed  # noqa: F401 (fixture)
from tests.test_whatsapp import whatsapp
from tests.twilio_driver import SERVICE_NUMBER, Call, text

ASK = "I need to track my order"
SHORT = "Track it at example.com/orders: Shipped means the carrier has it."
CONFIRM = prompts.CONFIRM["text"]
CSAT_QUESTION = prompts.survey_question("csat", "text")
EXPERIMENTS = f"""
    experiments:
      order_wording:
        contact_type: track_order
        control: catalog
        min_contacts: 8
        arms:
          catalog: {{}}
          short:
            answer: "{SHORT}"
"""
SURVEYS = """
    default:
      kind: csat
      once_per_days: 0
"""
DAY = 86400
Z = 1.959963984540054
T_975 = {1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445, 5: 2.570582, 6: 2.446912,
         7: 2.364624, 8: 2.306004, 9: 2.262157, 10: 2.228139, 11: 2.200985, 12: 2.178813,
         13: 2.160369, 14: 2.144787, 15: 2.131450, 16: 2.119905, 17: 2.109816, 18: 2.100922,
         19: 2.093024, 20: 2.085963, 21: 2.079614, 22: 2.073873, 23: 2.068658, 24: 2.063899,
         25: 2.059539, 26: 2.055529, 27: 2.051831, 28: 2.048407, 29: 2.045230, 30: 2.042272}


def rules_dir(tmp_path: Path, experiments: str = EXPERIMENTS, surveys: str = SURVEYS) -> Path:
    directory = tmp_path / "rules"
    shutil.copytree(ROOT / "routing_rules", directory, ignore=shutil.ignore_patterns("bank"),
                    dirs_exist_ok=True)
    (directory / "experiments.yaml").write_text(textwrap.dedent(experiments))
    (directory / "surveys.yaml").write_text(textwrap.dedent(surveys))
    return directory


@pytest.fixture
def experimenting(settings, tmp_path, redis_client):
    async def start():
        await _clean_tables(settings.database_url)
        return instance(with_settings(settings, rules_dir=rules_dir(tmp_path)))
    return start


def window() -> dict[str, str]:
    now = datetime.now(timezone.utc)
    return {"from": reports.iso(now - timedelta(hours=1)),
            "to": reports.iso(now + timedelta(hours=1))}


async def experiments_api(client, token: str) -> dict:
    response = await client.get("/api/reports/experiments", params=window(),
                                headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200, await response.text()
    return await response.json()


def wilson(successes: int, n: int) -> list[float]:
    p = successes / n
    denominator = 1 + Z ** 2 / n
    centre = (p + Z ** 2 / (2 * n)) / denominator
    half = Z * math.sqrt(p * (1 - p) / n + Z ** 2 / (4 * n ** 2)) / denominator
    return [centre - half, centre + half]


def t_interval(scores: list[int]) -> list[float]:
    n = len(scores)
    mean = sum(scores) / n
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1))
    half = T_975[n - 1] * sd / math.sqrt(n)
    return [max(1, mean - half), min(5, mean + half)]  # clipped to the 1-5 scale


def close(actual: list[float] | None, expected: list[float], within: float = 1e-9) -> bool:
    return actual is not None and all(abs(a - b) < within for a, b in zip(actual, expected))


def arm_of(customer_id: str) -> str:
    """The arm a customer must be in: SHA-256 of 'customer:experiment', equal weights."""
    digest = hashlib.sha256(f"{customer_id}:order_wording".encode()).digest()
    return "catalog" if int.from_bytes(digest[:8], "big") / 2 ** 64 * 2 < 1 else "short"


async def assigned(client, db) -> list[dict]:
    await events_landed(client.app)
    rows = await db.fetch("SELECT contact_id, customer_id, channel, data FROM contact_events "
                          "WHERE kind = 'experiment_assigned' ORDER BY occurred_at, seq")
    return [dict(r, data=json.loads(r["data"])) for r in rows]


# ---- per-arm figures, intervals and the verdict ------------------------------------------

async def test_two_arms_with_known_outcomes_give_the_expected_figures_and_verdict(
        experimenting, db, capsys, monkeypatch, settings):
    async with await experimenting() as client:
        token = await create_token(db, "ops", "tests")
        arms: dict[str, list[str]] = {"catalog": [], "short": []}
        csat = {"catalog": [], "short": []}
        short_scores = itertools.cycle([5, 4, 5, 5, 4, 5, 3])
        for i in range(80):
            if min(len(a) for a in arms.values()) >= 8:
                break
            phone = f"+1555444{i:04d}"
            said = await text(client, phone, ASK)
            assert said[-1] == CONFIRM
            arm = "short" if said[0] == SHORT else "catalog"
            if arm == "catalog":
                assert said[0] == client.app[RULES].current.catalog.types["track_order"].answer
            arms[arm].append(phone)
            if arm == "catalog" and len(arms["catalog"]) > 1:  # only the first resolves
                assert "in line" in " ".join(await text(client, phone, "no"))
                continue
            assert await text(client, phone, "yes") == [prompts.RESOLVED_THEN_SURVEY,
                                                         CSAT_QUESTION]
            score = 2 if arm == "catalog" else next(short_scores)
            assert await text(client, phone, str(score)) == ["Thank you for your feedback!"]
            csat[arm].append(score)
            if i == 3:  # early on: too few contacts for a verdict
                early = await experiments_api(client, token)
                [short] = [a for a in early["experiments"][0]["arms"] if a["arm"] == "short"]
                assert short["verdict"]["verdict"] == "not enough data yet"
        # The first short-arm customer comes back about the same thing: a false deflection,
        # and a repeat contact the routing sends to an agent (still in the short arm).
        back = await text(client, arms["short"][0], ASK)
        assert "in line" in " ".join(back)

        # Every contact's arm is the one its customer id hashes to.
        events = await assigned(client, db)
        assert len(events) == len(arms["catalog"]) + len(arms["short"]) + 1
        for event in events:
            assert event["data"]["arm"] == arm_of(str(event["customer_id"]))
            assert event["data"]["experiment"] == "order_wording"

        report = await experiments_api(client, token)
        [experiment] = report["experiments"]
        assert (experiment["experiment"], experiment["contact_type"], experiment["control"],
                experiment["min_contacts"]) == ("order_wording", "track_order", "catalog", 8)
        control, short = experiment["arms"]
        n_c, n_s = len(arms["catalog"]), len(arms["short"]) + 1
        assert (control["arm"], control["treatment"], control["control"]) == \
            ("catalog", "catalog", True)
        assert (short["arm"], short["treatment"], short["control"]) == ("short", "answer", False)
        assert {k: control[k] for k in ("contacts", "self_service_resolved",
                                        "false_deflections", "escalated", "csat_responses",
                                        "csat_points")} == \
            {"contacts": n_c, "self_service_resolved": 1, "false_deflections": 0,
             "escalated": n_c - 1, "csat_responses": 1, "csat_points": 2}
        assert {k: short[k] for k in ("contacts", "self_service_resolved", "false_deflections",
                                      "escalated", "csat_responses", "csat_points")} == \
            {"contacts": n_s, "self_service_resolved": n_s - 1, "false_deflections": 1,
             "escalated": 1, "csat_responses": n_s - 1, "csat_points": sum(csat["short"])}
        # rates and their Wilson intervals, from the counts above
        assert control["true_deflection_rate"] == pytest.approx(1 / n_c)
        assert close(control["true_deflection_interval"], wilson(1, n_c))
        assert short["true_deflection_rate"] == pytest.approx((n_s - 2) / n_s)
        assert close(short["true_deflection_interval"], wilson(n_s - 2, n_s))
        assert close(control["escalation_interval"], wilson(n_c - 1, n_c))
        assert close(short["escalation_interval"], wilson(1, n_s))
        assert short["false_deflection_rate"] == pytest.approx(1 / (n_s - 1))
        assert close(short["false_deflection_interval"], wilson(1, n_s - 1))
        assert control["false_deflection_rate"] == 0
        # mean CSAT and Student's t interval; one answer has no interval
        assert short["csat"] == pytest.approx(sum(csat["short"]) / len(csat["short"]))
        assert close(short["csat_interval"], t_interval(csat["short"]), 1e-5)  # table's t
        assert control["csat"] == 2 and control["csat_interval"] is None
        # the verdict: z of the two proportions, computed here
        x1, x0 = n_s - 2, 1
        pooled = (x1 + x0) / (n_s + n_c)
        z = (x1 / n_s - x0 / n_c) / math.sqrt(pooled * (1 - pooled) * (1 / n_s + 1 / n_c))
        assert z > Z
        assert control["verdict"] is None
        assert short["verdict"]["verdict"] == "better"
        assert short["verdict"]["deflection_z"] == pytest.approx(z, abs=1e-5)
        assert "two-proportion z-test" in report["definitions"]["verdict"]

        # The CLI says the same.
        monkeypatch.setenv("DATABASE_URL", settings.database_url)
        monkeypatch.setenv("SWITCHBOARD_RULES_DIR", str(client.app[RULES].current.directory))
        capsys.readouterr()
        span = window()
        assert await asyncio.to_thread(main, ["experiments", "report", "--from", span["from"],
                                              "--to", span["to"]]) == 0
        table = capsys.readouterr().out
        short_line = next(line for line in table.splitlines()
                          if line.strip().startswith("short"))
        assert short_line.split()[:3] == ["short", "answer", str(n_s)]
        assert f"{short['true_deflection_rate'] * 100:.1f}%" in short_line
        assert "better: true deflection is higher" in short_line
        assert await asyncio.to_thread(main, ["experiments", "report", "--format", "json",
                                              "--from", span["from"], "--to", span["to"]]) == 0
        cli_report = json.loads(capsys.readouterr().out)
        assert cli_report["experiments"] == report["experiments"]


# ---- one arm per customer, on every channel -----------------------------------------------

async def test_a_customer_stays_in_one_arm_across_channels(experimenting, db, redis_client,
                                                           clock):
    """Each channel's contact comes 4 days after the last, outside track_order's 72 h repeat
    window, so each is offered self-service again rather than sent to an agent as a repeat."""
    clock.at(time.time() - 9 * DAY)
    async with await experimenting() as client:
        first_of: dict[str, str] = {}
        for i in range(40):
            phone = f"+1555333{i:04d}"
            said = await text(client, phone, ASK)
            arm = "short" if said[0] == SHORT else "catalog"
            first_of.setdefault(arm, phone)
            # the conversation context carries the arm too
            raw = await redis_client.get(f"sb:{{phone:{phone}}}:conv:sms:{SERVICE_NUMBER}")
            assert json.loads(raw)["experiment"] == {"name": "order_wording", "arm": arm}
            await text(client, phone, "yes")
            await text(client, phone, "5")
            if len(first_of) == 2:
                break
        assert set(first_of) == {"catalog", "short"}
        catalog_answer = client.app[RULES].current.catalog.types["track_order"].answer
        clock.advance(4 * DAY)
        for arm, phone in first_of.items():  # WhatsApp: the same number, the same customer
            said = await whatsapp(client, ASK, sender=f"whatsapp:{phone}")
            assert said[0] == (SHORT if arm == "short" else catalog_answer)
            await whatsapp(client, "yes", sender=f"whatsapp:{phone}")
        clock.advance(4 * DAY)
        for arm, phone in first_of.items():  # a call: 1 for orders, the same arm's answer
            call = await (await Call(client, phone).dial()).press("1")
            assert (SHORT if arm == "short" else catalog_answer) in " ".join(call.said())
            await call.hang_up()
        events = await assigned(client, db)
        by_customer: dict[str, set[str]] = {}
        channels: dict[str, set[str]] = {}
        for event in events:
            by_customer.setdefault(str(event["customer_id"]), set()).add(event["data"]["arm"])
            channels.setdefault(str(event["customer_id"]), set()).add(event["channel"])
        moved = {c for c, ch in channels.items() if len(ch) == 3}
        assert len(moved) == 2
        for customer in moved:
            assert by_customer[customer] == {arm_of(customer)}


# ---- a bad experiments.yaml ---------------------------------------------------------------

BAD = """
    experiments:
      order_wording:
        contact_type: track_order
        arms:
          catalog: {}
          guided:
            flow: no_such_flow
      TwoWords:
        contact_type: track_orderz
        control: nobody
        arms:
          only: {answer: "x", agent: true}
"""


def test_a_bad_experiments_file_names_file_line_and_key(tmp_path):
    directory = rules_dir(tmp_path, BAD)
    with pytest.raises(ConfigError) as caught:
        load_experiments(directory, "rules", ["track_order"], ["refund_status"])
    problems = [str(issue) for issue in caught.value.issues]
    assert "rules/experiments.yaml:8: unknown flow 'no_such_flow' (flows.yaml defines: " \
           "refund_status) (experiments -> order_wording -> arms -> guided -> flow)" in problems
    assert "rules/experiments.yaml:9: experiment names are lower_snake_case " \
           "(experiments -> TwoWords)" in problems
    assert "rules/experiments.yaml:10: unknown contact type 'track_orderz' " \
           "(experiments -> TwoWords -> contact_type)" in problems
    assert "rules/experiments.yaml:12: expected a mapping of two or more arms " \
           "(experiments -> TwoWords -> arms)" in problems


async def test_a_bad_experiments_file_is_refused_whole_and_changes_nothing(
        experimenting, db, capsys, tmp_path):
    async with await experimenting() as client:
        token = await create_token(db, "ops", "tests")
        holder = client.app[RULES]
        before = holder.current
        directory = before.directory
        (directory / "experiments.yaml").write_text(textwrap.dedent(EXPERIMENTS).replace(
            "min_contacts: 8", "min_contacts: many").replace("catalog: {}", "catalog: {weight: 0}"))
        response = await client.post("/api/rules/reload",
                                     headers={"Authorization": f"Bearer {token}"})
        assert response.status == 422
        errors = (await response.json())["errors"]
        assert f"{directory}/experiments.yaml:6: min_contacts must be a whole number of at " \
               "least 1, not 'many' (experiments -> order_wording -> min_contacts)" in errors
        assert f"{directory}/experiments.yaml:8: weight must be a number above 0, not 0 " \
               "(experiments -> order_wording -> arms -> catalog -> weight)" in errors
        assert holder.current is before
        assert holder.current.experiments.for_type("track_order").min_contacts == 8
        said = await text(client, "+15554440999", ASK)
        assert said[-1] == CONFIRM  # still running the experiment as loaded
        capsys.readouterr()
        assert await asyncio.to_thread(main, ["rules", "check", str(directory)]) == 1
        err = capsys.readouterr().err
        assert f"{directory}/experiments.yaml:6: min_contacts must be" in err
        last = await client.app[PG].fetchrow(
            "SELECT version_id, errors FROM rule_loads ORDER BY id DESC LIMIT 1")
        assert last["version_id"] is None and "min_contacts" in last["errors"]


# ---- the demo fills the panel ---------------------------------------------------------------

async def test_the_demo_asks_about_the_example_experiment(monkeypatch, capsys, settings,
                                                          redis_client, db):
    """The shipped rules have an experiment; `switchboard demo` asks about its contact type
    often enough that both arms get traffic, through the public endpoints."""
    from tests.browser import serve
    from tests.test_ops_api import ops_app, use_servers

    await _clean_tables(settings.database_url)
    use_servers(monkeypatch, settings)
    monkeypatch.setenv("SWITCHBOARD_RULES_DIR", str(ROOT / "routing_rules"))
    app = ops_app(settings)
    async with serve(app) as base_url:
        assert await asyncio.to_thread(main, ["demo", "--contacts", "40", "--seed", "3",
                                              "--url", base_url]) == 0
        await events_landed(app)
        token = await create_token(db, "ops")
        async with aiohttp.ClientSession() as http, http.get(
                f"{base_url}/api/reports/experiments", params=window(),
                headers={"Authorization": f"Bearer {token}"}) as response:
            report = await response.json()
    [experiment] = report["experiments"]
    assert experiment["experiment"] == "delivery_wording"
    assigned_count = await db.fetchval(
        "SELECT count(DISTINCT contact_id) FROM contact_events "
        "WHERE kind = 'experiment_assigned'")
    assert assigned_count >= 4  # 40% of the texted and chatted questions
    assert [a["arm"] for a in experiment["arms"]] == ["catalog", "short"]
    assert sum(a["contacts"] for a in experiment["arms"]) == assigned_count


# ---- a flow instead of the answer, or straight to an agent ----------------------------------

TREATMENTS = """
    experiments:
      orders_to_people:
        contact_type: track_order
        arms:
          catalog: {weight: 0.000000001}
          person: {agent: true, weight: 1000000000}
      guided_cancel:
        contact_type: cancel_order
        arms:
          catalog: {weight: 0.000000001}
          guided: {flow: refund_status, weight: 1000000000}
"""


async def test_an_arm_can_send_to_an_agent_or_run_a_flow(settings, tmp_path, redis_client, db):
    """Arms weighted so every customer lands in the treated one (the odds of the other are
    one in a billion)."""
    await _clean_tables(settings.database_url)
    directory = rules_dir(tmp_path, TREATMENTS)
    async with instance(with_settings(settings, rules_dir=directory)) as client:
        token = await create_token(db, "ops", "tests")
        assert "in line" in (await text(client, "+15554441001", ASK))[-1]
        said = await text(client, "+15554441002", "need to cancel order 00004587345")
        assert said[-1].startswith("Which order is the refund for?")
        await events_landed(client.app)
        [escalated] = await db.fetch("SELECT reason FROM contact_events WHERE kind = 'escalated'")
        assert escalated["reason"] == "experiment"
        rows = await db.fetch("SELECT data FROM contact_events WHERE kind = 'experiment_assigned'"
                              " ORDER BY occurred_at, seq")
        assert [json.loads(r["data"]) for r in rows] == [
            {"experiment": "orders_to_people", "arm": "person", "treatment": "agent",
             "control": False},
            {"experiment": "guided_cancel", "arm": "guided", "treatment": "flow",
             "control": False}]
        assert (await client.get("/api/reports/experiments")).status == 401
        supervisor = await create_token(db, "supervisor", "wallboard")
        response = await client.get("/api/reports/experiments",
                                    headers={"Authorization": f"Bearer {supervisor}"})
        assert response.status == 403
        report = await experiments_api(client, token)
        person = report["experiments"][0]["arms"][1] if \
            report["experiments"][0]["experiment"] == "orders_to_people" else \
            report["experiments"][1]["arms"][1]
        assert (person["arm"], person["contacts"], person["escalated"],
                person["escalation_rate"]) == ("person", 1, 1, 1.0)
        # sent to an agent by the arm, like a rule: not a self-service drop-out
        response = await client.get("/api/reports/journeys", params=window(),
                                    headers={"Authorization": f"Bearer {token}"})
        exits = [d["exit"] for d in (await response.json())["dropouts"]]
        assert "experiment" not in exits


# ---- the verdict rule on counts -------------------------------------------------------------

def counts(contacts, resolved, false=0, escalated=0, scores=()):
    return {"contacts": contacts, "self_service_resolved": resolved, "false_deflections": false,
            "escalated": escalated, "csat_responses": len(scores), "csat_points": sum(scores),
            "csat_squares": sum(s * s for s in scores)}


def test_the_verdict_rule_reads_deflection_and_csat():
    from service.reporting.experiments import verdict

    control = counts(100, 50, scores=[5, 4, 5, 4, 5, 4, 5, 4])
    # true deflection 30% against 50%: z = -2.89, worse
    judged = verdict(counts(100, 30, scores=[5, 4, 5, 4, 5, 4, 5, 4]), control, 30)
    pooled = 80 / 200
    z = (0.3 - 0.5) / math.sqrt(pooled * (1 - pooled) * (2 / 100))
    assert judged["verdict"] == "worse" and judged["deflection_z"] == pytest.approx(z, abs=1e-6)
    assert judged["reason"] == "true deflection is lower (95%)"
    # the same deflection, CSAT 2.5 against 4.5: Welch's t far below -t(0.975, df), worse
    judged = verdict(counts(100, 50, scores=[2, 3, 2, 3, 2, 3, 2, 3]), control, 30)
    assert judged["verdict"] == "worse" and judged["reason"] == "CSAT is lower (95%)"
    assert judged["csat_t"] == pytest.approx(-2 / math.sqrt(2 * (2 / 7) / 8), abs=1e-6)
    # 55% against 50%, CSAT the same: no clear difference
    judged = verdict(counts(100, 55, scores=[5, 4, 5, 4, 5, 4, 5, 4]), control, 30)
    assert judged["verdict"] == "no clear difference"
    # deflection up, CSAT down: worse, said so
    judged = verdict(counts(100, 80, scores=[2, 3, 2, 3, 2, 3, 2, 3]), control, 30)
    assert judged["verdict"] == "worse" and "CSAT is lower" in judged["reason"]
    # too few contacts on one side
    assert verdict(counts(29, 29), control, 30)["verdict"] == "not enough data yet"
