"""Private notes and the supervisor's whisper, end to end on real PostgreSQL and Valkey: the
agent socket's `note` frame and `POST /api/contacts/{id}/notes` keep a masked note as an event
and a private transcript line, push it to the agent who holds the contact, and never send it
to the customer (SMS and a call through the Twilio stand-in, the chat socket); notes travel
with a transfer and into a returning customer's history; bad input changes nothing."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from service.agents.desk import add_agent
from service.appkeys import EVENTS, HANDOFF
from service.conversations.notes import MAX_NOTE_CHARS
from service.infra.tokens import create_token, hash_token
from tests.test_agents import (  # noqa: F401 (fixtures)
    ALL_SKILLS,
    AgentSocket,
    app_settings,
    instance,
    open_chat,
    twilio,
)
from tests.test_outbox import Console, wait_for
from tests.test_transfers import sign_in
from tests.twilio_driver import Call, text

CUSTOMER = "+15555550188"
NOTE = "Card 4111 1111 1111 1111 was declined twice; be gentle, they are upset"
MASKED = "Card **** **** **** 1111 was declined twice; be gentle, they are upset"
WHISPER = "Offer the goodwill credit, I approve it"


async def note_events(client, db, contact_id: str | None = None) -> list[dict]:
    assert await client.app[EVENTS].flush()
    rows = await db.fetch("SELECT contact_id::text, data FROM contact_events "
                          "WHERE kind = 'note_added' ORDER BY seq")
    return [{"contact_id": r["contact_id"], **json.loads(r["data"])} for r in rows
            if contact_id in (None, r["contact_id"])]


async def transcript(client, contact_id: str) -> list[dict]:
    found = await client.app[HANDOFF].conversation(contact_id)
    assert found is not None
    return found[1]["transcript"]


def notes_in(lines: list[dict]) -> list[tuple[str, str, str]]:
    return [(line["role"], line["author_name"], line["text"]) for line in lines
            if line["from"] == "note"]


async def console_of(client, token: str, available: bool = True) -> Console:
    """An agent console signed in with `token`, every frame kept."""
    ws = await client.ws_connect("/agent/ws")
    await ws.send_json({"type": "auth", "token": token})
    console = Console(AgentSocket(ws))
    await console.wait(lambda f: f["type"] == "ready")
    if available:
        await console.send(type="presence", status="available")
        await console.wait(lambda f: f["type"] == "presence")
    return console


async def sms_contact_with(client, db, standin, name: str = "Dana"
                           ) -> tuple[Console, str, str]:
    """An SMS customer who asked for a person, accepted by `name`: the agent's console, the
    contact and the agent's token."""
    token = await add_agent(db, name, ALL_SKILLS)
    console = await console_of(client, token)
    await text(client, CUSTOMER, "I want to talk to a human")
    offer = await console.wait(lambda f: f["type"] == "offer")
    await console.send(type="accept", contact_id=offer["contact_id"])
    await console.wait(lambda f: f["type"] == "assigned")
    await wait_for(lambda: f"You're now talking with {name}." in standin.bodies())
    return console, offer["contact_id"], token


async def error_after(console: Console, **frame) -> dict:
    """The error frame a frame sent now is answered with."""
    seen = len(console.errors())
    await console.send(**frame)
    await wait_for(lambda: len(console.errors()) > seen)
    return console.errors()[-1]


def is_note(contact_id: str, text: str):
    return lambda f: (f["type"] == "note" and f["contact_id"] == contact_id
                      and f["note"]["text"] == text)


async def whisper(client, contact_id: str, token: str | None, body) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    response = await client.post(f"/api/contacts/{contact_id}/notes", data=data,
                                 headers={**headers, "Content-Type": "application/json"})
    return response.status, await response.json()


# ---- the agent's note ------------------------------------------------------------------------

