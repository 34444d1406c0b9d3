"""The report SQL on event logs written directly: unit tests of the queries.

The acceptance scenarios, driven through the public webhooks and read through the API, are in
test_ops_api.py. Here `Contact` builds the events of one contact, each step `gap_s` seconds
(default 1) after the previous one:

    Contact("ana", "sms", at=T0).classified("track_order").routed("orders").offered().resolved()
"""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

from service.infra.migrate import migrate
from service.reporting import candidates, metrics, reports
from service.reporting.reports import BadWindow, ReportRules, Window, parse_window

# ---- an event log built by hand ----------------------------------------------------------

COLUMNS = ("id", "occurred_at", "kind", "contact_id", "customer_id", "channel", "contact_type",
           "route_path", "reason", "data")
_customers: dict[str, uuid.UUID] = {}


def customer_id(name: str) -> uuid.UUID:
    return _customers.setdefault(name, uuid.uuid4())


class Contact:
    def __init__(self, customer: str, channel: str, at: datetime):
        self.id = uuid.uuid4()
        self.customer = customer_id(customer)
        self.channel = channel
        self.now = at
        self.contact_type: str | None = None
        self.route_path: str | None = None
        self.rows: list[tuple] = []
        self.event("contact_started", address=f"{customer}@{channel}", gap_s=0)

    def event(self, kind: str, /, *, reason: str | None = None, gap_s: float = 1,
              **data: Any) -> "Contact":
        self.now += timedelta(seconds=gap_s)
        self.rows.append((uuid.uuid4(), self.now, kind, self.id, self.customer, self.channel,
                          self.contact_type, self.route_path, reason, json.dumps(data)))
        return self

    def classified(self, contact_type: str, gap_s: float = 1) -> "Contact":
        self.contact_type = contact_type
        return self.event("classified", confidence=0.9, via="classifier", gap_s=gap_s)

    def missed(self) -> "Contact":
        self.event("classification_missed", reason="low_confidence")
        return self.replied("Sorry, I'm not sure I understood.", choices=True)

    def replied(self, *messages: str, choices: bool = False) -> "Contact":
        """What the bot sent in the same turn: reports must leave it out of every figure."""
        offered = [{"label": "Yes", "value": "yes", "digit": "1"}] if choices else []
        return self.event("replied", messages=list(messages), choices=offered, gap_s=0)

    def routed(self, queue: str, route: str | None = None,
               self_service: bool = True, reason: str | None = None) -> "Contact":
        self.route_path = route or f"root > {queue}"
        return self.event("routed", queue=queue, priority=5, self_service=self_service,
                          reason=reason, route_path=self.route_path)

    def offered(self, step: str = "answer") -> "Contact":
        self.event("self_service_started", step=step)
        return self.replied("The answer, Ana.", "Did that help?", choices=True)

    def resolved(self, gap_s: float = 1) -> "Contact":
        self.event("self_service_resolved", step="answer", gap_s=gap_s)
        return self.ended("self_service_resolved", gap_s=0)

    def failed(self, step: str = "answer") -> "Contact":
        return self.event("self_service_failed", step=step)

    def escalated(self, reason: str, queue: str = "general", route: str | None = None,
                  gap_s: float = 1) -> "Contact":
        self.route_path = route or self.route_path or f"root > {queue}"
        self.event("escalated", reason=reason, queue=queue, priority=5, gap_s=gap_s)
        self.event("queued", queue=queue, position=1, gap_s=0)
        return self.replied("You're number 1 in line.")

    def accepted(self, after_s: float) -> "Contact":
        return self.event("agent_accepted", agent_id="agent-1", gap_s=after_s,
                          hello="You're now talking with Dana.")

    def transferred(self, mode: str = "cold", gap_s: float = 1) -> "Contact":
        """The agent hands it on: requested, then moved (warm: once the next agent accepts)."""
        self.event("transfer_requested", reason="agent_transfer", from_agent="agent-1",
                   to_queue="billing", to_agent=None, mode=mode, note="", gap_s=gap_s)
        if mode == "warm":
            self.accepted(after_s=gap_s)
        return self.event("transferred", reason="agent_transfer", from_agent="agent-1",
                          to_queue="billing", to_agent=None, mode=mode, note="", gap_s=0)

    def wrap_up(self, resolved: bool, correction: str | None = None,
                gap_s: float = 1) -> "Contact":
        self.event("wrap_up", resolved=resolved, corrected_contact_type=correction,
                   classified_as=self.contact_type, gap_s=gap_s)
        self.contact_type = correction or self.contact_type
        return self.ended("agent_resolved" if resolved else "agent_unresolved", gap_s=0)

    def ended(self, outcome: str, gap_s: float = 1) -> "Contact":
        return self.event("ended", outcome=outcome, gap_s=gap_s)

    def surveyed(self, kind: str = "csat", gap_s: float = 0) -> "Contact":
        return self.event("survey_sent", kind=kind, after="self_service", gap_s=gap_s)

    def answered(self, score: int, kind: str = "csat", comment: str = "",
                 event: str = "survey_answered", gap_s: float = 30) -> "Contact":
        return self.event(event, kind=kind, score=score, comment=comment, gap_s=gap_s)


