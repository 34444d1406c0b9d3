"""Agent transfers, on real PostgreSQL and Valkey: to a queue and to a named agent, cold and
warm, on SMS, chat and voice (Twilio's REST API stood in for), with the context intact."""

from __future__ import annotations

import asyncio
import json

import pytest

from service.agents.desk import add_agent
from service.appkeys import EVENTS
from service.conversations.transfer import PASSING_ON
from tests.test_agents import AgentSocket, app_settings, instance, open_chat, twilio  # noqa: F401
from tests.twilio_driver import Call, post_signed, text

CUSTOMER = "+15555550177"


class Agent(AgentSocket):
    id: str
    name: str


async def sign_in(client, db, name, skills, available=True) -> Agent:
    token = await add_agent(db, name, skills)
    ws = await client.ws_connect("/agent/ws")
    await ws.send_json({"type": "auth", "token": token})
    agent = Agent(ws)
    ready = await agent.next("ready")
    agent.id, agent.name = ready["agent"]["id"], name
    if available:
        await agent.send(type="presence", status="available")
        await agent.next("presence")
    return agent


async def take(agent: Agent) -> dict:
    offer = await agent.next("offer")
    await agent.send(type="accept", contact_id=offer["contact_id"])
    assigned = await agent.next("assigned")
    return assigned


async def error_of(who: Agent, **frame) -> dict:
    await who.send(**frame)
    while True:
        reply = await asyncio.wait_for(who.ws.receive_json(), 5)
        if reply["type"] == "error":
            return reply


async def sent_bodies(standin, count: int) -> list[str]:
    for _ in range(100):
        if len(standin.messages) >= count:
            break
        await asyncio.sleep(0.05)
    return [m["Body"] for m in standin.messages]


async def events_of(client, db, contact_id: str) -> list[dict]:
    assert await client.app[EVENTS].flush()
    rows = await db.fetch("SELECT kind, reason, data FROM contact_events "
                          "WHERE contact_id = $1::uuid ORDER BY seq", contact_id)
    return [{"kind": r["kind"], "reason": r["reason"], **json.loads(r["data"])} for r in rows]


async def test_sms_cold_transfer_to_a_queue_moves_the_whole_context(app_settings, db, twilio,
                                                                     redis_client):
    standin, _ = twilio
    async with instance(app_settings) as client:
        await text(client, CUSTOMER, "I need to track my order")
        await text(client, CUSTOMER, "yes")  # an earlier contact
        first = await sign_in(client, db, "Ann", ["care", "orders"])
        await text(client, CUSTOMER, "I want to talk to a human")
        contact = (await take(first))["contact_id"]
        await first.send(type="message", contact_id=contact, text="Let me check that for you.")
        await sent_bodies(standin, 2)
        second = await sign_in(client, db, "Bob", ["billing"])

        await first.send(type="transfer", contact_id=contact, queue="billing", mode="cold",
                         note="wants a refund for order 1234")
        result = await first.next("transfer_result")
        assert (result["status"], result["queue"], result["mode"], result["told_customer"]) == \
            ("transferred", "billing", "cold", PASSING_ON["cold"])
        assert (await sent_bodies(standin, 3))[-1] == PASSING_ON["cold"]
        assert await redis_client.hget("sb:{routing}:assigned", contact) is None
        assert (await redis_client.hget(f"sb:{{routing}}:agent:{first.id}", "load_sms")) == b"0"

        offer = await second.next("offer")
        assert (offer["contact_id"], offer["queue"], offer["reason"]) == \
            (contact, "billing", "transferred")
        context = offer["context"]
        moved_at = context["transfer"].pop("at")
        assert context["transfer"] == {"from_agent": first.id, "from_agent_name": "Ann",
                                       "note": "wants a refund for order 1234", "mode": "cold"}
        assert context["escalated_at"] < moved_at <= context["transcript"][-1]["at"]
        said = [(line["from"], line["text"]) for line in context["transcript"]]
        assert ("customer", "I want to talk to a human") in said
        assert ("agent", "You're now talking with Ann.") in said
        assert ("agent", "Let me check that for you.") in said
        assert said[-1] == ("agent", PASSING_ON["cold"])
        assert context["earlier_contacts"][0]["contact_type"] == "track_order"

        await second.send(type="accept", contact_id=contact)
        assigned = await second.next("assigned")
        assert assigned["context"]["transfer"]["from_agent"] == first.id
        assert (await sent_bodies(standin, 4))[-1] == "You're now talking with Bob."
        told = await first.next("transfer_result")
        assert (told["status"], told["agent_name"]) == ("accepted", "Bob")

        assert await text(client, CUSTOMER, "it was order 1234") == []
        assert (await second.next("message"))["text"] == "it was order 1234"
        kinds = [e["kind"] for e in await events_of(client, db, contact)]
        assert kinds.count("transfer_requested") == 1 and kinds.count("transferred") == 1
        assert kinds.index("transferred") < len(kinds) - 1 - kinds[::-1].index("agent_accepted")
        requested = [e for e in await events_of(client, db, contact)
                     if e["kind"] == "transfer_requested"][0]
        assert (requested["from_agent"], requested["to_queue"], requested["to_agent"],
                requested["mode"], requested["note"], requested["reason"]) == \
            (first.id, "billing", None, "cold", "wants a refund for order 1234", "agent_transfer")
        passing_on = [e["messages"] for e in await events_of(client, db, contact)
                      if e["kind"] == "replied" and PASSING_ON["cold"] in e["messages"]]
        assert passing_on == [[PASSING_ON["cold"]]]  # what the customer read, in the log once


