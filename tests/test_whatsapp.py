"""WhatsApp through Twilio, end to end: signed webhooks, real PostgreSQL and Redis, the agent
socket, and the Twilio REST stand-in."""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest

from channels.twilio_sms import MEDIA_ONLY
from service.agents.desk import add_agent
from service.appkeys import EVENTS
from service.infra.tokens import create_token
from tests.conftest import PUBLIC_URL
from tests.test_agents import ALL_SKILLS, AgentSocket, app_settings, instance, twilio  # noqa: F401
from tests.twilio_driver import SERVICE_NUMBER, messages, post_signed, sms_params, text

NUMBER = "+15555550177"
WA = f"whatsapp:{NUMBER}"
WA_SERVICE = f"whatsapp:{SERVICE_NUMBER}"


def wa_params(body: str, sender: str = WA, media: int = 0) -> dict[str, str]:
    params = sms_params(body, sender)
    params.update(To=WA_SERVICE, NumMedia=str(media), ProfileName="Ana", WaId=sender[10:])
    if media:
        params.update(MediaUrl0="https://api.twilio.com/media/ME1",
                      MediaContentType0="image/jpeg")
    return params


async def whatsapp(client, body: str, path: str = "/twilio/whatsapp", **kw) -> list[str]:
    response = await post_signed(client, path, wa_params(body, **kw))
    assert response.status == 200, await response.text()
    assert response.content_type == "text/xml"
    return messages(await response.text())


async def login(client, db, name="Dana") -> AgentSocket:
    token = await add_agent(db, name, ALL_SKILLS)  # no capacity given: the channels' defaults
    ws = await client.ws_connect("/agent/ws")
    await ws.send_json({"type": "auth", "token": token})
    agent = AgentSocket(ws)
    ready = await agent.next("ready")
    assert ready["agent"]["capacity"]["whatsapp"] == 3
    await agent.send(type="presence", status="available")
    await agent.next("presence")
    return agent