async def insert(conn: asyncpg.Connection, *contacts: Contact) -> None:
    rows = sorted((row for c in contacts for row in c.rows), key=lambda r: r[1])
    await conn.copy_records_to_table("contact_events", records=rows, columns=COLUMNS)


# ---- tests ------------------------------------------------------------------------------

T0 = datetime(2024, 5, 6, 9, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)
RULES = ReportRules({"track_order": 72, "cancel_order": 72, "change_order": 72,
                     "recover_password": 72, "payment_issue": 72},
                    {"track_order": "Track an order"})
WIDE = Window(T0 - H, T0 + 100 * H)


NOT_SURVEYED = {"surveys_sent": 0, "survey_responses": 0, "csat_responses": 0, "csat_points": 0,
                "nps_responses": 0, "nps_promoters": 0, "nps_detractors": 0,
                "survey_response_rate": None, "csat": None, "nps": None}


@pytest.fixture
async def log_db(db):
    await migrate(db)
    await db.execute("TRUNCATE contact_events")
    return db


def mixed_day() -> list[Contact]:
    """Eleven contacts of eight customers; the expected figures are worked out in the tests."""
    a1 = Contact("ana", "sms", T0).classified("track_order").routed("orders").offered().resolved()
    a2 = Contact("ana", "voice", T0 + 20 * H).classified("track_order").routed(
        "orders", "root > orders > repeat", self_service=False, reason="repeat_contact")
    a2.escalated("repeat_contact", "orders").accepted(after_s=30).wrap_up(resolved=True)
    b1 = Contact("ben", "sms", T0).classified("track_order").routed("orders").offered().resolved()
    b2 = Contact("ben", "sms", T0 + 80 * H).classified("track_order").routed("orders").offered()
    b2.resolved()
    c1 = Contact("cat", "sms", T0 + H).classified("cancel_order").routed("orders").offered()
    c1.resolved()
    c2 = Contact("cat", "chat", T0 + 2 * H).classified("recover_password").routed("accounts")
    c2.offered().failed().escalated("self_service_failed", "accounts").ended(
        "abandoned_in_queue", gap_s=100)
    d1 = Contact("dan", "voice", T0 + 3 * H).classified("recover_password").routed("accounts")
    d1.offered().resolved()
    e1 = Contact("eve", "voice", T0 + 4 * H).ended("hung_up_in_ivr", gap_s=20)
    f1 = Contact("fay", "voice", T0 + 5 * H).escalated("requested_agent", "general", "root")
    f1.ended("abandoned_in_queue", gap_s=40)
    g1 = Contact("gus", "chat", T0 + 6 * H).classified("cancel_order").routed("orders").offered()
    g1.failed().escalated("self_service_failed", "orders").accepted(after_s=30)
    g1.wrap_up(resolved=True, correction="change_order")
    h1 = Contact("hal", "sms", T0 + 7 * H).classified("payment_issue").routed(
        "vip", "root > vip", self_service=False, reason="vip_customer")
    h1.escalated("vip_customer", "vip").accepted(after_s=120).transferred("warm")
    return [a1, a2, b1, b2, c1, c2, d1, e1, f1, g1, h1]


V1_COUNTS = ("contacts", "self_service_offered", "self_service_resolved", "false_deflections",
             "escalated", "abandoned", "accepted", "accepted_in_service_level",
             "voice_contacts", "voice_contained")


