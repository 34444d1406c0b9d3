"""A route's "we're closed" behaviour: a closing message that ends the contact, or a queue to
wait in, chosen per channel by the tree; self-service still answers while closed."""

from __future__ import annotations

import json

import pytest

from service.__main__ import main
from service.appkeys import EVENTS, ROUTER
from service.conversations import prompts
from tests.conftest import service_with_rules
from tests.test_rules_validation import CATALOG, ROUTES, errors, write_rules
from tests.twilio_driver import Call, text

CLOSED = "We're closed. We open again on Monday at 9."
NIGHT_LINE = "We're closed, but the night line will answer you."
# `open` lies in the past, so the service is closed whenever the test runs.
TREE = """\
time_intervals:
  - name: open
    time_intervals:
      - years: ['1990:1991']
""" + ROUTES + f"""\
    - name: closed
      matchers: ['hours != open']
      closed: {{message: "{CLOSED}"}}
      routes:
        - name: by phone
          matchers: ['channel = voice']
          closed: {{queue: orders, message: "{NIGHT_LINE}"}}
        - name: vip
          matchers: ['customer.tier = vip']
          closed: null
"""
COMPLAINTS = CATALOG.replace("    examples: [I want to complain, this is unacceptable]",
                             "    examples: [I want to complain, this is unacceptable, "
                             "I am very unhappy with the service]")


async def test_closed_routes_answer_texters_and_queue_callers(settings, redis_client, db,
                                                              tmp_path):
    directory = write_rules(tmp_path, catalog=COMPLAINTS, routes=TREE)
    async with service_with_rules(settings, directory) as client:
        assert await text(client, "+15555550150", "I want to complain") == [CLOSED]
        assert await client.app[ROUTER].waiting("general") == []
        # self-service still answers while closed
        assert (await text(client, "+15555550151", "where is my order"))[0] == \
            "Look under Orders."
        call = await Call(client, "+15555550152").dial()
        await call.press("0")
        assert call.verbs() == ["Say", "Say", "Enqueue"]
        assert call.said()[0] == NIGHT_LINE and call.twiml.find("Enqueue").text == "orders"
        [waiting] = await client.app[ROUTER].waiting("orders")
        assert waiting["reason"] == "requested_agent" and waiting["channel"] == "voice"
        assert await client.app[EVENTS].flush()
    rows = await db.fetch("SELECT kind, route_path, data FROM contact_events e WHERE "
                          "contact_id = (SELECT id FROM contacts WHERE channel = 'sms' AND "
                          "contact_type = 'complaint') ORDER BY occurred_at, seq")
    kinds = [r["kind"] for r in rows]
    assert "escalated" not in kinds and kinds[-2:] == ["ended", "replied"]
    assert json.loads(rows[-1]["data"]) == {"messages": [CLOSED]}  # the route's message
    assert json.loads(rows[-2]["data"])["outcome"] == "closed"
    assert rows[-2]["route_path"] == "root > closed"


async def test_a_closed_voice_route_with_only_a_message_hangs_up(settings, redis_client,
                                                                  tmp_path):
    tree = TREE.replace(f'closed: {{queue: orders, message: "{NIGHT_LINE}"}}',
                        'closed: {message: "Sorry, the phone line is closed."}')
    async with service_with_rules(settings, write_rules(tmp_path, routes=tree)) as client:
        call = await Call(client, "+15555550153").dial()
        await call.press("0")
        assert call.verbs() == ["Say", "Hangup"]
        assert call.said() == ["Sorry, the phone line is closed."]
        assert await client.app[ROUTER].waiting("general") == []


