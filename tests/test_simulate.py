"""`switchboard simulate` replays contacts made through the public endpoints; on random
traffic, its report from `contact_replay` equals the one gathered from the raw events."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import shutil
import uuid
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from service.__main__ import main
from service.appkeys import EVENTS
from service.infra.migrate import MIGRATIONS_DIR, migrate
from service.reporting import simulate as simulation
from service.reporting.reports import Window
from service.rules.loader import Rules, load_rules
from tests.test_reports import COLUMNS, T0, Contact
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
    return candidate_rules(tmp_path / "candidate")


def candidate_rules(rules: Path) -> Path:
    """Orders by phone go to an agent; repeat contacts about orders get self-service again."""
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


# ---- contact_replay against the raw events, on random traffic -----------------------------

KINDS = simulation.KINDS
UNCLEAR = ("blorp", "hello?", "what's the weather like")
ASKS = ("I want to talk to a person", "agent please")
TIERS = ({}, {"tier": "vip"}, {"tier": "gold", "since": 2019}, {"tier": ["vip"]}, None)


@pytest.fixture(scope="module")
def rule_sets(tmp_path_factory) -> tuple[Rules, Rules]:
    """The example rules and the candidate (same catalog: it borrows the trained classifier)."""
    rules = load_rules(ROOT / "routing_rules")
    candidate = load_rules(candidate_rules(tmp_path_factory.mktemp("rules") / "candidate"),
                           with_classifier=False)
    return rules, dataclasses.replace(candidate, classifier=rules.classifier)


def random_past_contact(rng: random.Random, customer: str, at, words: list[str]) -> Contact:
    """A contact with its first input and decision as live turns record them, or with events
    of the replayed kinds in an order no turn makes; ties in time on purpose."""
    channel = rng.choice(("sms", "voice", "chat"))
    contact = Contact(customer, channel, at)
    gap = lambda: rng.choice((0, 0, 1, 30))  # noqa: E731

    def said(text: str | None = None) -> None:
        data = {"text": text or rng.choice(words + [*UNCLEAR, *ASKS, f"  {words[0]}  "]),
                "input": "message"}
        if channel == "voice" and rng.random() < 0.4:
            data = {"text": rng.choice("01234579"), "input": "digits"}
        elif channel == "voice":
            data["input_confidence"] = rng.choice((0.3, 0.8, 1))
        if rng.random() < 0.03:
            del data["text"]
        contact.event("received", gap_s=gap(), **data)

    def classified(via: str = "classifier") -> None:
        contact.contact_type = rng.choice(("track_order", "cancel_order", "recover_password",
                                           "payment_issue", "complaint"))
        contact.event("classified", confidence=0.9, via=via, gap_s=gap())
        contact.route_path = rng.choice(("root > orders", "root > orders > repeat", "root"))
        contact.event("routed", queue=rng.choice(("orders", "general")), route_path=(
            contact.route_path), self_service=rng.random() < 0.7, gap_s=gap())
        if rng.random() < 0.6:
            contact.event("self_service_started", step="answer", gap_s=gap())
        if rng.random() < 0.4:
            contact.event("escalated", reason=rng.choice(("self_service_failed", "rule")),
                          queue="orders", gap_s=gap())

    path = rng.random()
    if path < 0.85:
        for _ in range(rng.choice((0, 1, 1, 1, 2))):
            said()
    if path < 0.45:
        classified()
    elif path < 0.55:
        classified(via="repeat_prompt")
    elif path < 0.7:
        contact.event("classification_missed", reason=rng.choice(("low_confidence",
                                                                  "out_of_scope")), gap_s=gap())
        said()
        classified()
    elif path < 0.8:
        contact.route_path = "root > general"
        contact.event("escalated", reason="requested_agent", queue="general", gap_s=gap())
    elif path < 0.9:  # the replayed kinds in any order, any data
        for _ in range(rng.randint(1, 6)):
            kind = rng.choice(KINDS)
            if kind == "received":
                said()
            else:
                contact.contact_type = rng.choice((None, "track_order", "complaint"))
                contact.event(kind, reason=rng.choice((None, "rule")), gap_s=gap(),
                              queue=rng.choice(("orders", None)), route_path="root > x",
                              via=rng.choice(("classifier", "repeat_prompt")))
    return contact.ended("customer_left", gap_s=gap())


def random_past_traffic(rng: random.Random, words: list[str], customers: int) -> list[Contact]:
    contacts = []
    for number in range(customers):
        at = T0 + timedelta(hours=rng.uniform(0, 96))
        for _ in range(rng.choice((1, 1, 2, 3))):
            contacts.append(random_past_contact(rng, f"replayed-{number}", at, words))
            at += timedelta(hours=rng.choice((0.01, 1, 20, 30, 60, 80)))
    return contacts


async def write_past_traffic(conn: asyncpg.Connection, rng: random.Random,
                             contacts: list[Contact]) -> None:
    """Customers with their fields, then the events: most in order, in batches that split
    contacts, the rest shuffled (a replayed spool) so contacts are folded again from the log."""
    customers = dict.fromkeys(c.customer for c in contacts)  # in order: the same each run
    await conn.executemany(
        "INSERT INTO customers (id, attributes) VALUES ($1, $2::jsonb)",
        [(cid, json.dumps(fields)) for cid in customers
         if (fields := rng.choice(TIERS)) is not None])
    rows = sorted((row for c in contacts for row in c.rows), key=lambda r: r[1])
    late = set(rng.sample(range(len(rows)), len(rows) // 4))
    in_order = [row for i, row in enumerate(rows) if i not in late]
    shuffled = [row for i, row in enumerate(rows) if i in late]
    rng.shuffle(shuffled)
    for batch_rows in (in_order, shuffled):
        start = 0
        while start < len(batch_rows):
            size = rng.randint(1, 60)
            await conn.copy_records_to_table("contact_events", columns=COLUMNS,
                                             records=batch_rows[start:start + size])
            start += size


def compare_each(window: Window, contacts: list[simulation.PastContact],
                 simulated: dict[str, simulation.Result],
                 baseline: dict[str, simulation.Result] | None, rules: Rules,
                 against: Rules | None, examples: int) -> dict:
    """The report as `compare` made it before it counted distinct pairs: the reference."""
    from collections import Counter

    from service.reporting.reports import iso
    from service.reporting.simulate import _described, _example, _side_by_side, _top

    replayed = [c for c in contacts if c.contact_id in simulated]
    pairs = [(c, (baseline[c.contact_id] if baseline is not None else c.recorded),
              simulated[c.contact_id]) for c in replayed]
    changed = [(c, old, new) for c, old, new in pairs if old != new]
    return {
        "from": iso(window.start), "to": iso(window.end),
        "rules": _described(rules),
        "baseline": _described(against) if against is not None else "recorded",
        "contacts": len(contacts), "replayed": len(replayed),
        "not_replayed": dict(Counter(c.skipped for c in contacts if c.skipped).most_common()),
        "first_decisions": _side_by_side(Counter(old.label for _, old, _ in pairs),
                                         Counter(new.label for _, _, new in pairs)),
        "queues": _side_by_side(Counter(old.queue for _, old, _ in pairs
                                        if old.outcome == "agent"),
                                Counter(new.queue for _, _, new in pairs
                                        if new.outcome == "agent")),
        "changed": {
            "first_decision": sum(old.label != new.label for _, old, new in changed),
            "contact_type": sum(old.contact_type != new.contact_type for _, old, new in changed),
            "route": sum(old.route_path != new.route_path for _, old, new in changed),
            "queue": sum(old.queue != new.queue for _, old, new in changed)},
        "contact_type_changes": _top(Counter((old.contact_type, new.contact_type)
                                             for _, old, new in changed
                                             if old.contact_type != new.contact_type)),
        "first_decision_changes": _top(Counter((old.label, new.label) for _, old, new in changed
                                               if old.label != new.label)),
        "examples": [_example(c, old, new) for c, old, new in changed[:examples]],
    }


async def reports_both_ways(conn: asyncpg.Connection, window: Window, rules: Rules,
                            against: Rules | None, examples: int = 100_000
                            ) -> tuple[dict, dict]:
    """The report of `simulate` as served, and as computed from the raw events with every
    decision worked out afresh and every contact compared one by one."""
    lookback = simulation.longest_repeat_window_h(rules, *([against] if against else []))
    made = []
    for load, memoised, compare in ((simulation.load_past, True, simulation.compare),
                                    (simulation.load_past_from_events, False, compare_each)):
        contacts, earlier = await load(conn, window, lookback)
        replayed = simulation.replay(rules, contacts, earlier, memoised=memoised)
        baseline = simulation.replay(against, contacts, earlier, memoised=memoised) \
            if against else None
        made.append(compare(window, contacts, replayed, baseline, rules, against,
                            examples=examples))
    return made[0], made[1]


WINDOWS = [Window(T0 - timedelta(hours=1), T0 + timedelta(days=30)),
           Window(T0, T0 + timedelta(days=1)),
           Window(T0 + timedelta(hours=30), T0 + timedelta(hours=31)),
           Window(T0 + timedelta(hours=50.5), T0 + timedelta(hours=90))]


async def test_the_replayed_report_equals_the_raw_event_computation_on_random_traffic(
        db, rule_sets):
    rules, candidate = rule_sets
    await db.execute("TRUNCATE contact_events, customers CASCADE")
    rng = random.Random(15)
    words = [text for text, _ in rng.sample(sorted(rules.catalog.training), 40)]
    contacts = random_past_traffic(rng, words, customers=160)
    await write_past_traffic(db, rng, contacts)
    assert await db.fetchval("SELECT count(*) FROM contact_replay") > len(contacts) * 0.9
    for window in WINDOWS:
        for replayed, against in ((rules, None), (candidate, None), (candidate, rules)):
            for examples in (0, 7, 100_000):
                served, reference = await reports_both_ways(db, window, replayed, against,
                                                            examples)
                assert json.dumps(served) == json.dumps(reference), \
                    (window, replayed.directory, against, examples)  # in the same order too
    whole, _ = await reports_both_ways(db, WINDOWS[0], candidate, rules)
    assert whole["contacts"] == len(contacts)
    assert set(whole["not_replayed"]) == {"ended_before_a_decision", "nothing_said"}
    decisions = {label: counts["baseline"] for label, counts in whole["first_decisions"].items()}
    assert min(decisions[label] for label in (
        "self_service", "agent:requested_agent", "agent:repeat_contact", "agent:vip_customer",
        "clarify:out_of_scope", "clarify:invalid_input")) > 0
    assert whole["changed"]["first_decision"] > 0 and whole["changed"]["route"] > 0
    assert any(e["said"] == "(confirmed an earlier contact)" for e in whole["examples"])
    assert any(e["said"].startswith("[pressed") for e in whole["examples"])


async def test_the_migration_fills_contact_replay_for_the_log_it_finds(server_urls, rule_sets,
                                                                       tmp_path):
    rules, candidate = rule_sets
    earlier_migrations = tmp_path / "migrations"
    earlier_migrations.mkdir()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        if int(path.name[:3]) < 15:
            shutil.copy(path, earlier_migrations)
    admin = await asyncpg.connect(server_urls[0])
    name = f"switchboard_replay_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(urlunsplit(urlsplit(server_urls[0])._replace(path=f"/{name}")))
    try:
        await migrate(conn, earlier_migrations)
        assert await conn.fetchval("SELECT to_regclass('contact_replay')") is None
        rng = random.Random(16)
        words = [text for text, _ in rng.sample(sorted(rules.catalog.training), 20)]
        contacts = random_past_traffic(rng, words, customers=60)
        await write_past_traffic(conn, rng, contacts)
        assert 15 in await migrate(conn)
        for window in WINDOWS[:2]:
            served, reference = await reports_both_ways(conn, window, candidate, None)
            assert json.dumps(served) == json.dumps(reference)
            assert served["replayed"] > 0
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
