"""Voice IVR end to end: calls driven the way Twilio drives them, against the real servers."""

from __future__ import annotations

import json

from aiohttp.test_utils import TestClient, TestServer

from service.appkeys import EVENTS, ROUTER
from tests.twilio_driver import Call, check_twiml, post_signed, text

CALLER = "+15555550188"

MENU_TWIML = (
    '<?xml version="1.0" encoding="UTF-8"?><Response><Gather action="/twilio/voice/gather?turn=1" '
    'hints="track an order, cancel an order, get a refund, delivery times, change a delivery '
    'address, payment problem, view an invoice, reset a password, talk to a person, agent, '
    'representative, yes, no" input="dtmf speech" language="en-US" method="POST" numDigits="1" '
    'speechTimeout="auto" timeout="6"><Say>Thanks for calling. Track an order: press 1. Cancel an '
    'order: press 2. Get a refund: press 3. Delivery times: press 4. Change a delivery address: '
    'press 5. Payment problem: press 6. View an invoice: press 7. Reset a password: press 8. To '
    'talk to a person, press 0. Or tell me in a few words why you are calling.</Say></Gather>'
    '<Redirect method="POST">/twilio/voice/no-input?turn=1</Redirect></Response>')


async def call_events(client, db, call: Call) -> list[dict]:
    assert await client.app[EVENTS].flush()
    rows = await db.fetch(
        """SELECT e.kind, e.reason, e.contact_type, e.route_path, e.data FROM contact_events e
           JOIN contacts c ON c.id = e.contact_id
           WHERE c.channel = 'voice' AND e.data->>'thread' IS NOT DISTINCT FROM e.data->>'thread'
             AND c.id IN (SELECT contact_id FROM contact_events WHERE kind = 'contact_started'
                          AND data->>'thread' = $1)
           ORDER BY e.occurred_at, e.seq""", call.sid)
    return [dict(r, data=json.loads(r["data"])) for r in rows]


async def outcome(client, db, call: Call) -> str | None:
    events = await call_events(client, db, call)
    ended = [e for e in events if e["kind"] == "ended"]
    return ended[-1]["data"]["outcome"] if ended else None


async def test_greeting_menu_golden(client):
    call = await Call(client, CALLER).dial()
    assert call.raw == MENU_TWIML


async def test_keypad_self_service_success(client, db, redis_client):
    call = await Call(client, CALLER).dial()
    await call.press("1")
    said = call.said()
    assert said[0].startswith("Every order is listed under Orders")
    assert said[1] == "Did that help? Press 1 for yes or 2 for no, or say yes or no."
    await call.press("1")
    assert call.said() == ["Great, glad that helped. Thanks for calling, goodbye."]
    assert call.verbs() == ["Say", "Hangup"]
    await call.hang_up()
    events = await call_events(client, db, call)
    assert [e["kind"] for e in events] == [
        "contact_started", "replied", "received", "classified", "routed",
        "self_service_started", "replied", "received", "self_service_resolved", "ended",
        "replied"]
    assert events[3]["data"] == {"confidence": 1.0, "via": "menu"}
    assert events[6]["data"]["messages"] == said  # what the caller heard
    assert events[-1]["data"]["messages"] == [
        "Great, glad that helped. Thanks for calling, goodbye."]
    assert await outcome(client, db, call) == "self_service_resolved"


async def test_speech_self_service_success(client, db):
    call = await Call(client, CALLER).dial()
    await call.speak("I forgot my password and can't log in", confidence=0.93)
    assert call.said()[0].startswith("To reset your password") or "password" in call.said()[0]
    await call.speak("yes")
    assert call.verbs() == ["Say", "Hangup"]
    classified = [e for e in await call_events(client, db, call) if e["kind"] == "classified"][0]
    assert classified["contact_type"] == "recover_password"
    assert classified["data"]["via"] == "speech"
    assert 0.45 < classified["data"]["confidence"] <= 0.93  # both confidences count


async def test_unsure_speech_recognition_lowers_confidence(client, db):
    call = await Call(client, CALLER).dial()
    await call.speak("I forgot my password and can't log in", confidence=0.2)
    assert call.said()[0].startswith("Sorry, I didn't get that.")