def counts(figures: dict) -> tuple:
    return tuple(figures[name] for name in V1_COUNTS)


async def test_summary_of_a_mixed_day(log_db):
    await insert(log_db, *mixed_day())
    report = await reports.summary(log_db, WIDE, RULES)
    assert report["metric_version"] == "2"
    assert (report["from"], report["to"]) == ("2024-05-06T08:00:00Z", "2024-05-10T13:00:00Z")
    assert report["definitions"] == reports.DEFINITIONS
    assert {k: v for k, v in report["totals"].items() if k not in NOT_SURVEYED} == {
        "contacts": 11, "self_service_offered": 7, "self_service_resolved": 5,
        "false_deflections": 1, "escalated": 5, "abandoned": 2, "accepted": 3,
        "accepted_in_service_level": 2, "voice_contacts": 4, "voice_contained": 2,
        "transferred": 1, "callbacks_requested": 0, "callbacks_completed": 0,
        "deflection_rate": 5 / 11, "true_deflection_rate": 4 / 11, "containment_rate": 0.5,
        "abandonment_rate": 0.4, "service_level": 0.4}
    assert {k: report["totals"][k] for k in NOT_SURVEYED} == NOT_SURVEYED
    assert report["escalation_reasons"] == {"repeat_contact": 1, "requested_agent": 1,
                                            "self_service_failed": 2, "vip_customer": 1}
    by_type = report["by_contact_type"]
    assert list(by_type) == ["cancel_order", "change_order", "payment_issue",
                             "recover_password", "track_order", "unclassified"]
    #                                    contacts offered resolved false esc aband acc sl voice cont
    assert counts(by_type["track_order"]) == (4, 3, 3, 1, 1, 0, 1, 1, 1, 0)
    assert counts(by_type["change_order"]) == (1, 1, 0, 0, 1, 0, 1, 1, 0, 0)  # wrap-up fixed it
    assert counts(by_type["cancel_order"]) == (1, 1, 1, 0, 0, 0, 0, 0, 0, 0)
    assert counts(by_type["recover_password"]) == (2, 2, 1, 0, 1, 1, 0, 0, 1, 1)
    assert counts(by_type["unclassified"]) == (2, 0, 0, 0, 1, 1, 0, 0, 2, 1)
    assert by_type["track_order"]["true_deflection_rate"] == 0.5
    assert by_type["payment_issue"]["containment_rate"] is None
    assert {k: v["contacts"] for k, v in report["by_channel"].items()} == \
        {"chat": 2, "sms": 5, "voice": 4}
    assert counts(report["by_channel"]["voice"]) == (4, 1, 1, 0, 2, 1, 1, 1, 4, 2)
    assert {k: v["contacts"] for k, v in report["by_queue"].items()} == \
        {"accounts": 2, "general": 1, "none": 1, "orders": 6, "vip": 1}
    assert {k: v["contacts"] for k, v in report["by_route"].items()} == {
        "none": 1, "root": 1, "root > accounts": 2, "root > orders": 5,
        "root > orders > repeat": 1, "root > vip": 1}


async def test_an_empty_window_has_zero_counts_and_null_rates(log_db):
    report = await reports.summary(log_db, WIDE, RULES)
    assert report["totals"]["contacts"] == 0
    assert all(report["totals"][r] is None for r in (
        "deflection_rate", "true_deflection_rate", "containment_rate", "abandonment_rate",
        "service_level"))
    assert report["by_channel"] == {} and report["escalation_reasons"] == {}


async def test_matrix_cells_with_median_time_to_resolution(log_db):
    await insert(log_db, *mixed_day())
    rows = (await reports.matrix(log_db, WIDE, RULES))["rows"]
    assert [(r["contact_type"], r["channel"], r["contacts"]) for r in rows] == [
        ("cancel_order", "sms", 1), ("change_order", "chat", 1), ("payment_issue", "sms", 1),
        ("recover_password", "chat", 1), ("recover_password", "voice", 1),
        ("track_order", "sms", 3), ("track_order", "voice", 1), ("unclassified", "voice", 2)]
    track_sms, track_voice = rows[5], rows[6]
    assert track_sms["label"] == "Track an order"
    assert counts(track_sms) == (3, 3, 3, 1, 0, 0, 0, 0, 0, 0)
    assert track_sms["median_resolution_s"] == 4.0  # classified, routed, offered, resolved
    assert track_voice["median_resolution_s"] == 34.0  # waited 30 s for the agent
    assert rows[-1]["median_resolution_s"] is None