async def wait_for(predicate, timeout_s: float = 3.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def escalated_whatsapp_contact(client, db, standin) -> tuple[AgentSocket, dict]:
    """An earlier SMS contact of the number, then a WhatsApp contact a NO sends to an agent."""
    await text(client, NUMBER, "I need to track my order")
    await text(client, NUMBER, "yes")
    agent = await login(client, db)
    await whatsapp(client, "I forgot my password and can't log in")
    queued = await whatsapp(client, "no")
    assert "passing you to our" in queued[0]
    offer = await agent.next("offer")
    await agent.send(type="accept", contact_id=offer["contact_id"])
    await agent.next("assigned")
    return agent, offer


async def test_a_signed_whatsapp_message_gets_self_service(app_settings, db):
    async with instance(app_settings) as client:
        reply = await whatsapp(client, "where is my order")
        assert reply[-1] == "Did that help? Reply YES or NO."
        assert "tracking" in reply[0].lower() or "order" in reply[0].lower()
        assert await whatsapp(client, "yes") == [
            "Great, glad that helped! Text us any time if you need anything else."]
        assert await client.app[EVENTS].flush()
    contact = await db.fetchrow("SELECT channel, outcome FROM contacts")
    assert (contact["channel"], contact["outcome"]) == ("whatsapp", "self_service_resolved")
    identity = await db.fetchrow("SELECT kind, value FROM customer_identities")
    assert (identity["kind"], identity["value"]) == ("phone", NUMBER)


async def test_an_unsigned_whatsapp_webhook_is_refused_and_changes_nothing(app_settings, db):
    async with instance(app_settings) as client:
        response = await post_signed(client, "/twilio/whatsapp", wa_params("hi"),
                                     signature="bad")
        assert response.status == 403
        status = await post_signed(client, "/twilio/whatsapp/status",
                                   {"MessageSid": "SM1", "MessageStatus": "read"})
        assert status.status == 200
        assert await client.app[EVENTS].flush()
    assert await db.fetchval("SELECT count(*) FROM contact_events") == 0


async def test_a_whatsapp_sender_at_the_sms_webhook_is_a_whatsapp_contact(app_settings, db):
    async with instance(app_settings) as client:
        reply = await whatsapp(client, "where is my order", path="/twilio/sms")
        assert reply[-1] == "Did that help? Reply YES or NO."
        assert await client.app[EVENTS].flush()
    assert await db.fetchval("SELECT channel FROM contacts") == "whatsapp"


async def test_a_photo_without_words_is_answered_with_what_we_cannot_do(app_settings, db):
    async with instance(app_settings) as client:
        assert await whatsapp(client, "", media=1) == [MEDIA_ONLY]
        reply = await whatsapp(client, "where is my order", media=1)  # a caption is read
        assert reply[-1] == "Did that help? Reply YES or NO."


async def test_no_reaches_an_agent_with_the_numbers_sms_history_and_replies_go_by_rest(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        agent, offer = await escalated_whatsapp_contact(client, db, standin)
        assert offer["channel"] == "whatsapp"
        earlier = offer["context"]["earlier_contacts"]
        assert [(e["channel"], e["contact_type"]) for e in earlier] == [("sms", "track_order")]
        greeting = dict(standin.messages[-1])
        assert greeting.pop("StatusCallback").startswith(
            PUBLIC_URL + "/twilio/whatsapp/status?message=")
        assert greeting == {"To": WA, "From": WA_SERVICE, "Body": "You're now talking with Dana."}
        await agent.send(type="message", contact_id=offer["contact_id"],
                         text="I've sent you a reset link.")
        await wait_for(lambda: standin.messages[-1]["Body"] == "I've sent you a reset link.")
        assert standin.messages[-1]["To"] == WA
        assert await whatsapp(client, "got it, thanks") == []
        assert (await agent.next("message"))["text"] == "got it, thanks"
        await agent.send(type="wrap_up", contact_id=offer["contact_id"], resolved=True)
        await agent.next("wrapped_up")
        assert await client.app[EVENTS].flush()
        token = await create_token(db, "ops", "tests")
        response = await client.get("/api/reports/summary",
                                    headers={"Authorization": f"Bearer {token}"})
        report = await response.json()
    assert response.status == 200, report
    assert report["by_channel"]["whatsapp"]["contacts"] == 1
    assert report["by_channel"]["sms"]["contacts"] == 1


async def test_an_agent_reply_after_24_hours_is_refused_with_the_reason(
        app_settings, db, twilio, redis_client):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        agent, offer = await escalated_whatsapp_contact(client, db, standin)
        sent = len(standin.messages)
        key = await redis_client.get(f"sb:{{contact:{offer['contact_id']}}}:conv")
        conv = orjson.loads(await redis_client.get(key))
        for line in conv["transcript"]:  # the customer last wrote a day and an hour ago
            line["at"] -= 25 * 3600
        await redis_client.set(key, orjson.dumps(conv), keepttl=True)
        await agent.send(type="message", contact_id=offer["contact_id"], text="Still there?")
        error = await agent.next("error")
        assert (error["code"], error["contact_id"]) == ("outside_window", offer["contact_id"])
        assert "24 hours" in error["message"] and "63016" in error["message"]
        await asyncio.sleep(0.2)
        assert len(standin.messages) == sent  # nothing went to Twilio
        assert await client.app[EVENTS].flush()
    row = await db.fetchrow("SELECT data FROM contact_events WHERE kind = 'delivery_failed'")
    assert json.loads(row["data"])["code"] == "63016"


async def test_twilios_63016_refusal_reaches_the_agent_as_the_same_reason(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        agent, offer = await escalated_whatsapp_contact(client, db, standin)
        standin.refuse_with_code = 63016
        await agent.send(type="message", contact_id=offer["contact_id"], text="Hello?")
        error = await agent.next("error")
        assert error["code"] == "outside_window" and "63016" in error["message"]
        standin.refuse_with_code = 21211  # another refusal keeps Twilio's code in the message
        await agent.send(type="message", contact_id=offer["contact_id"], text="Hello?")
        error = await agent.next("error")
        assert error["code"] == "delivery_failed" and "21211" in error["message"]


@pytest.mark.parametrize("keyword", ["STOP", "HELP"])
async def test_carrier_keywords_are_words_on_whatsapp(app_settings, db, keyword):
    """STOP and HELP are the SMS carriers' keywords; on WhatsApp they are understood as text."""
    async with instance(app_settings) as client:
        reply = await whatsapp(client, keyword)
        assert reply and "Msg&data rates" not in reply[0]
        assert await client.app[EVENTS].flush()
    assert await db.fetchval("SELECT count(*) FROM contact_events WHERE kind = 'opted_out'") == 0