async def test_no_after_the_answer_queues_the_caller_with_context(client, db, redis_client):
    call = await Call(client, CALLER).dial()
    await call.press("1")
    await call.speak("no")
    assert call.verbs() == ["Say", "Enqueue"]
    assert call.twiml.find("Enqueue").text == "orders"
    assert call.said()[0].startswith("I'm connecting you to our Orders and delivery team. "
                                     "You are number 1 in line")
    [entry] = await client.app[ROUTER].waiting("orders")
    assert entry["reason"] == "self_service_failed" and entry["channel"] == "voice"
    assert entry["thread"] == call.sid
    assert [m["text"] for m in entry["context"]["transcript"] if m["from"] == "customer"] == \
        ["[pressed 1]", "no"]


async def test_zero_at_the_first_prompt_asks_for_a_person(client, db, redis_client):
    call = await Call(client, CALLER).dial()
    await call.press("0")
    assert call.twiml.find("Enqueue").text == "general"
    [entry] = await client.app[ROUTER].waiting("general")
    assert entry["reason"] == "requested_agent"


async def test_two_silences_escalate(client, db, redis_client):
    call = await Call(client, CALLER).dial()
    await call.stay_silent()
    assert call.said()[0].startswith("Sorry, I didn't get that. Track an order: press 1.")
    await call.stay_silent()
    assert call.verbs() == ["Say", "Enqueue"]
    [entry] = await client.app[ROUTER].waiting("general")
    assert entry["reason"] == "no_input"


async def test_invalid_key_then_valid_key(client, db):
    call = await Call(client, CALLER).dial()
    await call.press("9")
    assert call.said()[0].startswith("Sorry, I didn't get that.")
    await call.press("2")
    assert call.said()[0].startswith("You can cancel") or "cancel" in call.said()[0].lower()


async def test_a_menu_key_after_the_answer_picks_nothing(client, db):
    """After "Did that help? Press 1 or 2", key 3 is no answer: it must not start over as
    'Get a refund', the menu's key 3."""
    call = await Call(client, CALLER).dial()
    await call.press("1")
    await call.press("3")
    assert call.said()[0].startswith("Sorry, I didn't get that.")
    classified = [e for e in await call_events(client, db, call) if e["kind"] == "classified"]
    assert [e["contact_type"] for e in classified] == ["track_order"]


async def test_a_caller_who_texted_earlier_is_recognised(client, db, redis_client):
    await text(client, CALLER, "I need to track my order")
    await text(client, CALLER, "yes")
    call = await Call(client, CALLER).dial()
    assert call.said() == ["Welcome back. Are you calling about your track an order question "
                           "from earlier today? Press 1 for yes, or 2 for something else."]
    await call.press("1")
    assert call.twiml.find("Enqueue").text == "orders"  # a repeat goes to a person
    [entry] = await client.app[ROUTER].waiting("orders")
    assert entry["reason"] == "repeat_contact"
    assert entry["context"]["earlier_contacts"][0]["channel"] == "sms"
    sms_customer = await db.fetchval("SELECT customer_id FROM contacts WHERE channel = 'sms'")
    voice_customer = await db.fetchval("SELECT customer_id FROM contacts WHERE channel = 'voice'")
    assert sms_customer == voice_customer


async def test_recognised_caller_calling_about_something_else(client, db):
    await text(client, CALLER, "I need to track my order")
    call = await Call(client, CALLER).dial()
    await call.press("2")
    assert call.said()[0].startswith("Track an order: press 1.")


async def test_hang_up_in_the_ivr(client, db):
    call = await Call(client, CALLER).dial()
    await call.press("1")
    await call.hang_up()
    assert await outcome(client, db, call) == "hung_up_in_ivr"


async def test_hang_up_in_the_queue(client, db, redis_client):
    call = await Call(client, CALLER).dial()
    await call.press("0")
    await call.hold()
    assert call.verbs() == ["Gather"]  # the hold words, listening for the callback key
    await call.leave_queue("hangup")
    assert call.verbs() == ["Hangup"]
    await call.hang_up()
    assert await client.app[ROUTER].waiting("general") == []
    assert await outcome(client, db, call) == "abandoned_in_queue"


async def test_a_retried_status_callback_after_the_call_closed_is_stored(client, db, redis_client):
    call = await Call(client, CALLER).dial()
    await call.press("1")
    await call.press("1")  # resolved: the call's contact is closed before the status callback
    await call.hang_up()
    first = call.raw
    stored = [await redis_client.get(key)
              async for key in redis_client.scan_iter(match=f"*:seen:{call.sid}:end")]
    assert len(stored) == 1 and stored[0] != b"pending"  # else a retry waits for nothing
    await call.hang_up()
    assert call.raw == first