async def test_journeys_and_dropouts(log_db):
    await insert(log_db, *mixed_day())
    report = await reports.journeys(log_db, WIDE, RULES)
    assert [(j["contact_type"], j["path"], j["journeys"], j["cross_channel"])
            for j in report["journeys"]] == [
        ("track_order", "sms:self_service", 2, False),  # ben came back after 80 h: two
        ("cancel_order", "sms:self_service", 1, False),
        ("change_order", "chat:agent", 1, False),
        ("payment_issue", "sms:agent", 1, False),
        ("recover_password", "chat:abandoned", 1, False),
        ("recover_password", "voice:self_service", 1, False),
        ("track_order", "sms:self_service -> voice:agent", 1, True)]
    assert report["journeys"][-1]["steps"] == ["sms:self_service", "voice:agent"]
    assert report["dropouts"] == [
        {"contact_type": "change_order", "channel": "chat", "step": "answer",
         "exit": "self_service_failed", "contacts": 1},
        {"contact_type": "recover_password", "channel": "chat", "step": "answer",
         "exit": "self_service_failed", "contacts": 1},
        {"contact_type": "unclassified", "channel": "voice", "step": "greeting",
         "exit": "hung_up_in_ivr", "contacts": 1},
        {"contact_type": "unclassified", "channel": "voice", "step": "greeting",
         "exit": "requested_agent", "contacts": 1}]


async def test_journeys_keep_the_most_common_per_type(log_db):
    contacts = [Contact(f"c{i}", "sms", T0 + i * timedelta(minutes=1)).classified(
        "track_order").routed("orders").offered().resolved() for i in range(3)]
    contacts += [Contact("c9", "voice", T0).classified("track_order").routed("orders")]
    report = await reports.journeys(log_db, WIDE, RULES, limit=1)
    assert report["journeys"] == []
    await insert(log_db, *contacts)
    report = await reports.journeys(log_db, WIDE, RULES, limit=1)
    assert [(j["path"], j["journeys"]) for j in report["journeys"]] == [("sms:self_service", 3)]
    report = await reports.journeys(log_db, WIDE, RULES, limit=5)
    assert [j["path"] for j in report["journeys"]] == ["sms:self_service", "voice:open"]


async def test_false_deflection_uses_each_types_repeat_window(log_db):
    rules = ReportRules({"track_order": 1, "get_refund": 48})
    inside = Contact("ann", "sms", T0).classified("track_order").routed("orders").offered()
    inside.resolved()
    back_soon = Contact("ann", "chat", T0 + timedelta(minutes=50)).classified("track_order")
    late = Contact("bob", "sms", T0).classified("track_order").routed("orders").offered()
    late.resolved()
    back_late = Contact("bob", "voice", T0 + 2 * H).classified("track_order")
    refund = Contact("cid", "sms", T0).classified("get_refund").routed("billing").offered()
    refund.resolved()
    refund_again = Contact("cid", "voice", T0 + 40 * H).classified("get_refund")
    other_type = Contact("dee", "sms", T0).classified("get_refund").routed("billing").offered()
    other_type.resolved()
    other_again = Contact("dee", "voice", T0 + H).classified("track_order")
    await insert(log_db, inside, back_soon, late, back_late, refund, refund_again, other_type,
                 other_again)
    window = Window(T0, T0 + 30 * timedelta(minutes=1))  # the follow-ups start after it ends
    report = await reports.summary(log_db, window, rules)
    assert report["totals"]["self_service_resolved"] == 4
    assert report["totals"]["false_deflections"] == 2  # ann (50 min < 1 h), cid (40 h < 48 h)
    assert report["by_contact_type"]["track_order"]["false_deflections"] == 1
    assert report["by_contact_type"]["get_refund"]["false_deflections"] == 1


async def test_a_corrected_follow_up_counts_under_its_corrected_type(log_db):
    first = Contact("eli", "sms", T0).classified("track_order").routed("orders").offered()
    first.resolved()
    later = Contact("eli", "chat", T0 + H).classified("cancel_order").routed("orders").offered()
    later.failed().escalated("self_service_failed", "orders").accepted(5)
    later.wrap_up(resolved=True, correction="track_order")
    await insert(log_db, first, later)
    report = await reports.summary(log_db, WIDE, RULES)
    assert report["by_contact_type"]["track_order"]["false_deflections"] == 1


