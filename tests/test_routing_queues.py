"""Assignment semantics of the Redis router, against the real server."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import AsyncIterator

import pytest

from service.agents.queues import Dispatcher
from service.infra.redis_batch import CommandBatcher

QUEUES = ["general", "billing", "vip"]


def entry(queue: str, skills: list[str], channel: str = "chat", priority: int = 5,
          enqueued_at: float | None = None, type_skills: list[str] | None = None) -> dict:
    return {"contact_id": str(uuid.uuid4()), "customer_id": str(uuid.uuid4()),
            "channel": channel, "queue": queue, "priority": priority, "skills": skills,
            "type_skills": type_skills or [], "reason": "requested_agent",
            "enqueued_at": enqueued_at or time.time(), "context": {"transcript": []}}


async def agent(router: Dispatcher, name: str, skills: list[str], available: bool = True,
                capacity: dict | None = None) -> str:
    agent_id = f"{name}-{uuid.uuid4().hex[:6]}"
    await router.register_agent({"id": agent_id, "name": name, "skills": skills,
                                 "capacity": capacity or {"voice": 1, "chat": 3, "sms": 3}})
    if available:
        await router.set_presence(agent_id, "available")
    return agent_id


async def enqueue(router: Dispatcher, e: dict) -> dict:
    await router.enqueue(e["queue"], e["priority"], e)
    return e


@pytest.fixture
async def batcher(redis_url, redis_client) -> AsyncIterator[CommandBatcher]:
    batcher = CommandBatcher.from_url(redis_url)  # redis_client has emptied the database
    yield batcher
    await batcher.close()


@pytest.fixture
def router(batcher) -> Dispatcher:
    return Dispatcher(batcher, offer_timeout_s=30)


async def test_offers_go_to_agents_with_every_needed_skill(router):
    care = await agent(router, "care", ["care"])
    billing = await agent(router, "billing", ["billing", "care"])
    contact = await enqueue(router, entry("billing", ["billing"]))
    [offer] = await router.dispatch(QUEUES)
    assert (offer.contact_id, offer.agent_id) == (contact["contact_id"], billing)
    assert care != billing


async def test_priority_first_then_longest_wait(router):
    await agent(router, "a", ["care", "vip"], capacity={"chat": 1})
    now = time.time()
    older = await enqueue(router, entry("general", ["care"], enqueued_at=now - 60))
    newer = await enqueue(router, entry("general", ["care"], enqueued_at=now - 10))
    urgent = await enqueue(router, entry("vip", ["vip"], priority=1, enqueued_at=now))
    [offer] = await router.dispatch(QUEUES)
    assert offer.contact_id == urgent["contact_id"]
    await router.decline(urgent["contact_id"], offer.agent_id)
    [offer] = await router.dispatch(QUEUES)
    assert offer.contact_id == older["contact_id"]
    assert newer["contact_id"] != offer.contact_id


async def test_longest_idle_agent_gets_the_next_contact(router):
    first = await agent(router, "first", ["care"])
    await asyncio.sleep(0.01)
    second = await agent(router, "second", ["care"])
    one = await enqueue(router, entry("general", ["care"]))
    await asyncio.sleep(0.01)  # idle times are in milliseconds: the offer must not tie with it
    [offer] = await router.dispatch(QUEUES)
    assert offer.agent_id == first
    two = await enqueue(router, entry("general", ["care"]))
    [offer] = await router.dispatch(QUEUES)
    assert (offer.contact_id, offer.agent_id) == (two["contact_id"], second)
    assert one["contact_id"] != two["contact_id"]


async def test_capacity_per_channel_is_respected(router):
    only = await agent(router, "solo", ["care"], capacity={"voice": 1, "chat": 2, "sms": 0})
    calls = [await enqueue(router, entry("general", ["care"], channel="voice")) for _ in range(2)]
    chats = [await enqueue(router, entry("general", ["care"], channel="chat")) for _ in range(3)]
    await enqueue(router, entry("general", ["care"], channel="sms"))
    offers = await router.dispatch(QUEUES)
    offered = {o.contact_id for o in offers}
    assert all(o.agent_id == only for o in offers)
    assert len(offered & {c["contact_id"] for c in calls}) == 1
    assert len(offered & {c["contact_id"] for c in chats}) == 2
    assert len(offers) == 3  # nothing for SMS: capacity 0
    assert await router.dispatch(QUEUES) == []


async def test_away_agents_get_nothing(router):
    await agent(router, "away", ["care"], available=False)
    await enqueue(router, entry("general", ["care"]))
    assert await router.dispatch(QUEUES) == []


async def test_accept_takes_the_contact_out_of_its_queue_exactly_once(router):
    a = await agent(router, "a", ["care"])
    b = await agent(router, "b", ["care"])
    contact = await enqueue(router, entry("general", ["care"]))
    [offer] = await router.dispatch(QUEUES)
    other = b if offer.agent_id == a else a
    assert await router.accept(contact["contact_id"], other) is None  # not offered to them
    taken = await router.accept(contact["contact_id"], offer.agent_id)
    assert taken["contact_id"] == contact["contact_id"]
    assert await router.accept(contact["contact_id"], offer.agent_id) is None
    assert await router.waiting("general") == []
    assert await router.assigned_agent(contact["contact_id"]) == offer.agent_id


async def test_declined_offer_goes_to_the_next_agent(router):
    a = await agent(router, "a", ["care"])
    b = await agent(router, "b", ["care"])
    contact = await enqueue(router, entry("general", ["care"]))
    [first] = await router.dispatch(QUEUES)
    assert await router.decline(contact["contact_id"], first.agent_id)
    [second] = await router.dispatch(QUEUES)
    assert second.agent_id == ({a, b} - {first.agent_id}).pop()


async def test_an_offer_not_accepted_in_time_goes_to_the_next_agent(batcher):
    router = Dispatcher(batcher, offer_timeout_s=0.2)
    await agent(router, "a", ["care"])
    await agent(router, "b", ["care"])
    contact = await enqueue(router, entry("general", ["care"]))
    [first] = await router.dispatch(QUEUES)
    assert await router.expired_offers() == []
    await asyncio.sleep(0.3)
    [expired] = await router.expired_offers()
    assert (expired.contact_id, expired.agent_id) == (contact["contact_id"], first.agent_id)
    [second] = await router.dispatch(QUEUES)
    assert second.agent_id != first.agent_id
    state = await router.agent_state(first.agent_id)
    assert state["load_chat"] == "0"  # the expired offer freed their slot


async def test_queue_timeout_moves_contacts_to_the_overflow_queue(router):
    old = await enqueue(router, entry("vip", ["care", "vip"], enqueued_at=time.time() - 300,
                                      type_skills=["orders"]))
    fresh = await enqueue(router, entry("vip", ["care", "vip"]))
    moved = await router.overflow("vip", "general", 120, ["care"])
    assert moved == [old["contact_id"]]
    [waiting] = await router.waiting("general")
    assert waiting["overflowed_from"] == "vip" and waiting["skills"] == ["care", "orders"]
    assert [e["contact_id"] for e in await router.waiting("vip")] == [fresh["contact_id"]]
    care_and_orders = await agent(router, "generalist", ["care", "orders"])
    [offer] = await router.dispatch(QUEUES)
    assert (offer.contact_id, offer.agent_id) == (old["contact_id"], care_and_orders)


async def test_two_instances_racing_offer_and_assign_a_contact_once(redis_url, redis_client):
    batchers = [CommandBatcher.from_url(redis_url) for _ in range(4)]  # one per instance
    routers = [Dispatcher(b, offer_timeout_s=30) for b in batchers]
    agents = [await agent(routers[0], f"a{i}", ["care"], capacity={"chat": 1}) for i in range(3)]
    contact = await enqueue(routers[0], entry("general", ["care"]))
    rounds = await asyncio.gather(*(r.dispatch(QUEUES) for r in routers))
    offers = [o for made in rounds for o in made]
    assert len(offers) == 1
    accepts = await asyncio.gather(*(r.accept(contact["contact_id"], a)
                                     for r in routers for a in agents))
    assert sum(a is not None for a in accepts) == 1
    for b in batchers:
        await b.close()


async def test_customer_leaving_withdraws_the_offer(router):
    a = await agent(router, "a", ["care"])
    contact = await enqueue(router, entry("general", ["care"]))
    await router.dispatch(QUEUES)
    assert await router.remove(contact["contact_id"]) == a
    assert await router.waiting("general") == []
    assert (await router.agent_state(a))["load_chat"] == "0"


async def test_scripts_still_run_after_the_server_forgot_them(router, redis_client):
    a = await agent(router, "a", ["care"])
    await router.dispatch(QUEUES)  # the script is cached now
    await redis_client.script_flush()  # what a restarted server also looks like
    contact = await enqueue(router, entry("general", ["care"]))
    [offer] = await router.dispatch(QUEUES)
    assert (offer.contact_id, offer.agent_id) == (contact["contact_id"], a)
    assert await redis_client.script_exists(router._dispatch.sha) == [True]


async def test_messages_arriving_together_all_reach_the_waiting_entry(router):
    contact = await enqueue(router, entry("general", ["care"]))
    messages = [{"role": "customer", "text": f"hello {i}"} for i in range(20)]
    await asyncio.gather(*(router.append_message(contact["contact_id"], m) for m in messages))
    [waiting] = await router.waiting("general")
    transcript = waiting["context"]["transcript"]
    assert sorted(m["text"] for m in transcript) == sorted(m["text"] for m in messages)


async def test_a_message_after_the_accept_does_not_bring_the_entry_back(router):
    a = await agent(router, "a", ["care"])
    contact = await enqueue(router, entry("general", ["care"]))
    await router.dispatch(QUEUES)
    await router.accept(contact["contact_id"], a)
    await router.append_message(contact["contact_id"], {"role": "customer", "text": "late"})
    assert await router.entry(contact["contact_id"]) is None


async def test_a_message_during_overflow_keeps_the_entry_in_its_new_queue(router):
    contact = await enqueue(router, entry("vip", ["vip"], enqueued_at=time.time() - 300))
    message = {"role": "customer", "text": "still there?"}
    _, moved = await asyncio.gather(  # the message reads the entry before it moves
        router.append_message(contact["contact_id"], message),
        router.overflow("vip", "general", 120, ["care"]))
    assert moved == [contact["contact_id"]]
    [waiting] = await router.waiting("general")
    assert waiting["queue"] == "general" and waiting["context"]["transcript"] == [message]
    assert waiting["type_skills"] == []  # empty lists stay lists through the move


async def test_an_entry_keeps_its_words_and_times_exactly_through_overflow_and_edits(router):
    """Entries are stored as UTF-8 JSON: the Lua overflow appends to them and Python rewrites
    them, and the customer's words (accents, emoji) and the float times come back unchanged."""
    words = {"role": "customer", "text": "Où est ma commande ? 📦 «urgent»", "at": 1765101234.567891}
    old = entry("vip", ["vip"], enqueued_at=time.time() - 300)
    old["context"]["transcript"].append(words)
    await enqueue(router, old)
    assert await router.overflow("vip", "general", 120, ["care"]) == [old["contact_id"]]
    later = {"role": "customer", "text": "¿hola? 你好", "at": 1765101299.000001}
    await router.append_message(old["contact_id"], later)
    [waiting] = await router.waiting("general")
    assert waiting["context"]["transcript"] == [words, later]
    assert waiting["enqueued_at"] == old["enqueued_at"] and waiting["queue"] == "general"
    assert waiting["skills"] == ["care"] and waiting["overflowed_from"] == "vip"
