"""The supervisor view lists the contacts each agent holds now, end to end on real PostgreSQL
and Valkey: contacts reach agents through the signed SMS webhook and the chat socket and are
accepted on the agent socket; /api/supervisor (read on another instance) lists each under its
agent with its channel, type, customer and times, and forgets it at wrap-up; a whisper on a
listed contact reaches its agent; the gauges' refresh reads no contacts."""

from __future__ import annotations

import time
from datetime import datetime

from service.appkeys import ROUTER
from service.conversations.customers import upsert_customer
from service.infra.redis_batch import CommandBatcher
from service.infra.tokens import create_token
from service.reporting import supervisor
from tests.test_agents import (  # noqa: F401 (fixtures)
    ALL_SKILLS,
    instance,
    login,
    open_chat,
    twilio,
)
from tests.test_agents import app_settings as agent_settings  # noqa: F401 (fixture)
from tests.test_notes import WHISPER, whisper
from tests.test_supervisor import by_name, supervised, view  # noqa: F401 (fixture)
from tests.twilio_driver import text

CUSTOMER = "+15555550433"


def at(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


async def test_each_agents_held_contacts_are_listed_until_wrap_up(supervised, db,  # noqa: F811
                                                                  redis_client):
    await upsert_customer(db, redis_client, identities=[("phone", CUSTOMER)],
                          display_name="Ana Lima", attributes={})
    async with instance(supervised) as one, instance(supervised) as two:
        token = await create_token(db, "supervisor", "Sam")
        dana = await login(one, db, "Dana", ALL_SKILLS)
        eli = await login(one, db, "Eli", ALL_SKILLS, available=False)

        opened = time.time()
        await text(one, CUSTOMER, "I want to talk to a human")
        sms = await dana.next("offer")
        assert by_name(await view(two, token))["Dana"]["held"] == []  # an offer is not held
        accepting = time.time()
        await dana.send(type="accept", contact_id=sms["contact_id"])
        await dana.next("assigned")
        accepted = time.time()

        chat, _ = await open_chat(two)
        await chat.next("message")
        await chat.send(type="message", text="I want to talk to a human")
        offer = await dana.next("offer")
        await dana.send(type="accept", contact_id=offer["contact_id"])
        await dana.next("assigned")

        seen = by_name(await view(two, token))
        assert seen["Eli"]["held"] == []
        first, second = seen["Dana"]["held"]  # longest held first
        assert {k: v for k, v in first.items() if not k.endswith("_at")} == {
            "contact_id": sms["contact_id"], "channel": "sms", "contact_type": None,
            "contact_type_label": "Something else", "customer_name": "Ana Lima"}
        assert opened - 0.01 <= at(first["started_at"]) <= accepting
        assert accepting - 0.01 <= at(first["accepted_at"]) <= accepted + 0.01
        assert (second["contact_id"], second["channel"], second["customer_name"]) == \
            (offer["contact_id"], "chat", None)
        assert at(second["accepted_at"]) >= at(first["accepted_at"])
        assert by_name(await view(one, token))["Dana"]["held"] == seen["Dana"]["held"]

        # the supervisor whispers on the listed contact: its agent gets it
        status, _ = await whisper(two, first["contact_id"], token, {"text": WHISPER})
        assert status == 201
        pushed = await dana.next("note")
        assert (pushed["contact_id"], pushed["note"]["text"], pushed["note"]["role"]) == \
            (sms["contact_id"], WHISPER, "supervisor")

        await dana.send(type="wrap_up", contact_id=sms["contact_id"], resolved=True)
        await dana.next("wrapped_up")
        held = by_name(await view(two, token))["Dana"]["held"]
        assert [c["contact_id"] for c in held] == [offer["contact_id"]]
        await dana.send(type="wrap_up", contact_id=offer["contact_id"], resolved=True)
        await dana.next("wrapped_up")
        assert by_name(await view(two, token))["Dana"]["held"] == []
        await eli.ws.close()


async def test_the_contacts_cost_two_batches_and_the_gauges_none(supervised, db,  # noqa: F811
                                                                  monkeypatch):
    """The page reads the held contacts in two batches however many there are; the gauges,
    refreshed every few seconds on every instance, read none."""
    batches: list[tuple] = []
    real = CommandBatcher.execute

    async def counted(self, *batch):
        batches.append(batch)
        return await real(self, *batch)

    async with instance(supervised) as client:
        dana = await login(client, db, "Dana", ALL_SKILLS)
        held = []
        for number in ("+15555550434", "+15555550435", "+15555550436"):
            await text(client, number, "I want to talk to a human")
            offer = await dana.next("offer")
            await dana.send(type="accept", contact_id=offer["contact_id"])
            await dana.next("assigned")
            held.append(offer["contact_id"])
        assert isinstance(client.app[ROUTER].batcher, CommandBatcher)
        monkeypatch.setattr(CommandBatcher, "execute", counted)

        gauges = await supervisor.snapshot(client.app)
        assert by_name(gauges)["Dana"]["held"] == []
        assert not any(c[0] == "GET" or c[:2] == ("HGETALL", "sb:{routing}:assigned")
                       for batch in batches for c in batch)

        batches.clear()
        page = await supervisor.snapshot(client.app, with_contacts=True)
        assert [c["contact_id"] for c in by_name(page)["Dana"]["held"]] == held
        reads = [batch for batch in batches if any(c[0] == "GET" for c in batch)]
        assert [len(batch) for batch in reads] == [3, 3]  # the index keys, the conversations