async def test_an_agents_note_is_masked_kept_pushed_and_never_texted(app_settings, db, twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact, token = await sms_contact_with(client, db, standin)
        agent_id = await db.fetchval("SELECT id::text FROM agents WHERE token_hash = $1",
                                     hash_token(token))  # other tests' agents are named Dana too

        await console.send(type="note", contact_id=contact, text=f"  {NOTE}  ")
        pushed = await console.wait(is_note(contact, MASKED))
        assert pushed["note"]["role"] == "agent" and pushed["note"]["private"] is True
        assert (pushed["note"]["author_id"], pushed["note"]["author_name"]) == (agent_id, "Dana")
        assert notes_in(await transcript(client, contact)) == [("agent", "Dana", MASKED)]
        [event] = await note_events(client, db, contact)
        assert (event["author_id"], event["author_name"], event["role"], event["text"]) == \
            (agent_id, "Dana", "agent", MASKED)

        # the customer goes on texting and the agent replies: the note is never among the texts
        assert await text(client, CUSTOMER, "hello? still there?") == []
        await console.wait(lambda f: f.get("text") == "hello? still there?")
        await console.send(type="message", contact_id=contact, text="Yes, one moment please")
        await wait_for(lambda: "Yes, one moment please" in standin.bodies())
        await asyncio.sleep(0.3)  # anything queued behind the reply would be out by now
        assert standin.bodies() == ["You're now talking with Dana.", "Yes, one moment please"]
        assert not any("declined" in body or "4111" in body for body in standin.bodies())
        outbox = await db.fetch("SELECT payload::text FROM outbox")
        assert not any("declined" in row["payload"] for row in outbox)

        # a second console of the agent gets the note in the contact's context
        again = await console_of(client, token, available=False)
        assigned = await again.wait(lambda f: f["type"] == "assigned")
        assert notes_in(assigned["context"]["transcript"]) == [("agent", "Dana", MASKED)]


async def test_bad_notes_from_the_console_are_refused_and_change_nothing(app_settings, db,
                                                                          twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact, token = await sms_contact_with(client, db, standin)
        other = await console_of(client, await add_agent(db, "Eve", ALL_SKILLS))
        before = await transcript(client, contact)
        for sender, frame, code in [
                (console, {"contact_id": contact, "text": "   "}, "bad_frame"),
                (console, {"contact_id": contact}, "bad_frame"),
                (console, {"contact_id": contact, "text": 42}, "bad_frame"),
                (console, {"contact_id": contact, "text": "x" * (MAX_NOTE_CHARS + 1)},
                 "bad_frame"),
                (console, {"text": "no contact"}, "bad_frame"),
                (other, {"contact_id": contact, "text": "not my contact"}, "not_assigned"),
                (console, {"contact_id": str(uuid.uuid4()), "text": "nobody"}, "not_assigned")]:
            error = await error_after(sender, type="note", **frame)
            assert error["code"] == code, (frame, error)
        assert await transcript(client, contact) == before
        assert await note_events(client, db) == []
        assert not any(f["type"] == "note" for f in console.frames + other.frames)


async def test_chat_never_shows_a_note_live_or_when_the_chat_resumes(app_settings, db):
    async with instance(app_settings) as client:
        agent = await console_of(client, await add_agent(db, "Dana", ALL_SKILLS))
        chat, session = await open_chat(client)
        await chat.next("message")
        await chat.send(type="message", text="I want to talk to a human")
        while (await chat.next("status"))["state"] != "queued":
            pass
        offer = await agent.wait(lambda f: f["type"] == "offer")
        contact = offer["contact_id"]
        await agent.send(type="accept", contact_id=contact)
        await chat.next("message")  # "You're now talking with Dana."

        await agent.send(type="note", contact_id=contact, text="Secret: VIP, waive the fee")
        await agent.wait(is_note(contact, "Secret: VIP, waive the fee"))
        await agent.send(type="message", contact_id=contact, text="Hi, I can help")
        # every frame the chat gets, of any type, up to the agent's reply and for a while after
        frames = [await asyncio.wait_for(chat.ws.receive_json(), 5)]
        while frames[-1] != {"type": "message", "from": "agent", "text": "Hi, I can help"}:
            frames.append(await asyncio.wait_for(chat.ws.receive_json(), 5))
        with pytest.raises(asyncio.TimeoutError):
            frames.append(await asyncio.wait_for(chat.ws.receive_json(), 0.5))
        assert not any("Secret" in json.dumps(f) or "VIP" in json.dumps(f) for f in frames)

        await chat.ws.close()
        chat, resumed = await open_chat(client, session=session["session"])
        replayed = []
        while True:
            frame = await asyncio.wait_for(chat.ws.receive_json(), 5)
            if frame["type"] == "status":
                break
            replayed.append(frame)
        texts = [frame["text"] for frame in replayed]
        assert "Hi, I can help" in texts
        assert not any("Secret" in t or "VIP" in t for t in texts)


# ---- notes travel with the contact -------------------------------------------------------

async def test_notes_travel_with_a_transfer_and_into_the_customers_history(app_settings, db,
                                                                           twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        first = await sign_in(client, db, "Ann", ["care", "orders"])
        first_console = Console(first)
        await text(client, CUSTOMER, "I want to talk to a human")
        offer = await first_console.wait(lambda f: f["type"] == "offer")
        contact = offer["contact_id"]
        await first_console.send(type="accept", contact_id=contact)
        await first_console.wait(lambda f: f["type"] == "assigned")
        await first_console.send(type="note", contact_id=contact, text="Asked twice for a refund")
        await first_console.wait(is_note(contact, "Asked twice for a refund"))
        await first_console.send(type="transfer", contact_id=contact, queue="billing",
                                 mode="cold", note="refund")
        await first_console.wait(lambda f: f["type"] == "transfer_result")

        # whispered while it waits: kept in the queue entry for whoever takes it
        token = await create_token(db, "supervisor", name="Sam (supervisor)")
        assert (await whisper(client, contact, token, {"text": WHISPER}))[0] == 201
        second = await sign_in(client, db, "Bob", ["billing"])
        offer = await second.next("offer")
        assert offer["reason"] == "transferred"
        assert notes_in(offer["context"]["transcript"]) == [
            ("agent", "Ann", "Asked twice for a refund"),
            ("supervisor", "Sam (supervisor)", WHISPER)]
        await second.send(type="accept", contact_id=contact)
        assigned = await second.next("assigned")
        assert len(notes_in(assigned["context"]["transcript"])) == 2
        await second.send(type="wrap_up", contact_id=contact, resolved=True)
        await second.next("wrapped_up")

        # the customer comes back: the agent sees the earlier contact's notes in its history
        await text(client, CUSTOMER, "I want to talk to a human again")
        offer = await first_console.wait(lambda f: f["type"] == "offer"
                                         and f["contact_id"] != contact)
        [earlier] = [c for c in offer["context"]["earlier_contacts"]
                     if c["contact_id"] == contact]
        assert [(n["from"], n["role"], n["author_name"], n["text"]) for n in earlier["notes"]] \
            == [("note", "agent", "Ann", "Asked twice for a refund"),
                ("note", "supervisor", "Sam (supervisor)", WHISPER)]
        assert not any(WHISPER in body or "refund" in body for body in standin.bodies())


# ---- the supervisor's whisper ------------------------------------------------------------

async def test_a_whisper_reaches_the_agent_marked_as_the_supervisors(app_settings, db, twilio):
    standin, _ = twilio
    async with instance(app_settings) as client, instance(app_settings) as other_instance:
        console, contact, _ = await sms_contact_with(client, db, standin)
        token = await create_token(db, "supervisor", name="Sam")
        status, body = await whisper(other_instance, contact, token, {"text": WHISPER})
        assert status == 201, body
        assert body["note"]["role"] == "supervisor" and body["note"]["author_name"] == "Sam"
        pushed = await console.wait(is_note(contact, WHISPER))
        assert (pushed["note"]["role"], pushed["note"]["author_id"]) == ("supervisor", None)
        assert await other_instance.app[EVENTS].flush()  # its instance recorded it
        [event] = await note_events(client, db, contact)
        assert (event["role"], event["author_name"], event["text"]) == ("supervisor", "Sam",
                                                                        WHISPER)
        ops = await create_token(db, "ops", name="")
        assert (await whisper(client, contact, ops, {"text": "from ops"}))[0] == 201
        assert notes_in(await transcript(client, contact))[-1] == \
            ("supervisor", "Supervisor", "from ops")
        await asyncio.sleep(0.3)
        assert standin.bodies() == ["You're now talking with Dana."]


async def test_an_agent_token_whispers_only_on_its_own_contact(app_settings, db, twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact, own = await sms_contact_with(client, db, standin)
        status, body = await whisper(client, contact, own, {"text": "from my script"})
        assert status == 201, body
        assert body["note"]["role"] == "agent" and body["note"]["author_name"] == "Dana"
        await console.wait(is_note(contact, "from my script"))
        stranger = await add_agent(db, "Eve", ["care"])
        status, body = await whisper(client, contact, stranger, {"text": "not mine"})
        assert status == 403 and "not assigned to you" in body["error"]
        assert len(await note_events(client, db, contact)) == 1


async def test_bad_whispers_get_a_clear_error_and_change_nothing(app_settings, db, twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact, _ = await sms_contact_with(client, db, standin)
        token = await create_token(db, "supervisor")
        agent_api_token = await create_token(db, "agent")
        before = await transcript(client, contact)
        cases = [
            (contact, None, {"text": "hi"}, 401, "token is required"),
            (contact, "sb_supervisor_not-a-real-token", {"text": "hi"}, 401, "token"),
            (contact, agent_api_token, {"text": "hi"}, 403, "cannot write notes"),
            (contact, token, {"text": ""}, 400, "needs text"),
            (contact, token, {"text": "   \n "}, 400, "needs text"),
            (contact, token, {}, 400, "needs text"),
            (contact, token, {"text": ["a list"]}, 400, "needs text"),
            (contact, token, {"text": "x" * (MAX_NOTE_CHARS + 1)}, 400, "at most"),
            (contact, token, "not json", 400, "JSON"),
            (contact, token, ["text", "hi"], 400, "JSON"),
            ("not-a-contact", token, {"text": "hi"}, 400, "not a contact id"),
            (str(uuid.uuid4()), token, {"text": "hi"}, 404, "no live contact"),
        ]
        for contact_id, who, body, expected, says in cases:
            status, answer = await whisper(client, contact_id, who, body)
            assert (status, says in answer["error"]) == (expected, True), (body, answer)
        assert await transcript(client, contact) == before
        assert await note_events(client, db) == []

        await console.send(type="wrap_up", contact_id=contact, resolved=True)
        await console.wait(lambda f: f["type"] == "wrapped_up")
        status, answer = await whisper(client, contact, token, {"text": "too late"})
        assert status == 409 and "has ended" in answer["error"]
        # the address's next contact takes the conversation's key: still the old one's end
        await text(client, CUSTOMER, "I want to talk to a human")
        status, answer = await whisper(client, contact, token, {"text": "too late"})
        assert status == 409, answer
        assert await note_events(client, db) == []
        assert not any(f["type"] == "note" for f in console.frames)


async def test_a_note_on_a_call_is_kept_and_twilio_hears_nothing_of_it(app_settings, db,
                                                                        twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        console = await console_of(client, await add_agent(db, "Dana", ALL_SKILLS))
        call = await Call(client, CUSTOMER).dial()
        await call.press("0")
        offer = await console.wait(lambda f: f["type"] == "offer")
        contact = offer["contact_id"]
        await console.send(type="accept", contact_id=contact)
        await console.wait(lambda f: f["type"] == "assigned")
        await wait_for(lambda: len(standin.participants) == 1)
        before = (len(standin.messages), len(standin.call_updates), len(standin.participants))
        await console.send(type="note", contact_id=contact, text="Caller sounds distressed")
        await console.wait(is_note(contact, "Caller sounds distressed"))
        assert notes_in(await transcript(client, contact)) == \
            [("agent", "Dana", "Caller sounds distressed")]
        await asyncio.sleep(0.3)
        assert (len(standin.messages), len(standin.call_updates),
                len(standin.participants)) == before
        assert "distressed" not in json.dumps([standin.messages, standin.call_updates,
                                               standin.participants])
        await call.leave_queue("redirected")
        await call.hang_up()
