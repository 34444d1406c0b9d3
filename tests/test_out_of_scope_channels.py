"""The out-of-scope default end to end: chit-chat and fragments that are in no catalog file get
a clarifying question, never a self-service answer, on SMS, voice and chat alike."""

from __future__ import annotations

import pytest

from tests.test_agents import open_chat
from tests.test_sms import CUSTOMER, events_of, kinds
from tests.test_voice import CALLER, call_events
from tests.twilio_driver import Call, text

# none of these is a row of the background corpus or of the retail catalog's data
CHIT_CHAT = ["how's your day going", "tell me something funny", "ok thank you very much"]
FRAGMENTS = ["hmm ok then", "i got a question", "uh what", "4532 8811"]
SMS_QUESTION = ("Sorry, I'm not sure I understood. Is it about: 1) Track an order 2) Cancel an "
                "order 3) Get a refund? Reply with a number, or tell me in other words. Reply "
                "AGENT to talk to a person.")


@pytest.mark.parametrize("words", CHIT_CHAT + FRAGMENTS)
async def test_sms_chit_chat_and_fragments_get_a_clarifying_question(client, db, words):
    assert await text(client, CUSTOMER, words) == [SMS_QUESTION]
    events = await events_of(client, db)
    assert "self_service_started" not in kinds(events)
    [missed] = [e for e in events if e["kind"] == "classification_missed"]
    assert missed["reason"] == "out_of_scope"


@pytest.mark.parametrize("words", ["how's your day going", "hmm ok then", "i got a question"])
async def test_voice_chit_chat_and_fragments_get_asked_again(client, db, words):
    call = await Call(client, CALLER).dial()
    await call.speak(words)
    assert call.said()[0].startswith("Sorry, I didn't get that.")
    events = await call_events(client, db, call)
    assert "self_service_started" not in [e["kind"] for e in events]
    assert [e["reason"] for e in events if e["kind"] == "classification_missed"] == \
        ["out_of_scope"]


async def test_voice_a_real_request_is_still_answered(client, db):
    call = await Call(client, CALLER).dial()
    await call.speak("where is my order")
    assert "Every order is listed under Orders" in " ".join(call.said())


@pytest.mark.parametrize("words", ["tell me something funny", "uh what", "4532 8811"])
async def test_chat_chit_chat_and_fragments_get_a_clarifying_question(client, words):
    chat, _ = await open_chat(client)
    await chat.next("status")
    await chat.send(type="message", text=words)
    question = await chat.next("message")
    assert question["text"] == ("Sorry, I'm not sure I understood. Is it about one of these? "
                                "Or tell me in other words.")
    assert [c["label"] for c in question["choices"]] == ["Track an order", "Cancel an order",
                                                        "Get a refund"]


async def test_chat_a_real_request_is_still_answered(client):
    chat, _ = await open_chat(client)
    await chat.next("status")
    await chat.send(type="message", text="i want to cancel my order")
    answer = await chat.next("message")
    assert answer["text"].startswith("You can cancel any order that has not shipped yet")
