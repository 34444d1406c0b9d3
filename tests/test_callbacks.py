"""Queued callbacks end to end, on real PostgreSQL and Valkey with Twilio's REST API stood in
for: a waiting caller presses 1, hangs up politely, keeps their place, is offered to an agent
as a callback, and is called back when the agent accepts; unanswered calls are retried, then
given up; Twilio's 503 delays the call without doubling it; keys and replays are idempotent."""

from __future__ import annotations

import asyncio
import shutil
import time
from datetime import datetime, timedelta, timezone

import pytest

from service.appkeys import EVENTS
from service.reporting import reports
from service.reporting.reports import FROM_EVENTS, ReportRules, Window
from service.rules.loader import load_rules
from service.rules.routing import CallbackPolicy
from tests.conftest import RULES_DIR, with_settings
from tests.test_agents import app_settings, instance, twilio  # noqa: F401
from tests.test_rules_validation import ROUTES, errors, write_rules
from tests.test_transfers import events_of, sign_in
from tests.twilio_driver import SERVICE_NUMBER, Call, check_twiml, post_signed

CALLER = "+15555550190"
LATER_CALLER = "+15555550191"


@pytest.fixture
def quick_retry_settings(app_settings, tmp_path):
    """The shipped rules with the general queue's callbacks tried twice, 1 s apart."""
    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules)
    routes = rules / "routes.yaml"
    routes.write_text(routes.read_text().replace(
        "    service_level: {target_s: 20, goal: 0.8}\n",
        "    service_level: {target_s: 20, goal: 0.8}\n"
        "    callback: {attempts: 2, retry_after_s: 1}\n", 1))
    return with_settings(app_settings, rules_dir=rules)


async def queued_call(client, caller: str = CALLER) -> Call:
    """A caller who asked for a person and hears the hold loop."""
    call = await Call(client, caller).dial()
    await call.press("0")
    assert call.twiml.find("Enqueue") is not None
    await call.hold()
    return call


async def press_in_hold(call: Call, digits: str) -> str:
    """Press a key during the hold loop's <Gather>; the TwiML answered."""
    gather = call.twiml.find("Gather")
    assert gather is not None, call.raw
    response = await post_signed(call.client, gather.get("action"), call.params(Digits=digits))
    assert response.status == 200
    raw = await response.text()
    check_twiml(raw)
    return raw


async def ask_callback(call: Call) -> str:
    """Press 1, hear the confirmation, leave Twilio's queue and hang up."""
    raw = await press_in_hold(call, "1")
    await call.leave_queue("leave")
    assert call.verbs() == ["Hangup"]
    await call.hang_up("completed")
    return raw