async def test_contacts_count_in_the_window_they_started(log_db):
    before = Contact("fox", "sms", T0 - timedelta(minutes=5)).classified("track_order")
    before.routed("orders").offered().resolved(gap_s=600)  # ends inside the window
    inside = Contact("gil", "voice", T0).escalated("requested_agent", "general", "root")
    inside.ended("abandoned_in_queue", gap_s=7200)  # ends after the window
    at_end = Contact("hil", "sms", T0 + H).classified("track_order")
    await insert(log_db, before, inside, at_end)
    report = await reports.summary(log_db, Window(T0, T0 + H), RULES)
    assert counts(report["totals"]) == (1, 0, 0, 0, 1, 1, 0, 0, 1, 0)


async def test_trend_has_every_bucket_of_the_window(log_db):
    first = Contact("ivy", "sms", T0 + timedelta(minutes=10)).classified("track_order")
    first.routed("orders").offered().resolved()
    third = Contact("jon", "voice", T0 + timedelta(minutes=130)).ended("hung_up_in_ivr")
    await insert(log_db, first, third)
    report = await reports.trend(log_db, Window(T0, T0 + 3 * H), RULES)
    assert report["bucket"] == "hour"
    assert [(p["start"], p["contacts"], p["deflection_rate"], p["containment_rate"])
            for p in report["points"]] == [
        ("2024-05-06T09:00:00Z", 1, 1.0, None), ("2024-05-06T10:00:00Z", 0, None, None),
        ("2024-05-06T11:00:00Z", 1, 0.0, 1.0)]
    week = await reports.trend(log_db, Window(T0, T0 + 7 * 24 * H), RULES)
    assert week["bucket"] == "day" and len(week["points"]) == 7
    assert week["points"][0]["contacts"] == 2


async def test_the_summary_and_the_matrix_asked_at_once_share_one_query(log_db):
    await insert(log_db, *mixed_day())

    def runs() -> float:
        return sum(metrics.REGISTRY.get_sample_value(
            "switchboard_report_query_seconds_count", {"report": name}) or 0
            for name in ("summary", "matrix"))

    before = runs()
    summary, matrix = await asyncio.gather(reports.summary(log_db, WIDE, RULES),
                                           reports.matrix(log_db, WIDE, RULES))
    assert runs() == before + 1  # one connection could not even run two at once
    assert summary["totals"]["contacts"] == sum(r["contacts"] for r in matrix["rows"]) == 11


@pytest.mark.parametrize("raw_from, raw_to, expected", [
    ("2024-05-01", "2024-05-08", ("2024-05-01T00:00:00Z", "2024-05-08T00:00:00Z")),
    ("2024-05-01T09:30:00+02:00", "2024-05-01T10:00Z",
     ("2024-05-01T07:30:00Z", "2024-05-01T10:00:00Z")),
    (None, "2024-05-08T00:00:00", ("2024-05-01T00:00:00Z", "2024-05-08T00:00:00Z")),
])
def test_parse_window(raw_from, raw_to, expected):
    window = parse_window(raw_from, raw_to)
    assert (reports.iso(window.start), reports.iso(window.end)) == expected


@pytest.mark.parametrize("raw_from, raw_to, message", [
    ("yesterday", None, "'from' is not a date or time: 'yesterday' (use ISO 8601, e.g. "
                        "2024-05-01 or 2024-05-01T09:00:00Z)"),
    ("2024-05-01", "2024-13-01", "'to' is not a date or time: '2024-13-01'"),
    ("2024-05-08", "2024-05-01", "'from' (2024-05-08T00:00:00Z) must be before 'to' "
                                 "(2024-05-01T00:00:00Z)"),
    ("2024-05-01", "2024-05-01", "must be before"),
])
def test_bad_windows_say_what_is_wrong(raw_from, raw_to, message):
    with pytest.raises(BadWindow) as caught:
        parse_window(raw_from, raw_to)
    assert message in str(caught.value)


