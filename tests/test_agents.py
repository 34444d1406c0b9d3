"""Escalated contacts reach agents with their context, on every channel, across instances."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager

import pytest
from aiohttp import WSServerHandshakeError
from aiohttp.test_utils import TestClient, TestServer

from service.agents.desk import add_agent
from service.app import create_app
from service.appkeys import EVENTS
from tests.conftest import PUBLIC_URL, _clean_tables, with_settings
from tests.twilio_driver import Call, text
from tests.twilio_standin import start_standin

CUSTOMER = "+15555550142"
ALL_SKILLS = ["accounts", "billing", "care", "orders", "shipping", "vip"]


@pytest.fixture
async def twilio():
    standin, _ = await start_standin()
    yield standin, standin.url
    await standin.stop()


@pytest.fixture
async def app_settings(settings, twilio, redis_client):
    await _clean_tables(settings.database_url)
    return with_settings(settings, twilio_api_base_url=twilio[1], twilio_account_sid="AC" + "1" * 32,
                         offer_timeout_s=30, chat_identity_secret="host-site-secret")


@asynccontextmanager
async def instance(settings):
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client


class AgentSocket:
    def __init__(self, ws):
        self.ws = ws

    async def next(self, kind: str, timeout: float = 5) -> dict:
        while True:
            frame = await asyncio.wait_for(self.ws.receive_json(), timeout)
            if frame["type"] == kind:
                return frame
            if frame["type"] == "error":
                raise AssertionError(f"error frame: {frame}")

    async def send(self, **frame) -> None:
        await self.ws.send_json(frame)


async def login(client, db, name="Dana", skills=ALL_SKILLS, capacity=None,
                available=True) -> AgentSocket:
    token = await add_agent(db, name, skills, capacity)
    ws = await client.ws_connect("/agent/ws")
    await ws.send_json({"type": "auth", "token": token})
    agent = AgentSocket(ws)
    ready = await agent.next("ready")
    assert ready["agent"]["name"] == name
    assert {"id": "track_order", "label": "Track an order"} in ready["contact_types"]
    if available:
        await agent.send(type="presence", status="available")
        await agent.next("presence")
    return agent


async def flushed_kinds(client, db) -> list[str]:
    assert await client.app[EVENTS].flush()
    return [r["kind"] for r in await db.fetch(  # the contacts': not agents' own status changes
        "SELECT kind FROM contact_events WHERE kind <> 'agent_status_changed' ORDER BY seq")]


async def test_bad_tokens_are_refused(app_settings, db):
    async with instance(app_settings) as client:
        ws = await client.ws_connect("/agent/ws")
        await ws.send_json({"type": "auth", "token": "not-a-token"})
        assert (await ws.receive_json())["code"] == "unauthorized"
        assert (await ws.receive()).type.name in ("CLOSE", "CLOSED", "CLOSING")
        ws = await client.ws_connect("/agent/ws")
        await ws.send_str("hello")
        assert (await ws.receive_json())["code"] == "unauthorized"
        await ws.close()


async def test_malformed_frames_get_an_error_and_change_nothing(app_settings, db):
    async with instance(app_settings) as client:
        agent = await login(client, db, available=False)
        for bad in ('{"type":"presence","status":"asleep"}', '{"type":"teleport"}',
                    '[1,2]', 'not json', '{"type":"accept"}',
                    '{"type":"wrap_up","contact_id":"x","resolved":"maybe"}'):
            await agent.ws.send_str(bad)
            frame = await agent.ws.receive_json()
            assert frame["type"] == "error" and frame["code"] == "bad_frame", bad
        await agent.send(type="accept", contact_id="00000000-0000-0000-0000-000000000000")
        assert (await agent.ws.receive_json())["code"] == "offer_gone"


async def test_sms_escalation_reaches_an_agent_with_context_and_replies_go_by_sms(
        app_settings, db, twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        await text(client, CUSTOMER, "I need to track my order")
        await text(client, CUSTOMER, "yes")  # an earlier contact, resolved by self-service
        agent = await login(client, db)
        await text(client, CUSTOMER, "I forgot my password and can't log in")
        await text(client, CUSTOMER, "no")
        offer = await agent.next("offer")
        context = offer["context"]
        assert (offer["channel"], offer["queue"], offer["reason"]) == \
            ("sms", "accounts", "self_service_failed")
        assert context["contact_type"] == "recover_password"
        assert context["self_service_steps"][0]["outcome"] == "failed"
        assert context["earlier_contacts"][0]["contact_type"] == "track_order"
        assert [m["from"] for m in context["transcript"]][:2] == ["customer", "bot"]

        await agent.send(type="accept", contact_id=offer["contact_id"])
        assigned = await agent.next("assigned")
        assert assigned["contact_id"] == offer["contact_id"]
        assert standin.messages[-1]["Body"] == "You're now talking with Dana."

        assert await text(client, CUSTOMER, "my account is ana@example.com") == []
        message = await agent.next("message")
        assert abs(message.pop("at") - time.time()) < 30  # when the customer wrote
        assert message == {"type": "message", "contact_id": offer["contact_id"],
                           "from": "customer", "text": "my account is ana@example.com"}

        await agent.send(type="message", contact_id=offer["contact_id"],
                         text="I've sent you a reset link.")
        for _ in range(50):
            if len(standin.messages) == 2:
                break
            await asyncio.sleep(0.05)
        sent = dict(standin.messages[-1])
        callback = sent.pop("StatusCallback")  # the message's states come back, naming it
        assert sent == {"To": CUSTOMER, "From": "+15005550006",
                        "Body": "I've sent you a reset link."}
        assert callback.startswith(PUBLIC_URL + "/twilio/sms/status?message=")

        await agent.send(type="wrap_up", contact_id=offer["contact_id"], resolved=True,
                         contact_type="registration_problems", note="reset link sent")
        await agent.next("wrapped_up")
        kinds = await flushed_kinds(client, db)
        assert kinds[-6:] == ["offered", "agent_accepted", "received", "agent_message",
                              "wrap_up", "ended"]
        wrap = await db.fetchrow("SELECT data FROM contact_events WHERE kind = 'wrap_up'")
        assert json.loads(wrap["data"])["corrected_contact_type"] == "registration_problems"
        contact = await db.fetchrow("SELECT outcome, contact_type FROM contacts WHERE id = $1",
                                    __import__("uuid").UUID(offer["contact_id"]))
        # the agent's correction is the contact's type from now on
        assert tuple(contact) == ("agent_resolved", "registration_problems")
        assert (await text(client, CUSTOMER, "I need to track my order"))  # a new contact


async def test_voice_escalation_reaches_an_agent_and_accepting_bridges_the_call(
        app_settings, db, twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        agent = await login(client, db)
        call = await Call(client, CUSTOMER).dial()
        await call.press("0")
        offer = await agent.next("offer")
        assert offer["channel"] == "voice" and offer["reason"] == "requested_agent"
        assert offer["context"]["transcript"][-1]["text"] == "[pressed 0]"
        await agent.send(type="accept", contact_id=offer["contact_id"])
        await agent.next("assigned")
        [update] = standin.call_updates
        assert update["call_sid"] == call.sid
        assert "<Dial><Conference " in update["Twiml"]
        [agent_leg] = standin.participants
        assert agent_leg["To"].startswith("client:agent-")
        await call.leave_queue("redirected")
        await call.hang_up()
        await agent.next("contact_ended")


async def test_capacity_and_skills_across_channels(app_settings, db):
    async with instance(app_settings) as client:
        billing = await login(client, db, "Bo", ["billing"], capacity={"voice": 1, "chat": 0,
                                                                      "sms": 1})
        care = await login(client, db, "Cy", ["care"])
        await text(client, "+15555550001", "I want to talk to a human")
        offer = await care.next("offer")
        assert offer["queue"] == "general"
        await text(client, "+15555550002", "I want a refund")
        await text(client, "+15555550002", "no")
        assert (await billing.next("offer"))["queue"] == "billing"
        await text(client, "+15555550003", "I want a refund")
        await text(client, "+15555550003", "no")
        with pytest.raises(asyncio.TimeoutError):  # Bo's one SMS slot is taken
            await billing.next("offer", timeout=1.5)


async def test_offer_timeout_moves_to_the_next_agent(app_settings, db):
    async with instance(with_settings(app_settings, offer_timeout_s=1)) as client:
        first = await login(client, db, "First")
        await asyncio.sleep(0.05)
        second = await login(client, db, "Second")
        await text(client, CUSTOMER, "I want to talk to a human")
        offer = await first.next("offer")
        withdrawn = await first.next("offer_withdrawn", timeout=5)
        assert withdrawn["contact_id"] == offer["contact_id"]
        again = await second.next("offer", timeout=5)
        assert again["contact_id"] == offer["contact_id"]


class ChatSocket(AgentSocket):
    pass


async def open_chat(client, session=None, customer=None) -> tuple[ChatSocket, dict]:
    ws = await client.ws_connect("/chat/ws")
    start = {"type": "start", "session": session}
    if customer:
        start["customer"] = customer
    await ws.send_json(start)
    chat = ChatSocket(ws)
    return chat, await chat.next("session")


async def test_chat_customer_on_one_instance_agent_on_another(app_settings, db):
    async with instance(app_settings) as customer_side, instance(app_settings) as agent_side:
        agent = await login(agent_side, db)
        chat, session = await open_chat(customer_side)
        greeting = await chat.next("message")
        assert greeting["text"] == "Hi! Tell me in a few words what you need help with."
        await chat.send(type="message", text="I forgot my password and can't log in")
        answer = await chat.next("message")
        assert "password" in answer["text"].lower()
        confirm = await chat.next("message")
        assert confirm["choices"] == [{"label": "Yes", "value": "yes"},
                                      {"label": "No", "value": "no"}]
        await chat.send(type="message", text="no")
        await chat.next("message")
        status = await chat.next("status")
        assert status["state"] == "queued" and status["position"] == 1

        offer = await agent.next("offer")
        assert offer["channel"] == "chat"
        await agent.send(type="accept", contact_id=offer["contact_id"])
        await agent.next("assigned")
        assert (await chat.next("status"))["state"] == "with_agent"
        assert (await chat.next("message"))["text"] == "You're now talking with Dana."

        await agent.send(type="message", contact_id=offer["contact_id"], text="Hi, I can help")
        assert await chat.next("message") == {"type": "message", "from": "agent",
                                              "text": "Hi, I can help"}
        await chat.send(type="message", text="thanks!")
        assert (await agent.next("message"))["text"] == "thanks!"

        # a dropped connection resumes the same contact with its transcript
        await chat.ws.close()
        chat, resumed = await open_chat(customer_side, session=session["session"])
        assert resumed["contact_id"] == session["contact_id"]
        replay = [await chat.next("message") for _ in range(3)]
        assert replay[0]["text"] == "Hi! Tell me in a few words what you need help with."
        assert (await chat.next("status"))["state"] == "with_agent"

        await agent.send(type="wrap_up", contact_id=offer["contact_id"], resolved=True)
        await agent.next("wrapped_up")
        assert (await chat.next("status"))["state"] == "closed"


async def test_chat_bad_input_is_refused_and_floods_are_limited(app_settings, db):
    async with instance(app_settings) as client:
        ws = await client.ws_connect("/chat/ws")
        await ws.send_json({"type": "message", "text": "hi"})
        assert (await ws.receive_json())["code"] == "bad_frame"

        chat, _ = await open_chat(client)
        await chat.next("status")
        await chat.ws.send_str("{nope")
        assert (await chat.ws.receive_json())["code"] == "bad_frame"
        codes = []
        for _ in range(12):
            await chat.send(type="message", text="blorp")
        for _ in range(40):
            try:
                frame = await asyncio.wait_for(chat.ws.receive_json(), 2)
            except asyncio.TimeoutError:
                break
            if frame["type"] == "error":
                codes.append(frame["code"])
        assert "rate_limited" in codes

        big = await client.ws_connect("/chat/ws")
        await big.send_str(json.dumps({"type": "start", "session": None, "x": "y" * 20_000}))
        closing = await big.receive()
        assert closing.type.name in ("CLOSE", "CLOSED", "ERROR")


async def test_only_allowed_sites_may_open_the_chat(app_settings, db):
    allowed = with_settings(app_settings, chat_origins=("https://shop.example.com",))
    async with instance(allowed) as client:
        with pytest.raises(WSServerHandshakeError) as refused:
            await client.ws_connect("/chat/ws", headers={"Origin": "https://evil.example"})
        assert refused.value.status == 403
        for origin in ("https://shop.example.com", "https://SHOP.example.com",
                       allowed.public_url, None):  # the service's own /chat, a non-browser
            headers = {"Origin": origin} if origin else {}
            ws = await client.ws_connect("/chat/ws", headers=headers)
            await ws.send_json({"type": "start", "session": None})
            assert (await ChatSocket(ws).next("session"))["session"]
            await ws.close()
    async with instance(app_settings) as anywhere:  # no list: the widget may be on any site
        ws = await anywhere.ws_connect("/chat/ws", headers={"Origin": "https://evil.example"})
        await ws.send_json({"type": "start", "session": None})
        assert (await ChatSocket(ws).next("session"))["session"]
        await ws.close()


async def test_a_verified_chat_visitor_is_linked_to_their_history(app_settings, db,
                                                                  redis_client):
    import hashlib
    import hmac

    from service.conversations.customers import upsert_customer

    await upsert_customer(db, redis_client, identities=[("phone", CUSTOMER), ("web", "id:c-42")],
                          display_name="Ana", attributes={})
    async with instance(app_settings) as client:
        await text(client, CUSTOMER, "I need to track my order")
        good = hmac.new(b"host-site-secret", b"c-42", hashlib.sha256).hexdigest()
        chat, _ = await open_chat(client, customer={"id": "c-42", "signature": good})
        assert (await chat.next("message"))["text"].startswith("Welcome back. Is this about "
                                                               "your track an order question")
        forged, _ = await open_chat(client, customer={"id": "c-42", "signature": "0" * 64})
        assert (await forged.next("message"))["text"].startswith("Hi! Tell me")


async def test_a_chat_contact_is_in_the_history_of_the_customers_phone(app_settings, db,
                                                                      redis_client):
    """The phone's link is already cached when the customer chats: the chat's summary must
    still reach the phone's copy of the history, which its next text reads."""
    import hashlib
    import hmac

    from service.conversations.customers import upsert_customer

    await upsert_customer(db, redis_client, identities=[("phone", CUSTOMER), ("web", "id:c-43")],
                          display_name="Ana", attributes={})
    async with instance(app_settings) as client:
        await text(client, CUSTOMER, "I need to track my order")
        await text(client, CUSTOMER, "yes")
        signed = hmac.new(b"host-site-secret", b"c-43", hashlib.sha256).hexdigest()
        chat, _ = await open_chat(client, customer={"id": "c-43", "signature": signed})
        await chat.next("message")
        await chat.send(type="end")
        await asyncio.sleep(0.2)
        await text(client, CUSTOMER, "I forgot my password")
    raw = await redis_client.get(f"sb:{{phone:{CUSTOMER}}}:conv:sms:+15005550006")
    earlier = json.loads(raw)["earlier"]
    assert [c["channel"] for c in earlier] == ["chat", "sms"]