async def placed_calls(standin, count: int, timeout_s: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while len(standin.calls) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return standin.calls


async def kinds_of(client, db, contact_id: str) -> list[str]:
    return [e["kind"] for e in await events_of(client, db, contact_id)]


async def summary_now(client, db) -> dict:
    """This hour's summary once the events landed, served and from raw events (they must
    agree)."""
    assert await client.app[EVENTS].flush()
    now = datetime.now(timezone.utc)
    window = Window(now - timedelta(hours=1), now + timedelta(hours=1))
    rules = ReportRules()
    served = await reports.summary(db, window, rules)
    reference = await reports.summary(db, window, rules, queries=FROM_EVENTS)
    assert served["totals"] == reference["totals"]
    return served["totals"]


async def test_a_waiting_caller_is_called_back_in_their_place(app_settings, db, twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        standin.service_url = str(client.make_url("")).rstrip("/")
        call = await queued_call(client)
        hold = call.twiml.find("Gather")
        assert (hold.get("numDigits"), hold.get("action")) == ("1", "/twilio/voice/callback-key")
        assert "press 1" in " ".join(call.said())
        later = await queued_call(client, LATER_CALLER)  # came after: stays behind

        confirmation = await ask_callback(call)
        assert "call you back" in confirmation and "<Leave" in confirmation
        agent = await sign_in(client, db, "Ann", ["care"])
        offer = await agent.next("offer")
        contact = offer["contact_id"]
        assert offer["callback"]["number"] == CALLER and offer["callback"]["attempts"] == 0
        assert offer["context"]["callback"]["number"] == CALLER
        assert offer["context"]["transcript"]  # the whole context rides along
        kinds = await kinds_of(client, db, contact)
        assert "callback_requested" in kinds and "ended" not in kinds

        await agent.send(type="accept", contact_id=contact)
        assigned = await agent.next("assigned")
        assert assigned["context"]["callback"]["state"] == "calling"
        [placed] = await placed_calls(standin, 1)
        assert (placed["To"], placed["From"]) == (CALLER, SERVICE_NUMBER)
        assert f">contact-{contact}</Conference>" in placed["Twiml"]
        assert 'participantLabel="customer"' in placed["Twiml"]
        assert placed["StatusCallback"] == ("https://switchboard.example.test/twilio/voice/"
                                            f"callback-status?contact={contact}&attempt=1")
        assert placed["StatusCallbackEvent"] == "answered completed"
        assert standin.call_updates == [] and standin.participants == []  # agent waits

        assert await standin.send_call_status(placed, "ringing") == 200
        assert await standin.send_call_status(placed, "in-progress") == 200
        assert await standin.send_call_status(placed, "in-progress") == 200  # replayed
        answered = await agent.next("callback_result")
        assert (answered["contact_id"], answered["status"]) == (contact, "answered")
        [joined] = standin.participants
        assert (joined["conference"], joined["Label"], joined["To"]) == \
            (f"contact-{contact}", f"agent-{agent.id}", f"client:agent-{agent.id}")
        assert await standin.send_call_status(placed, "completed") == 200
        ended = await agent.next("contact_ended")
        assert ended["contact_id"] == contact
        await agent.send(type="wrap_up", contact_id=contact, resolved=True)
        await agent.next("wrapped_up")

        kinds = await kinds_of(client, db, contact)
        assert kinds.count("callback_completed") == 1 and kinds.count("callback_attempt") == 1
        assert kinds.index("callback_attempt") < kinds.index("callback_completed")
        assert (await events_of(client, db, contact))[-1]["outcome"] == "agent_resolved"
        second = await agent.next("offer")  # the caller who came later is next
        assert second["contact_id"] != contact and "callback" not in second
        await later.hang_up("completed")
        totals = await summary_now(client, db)
        assert (totals["callbacks_requested"], totals["callbacks_completed"]) == (1, 1)
        assert totals["abandoned"] == 1  # the later caller, not the one called back
        assert totals["escalated"] == 2


async def test_an_unanswered_callback_is_retried_then_given_up(quick_retry_settings, db,
                                                                twilio):
    standin, _ = twilio
    async with instance(quick_retry_settings) as client:
        standin.service_url = str(client.make_url("")).rstrip("/")
        call = await queued_call(client)
        await ask_callback(call)
        agent = await sign_in(client, db, "Ann", ["care"])
        contact = (await agent.next("offer"))["contact_id"]
        await agent.send(type="accept", contact_id=contact)
        await agent.next("assigned")
        [first] = await placed_calls(standin, 1)

        assert await standin.send_call_status(first, "no-answer") == 200
        result = await agent.next("callback_result")
        assert (result["status"], result["attempt"], result["retry_in_s"], result["gave_up"]) \
            == ("no_answer", 1, 1, False)
        missed_at = time.monotonic()
        again = await agent.next("offer", timeout=15)
        assert time.monotonic() - missed_at >= 0.8  # not before the queue's retry delay
        assert (again["contact_id"], again["callback"]["attempts"]) == (contact, 1)
        await agent.send(type="accept", contact_id=contact)
        await agent.next("assigned")
        first_, second = await placed_calls(standin, 2)
        assert second["StatusCallback"].endswith(f"contact={contact}&attempt=2")
        assert await standin.send_call_status(first, "busy") == 200  # a stale attempt: ignored
        assert await standin.send_call_status(second, "busy") == 200
        result = await agent.next("callback_result")
        assert (result["status"], result["attempt"], result["gave_up"]) == ("busy", 2, True)

        events = await events_of(client, db, contact)
        kinds = [e["kind"] for e in events]
        assert kinds.count("callback_attempt") == 2
        assert [(e["attempt"], e["result"], e["retry_in_s"]) for e in events
                if e["kind"] == "callback_attempt_failed"] == [(1, "no_answer", 1),
                                                               (2, "busy", None)]
        assert kinds.count("callback_failed") == 1
        assert events[-1]["kind"] == "ended" and events[-1]["outcome"] == "callback_failed"
        assert not standin.participants  # nobody answered: no agent was dialled in
        assert await standin.send_call_status(second, "busy") == 200  # after the give-up
        assert (await kinds_of(client, db, contact)) == kinds
        totals = await summary_now(client, db)
        assert (totals["callbacks_requested"], totals["callbacks_completed"],
                totals["abandoned"]) == (1, 0, 0)


async def test_twilio_busy_at_the_first_placement_still_places_the_call_once(app_settings, db,
                                                                              twilio):
    standin, _ = twilio
    async with instance(with_settings(app_settings, outbox_retry_base_s=0.2)) as client:
        call = await queued_call(client)
        await ask_callback(call)
        agent = await sign_in(client, db, "Ann", ["care"])
        contact = (await agent.next("offer"))["contact_id"]
        standin.fail_calls = 1
        await agent.send(type="accept", contact_id=contact)
        await agent.next("assigned")
        [placed] = await placed_calls(standin, 1)
        await asyncio.sleep(1.5)  # room for a wrong second placement
        assert standin.call_attempts == 2 and len(standin.calls) == 1
        assert placed["StatusCallback"].endswith(f"contact={contact}&attempt=1")
        kinds = await kinds_of(client, db, contact)
        assert kinds.count("callback_attempt") == 1 and "delivery_failed" not in kinds


async def test_a_call_twilio_refuses_for_good_is_a_failed_attempt(quick_retry_settings, db,
                                                                   twilio):
    standin, _ = twilio
    standin.refuse_calls_with_code = 21211  # not a valid phone number
    async with instance(quick_retry_settings) as client:
        call = await queued_call(client)
        await ask_callback(call)
        agent = await sign_in(client, db, "Ann", ["care"])
        for attempt, gave_up in ((1, False), (2, True)):
            contact = (await agent.next("offer", timeout=15))["contact_id"]
            await agent.send(type="accept", contact_id=contact)
            result = await agent.next("callback_result")
            assert (result["status"], result["attempt"], result["gave_up"]) == \
                ("failed", attempt, gave_up)
        events = await events_of(client, db, contact)
        kinds = [e["kind"] for e in events]
        assert kinds.count("delivery_failed") == 2 and kinds.count("callback_failed") == 1
        assert [e["code"] for e in events if e["kind"] == "delivery_failed"] == ["21211"] * 2
        assert events[-1]["outcome"] == "callback_failed" and standin.calls == []


async def test_other_keys_and_replays_are_answered_the_same(app_settings, db, twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        call = await queued_call(client)
        hold_loop = call.raw
        assert await press_in_hold(call, "7") == hold_loop  # not the callback key
        assert await press_in_hold(call, "") == hold_loop
        first = await press_in_hold(call, "1")
        assert await press_in_hold(call, "1") == first  # Twilio retried the webhook
        assert await client.app[EVENTS].flush()
        rows = await db.fetch("SELECT contact_id::text, kind FROM contact_events "
                              "WHERE kind = 'callback_requested'")
        assert len(rows) == 1
        contact = rows[0]["contact_id"]
        bad = await post_signed(client, "/twilio/voice/callback-key", call.params(Digits="1"),
                                signature="forged")
        assert bad.status == 403
        forged = await post_signed(client, "/twilio/voice/callback-status?contact="
                                   f"{contact}&attempt=1",
                                   {"CallSid": "CA" + "4" * 32, "CallStatus": "in-progress"},
                                   signature="forged")
        assert forged.status == 403
        unknown = await post_signed(client, "/twilio/voice/callback-status?contact="
                                    f"{contact}&attempt=9",
                                    {"CallSid": "CA" + "4" * 32, "CallStatus": "in-progress"})
        assert unknown.status == 200  # an attempt never placed: nothing happens
        missing = await post_signed(client, "/twilio/voice/callback-status",
                                    {"CallSid": "CA" + "4" * 32, "CallStatus": "in-progress"})
        assert missing.status == 400
        await call.leave_queue("leave")
        await call.hang_up("completed")
        kinds = await kinds_of(client, db, contact)
        assert kinds.count("callback_requested") == 1
        assert "callback_completed" not in kinds and "ended" not in kinds
        assert standin.calls == [] and standin.participants == []


CALLBACK_POLICY_CASES = [
    ("no attempts", "{attempts: 0}",
     ["routes.yaml:5: attempts must be a whole number from 1 to 10, not 0 "
      "(queues -> general -> callback -> attempts)"]),
    ("delay in words", "{retry_after_s: soon}",
     ["routes.yaml:5: retry_after_s must be a whole number of seconds from 1 to 86400, not "
      "'soon' (queues -> general -> callback -> retry_after_s)"]),
    ("unknown key", "{attempt: 3}",
     ["routes.yaml:5: unknown key 'attempt' (queues -> general -> callback -> attempt)"]),
    ("not a mapping", "3",
     ["routes.yaml:5: expected a mapping (queues -> general -> callback)"]),
]


@pytest.mark.parametrize("written,expected", [c[1:] for c in CALLBACK_POLICY_CASES],
                         ids=[c[0] for c in CALLBACK_POLICY_CASES])
def test_a_bad_callback_policy_names_file_line_and_key_path(tmp_path, written, expected):
    routes = ROUTES.replace("    skills: [care]\n",
                            f"    skills: [care]\n    callback: {written}\n", 1)
    assert errors(tmp_path, routes=routes) == expected


def test_a_queue_s_callback_policy_is_read_with_defaults(tmp_path):
    routes = ROUTES.replace("    skills: [care]\n",
                            "    skills: [care]\n    callback: {attempts: 5}\n", 1)
    queues = load_rules(write_rules(tmp_path, routes=routes), with_classifier=False).tree.queues
    assert (queues["general"].callback.attempts,
            queues["general"].callback.retry_after_s) == (5, 300)
    assert queues["orders"].callback == CallbackPolicy(3, 300)
