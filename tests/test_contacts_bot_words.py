"""The bot's words in a contact's conversation (GET /api/contacts/{id}) end to end: what the
customer actually received (TwiML <Message> and <Say>, chat frames, the agent's greeting) is
what the timeline's bubbles say, for a self-service answer, a clarifying question with its
choices, a flow step with a looked-up value, a queued message and a voice prompt; an erasure
blanks them; a customer's files are listed by number and type only."""

from __future__ import annotations

import json

import pytest

from service.infra.tokens import create_token
from tests.test_agents import (  # noqa: F401 (fixtures)
    app_settings,
    instance,
    login,
    open_chat,
    twilio,
)
from tests.test_attachments import PHOTO, mms
from tests.test_contacts import found, get
from tests.test_erasure import erase_request
from tests.test_flows import order_api  # noqa: F401 (fixture)
from tests.test_ops_api import events_landed
from tests.test_personalised_answers import ANA, client, known_ana  # noqa: F401 (fixture)
from tests.twilio_driver import Call, text

TEXTER = "+15555550711"
CALLER = "+15555550712"
WAITER = "+15555550713"


@pytest.fixture
async def ops_token(db):
    await db.execute("TRUNCATE erased_customers")
    return await create_token(db, "ops", "bot words tests")


async def conversation(client, token: str, customer: str | None = None, **query) -> list[dict]:
    """The newest contact found: its conversation's bubbles."""
    await events_landed(client.app)
    contact = (await found(client, token, **({"customer": customer} if customer else query)))[0]
    status, story = await get(client, f"/api/contacts/{contact['contact_id']}", token)
    assert status == 200, story
    return story["conversation"]


def bot_words(bubbles: list[dict]) -> list[str]:
    return [b["text"] for b in bubbles if b["from"] == "bot"]


async def test_sms_answer_and_a_queued_message_are_the_words_sent_with_the_agents_greeting(
        app_settings, db, twilio, ops_token):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        sent = await text(client, TEXTER, "I need to track my order")
        sent += await text(client, TEXTER, "yes")
        bubbles = await conversation(client, ops_token, TEXTER)
        assert bot_words(bubbles) == sent and len(sent) == 3
        assert not any(b["reconstructed"] for b in bubbles)
        assert [b["from"] for b in bubbles if b["from"] != "system"] == \
            ["customer", "bot", "bot", "customer", "bot"]
        told = [b for b in bubbles if b["from"] == "bot"]
        assert told[1]["choices"] == ["Yes", "No"] and told[0]["choices"] == []

        agent = await login(client, db)
        queued = await text(client, WAITER, "I want to talk to a human")
        contact_id = (await agent.next("offer"))["contact_id"]
        await agent.send(type="accept", contact_id=contact_id)
        await agent.next("assigned")
        bubbles = await conversation(client, ops_token, WAITER)
        assert bot_words(bubbles) == queued and "You're number 1 in line" in queued[0]
        greeting = [b for b in bubbles if b["from"] == "agent"]
        assert [(b["text"], b["author"]) for b in greeting] == \
            [("You're now talking with Dana.", "Dana")]
        assert "You're now talking with Dana." in standin.bodies()  # what the customer got


async def test_chat_clarifying_question_with_its_choices(app_settings, ops_token):  # noqa: F811
    async with instance(app_settings) as client:
        chat, session = await open_chat(client)
        frames = [await chat.next("message")]
        await chat.send(type="message", text="zxqv plorbs wibble")
        frames.append(await chat.next("message"))
        assert frames[-1].get("choices"), frames  # the "did you mean" list
        bubbles = await conversation(client, ops_token, contact_id=session["contact_id"])
        told = [b for b in bubbles if b["from"] == "bot"]
        assert [b["text"] for b in told] == [f["text"] for f in frames]
        assert told[-1]["choices"] == [c["label"] for c in frames[-1]["choices"]]


async def test_voice_prompts_are_the_words_said(app_settings, ops_token):  # noqa: F811
    async with instance(app_settings) as client:
        call = await Call(client, CALLER).dial()
        said = call.said()
        await call.speak("I need to track my order")
        said += call.said()
        await call.press("1")
        said += call.said()
        bubbles = await conversation(client, ops_token, CALLER)
        assert bot_words(bubbles) == said and len(said) >= 4
        menu = [b for b in bubbles if b["from"] == "bot"][0]
        assert "Track an order" in menu["choices"]  # the keys offered