def test_trend_bucket_choice_and_limits():
    day = Window(T0, T0 + 24 * H)
    assert reports.choose_bucket(day) == "hour"
    assert reports.choose_bucket(Window(T0, T0 + 400 * 24 * H)) == "week"
    with pytest.raises(BadWindow, match="more than 1000 points"):
        reports.choose_bucket(Window(T0, T0 + 2000 * H), "hour")
    with pytest.raises(BadWindow, match="'bucket' must be one of hour, day, week"):
        reports.choose_bucket(day, "minute")


# ---- served figures against the raw-event reference ---------------------------------------

TYPES = ("track_order", "cancel_order", "change_order", "recover_password", "payment_issue")


def random_contact(rng, customer: str, at: datetime) -> Contact:
    """A contact taking one of the paths live traffic takes, with random gaps."""
    contact = Contact(customer, rng.choice(("sms", "voice", "chat")), at)
    gap = lambda: rng.choice((0, 0.5, 1, 30, 300))  # noqa: E731 (ties on purpose)
    path = rng.random()
    if path < 0.1:
        return contact.missed().ended("hung_up_in_ivr", gap_s=gap())
    contact.classified(rng.choice(TYPES), gap_s=gap())
    if path < 0.2:
        contact.routed("vip", "root > vip", self_service=False, reason="vip_customer")
        contact.escalated("vip_customer", "vip", gap_s=gap())
    else:
        contact.routed(rng.choice(("orders", "accounts"))).offered(rng.choice(("answer", "ask")))
        if path < 0.55:
            return random_survey(rng, contact.resolved(gap_s=gap()), gap)
        if path < 0.65:
            return contact.ended("idle_timeout", gap_s=gap())
        if path < 0.7:
            return contact
        contact.failed().escalated(rng.choice(("self_service_failed", "requested_agent")),
                                   rng.choice(("orders", "general")), gap_s=gap())
    fate = rng.random()
    if contact.channel == "voice" and rng.random() < 0.4:  # the caller asked to be called back
        contact.event("callback_requested", queue="general", number="+15550100", gap_s=gap())
        if fate < 0.6:
            return random_callback(rng, contact, gap)
        if fate < 0.8:  # hung up after asking (the call's end is no abandonment)
            contact.event("left_queue", result="leave", gap_s=gap())
        return contact
    if fate < 0.6:
        contact.accepted(after_s=rng.choice((5, 45, 90)))
        if rng.random() < 0.3:  # handed on, once or twice, cold or warm
            for _ in range(rng.choice((1, 1, 2))):
                contact.transferred(rng.choice(("cold", "warm")), gap_s=gap())
        contact.wrap_up(rng.random() < 0.7, rng.choice((None, None, rng.choice(TYPES))))
        random_survey(rng, contact, gap)
    elif fate < 0.9:
        contact.ended("abandoned_in_queue", gap_s=gap())
    return contact


def random_callback(rng, contact: Contact, gap) -> Contact:
    """A callback's attempts, each after an agent's accept: answered (then wrapped up), or
    not answered and tried again up to three times, then given up."""
    for attempt in range(1, 4):
        contact.accepted(after_s=rng.choice((5, 45, 300)))
        contact.event("callback_attempt", attempt=attempt, gap_s=gap())
        if rng.random() < 0.5:
            contact.event("callback_completed", attempt=attempt, gap_s=gap())
            return contact.wrap_up(rng.random() < 0.7)
        contact.event("callback_attempt_failed", attempt=attempt, result="no_answer",
                      gap_s=gap())
    contact.event("callback_failed", attempts=3, result="no_answer", gap_s=gap())
    return contact.ended("callback_failed", gap_s=gap())


def random_survey(rng, contact: Contact, gap) -> Contact:
    """No survey, or one unanswered, answered (after a rejected try, or twice: the first
    answer counts), answered late, or given up, as the surveys module records them."""
    fate = rng.random()
    if fate < 0.3:
        return contact
    kind = rng.choice(("csat", "nps"))
    low, high = (1, 5) if kind == "csat" else (0, 10)
    contact.surveyed(kind, gap_s=gap())
    if fate < 0.4:
        return contact
    if fate < 0.5:
        contact.event("survey_answer_rejected", text="great", reprompted=True, gap_s=gap())
    if fate < 0.6:
        return contact.answered(rng.randint(low, high), kind, event="survey_late", gap_s=gap())
    if fate < 0.65:
        return contact.event("survey_closed", reason="new_contact", gap_s=gap())
    contact.answered(rng.randint(low, high), kind, comment="ok", gap_s=gap())
    if fate < 0.7:
        contact.answered(rng.randint(low, high), kind, gap_s=gap())
    return contact