async def test_a_contact_queued_on_an_instance_that_dies_still_reaches_an_agent(app_settings,
                                                                               db):
    async with instance(app_settings) as doomed:
        await text(doomed, CUSTOMER, "I want to talk to a human")
    async with instance(app_settings) as survivor:
        agent = await login(survivor, db)
        offer = await agent.next("offer")
        assert offer["reason"] == "requested_agent" and offer["channel"] == "sms"


async def test_agent_corrections_and_confirmed_answers_become_training_examples(
        app_settings, db, redis_client):
    from service.app import reload_and_record
    from service.appkeys import RULES

    async with instance(app_settings) as client:
        agent = await login(client, db)
        await text(client, CUSTOMER, "my parcel never showed up")
        await text(client, CUSTOMER, "agent")
        offer = await agent.next("offer")
        await agent.send(type="accept", contact_id=offer["contact_id"])
        await agent.next("assigned")
        await agent.send(type="wrap_up", contact_id=offer["contact_id"], resolved=True,
                         contact_type="delivery_period")
        await agent.next("wrapped_up")
        await text(client, "+15555550999", "I forgot my password and can't log in")
        await text(client, "+15555550999", "yes")
        assert await client.app[EVENTS].flush()
        assert client.app[RULES].current.learned == ()
        assert await reload_and_record(client.app)
        learned = client.app[RULES].current.learned
    assert set(learned) == {
        ("my parcel never showed up", "delivery_period"),
        ("I forgot my password and can't log in", "recover_password")}


