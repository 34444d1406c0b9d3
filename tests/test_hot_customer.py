"""One customer sending fast: concurrent webhooks of one conversation are applied one after
another, in the order they arrived, with no update lost, on one instance and across two."""

from __future__ import annotations

import asyncio
import time

from service.appkeys import EVENTS
from service.conversations import conversation as conversation_module
from tests.test_agents import instance
from tests.test_sms import conversation, events_of, kinds
from tests.twilio_driver import SERVICE_NUMBER, post_signed, sms_params, text

HOT = "+15555550177"
OTHER = "+15555550178"
STALE = "+15555550179"
WORDS = [f"my parcel number {n} has not arrived" for n in range(12)]


async def _send_all(clients, words: list[str], sender: str = HOT) -> None:
    """Every text posted at once, spread over `clients` in turn."""
    responses = await asyncio.gather(*(
        post_signed(clients[i % len(clients)], "/twilio/sms", sms_params(word, sender))
        for i, word in enumerate(words)))
    assert [r.status for r in responses] == [200] * len(words)


def _heard(conv: dict) -> list[str]:
    return [line["text"] for line in conv["transcript"] if line["from"] == "customer"]


async def test_concurrent_texts_of_one_customer_lose_no_update(client, db, redis_client):
    await _send_all([client], WORDS)
    conv = await conversation(redis_client, HOT)
    assert conv["turns"] == len(WORDS)
    assert _heard(conv) == WORDS  # aiohttp's client sends them in order; each is applied in turn
    assert kinds(await events_of(client, db, HOT)).count("received") == len(WORDS)


async def test_concurrent_texts_over_two_instances_lose_no_update(settings, db, redis_client):
    async with instance(settings) as one, instance(settings) as two:
        await _send_all([one, two], WORDS, OTHER)
        conv = await conversation(redis_client, OTHER)
        assert conv["turns"] == len(WORDS)
        assert sorted(_heard(conv)) == sorted(WORDS)
        for side in (one, two):
            assert await side.app[EVENTS].flush()
        assert kinds(await events_of(one, db, OTHER)).count("received") == len(WORDS)


async def test_a_lease_left_by_a_failed_turn_is_taken_over(client, redis_client, monkeypatch):
    """A turn whose Redis went away could not give its lease back: the next text waits for it
    a while, then is answered normally."""
    monkeypatch.setattr(conversation_module, "LEASE_WAIT_S", 0.5)
    stale = f"sb:{{phone:{STALE}}}:conv:sms:{SERVICE_NUMBER}:lease"
    await redis_client.set(stale, 1, px=60_000)
    began = time.monotonic()
    said = await text(client, STALE, "I need to track my order")
    assert said[0].startswith("Every order is listed under Orders")
    assert 0.5 <= time.monotonic() - began < 5
    assert await redis_client.exists(stale) == 0  # given back by the turn that took it over
