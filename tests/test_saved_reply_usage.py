"""Which saved replies agents send: the console's message frame names the saved reply its text
came from (`saved_reply`), the server checks it against the replies the contact is offered and
records it on the `agent_message` event with whether the agent edited the words; the report
`GET /api/reports/saved-replies` counts uses, agents and edits per reply. End to end through
signed SMS webhooks, the agent socket and the report endpoint."""

from __future__ import annotations

import asyncio
import json
import uuid

from service.conversations.customers import upsert_customer
from service.infra.tokens import create_token
from tests.test_agents import (  # noqa: F401 (fixtures)
    ALL_SKILLS,
    app_settings,
    instance,
    login,
    twilio,
)
from tests.test_ops_api import events_landed
from tests.twilio_driver import text

ANA, STRANGER = "+15555550801", "+15555550802"
REPORT = "/api/reports/saved-replies"


async def report(client, token: str | None, **query) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.get(REPORT, params=query, headers=headers)
    return response.status, await response.json()


async def served(client, agent, phone: str, *messages: str) -> tuple[str, dict[str, dict]]:
    """The customer's words escalate to the agent, who accepts: the contact and its replies."""
    for message in messages:
        await text(client, phone, message)
    offer = await agent.next("offer")
    await agent.send(type="accept", contact_id=offer["contact_id"])
    await agent.next("assigned")
    await agent.send(type="replies", contact_id=offer["contact_id"])
    frame = await agent.next("replies")
    return offer["contact_id"], {r["id"]: r for r in frame["replies"]}


async def sent(standin, count: int) -> list[str]:
    for _ in range(100):
        if len(standin.messages) >= count:
            break
        await asyncio.sleep(0.05)
    return [m["Body"] for m in standin.messages]


async def say(agent, contact_id: str, words: str, saved_reply: str | None = None) -> None:
    frame = {"type": "message", "contact_id": contact_id, "text": words,
             "id": str(uuid.uuid4())}
    if saved_reply is not None:
        frame["saved_reply"] = saved_reply
    await agent.send(**frame)


async def test_saved_replies_sent_are_counted_per_reply_with_agents_and_edits(
        app_settings, db, redis_client, twilio):  # noqa: F811
    standin, _ = twilio
    await upsert_customer(db, redis_client, identities=[("phone", ANA)], display_name="Ana",
                          attributes={"tier": "gold"})
    ops = await create_token(db, "ops", "saved replies tests")
    async with instance(app_settings) as client:
        dana = await login(client, db, name="Dana", skills=ALL_SKILLS)
        contact, replies = await served(client, dana, ANA, "I need to track my order", "no")
        before = len(standin.messages)
        await say(dana, contact, replies["greeting"]["text"], "greeting")  # as filled in
        asked = replies["ask_order_number"]["text"] + " It's on your receipt."
        await say(dana, contact, asked, "ask_order_number")  # edited
        answer = replies["answer.track_order"]["text"]
        await say(dana, contact, answer, "answer.track_order")  # the catalog's answer
        # an id the contact is not offered: sent all the same, counted nowhere
        await say(dana, contact, "One moment please.", "no_such_reply")
        await say(dana, contact, "Typed by hand.")
        bodies = await sent(standin, before + 5)
        assert bodies[before:] == [replies["greeting"]["text"], asked, answer,
                                   "One moment please.", "Typed by hand."]
        await dana.send(type="wrap_up", contact_id=contact, resolved=True)
        await dana.next("wrapped_up")
        await dana.send(type="presence", status="away")
        await dana.next("presence")

        ravi = await login(client, db, name="Ravi", skills=ALL_SKILLS)
        other, replies = await served(client, ravi, STRANGER, "I want to talk to a human agent")
        greeting = replies["greeting"]["text"]
        # the words as filled in, spaced differently (a console's line breaks): not an edit
        await say(ravi, other, greeting.replace(" ", "\n", 1), "greeting")
        await sent(standin, before + 6)
        await events_landed(client.app)

        status, body = await report(client, ops)
        assert status == 200, body
        rows = {r["id"]: r for r in body["replies"]}
        assert [r["id"] for r in body["replies"][:3]] == \
            ["greeting", "answer.track_order", "ask_order_number"]  # most used first
        assert rows["greeting"] == {"id": "greeting", "title": "Greeting", "uses": 2,
                                    "agents": 2, "edited": 0, "edited_share": 0.0}
        assert rows["ask_order_number"] == {
            "id": "ask_order_number", "title": "Ask for the order number", "uses": 1,
            "agents": 1, "edited": 1, "edited_share": 1.0}
        assert rows["answer.track_order"]["title"] == "Self-service answer: Track an order"
        assert (rows["answer.track_order"]["uses"], rows["answer.track_order"]["edited"]) == \
            (1, 0)
        assert "no_such_reply" not in rows
        assert rows["closing"] == {"id": "closing", "title": "Closing", "uses": 0,
                                   "agents": 0, "edited": 0, "edited_share": None}
        assert body["definitions"]["edited_share"]

        # the events carry it; the unknown id and the typed text do not
        events = [json.loads(r["data"]) for r in await db.fetch(
            "SELECT data FROM contact_events WHERE kind = 'agent_message' ORDER BY seq")]
        assert [(e.get("saved_reply"), e.get("saved_reply_edited")) for e in events] == [
            ("greeting", False), ("ask_order_number", True), ("answer.track_order", False),
            (None, None), (None, None), ("greeting", False)]

        # a window before any of it counts nothing
        status, body = await report(client, ops, **{"from": "2024-01-01", "to": "2024-01-02"})
        assert status == 200 and all(r["uses"] == 0 for r in body["replies"])


async def test_the_report_takes_an_ops_token_and_a_good_window(app_settings, db):  # noqa: F811
    ops = await create_token(db, "ops", "saved replies tests")
    supervisor = await create_token(db, "supervisor", "saved replies tests")
    async with instance(app_settings) as client:
        assert (await report(client, None))[0] == 401
        assert (await report(client, "not-a-token"))[0] == 401
        status, body = await report(client, supervisor)
        assert status == 403 and "ops" in body["error"]
        status, body = await report(client, ops, **{"from": "2024-05-02", "to": "2024-05-01"})
        assert status == 400 and body["error"]
        status, body = await report(client, ops, **{"from": "yesterday"})
        assert status == 400 and body["error"]
