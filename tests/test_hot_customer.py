"""One customer sending fast: concurrent webhooks of one conversation are applied one after
another, in the order they arrived, with no update lost, on one instance and across two."""

from __future__ import annotations

import asyncio
import time

from service.appkeys import EVENTS
from service.conversations import context as context_module
from service.conversations import pacing, prompts
from service.rules.loader import load_rules
from tests.conftest import RULES_DIR
from tests.test_agents import app_settings, instance, login, twilio  # noqa: F401 (fixtures)
from tests.test_sms import conversation, events_of, kinds
from tests.twilio_driver import SERVICE_NUMBER, post_signed, sms_params, text

HOT = "+15555550177"
OTHER = "+15555550178"
STALE = "+15555550179"
WAITING = "+15555550183"
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
    monkeypatch.setattr(context_module, "LEASE_WAIT_S", 0.5)
    stale = f"sb:{{phone:{STALE}}}:conv:sms:{SERVICE_NUMBER}:lease"
    await redis_client.set(stale, 1, px=60_000)
    began = time.monotonic()
    said = await text(client, STALE, "I need to track my order")
    assert said[0].startswith("Every order is listed under Orders")
    assert 0.5 <= time.monotonic() - began < 5
    assert await redis_client.exists(stale) == 0  # given back by the turn that took it over


async def test_twilios_retry_of_a_delivery_whose_process_died_mid_turn_is_processed(
        client, redis_client, monkeypatch):
    """A process killed between the turn's two round trips leaves its lease and its pending
    claim on the MessageSid: Twilio's retry takes both over and is answered, not dropped."""
    monkeypatch.setattr(context_module, "LEASE_WAIT_S", 0.5)
    params = sms_params("I need to track my order", STALE)
    tag = f"sb:{{phone:{STALE}}}"
    await redis_client.set(f"{tag}:conv:sms:{SERVICE_NUMBER}:lease", 1,
                           px=context_module.TURN_LEASE_MS)
    await redis_client.set(f"{tag}:seen:{params['MessageSid']}", context_module.PENDING,
                           px=context_module.TURN_LEASE_MS)
    response = await post_signed(client, "/twilio/sms", params)
    assert "Every order is listed under Orders" in await response.text()


FAST = "+15555550180"
EXAMPLES = [t.examples[0] for t in load_rules(RULES_DIR, with_classifier=False).catalog.types.values()]
BOT = "+15555550181"


async def test_a_texter_faster_than_a_person_is_told_once_then_acknowledged_quietly(
        client, db, monkeypatch):
    monkeypatch.setattr(pacing, "BURST_WINDOW_S", 3.0)
    said = [await text(client, FAST, words) for words in EXAMPLES[:10]]
    assert all(said[n] for n in range(pacing.BURST))  # a person's pace: every text answered
    assert said[pacing.BURST] == [prompts.SLOW_DOWN]
    assert said[pacing.BURST + 1:] == [[]] * (10 - pacing.BURST - 1)
    await asyncio.sleep(3.1)
    assert await text(client, FAST, EXAMPLES[10])  # slowed down: answered
    events = await events_of(client, db, FAST)
    assert kinds(events).count("received") == 11  # every text heard and kept
    limited = [e["data"]["told"] for e in events if e["kind"] == "rate_limited"]
    assert limited == [True, False, False, False]


async def test_another_bot_echoing_ours_is_cut_off_and_muted(client, db, redis_client):
    said = await text(client, BOT, "check order status")
    assert said
    for _ in range(pacing.LOOP_HITS - 1):  # an auto-responder sends our words back
        said = await text(client, BOT, said[0])
        assert said
    assert await text(client, BOT, said[0]) == []
    events = await events_of(client, db, BOT)
    assert kinds(events).count("bot_loop_detected") == 1
    assert [e["data"]["outcome"] for e in events if e["kind"] == "ended"] == ["bot_loop"]
    assert await text(client, BOT, "Thank you for your message!") == []  # muted
    assert await text(client, BOT, "HELP") == [prompts.SMS_HELP]  # carrier keywords still work
    assert kinds(await events_of(client, db, BOT)).count("received_while_muted") == 1
    assert await redis_client.ttl(f"sb:{{phone:{BOT}}}:muted:sms") > pacing.MUTE_S - 60


async def test_a_person_repeating_a_short_question_is_still_answered(client, db):
    for _ in range(pacing.LOOP_HITS + 1):
        assert (await text(client, "+15555550182", "order status"))[0].startswith("Every order")
    assert "bot_loop_detected" not in kinds(await events_of(client, db, "+15555550182"))


async def test_an_accept_and_the_customers_texts_at_once_lose_neither(app_settings, db,
                                                                      redis_client):
    """The agent's accept changes the conversation under its lease, as turns do: the texts
    sent meanwhile are all kept and the contact stays with the agent."""
    async with instance(app_settings) as client:
        agent = await login(client, db)
        await text(client, WAITING, "I want to talk to a person")
        offer = await agent.next("offer")
        words = [f"are you there {n}?" for n in range(6)]
        await asyncio.gather(agent.send(type="accept", contact_id=offer["contact_id"]),
                             _send_all([client], words, WAITING))
        await agent.next("assigned")
        conv = await conversation(redis_client, WAITING)
        assert conv["status"] == "with_agent"
        assert [w for w in _heard(conv) if w in words] == words
        assert any(line["from"] == "agent" for line in conv["transcript"])  # the greeting