async def test_a_closed_voice_route_offers_a_callback_for_when_agents_are_back(
        settings, redis_client, db, tmp_path):
    tree = TREE.replace(f'closed: {{queue: orders, message: "{NIGHT_LINE}"}}',
                        'closed: {callback: orders, message: "The phone line is closed."}'
                        ).replace(f'closed: {{message: "{CLOSED}"}}', 'closed: {callback: orders}')
    async with service_with_rules(settings, write_rules(tmp_path, routes=tree)) as client:
        call = await Call(client, "+15555550154").dial()
        await call.press("0")
        assert call.verbs() == ["Gather", "Redirect"]
        assert call.said() == ["The phone line is closed.", prompts.CALLBACK_OFFER_CLOSED]
        assert await client.app[ROUTER].waiting("orders") == []  # nothing until they choose
        await call.press("1")
        assert call.verbs() == ["Say", "Hangup"]
        assert call.said() == [prompts.CALLBACK_WHEN_OPEN]
        [waiting] = await client.app[ROUTER].waiting("orders")
        assert waiting["callback"]["number"] == "+15555550154"
        assert waiting["callback"]["state"] == "waiting"
        await call.hang_up("completed")  # the call ends; the callback waits for an agent
        assert len(await client.app[ROUTER].waiting("orders")) == 1

        silent = await Call(client, "+15555550156").dial()
        await silent.press("0")
        await silent.stay_silent()  # no key: the contact ends, closed, nothing queued
        assert silent.verbs() == ["Say", "Hangup"]
        assert silent.said() == [prompts.CLOSED_GOODBYE]
        gone = await Call(client, "+15555550157").dial()
        await gone.press("0")
        await gone.hang_up("completed")  # hung up on the offer
        assert len(await client.app[ROUTER].waiting("orders")) == 1

        # a texter is not called back: the same route queues them as usual
        assert await text(client, "+15555550155", "I want to talk to a human") != []
        texter = [w for w in await client.app[ROUTER].waiting("orders") if w["channel"] == "sms"]
        assert len(texter) == 1 and "callback" not in texter[0]
        assert await client.app[EVENTS].flush()
    rows = await db.fetch("SELECT c.address, e.kind, e.data FROM contact_events e JOIN contacts c "
                          "ON c.id = e.contact_id WHERE c.channel = 'voice' ORDER BY e.seq")
    by_caller: dict[str, list[str]] = {}
    outcomes = {}
    for row in rows:
        by_caller.setdefault(row["address"], []).append(row["kind"])
        if row["kind"] == "ended":
            outcomes[row["address"]] = json.loads(row["data"])["outcome"]
    called_back = by_caller["+15555550154"]
    assert called_back.index("callback_offered") < called_back.index("callback_requested")
    assert "ended" not in called_back
    assert outcomes == {"+15555550156": "closed", "+15555550157": "closed"}
    assert not any("callback_requested" in by_caller[c] or "escalated" in by_caller[c]
                   for c in ("+15555550156", "+15555550157"))


@pytest.mark.parametrize("args,closed", [
    (["channel=sms"], {"message": CLOSED}),
    (["channel=voice"], {"queue": "orders", "message": NIGHT_LINE}),
    (["channel=sms", "customer.tier=vip"], None),  # closed: null undoes the parent's
])
def test_rules_test_shows_what_a_closed_route_does(tmp_path, capsys, args, closed):
    assert main(["rules", "test", str(write_rules(tmp_path, routes=TREE)), *args]) == 0
    assert json.loads(capsys.readouterr().out).get("closed") == closed


CLOSED_ERRORS = [
    ("queue and callback", "closed: {queue: orders, callback: orders}",
     "routes.yaml:18: closed takes a 'queue' to wait in or a 'callback' queue, not both "
     "(route -> routes -> 1 -> closed -> callback)"),
    ("unknown callback queue", "closed: {callback: night}",
     "routes.yaml:18: unknown queue 'night' (route -> routes -> 1 -> closed -> callback)"),
    ("nothing to do", "closed: {}",
     "routes.yaml:18: closed needs a 'message', a 'queue' to wait in, a 'callback' queue, "
     "or a message with either (route -> routes -> 1 -> closed)"),
    ("unknown queue", "closed: {queue: night}",
     "routes.yaml:18: unknown queue 'night' (route -> routes -> 1 -> closed -> queue)"),
    ("empty message", "closed: {message: ''}",
     "routes.yaml:18: message must be non-empty text (route -> routes -> 1 -> closed -> "
     "message)"),
    ("unknown key", "closed: {mesage: Closed}",
     "routes.yaml:18: unknown key 'mesage' (route -> routes -> 1 -> closed -> mesage)"),
]
CLOSED_ERRORS[-1] = (*CLOSED_ERRORS[-1][:2], [  # the typo leaves it with nothing to do
    CLOSED_ERRORS[-1][2], "routes.yaml:18: closed needs a 'message', a 'queue' to wait in, a "
    "'callback' queue, or a message with either (route -> routes -> 1 -> closed)"])


@pytest.mark.parametrize("closed,expected", [c[1:] for c in CLOSED_ERRORS],
                         ids=[c[0] for c in CLOSED_ERRORS])
def test_closed_errors(tmp_path, closed, expected):
    routes = ROUTES + f"    - name: closed\n      matchers: ['channel = sms']\n      {closed}\n"
    assert errors(tmp_path, routes=routes) == (expected if isinstance(expected, list)
                                               else [expected])