async def test_chat_warm_transfer_to_a_named_agent(app_settings, db, redis_client):
    async with instance(app_settings) as client:
        first = await sign_in(client, db, "Ann", ["care"])
        second = await sign_in(client, db, "Bob", ["billing"])
        chat, _ = await open_chat(client)
        await chat.next("status")
        await chat.send(type="message", text="I want to talk to a human")
        contact = (await take(first))["contact_id"]
        while (await chat.next("status"))["state"] != "with_agent":
            pass
        assert (await chat.next("message"))["text"] == "You're now talking with Ann."

        await first.send(type="transfer", contact_id=contact, agent=second.id, mode="warm",
                         note="billing question")
        result = await first.next("transfer_result")
        assert (result["status"], result["agent"], result["agent_name"]) == \
            ("pending", second.id, "Bob")
        assert (await chat.next("message"))["text"] == PASSING_ON["warm"]
        offer = await second.next("offer")
        assert offer["context"]["transfer"]["mode"] == "warm"
        # until Bob accepts, Ann keeps the contact and hears the customer
        await chat.send(type="message", text="are you still there?")
        assert (await first.next("message"))["text"] == "are you still there?"
        assert await redis_client.hget("sb:{routing}:assigned", contact) == first.id.encode()

        await second.send(type="accept", contact_id=contact)
        assigned = await second.next("assigned")
        said = [line["text"] for line in assigned["context"]["transcript"]]
        assert "are you still there?" in said and said[-1] == "You're now talking with Bob."
        told = await first.next("transfer_result")
        assert (told["status"], told["agent"]) == ("accepted", second.id)
        assert (await redis_client.hget(f"sb:{{routing}}:agent:{first.id}", "load_chat")) == b"0"
        assert (await chat.next("status"))["state"] == "with_agent"
        assert (await chat.next("message"))["text"] == "You're now talking with Bob."
        await chat.send(type="message", text="hi Bob")
        assert (await second.next("message"))["text"] == "hi Bob"
        kinds = [e["kind"] for e in await events_of(client, db, contact)]
        assert kinds.count("transferred") == 1
        assert kinds.index("transfer_requested") < kinds.index("transferred")