async def test_a_flows_looked_up_words_are_kept_and_an_erasure_blanks_them(
        client, db, redis_client, ops_token):  # noqa: F811
    await known_ana(db, redis_client)
    sent = await text(client, ANA, "I need to track my order")
    sent += await text(client, ANA, "EX12345")
    sent += await text(client, ANA, "yes")
    assert "Thanks, Ana. Order EX12345 is shipped and should arrive Friday. As a gold member " \
        "you pay no delivery." in sent
    bubbles = await conversation(client, ops_token, ANA)
    assert bot_words(bubbles) == sent

    customer_id = (await found(client, ops_token, customer=ANA))[0]["customer"]["id"]
    response = await erase_request(client, customer_id, ops_token)
    assert response.status == 200, await response.text()
    bubbles = await conversation(client, ops_token, customer_id)
    told = [b for b in bubbles if b["from"] == "bot"]
    assert len(told) == len(sent) and all(b["erased"] and b["text"] == "" for b in told)
    assert told[-2]["choices"] == ["Yes", "No"]  # catalog words, not the customer's
    rows = await db.fetch("SELECT data::text FROM contact_events WHERE kind = 'replied' "
                          "AND customer_id = $1::uuid", customer_id)
    assert rows and not any("Ana" in r["data"] or "EX12345" in r["data"] for r in rows)


async def test_a_customers_photo_is_listed_by_number_and_type_only(
        app_settings, twilio, ops_token):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        photo = standin.media_url("image/jpeg", PHOTO)
        sent = await mms(client, TEXTER, "", [(photo, "image/jpeg")])
        bubbles = await conversation(client, ops_token, TEXTER)
        [photo] = [b for b in bubbles if b["from"] == "customer"]
        assert photo["attachments"] == [{"n": 1, "content_type": "image/jpeg", "erased": False}]
        assert not photo["erased"] and bot_words(bubbles) == sent
        contact = (await found(client, ops_token, customer=TEXTER))[0]
        _, story = await get(client, f"/api/contacts/{contact['contact_id']}", ops_token)
        assert '"ref"' not in json.dumps(story["conversation"]) + json.dumps(story["timeline"])
        assert photo["text"] == "" and "/Media/" not in json.dumps(story)

        await text(client, TEXTER, "STOP")  # ends the contact, so the customer can be erased
        customer_id = contact["customer"]["id"]
        response = await erase_request(client, customer_id, ops_token)
        assert response.status == 200, await response.text()
        bubbles = await conversation(client, ops_token, customer_id)
        [photo] = [b for b in bubbles if b["from"] == "customer"]
        assert photo["attachments"] == [{"n": 1, "content_type": "image/jpeg", "erased": True}]
        assert photo["erased"]


async def test_a_contact_logged_before_the_bot_words_were_kept_shows_the_catalog_answer(
        app_settings, db, ops_token):  # noqa: F811
    async with instance(app_settings) as client:
        sent = await text(client, TEXTER, "I need to track my order")
        sent += await text(client, TEXTER, "yes")
        await events_landed(client.app)
        [kept] = await found(client, ops_token, customer=TEXTER)
        # The same contact as an older release logged it: every event but `replied`.
        old_id = await db.fetchval("SELECT gen_random_uuid()")
        await db.execute(
            "INSERT INTO contact_events (id, occurred_at, kind, contact_id, customer_id, channel,"
            " contact_type, route_path, reason, data) SELECT gen_random_uuid(), occurred_at,"
            " kind, $1, customer_id, channel, contact_type, route_path, reason, data"
            " FROM contact_events WHERE kind <> 'replied' AND contact_id = $2::uuid"
            " ORDER BY seq", old_id, kept["contact_id"])
        status, story = await get(client, f"/api/contacts/{old_id}", ops_token)
        assert status == 200, story
        [answer] = [b for b in story["conversation"] if b["from"] == "bot"]
        assert answer["reconstructed"] and answer["text"] == sent[0]  # the rules unchanged
        new = await conversation(client, ops_token, contact_id=kept["contact_id"])
        assert not any(b["reconstructed"] for b in new) and bot_words(new) == sent