async def test_a_bridged_queue_result_is_recorded_and_keeps_the_contact_open(client, db):
    call = await Call(client, CALLER).dial()
    await call.press("0")
    await call.leave_queue("bridged")
    events = await call_events(client, db, call)
    assert [e["data"].get("result") for e in events if e["kind"] == "left_queue"] == ["bridged"]
    assert "ended" not in [e["kind"] for e in events]


async def test_wait_url_tells_the_real_position(client, redis_client):
    first = await Call(client, "+15555550001").dial()
    await first.press("0")
    second = await Call(client, "+15555550002").dial()
    await second.press("0")
    await second.hold(position=7)  # Twilio's own figure is ignored: ours is the real queue
    assert second.raw == (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Gather '
        'action="/twilio/voice/callback-key" input="dtmf" method="POST" numDigits="1" '
        'timeout="20"><Say>You are number 2 in line. The estimated wait is about 10 minutes. '
        'Thanks for holding. To be called back instead and keep your place in line, press 1.'
        '</Say></Gather></Response>')


async def test_a_retried_gather_is_answered_the_same_and_processed_once(client, db):
    call = await Call(client, CALLER).dial()
    action = call.twiml.find("Gather").get("action")
    first = await post_signed(client, action, call.params(Digits="1"))
    again = await post_signed(client, action, call.params(Digits="1"))
    assert await first.text() == await again.text()
    received = [e for e in await call_events(client, db, call) if e["kind"] == "received"]
    assert len(received) == 1


async def test_redis_down_still_gives_valid_twiml(settings, db):
    from aiohttp.test_utils import TestClient, TestServer

    from service.app import create_app
    from tests.conftest import _clean_tables, with_settings

    await _clean_tables(settings.database_url)
    app = create_app(with_settings(settings, redis_url="redis://127.0.0.1:1/0"))
    async with TestClient(TestServer(app)) as broken:
        call = await Call(broken, CALLER).dial()
        assert call.said() == ["Sorry, we're having technical trouble. Please hold for the next "
                               "available agent."]
        assert call.twiml.find("Enqueue").text == "general"
        await call.hold()
        assert call.verbs() == ["Say", "Pause"]
        await broken.app[EVENTS].flush()
    row = await db.fetchrow("SELECT kind, channel, data FROM contact_events")
    assert (row["kind"], row["channel"]) == ("turn_failed", "voice")
    assert json.loads(row["data"])["thread"] == call.sid


async def test_callers_held_while_redis_was_down_reach_an_agent_queue_when_it_returns(
        settings, client, db):
    """The fallback holds callers in Twilio's queue when a turn fails; no agent queue knows
    them yet. The first hold poll once Redis answers queues them, with what they said before."""
    from service.app import create_app
    from tests.conftest import with_settings

    broken_app = create_app(with_settings(settings, redis_url="redis://127.0.0.1:1/0"))
    async with TestClient(TestServer(broken_app)) as broken:
        fresh = await Call(broken, CALLER).dial()  # Redis down from the start
        await fresh.hold()
        mid_menu = await Call(client, "+15555550189").dial()
        await mid_menu.press("1")  # the answer, then "Did that help?"
        mid_menu.client = broken  # Redis fails while the caller answers
        await mid_menu.speak("no")
        assert mid_menu.twiml.find("Enqueue").text == "general"
        await broken.app[EVENTS].flush()

    for call in (fresh, mid_menu):
        call.client = client
        await call.hold()
        assert call.verbs() == ["Say", "Pause"]
        assert call.said()[0].startswith("I'm connecting you to ")
        await call.hold()  # later polls: the position, and no second entry
        assert call.said()[0].startswith("You are number")
    entries = [e for q in ("general", "orders") for e in await client.app[ROUTER].waiting(q)]
    assert sorted((e["thread"], e["reason"]) for e in entries) == \
        sorted([(fresh.sid, "technical_fallback"), (mid_menu.sid, "technical_fallback")])
    [context] = [e["context"] for e in entries if e["thread"] == mid_menu.sid]
    assert [m["text"] for m in context["transcript"] if m["from"] == "customer"] == \
        ["[pressed 1]"]  # its "no" was never heard: that turn failed
    kinds = [e["kind"] for e in await call_events(client, db, fresh)]
    assert kinds == ["contact_started", "escalated", "queued", "replied"]


def test_twiml_checker_rejects_undocumented_markup():
    import pytest

    with pytest.raises(AssertionError):
        check_twiml('<?xml version="1.0" encoding="UTF-8"?><Response><Speak>x</Speak></Response>')
    with pytest.raises(AssertionError):
        check_twiml('<?xml version="1.0" encoding="UTF-8"?><Response><Say colour="red">x</Say>'
                    '</Response>')