async def test_chat_out_of_scope_message_gets_a_clarifying_question(app_settings, db):
    async with instance(app_settings) as client:
        chat, _ = await open_chat(client)
        await chat.next("status")
        await chat.send(type="message", text="what's the weather like tomorrow")
        question = await chat.next("message")
        assert question["text"] == ("Sorry, I'm not sure I understood. Is it about one of "
                                    "these? Or tell me in other words.")
        assert [c["label"] for c in question["choices"]] == ["Track an order", "Cancel an order",
                                                            "Get a refund"]
        await chat.send(type="message", text=question["choices"][0]["value"])
        answer = await chat.next("message")
        assert answer["text"].startswith("Every order is listed under Orders")


async def test_agents_who_connect_at_the_same_moment_each_get_their_offers(app_settings, db):
    """A fresh instance (no bus connection yet) and four consoles opening at once, as after
    a restart: each is subscribed on the one connection the bus reads, so none misses a frame."""
    tokens = [await add_agent(db, f"Agent {n}", ALL_SKILLS, {"sms": 1}) for n in range(4)]

    async def connect(client, token: str) -> AgentSocket:
        ws = await client.ws_connect("/agent/ws")
        await ws.send_json({"type": "auth", "token": token})
        await ws.send_json({"type": "presence", "status": "available"})
        agent = AgentSocket(ws)
        await agent.next("presence")
        return agent

    async with instance(app_settings) as client:
        agents = await asyncio.gather(*(connect(client, token) for token in tokens))
        for n in range(4):
            await text(client, f"+155555503{n:02d}", "I want to talk to a human")
        offers = await asyncio.gather(*(agent.next("offer") for agent in agents))
        assert len({offer["contact_id"] for offer in offers}) == 4