async def test_a_named_agent_who_declines_sends_cold_back_to_the_queue_and_warm_back_home(
        app_settings, db, twilio, redis_client):
    standin, _ = twilio
    async with instance(app_settings) as client:
        first = await sign_in(client, db, "Ann", ["care"])
        second = await sign_in(client, db, "Bob", ["billing"])
        await text(client, CUSTOMER, "I want to talk to a human")
        contact = (await take(first))["contact_id"]

        await first.send(type="transfer", contact_id=contact, agent=second.id, mode="warm")
        await first.next("transfer_result")
        await second.next("offer")
        await second.send(type="decline", contact_id=contact)
        told = await first.next("transfer_result")
        assert (told["status"], told["reason"]) == ("declined", "declined")
        assert await redis_client.hget("sb:{routing}:entries", contact) is None
        assert await redis_client.hget("sb:{routing}:assigned", contact) == first.id.encode()
        assert await text(client, CUSTOMER, "hello?") == []
        assert (await first.next("message"))["text"] == "hello?"

        await first.send(type="transfer", contact_id=contact, agent=second.id, mode="cold")
        await first.next("transfer_result")
        await second.next("offer")
        await second.send(type="decline", contact_id=contact)
        told = await first.next("transfer_result")
        assert (told["status"], told["reason"]) == ("returned_to_queue", "declined")
        entry = json.loads(await redis_client.hget("sb:{routing}:entries", contact))
        assert entry["queue"] == "general" and "only_agent" not in entry
        third = await sign_in(client, db, "Cy", ["care"])
        assert (await third.next("offer"))["context"]["transfer"]["from_agent"] == first.id
        kinds = [e["kind"] for e in await events_of(client, db, contact)]
        assert "transfer_failed" in kinds and "transfer_returned" in kinds
        assert kinds.count("transferred") == 1  # only the cold one left Ann


async def test_an_away_named_agent_sends_a_cold_transfer_to_the_queue(app_settings, db):
    async with instance(app_settings) as client:
        first = await sign_in(client, db, "Ann", ["care"])
        away = await sign_in(client, db, "Bob", ["care"], available=False)
        await text(client, CUSTOMER, "I want to talk to a human")
        contact = (await take(first))["contact_id"]
        refused = await error_of(first, type="transfer", contact_id=contact, agent=away.id,
                                 mode="warm")
        assert refused["code"] == "agent_unavailable"
        await first.send(type="transfer", contact_id=contact, agent=away.id, mode="cold")
        result = await first.next("transfer_result")
        assert (result["status"], result["queue"], result["agent"], result["reason"]) == \
            ("transferred", "general", None, "agent_unavailable")


async def test_bad_transfers_get_a_clear_error_and_change_nothing(app_settings, db,
                                                                  redis_client):
    async with instance(app_settings) as client:
        first = await sign_in(client, db, "Ann", ["care"])
        other = await sign_in(client, db, "Bob", ["billing"])
        await text(client, CUSTOMER, "I want to talk to a human")
        contact = (await take(first))["contact_id"]
        before = await redis_client.get(f"sb:{{contact:{contact}}}:conv")
        conv_before = await redis_client.get(before)
        cases = [
            ({"queue": "nowhere"}, "unknown_queue"),
            ({"agent": "00000000-0000-0000-0000-000000000000"}, "unknown_agent"),
            ({"agent": first.id}, "self_transfer"),
            ({"queue": "billing", "agent": other.id}, "bad_frame"),
            ({}, "bad_frame"),
            ({"queue": "billing", "mode": "lukewarm"}, "bad_frame"),
            ({"queue": "billing", "note": "x" * 501}, "bad_frame"),
            ({"queue": 7}, "bad_frame"),
        ]
        for fields, code in cases:
            error = await error_of(first, type="transfer", contact_id=contact, **fields)
            assert (error["code"], error["contact_id"]) == (code, contact), fields
        error = await error_of(other, type="transfer", contact_id=contact, queue="billing")
        assert error["code"] == "not_assigned"
        assert await redis_client.hget("sb:{routing}:assigned", contact) == first.id.encode()
        assert await redis_client.hget("sb:{routing}:entries", contact) is None
        assert await redis_client.get(before) == conv_before
        kinds = [e["kind"] for e in await events_of(client, db, contact)]
        assert not [k for k in kinds if k.startswith("transfer")]