async def test_served_figures_equal_the_raw_event_computation_on_random_traffic(log_db):
    import random

    rng = random.Random(16)
    contacts = []
    for number in range(150):
        at = T0 + timedelta(hours=rng.uniform(0, 96))
        for _ in range(rng.choice((1, 1, 2, 3))):
            contacts.append(random_contact(rng, f"customer-{number}", at))
            at += timedelta(hours=rng.choice((0, 1, 20, 60, 80)))
    rows = [row for c in contacts for row in c.rows]
    rng.shuffle(rows)  # batches land in any order, a contact's events across several
    for start in range(0, len(rows), 97):
        await log_db.copy_records_to_table("contact_events", records=rows[start:start + 97],
                                           columns=COLUMNS)
    rules = ReportRules({"track_order": 24, "cancel_order": 72, "change_order": 72,
                         "recover_password": 48, "payment_issue": 72}, service_level_s=60)
    windows = [Window(T0 - H, T0 + 1000 * H), Window(T0, T0 + 24 * H),
               Window(T0 + 30 * H, T0 + 31 * H), Window(T0 + 50.5 * H, T0 + 90 * H)]
    for window in windows:
        for report in (reports.summary, reports.matrix, reports.journeys):
            served = await report(log_db, window, rules)
            reference = await report(log_db, window, rules, queries=reports.FROM_EVENTS)
            assert without_clock(served) == without_clock(reference), (report.__name__, window)
        served = await reports.trend(log_db, window, rules)
        reference = await reports.trend(log_db, window, rules, queries=reports.FROM_EVENTS)
        assert without_clock(served) == without_clock(reference)
    await split_figures_equal_the_raw_events(log_db, rng, contacts, windows, rules)
    whole = await reports.summary(log_db, windows[0], rules)
    assert whole["totals"]["contacts"] == len(contacts)
    assert whole["totals"]["false_deflections"] > 0 and whole["totals"]["abandoned"] > 0
    assert 0 < whole["totals"]["transferred"] < whole["totals"]["accepted"]
    assert 0 < whole["totals"]["callbacks_completed"] < whole["totals"]["callbacks_requested"]
    totals = whole["totals"]
    assert totals["surveys_sent"] > totals["survey_responses"] > 0
    assert totals["csat_responses"] > 0 and totals["nps_responses"] > 0


async def split_figures_equal_the_raw_events(conn, rng, contacts, windows, rules) -> None:
    """Customers carry a tier (some none): every report split by it, or for one tier, serves
    the raw-event computation over those customers' events, and the tiers add up."""
    customers = list(dict.fromkeys(c.customer for c in contacts))  # in the order drawn
    await conn.executemany(
        "INSERT INTO customers (id, attributes) VALUES ($1, $2::jsonb)",
        [(cid, json.dumps({"tier": rng.choice(("gold", "silver", "bronze")),
                           "language": rng.choice(("en", "fr"))} if rng.random() < 0.8 else {}))
         for cid in customers[:-10]])  # the last ten are not in the directory at all
    split = functools.partial(reports.split, attribute="tier")
    for window in windows:  # the last one starts at half past: its trend reads the facts
        for report in (reports.summary, reports.matrix, reports.journeys, reports.trend,
                       candidates.candidates):
            served = await split(report, conn, window, rules)
            reference = await split(report, conn, window, rules,
                                    queries=reports.FROM_EVENTS)
            assert without_clock(served) == without_clock(reference), (report.__name__, window)
        whole = await reports.summary(conn, window, rules)
        tiers = await split(reports.summary, conn, window, rules)
        assert sum(s["totals"]["contacts"] for s in tiers["segments"]) == \
            whole["totals"]["contacts"]
        assert sum(s["totals"]["self_service_resolved"] for s in tiers["segments"]) == \
            whole["totals"]["self_service_resolved"]
    whole = await split(reports.summary, conn, windows[0], rules)
    assert [s["value"] for s in whole["segments"]] == [None, "bronze", "gold", "silver"]
    gold = await reports.summary(conn, windows[0], rules.with_segment("tier", "gold"))
    assert gold["segment"] == {"by": "customer.tier", "value": "gold"}
    assert gold["totals"] == whole["segments"][2]["totals"]
    assert gold["totals"]["contacts"] > 0
    assert sum(s["totals"]["false_deflections"] > 0 for s in whole["segments"]) >= 2


