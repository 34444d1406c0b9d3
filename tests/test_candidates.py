"""Self-service candidates: each contact type's agent time, self-service success, false
deflection and satisfaction gap, ranked by the stated formula, on the API and the CLI."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service.infra.tokens import create_token
from service.reporting import reports
from service.reporting.candidates import FORMULA, candidates
from service.reporting.cli import candidates_table
from tests.test_reports import RULES, T0, WIDE, Contact, insert, log_db  # noqa: F401 (fixture)

TEN_MIN, HALF_HOUR = 600, 1800


def agent_contact(customer: str, contact_type: str, handle_s: float, at=T0,
                  csat: int | None = None) -> Contact:
    contact = Contact(customer, "sms", at).classified(contact_type).routed("general")
    contact.escalated("requested_agent").accepted(after_s=20).wrap_up(True, gap_s=handle_s)
    if csat is not None:
        contact.event("survey_sent", kind="csat", after="agent", gap_s=0).answered(csat)
    return contact


def traffic() -> list[Contact]:
    contacts = []
    for n in range(10):  # track_order in self-service: 8 of 10 resolved
        contact = Contact(f"s{n}", "sms", T0 + timedelta(minutes=n)).classified("track_order")
        contact.routed("general").offered()
        if n < 8:
            contact.resolved()
            if n in (1, 2):
                contact.surveyed().answered(3)
        else:
            contact.failed().ended("customer_left")
        contacts.append(contact)
    # s0 comes back about the same thing: its resolution was a false deflection
    contacts.append(agent_contact("s0", "track_order", TEN_MIN, at=T0 + timedelta(hours=1)))
    contacts += [agent_contact(f"a{n}", "track_order", TEN_MIN, csat=5 if n < 2 else None)
                 for n in range(3)]
    contacts += [agent_contact(f"c{n}", "cancel_order", HALF_HOUR) for n in range(2)]
    resolved_only = Contact("p0", "chat", T0).classified("recover_password").routed("general")
    contacts.append(resolved_only.offered().resolved())
    return contacts


@pytest.fixture
async def ranked(log_db):  # noqa: F811
    await insert(log_db, *traffic())
    return await candidates(log_db, WIDE, RULES)


async def test_types_are_ranked_by_the_stated_formula(ranked):
    assert ranked["formula"] == FORMULA
    rows = {row["contact_type"]: row for row in ranked["rows"]}
    assert list(rows) == ["cancel_order", "track_order"]  # no agent time: not a candidate
    track, cancel = rows["track_order"], rows["cancel_order"]
    assert (track["agent_handled"], track["agent_minutes"]) == (4, pytest.approx(40, abs=0.1))
    assert track["agent_minutes_per_contact"] == pytest.approx(10, abs=0.05)
    assert (track["success"], track["success_estimated"]) == (0.8, False)
    assert track["false_deflection"] == 0.125
    assert (track["csat_self_service"], track["csat_agent"], track["csat_gap"]) == (3, 5, 2)
    assert track["risk"] == 0.625
    assert track["score"] == pytest.approx(40 * 0.8 * 0.375, abs=0.05)
    # never offered self-service: all types' success (9 of 11 offered) stands in for its own
    assert (cancel["success"], cancel["success_estimated"]) == (round(9 / 11, 6), True)
    assert (cancel["risk"], cancel["csat_gap"]) == (0, None)
    assert cancel["score"] == pytest.approx(60 * 9 / 11, abs=0.1)
    assert [row["rank"] for row in ranked["rows"]] == [1, 2]


async def test_candidates_from_facts_equal_those_from_raw_events(ranked, log_db):  # noqa: F811
    from_events = await candidates(log_db, WIDE, RULES, reports.FROM_EVENTS)
    assert from_events["rows"] == ranked["rows"]


async def test_the_table_shows_the_ranking_and_the_formula(ranked):
    table = candidates_table(ranked)
    lines = table.splitlines()
    assert lines[2].split()[:3] == ["rank", "contact", "type"]
    assert lines[3].split()[:2] == ["1", "cancel_order"] and "(est.)" in lines[3]
    assert lines[4].split()[:2] == ["2", "track_order"] and "+2.00" in lines[4]
    assert FORMULA in table


async def test_the_api_serves_them_to_ops_tokens_only(client, db):
    await insert(db, *traffic())
    path = "/api/reports/candidates?from=2024-05-06&to=2024-05-08"
    assert (await client.get(path)).status == 401
    token = await create_token(db, "ops", "tests")
    response = await client.get(path, headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200
    body = await response.json()
    assert [row["contact_type"] for row in body["rows"]] == ["cancel_order", "track_order"]
    assert body["metric_version"] == reports.METRIC_VERSION