async def test_warm_call_transfer_adds_the_next_agent_to_the_conference(app_settings, db,
                                                                        twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        first = await sign_in(client, db, "Ann", ["care"])
        second = await sign_in(client, db, "Bob", ["billing"])
        call = await Call(client, CUSTOMER).dial()
        await call.press("0")
        contact = (await take(first))["contact_id"]
        conference = f"contact-{contact}"
        [update] = standin.call_updates
        assert update["call_sid"] == call.sid
        assert 'participantLabel="customer"' in update["Twiml"]
        assert f">{conference}</Conference>" in update["Twiml"]
        assert 'endConferenceOnExit="true"' in update["Twiml"]
        assert "waitUrl=\"https://switchboard.example.test/twilio/voice/conference-wait\"" in \
            update["Twiml"]
        [joined] = standin.participants
        assert (joined["action"], joined["conference"], joined["Label"], joined["To"],
                joined["From"], joined["StartConferenceOnEnter"],
                joined["EndConferenceOnExit"]) == \
            ("create", conference, f"agent-{first.id}", f"client:agent-{first.id}",
             "+15005550006", "true", "false")
        await call.leave_queue("redirected")
        wait = await post_signed(client, "/twilio/voice/conference-wait", {})
        assert "<Say>" in await wait.text() and "<Pause" in await wait.text()

        await first.send(type="transfer", contact_id=contact, agent=second.id, mode="warm",
                         note="caller wants billing")
        await first.next("transfer_result")
        standin.ringing.add(f"agent-{second.id}")  # Bob's phone rings a while
        await take(second)
        assert (await first.next("transfer_result"))["status"] == "accepted"
        await asyncio.sleep(1)
        assert [p["action"] for p in standin.participants] == ["create", "create"]
        standin.ringing.clear()  # Bob answered: Ann's leg goes at the next look
        added = standin.participants[1]
        assert (added["action"], added["conference"], added["Label"]) == \
            ("create", conference, f"agent-{second.id}")
        assert "/twilio/voice/conference-status?call=" in added["ConferenceStatusCallback"]
        assert added["ConferenceStatusCallbackEvent"] == "join leave"
        # warm: nobody was put on hold; once Bob is in, Ann's leg is dropped for her
        sid = standin.conferences[conference]
        for _ in range(200):
            if len(standin.participants) >= 3:
                break
            await asyncio.sleep(0.05)
        assert [p["action"] for p in standin.participants] == ["create", "create", "delete"]
        dropped = standin.participants[2]
        assert (dropped["conference"], dropped["participant"]) == (sid, f"agent-{first.id}")
        assert len(standin.call_updates) == 1
        kinds = [e["kind"] for e in await events_of(client, db, contact)]
        assert "delivery_failed" not in kinds and kinds.count("transferred") == 1


async def test_cold_call_transfer_holds_the_caller_then_drops_the_first_agent(app_settings, db,
                                                                              twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        first = await sign_in(client, db, "Ann", ["care"])
        second = await sign_in(client, db, "Bob", ["billing"])
        call = await Call(client, CUSTOMER).dial()
        await call.press("0")
        contact = (await take(first))["contact_id"]
        await call.leave_queue("redirected")
        await first.send(type="transfer", contact_id=contact, queue="billing", mode="cold")
        assert (await first.next("transfer_result"))["status"] == "transferred"
        sid = standin.conferences[f"contact-{contact}"]
        hold, drop = standin.participants[1:3]
        assert (hold["action"], hold["conference"], hold["participant"], hold["Hold"]) == \
            ("update", sid, "customer", "true")
        assert hold["HoldUrl"].endswith("/twilio/voice/conference-hold")
        assert (drop["action"], drop["conference"], drop["participant"]) == \
            ("delete", sid, f"agent-{first.id}")
        held = await post_signed(client, "/twilio/voice/conference-hold", {})
        assert "colleague" in await held.text()

        await take(second)
        assert standin.participants[3]["Label"] == f"agent-{second.id}"
        joined = {"ConferenceSid": sid, "StatusCallbackEvent": "participant-join",
                  "ParticipantLabel": f"agent-{second.id}", "CallSid": "CA" + "5" * 32,
                  "AccountSid": "AC" + "0" * 32, "FriendlyName": f"contact-{contact}"}
        response = await post_signed(client, "/twilio/voice/conference-status", joined)
        assert response.status == 200
        unhold = standin.participants[4]
        assert (unhold["action"], unhold["participant"], unhold["Hold"]) == \
            ("update", "customer", "false")


@pytest.mark.parametrize("mode", ["cold", "warm"])
async def test_transferred_contacts_are_counted_once_in_the_report(app_settings, db, mode):
    from service.reporting.reports import FROM_EVENTS, ReportRules, parse_window, summary

    async with instance(app_settings) as client:
        first = await sign_in(client, db, "Ann", ["care", "billing"])
        second = await sign_in(client, db, "Bob", ["billing", "care"])
        await text(client, CUSTOMER, "I want to talk to a human")
        await text(client, "+15555550178", "I want to talk to a human")
        contact = (await take(first))["contact_id"]
        await take(second)
        for target in ("billing", "general"):  # there and back: one contact transferred
            holder, taker = (first, second) if target == "billing" else (second, first)
            await holder.send(type="transfer", contact_id=contact, queue=target, mode=mode)
            await holder.next("transfer_result")
            await take(taker)
        assert await client.app[EVENTS].flush()
    window = parse_window(None, None)
    rules = ReportRules()
    served = await summary(db, window, rules)
    assert served["metric_version"] == "2"
    assert served["totals"]["transferred"] == 1
    assert served["by_channel"]["sms"]["transferred"] == 1
    assert (await summary(db, window, rules, FROM_EVENTS))["totals"] == served["totals"]


async def test_a_colleague_who_goes_away_before_the_offer_gives_the_transfer_up(
        app_settings, db, monkeypatch):
    from service.agents.queues import Dispatcher
    from tests.conftest import with_settings

    async with instance(with_settings(app_settings, offer_timeout_s=1)) as client:
        first = await sign_in(client, db, "Ann", ["care"])
        away = await sign_in(client, db, "Bob", ["care"], available=False)
        await text(client, CUSTOMER, "I want to talk to a human")
        contact = (await take(first))["contact_id"]

        async def free_when_checked(self, agent_id, channel):  # then Bob steps away
            return True

        monkeypatch.setattr(Dispatcher, "has_room", free_when_checked)
        for mode, status in (("warm", "agent_unavailable"), ("cold", "returned_to_queue")):
            await first.send(type="transfer", contact_id=contact, agent=away.id, mode=mode)
            assert (await first.next("transfer_result"))["agent"] == away.id
            told = await first.next("transfer_result", timeout=6)
            assert (told["status"], told["reason"]) == (status, "agent_unavailable")
        third = await sign_in(client, db, "Cy", ["care"])
        assert (await third.next("offer"))["contact_id"] == contact


async def test_a_transfer_stands_when_the_customer_could_not_be_told(app_settings, db, twilio,
                                                                     redis_client):
    standin, _ = twilio
    async with instance(app_settings) as client:
        first = await sign_in(client, db, "Ann", ["care"])
        await sign_in(client, db, "Bob", ["billing"])
        await text(client, CUSTOMER, "I want to talk to a human")
        contact = (await take(first))["contact_id"]
        standin.refuse_with_code = 21610  # Twilio: the number has unsubscribed
        await first.send(type="transfer", contact_id=contact, queue="billing")
        result = await first.next("transfer_result")
        assert result["status"] == "transferred" and result["told_customer"] is None
        assert "21610" in result["delivery_failed"]
        assert json.loads(await redis_client.hget("sb:{routing}:entries", contact))["queue"] \
            == "billing"
        kinds = [e["kind"] for e in await events_of(client, db, contact)]
        moved = kinds[kinds.index("transfer_requested"):]
        assert moved[:3] == ["transfer_requested", "transferred", "delivery_failed"]
        assert "offered" in moved  # Bob is offered it all the same


async def test_whatsapp_warm_transfer_to_a_queue_keeps_the_whatsapp_addresses(app_settings, db,
                                                                              twilio):
    from tests.test_whatsapp import WA, WA_SERVICE, whatsapp

    standin, _ = twilio
    async with instance(app_settings) as client:
        first = await sign_in(client, db, "Ann", ["care"])
        second = await sign_in(client, db, "Bob", ["billing"])
        await whatsapp(client, "I want to talk to a human")
        contact = (await take(first))["contact_id"]
        await first.send(type="transfer", contact_id=contact, queue="billing", mode="warm",
                         note="refund")
        assert (await first.next("transfer_result"))["status"] == "pending"
        offer = await second.next("offer")
        assert offer["channel"] == "whatsapp"
        assert offer["context"]["transfer"]["note"] == "refund"
        assert await whatsapp(client, "still here") == []
        assert (await first.next("message"))["text"] == "still here"
        await second.send(type="accept", contact_id=contact)
        await second.next("assigned")
        assert (await first.next("transfer_result"))["status"] == "accepted"
        bodies = await sent_bodies(standin, 3)
        assert bodies[-2:] == [PASSING_ON["warm"], "You're now talking with Bob."]
        assert {(m["To"], m["From"]) for m in standin.messages} == {(WA, WA_SERVICE)}
        assert await whatsapp(client, "hi Bob") == []
        assert (await second.next("message"))["text"] == "hi Bob"