def without_clock(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "as_of"}


async def test_the_log_is_append_only_and_truncating_it_empties_the_facts(log_db):
    await insert(log_db, Contact("ana", "sms", T0).classified("track_order").routed("orders"))
    assert await log_db.fetchval("SELECT count(*) FROM contact_facts") == 1
    for statement in ("DELETE FROM contact_events", "UPDATE contact_events SET kind = 'x'"):
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await log_db.execute(statement)
    await log_db.execute("TRUNCATE contact_events")
    assert await log_db.fetchval("SELECT count(*) FROM contact_facts") == 0


# ---- satisfaction surveys (metric version 2) ---------------------------------------------

async def test_csat_and_nps_over_the_windows_responses(log_db):
    """CSAT is the mean of valid 1-5 answers, NPS % of 9-10 minus % of 0-6; late,
    unanswered and rejected answers are not responses; the first answer counts."""
    def resolved(name: str, channel: str = "sms") -> Contact:
        return Contact(name, channel, T0).classified("track_order").routed("orders") \
            .offered().resolved()

    await insert(log_db,
                 resolved("ana").surveyed().answered(4),
                 resolved("ben").surveyed().answered(2).answered(5),
                 resolved("cid").surveyed(),                                  # unanswered
                 resolved("dee").surveyed().answered(5, event="survey_late"),  # late
                 resolved("eve", "voice").surveyed("nps").answered(9, "nps"),
                 resolved("fay", "voice").surveyed("nps").answered(3, "nps"),
                 resolved("gus", "voice").surveyed("nps").answered(7, "nps"),
                 resolved("hal"))                                             # not surveyed
    totals = (await reports.summary(log_db, WIDE, RULES))["totals"]
    assert (totals["surveys_sent"], totals["survey_responses"]) == (7, 5)
    assert totals["csat"] == 3.0  # (4 + 2) / 2
    assert totals["nps"] == 0.0  # 1 promoter, 1 detractor, 1 passive of 3: 33.3 - 33.3
    assert totals["survey_response_rate"] == 5 / 7


async def test_the_matrix_splits_survey_figures_by_who_handled_the_contact(log_db):
    self_served = Contact("ana", "chat", T0).classified("track_order").routed("orders") \
        .offered().resolved().surveyed().answered(5)
    by_agent = Contact("ben", "chat", T0).classified("track_order").routed("orders").offered() \
        .failed().escalated("self_service_failed", "orders").accepted(10).wrap_up(True) \
        .surveyed().answered(2)
    unanswered = Contact("cid", "chat", T0).classified("track_order").routed("orders") \
        .offered().failed().escalated("self_service_failed", "orders").accepted(10) \
        .wrap_up(False).surveyed()
    await insert(log_db, self_served, by_agent, unanswered)
    [cell] = (await reports.matrix(log_db, WIDE, RULES))["rows"]
    assert (cell["contact_type"], cell["channel"], cell["csat"]) == ("track_order", "chat", 3.5)
    survey_fields = ("surveys_sent", "survey_responses", "survey_response_rate", "csat", "nps")
    assert {who: {k: figures[k] for k in survey_fields}
            for who, figures in cell["by_handling"].items()} == {
        "self_service": {"surveys_sent": 1, "survey_responses": 1, "survey_response_rate": 1.0,
                         "csat": 5.0, "nps": None},
        "agent": {"surveys_sent": 2, "survey_responses": 1, "survey_response_rate": 0.5,
                  "csat": 2.0, "nps": None},
        "abandoned": {"surveys_sent": 0, "survey_responses": 0, "survey_response_rate": None,
                      "csat": None, "nps": None}}
    by = cell["by_handling"]  # every figure, not only the surveys'
    assert (by["self_service"]["contacts"], by["agent"]["contacts"], by["abandoned"]["contacts"]) \
        == (1, 2, 0)
    assert by["self_service"]["true_deflection_rate"] == 1.0 and by["agent"]["escalated"] == 2
