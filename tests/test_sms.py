"""SMS end to end through the public webhook, against the real PostgreSQL and Redis."""

from __future__ import annotations

import json

import pytest

from service.appkeys import EVENTS, REDIS_BATCH, ROUTER
from service.conversations.customers import upsert_customer
from tests.twilio_driver import messages, post_signed, sign, sms_params, text

CUSTOMER = "+15555550123"


async def events_of(client, db, customer_phone: str = CUSTOMER) -> list[dict]:
    assert await client.app[EVENTS].flush()
    rows = await db.fetch(
        """SELECT e.kind, e.reason, e.contact_type, e.route_path, e.contact_id, e.data
           FROM contact_events e JOIN customer_identities i ON i.customer_id = e.customer_id
           WHERE i.value = $1 ORDER BY e.occurred_at, e.seq""", customer_phone)
    return [dict(r, data=json.loads(r["data"])) for r in rows]


def kinds(events: list[dict]) -> list[str]:
    return [e["kind"] for e in events]


async def conversation(redis_client, phone: str = CUSTOMER) -> dict | None:
    raw = await redis_client.get(f"sb:{{phone:{phone}}}:conv:sms:+15005550006")
    return json.loads(raw) if raw else None


async def test_self_service_answer_accepted_resolves_the_contact(client, db, redis_client):
    first = await text(client, CUSTOMER, "I need to track my order")
    assert first[0].startswith("Every order is listed under Orders")
    assert first[1] == "Did that help? Reply YES or NO."
    state = await conversation(redis_client)
    assert state["status"] == "confirming" and state["contact_type"] == "track_order"

    assert await text(client, CUSTOMER, "yes") == [
        "Great, glad that helped! Text us any time if you need anything else."]
    assert await conversation(redis_client) is None  # closed: the next text is a new contact

    events = await events_of(client, db)
    assert kinds(events) == ["customer_created", "contact_started", "received", "classified",
                             "routed", "self_service_started", "replied", "received",
                             "self_service_resolved", "ended", "replied"]
    replied = [e["data"] for e in events if e["kind"] == "replied"]
    assert replied[0]["messages"] == first and [c["value"] for c in replied[0]["choices"]] \
        == ["yes", "no"]  # the words sent, the last turn's reply the last event of its turn
    assert replied[1] == {"messages": ["Great, glad that helped! Text us any time if you need "
                                       "anything else."]}
    routed = events[4]
    assert routed["route_path"] == "root > orders" and routed["contact_type"] == "track_order"
    assert events[-2]["data"]["outcome"] == "self_service_resolved"
    contact = await db.fetchrow("SELECT * FROM contacts")
    assert (contact["outcome"], contact["contact_type"], contact["escalation_reason"]) == \
        ("self_service_resolved", "track_order", None)
    assert (contact["channel"], contact["address"], contact["route_path"]) == \
        ("sms", events[1]["data"]["address"], "root > orders")
    assert contact["confidence"] == pytest.approx(events[3]["data"]["confidence"])
    summaries = await redis_client.hgetall(f"sb:{{cust:{contact['customer_id']}}}:contacts")
    assert json.loads(summaries[str(contact["id"]).encode()])["outcome"] == "self_service_resolved"
    assert await client.app[ROUTER].waiting("orders") == []


@pytest.fixture
def round_trips(client, monkeypatch) -> list[tuple]:
    """Every batch the turns send to Redis about the customer, one per round trip (the tests
    using it have one customer: its address or its `{cust:<id>}` keys)."""
    batcher, sent = client.app[REDIS_BATCH], []
    execute = batcher.execute

    async def counted(*commands, **options):
        if any(CUSTOMER in str(arg) or "{cust:" in str(arg) for c in commands for arg in c):
            sent.append(commands)
        return await execute(*commands, **options)

    monkeypatch.setattr(batcher, "execute", counted)
    return sent


async def test_every_turn_costs_two_redis_round_trips(client, redis_client, round_trips):
    await text(client, CUSTOMER, "I need to track my order")  # new customer
    assert len(round_trips) == 2
    await text(client, CUSTOMER, "yes")
    assert len(round_trips) == 4
    first = round_trips[-1]
    round_trips.clear()

    # A returning customer's new contact: the earlier contacts come with round trip 1.
    assert "Did that help?" in (await text(client, CUSTOMER, "I want to change my address"))[-1]
    assert len(round_trips) == 2
    earlier = (await conversation(redis_client))["earlier"]
    assert [(c["contact_type"], c["outcome"]) for c in earlier] == \
        [("track_order", "self_service_resolved")]
    assert any(c[0] == "HSET" and c[1].endswith(":contacts") for c in first)


async def test_a_customer_linked_from_the_directory_brings_their_history(client, db,
                                                                        redis_client):
    """Ops link a second number: its first contact reads the customer's whole history once
    and copies it to the new number, so its next contacts need no extra round trip."""
    other = "+15555550999"
    await upsert_customer(db, redis_client, identities=[("phone", CUSTOMER)], display_name=None,
                          attributes={})
    await text(client, CUSTOMER, "I need to track my order")
    await text(client, CUSTOMER, "yes")
    await upsert_customer(db, redis_client, identities=[("phone", CUSTOMER), ("phone", other)],
                          display_name=None, attributes={})
    assert await redis_client.get(f"sb:{{phone:{CUSTOMER}}}:ident") is None  # every link dropped
    await text(client, other, "I want to change my address")
    [earlier] = (await conversation(redis_client, other))["earlier"]
    assert earlier["contact_type"] == "track_order"
    copied = await redis_client.hgetall(f"sb:{{phone:{other}}}:contacts")
    assert {json.loads(v)["contact_type"] for v in copied.values()} == \
        {"track_order", "change_shipping_address"}


async def test_an_address_moved_to_another_customer_takes_none_of_its_old_history(
        client, db, redis_client):
    """Ops move a number from Ana to Ben: Ben's texts from it must not see Ana's contacts (nor
    be taken for her repeat contact), and Ana's open contact stops copying to the number."""
    import service.conversations.customers

    ana_home, ben = "+15555550777", "+15555550888"
    ana = await upsert_customer(db, redis_client, identities=[("phone", CUSTOMER),
                                ("phone", ana_home)], display_name="Ana", attributes={})
    ben_id = await upsert_customer(db, redis_client, identities=[("phone", ben)],
                                   display_name="Ben", attributes={})
    await text(client, CUSTOMER, "I need to track my order")
    await text(client, CUSTOMER, "yes")
    await text(client, ana_home, "I forgot my password")  # left open: Ana's, on her home phone
    await text(client, ben, "I want to change my address")
    await text(client, ben, "yes")

    with pytest.raises(service.conversations.customers.CustomerError, match="different customers"):
        await upsert_customer(db, redis_client, identities=[("phone", ben), ("phone", CUSTOMER)],
                              display_name=None, attributes={})
    assert await db.fetchval("SELECT customer_id::text FROM customer_identities "
                             "WHERE value = $1", CUSTOMER) == ana  # the refusal changed nothing

    await upsert_customer(db, redis_client, identities=[("phone", CUSTOMER)], display_name=None,
                          attributes={}, customer_id=ben_id)
    for phone in (CUSTOMER, ana_home, ben):  # every link of both customers is stale now
        assert await redis_client.get(f"sb:{{phone:{phone}}}:ident") is None
    assert await redis_client.exists(f"sb:{{phone:{CUSTOMER}}}:contacts") == 0

    await text(client, ana_home, "no")  # Ana's open contact ends: escalated
    copy = await redis_client.hgetall(f"sb:{{phone:{CUSTOMER}}}:contacts")
    assert {json.loads(v)["customer_id"] for v in copy.values()} <= {ben_id}

    reply = await text(client, CUSTOMER, "I need to track my order")
    assert reply[-1] == "Did that help? Reply YES or NO."  # not Ana's repeat contact
    state = await conversation(redis_client)
    assert state["customer_id"] == ben_id
    assert [c["contact_type"] for c in state["earlier"]] == ["change_shipping_address"]


async def test_summaries_of_another_customer_in_an_address_copy_are_ignored(client,
                                                                           redis_client):
    """A write racing an ops move can leave the old owner's summary behind: reads skip it."""
    await text(client, CUSTOMER, "I need to track my order")
    await text(client, CUSTOMER, "yes")
    mine = await redis_client.hgetall(f"sb:{{phone:{CUSTOMER}}}:contacts")
    [stranger] = [json.loads(v) for v in mine.values()]
    stranger.update(contact_id="00000000-0000-0000-0000-00000000beef", started_at=9e9,
                    customer_id="00000000-0000-0000-0000-00000000dead")
    await redis_client.hset(f"sb:{{phone:{CUSTOMER}}}:contacts", stranger["contact_id"],
                            json.dumps(stranger))
    await text(client, CUSTOMER, "I want to change my address")
    earlier = (await conversation(redis_client))["earlier"]
    assert [c["contact_id"] for c in earlier] == [c.decode() for c in mine]


async def test_only_the_newest_contacts_keep_a_summary(client, redis_client, monkeypatch):
    """Every turn reads its address's summaries: a frequent customer's must not grow forever."""
    import service.conversations.conversation

    monkeypatch.setattr(service.conversations.conversation, "KEPT_CONTACTS", 2)
    contacts = []
    for words in ("I need to track my order", "I forgot my password",
                  "I want to change my address"):
        assert (await text(client, CUSTOMER, words))[-1] == "Did that help? Reply YES or NO."
        contacts.append((await conversation(redis_client))["contact_id"])
        await text(client, CUSTOMER, "yes")
    await text(client, CUSTOMER, "I want to cancel my order")
    state = await conversation(redis_client)
    assert [c["contact_id"] for c in state["earlier"]] == contacts[:0:-1]
    kept = {contacts[1], contacts[2], state["contact_id"]}
    address = await redis_client.hgetall(f"sb:{{phone:{CUSTOMER}}}:contacts")
    customer = await redis_client.hgetall(f"sb:{{cust:{state['customer_id']}}}:contacts")
    assert {k.decode() for k in address} == kept == {k.decode() for k in customer}


async def test_self_service_answer_rejected_escalates_with_context(client, db, redis_client):
    await text(client, CUSTOMER, "I forgot my password and can't log in")
    reply = await text(client, CUSTOMER, "NO")
    assert reply == ["I'm passing you to our Accounts team. You're number 1 in line (about 5 "
                     "min). They'll see everything you've told me, so you won't need to repeat "
                     "yourself."]
    [entry] = await client.app[ROUTER].waiting("accounts")
    assert entry["reason"] == "self_service_failed"
    assert entry["skills"] == ["accounts"]
    context = entry["context"]
    assert context["contact_type"] == "recover_password"
    assert [m["from"] for m in context["transcript"]] == ["customer", "bot", "bot", "customer"]
    assert context["self_service_steps"][0]["outcome"] == "failed"
    assert (await conversation(redis_client))["status"] == "queued"

    events = await events_of(client, db)
    assert kinds(events)[-4:] == ["self_service_failed", "escalated", "queued", "replied"]
    assert events[-1]["data"] == {"messages": reply}
    escalated = events[-3]
    assert escalated["reason"] == "self_service_failed"
    assert escalated["data"]["queue"] == "accounts"


async def test_asking_for_a_person_escalates_at_once(client, db, redis_client):
    reply = await text(client, CUSTOMER, "Can I talk to a real person please")
    assert "Customer care team" in reply[0]
    [entry] = await client.app[ROUTER].waiting("general")
    assert entry["reason"] == "requested_agent"
    assert "self_service_started" not in kinds(await events_of(client, db))


async def test_agent_request_in_the_middle_of_self_service(client, db, redis_client):
    await text(client, CUSTOMER, "I want to change my delivery address")
    await text(client, CUSTOMER, "agent")
    [entry] = await client.app[ROUTER].waiting("orders")
    assert entry["reason"] == "requested_agent"
    assert entry["context"]["contact_type"] == "change_shipping_address"


async def test_two_misses_escalate_with_low_confidence(client, db, redis_client):
    first = await text(client, CUSTOMER, "blorp")
    assert first[0].startswith("Sorry, I'm not sure I understood. Is it about: 1) ")
    assert (await conversation(redis_client))["status"] == "clarifying"
    second = await text(client, CUSTOMER, "zzz qqq")
    assert "Customer care team" in second[0]
    [entry] = await client.app[ROUTER].waiting("general")
    assert entry["reason"] == "low_confidence"
    events = await events_of(client, db)
    assert kinds(events).count("classification_missed") == 2
    assert events[-3]["reason"] == "low_confidence"  # escalated, queued, then what was said


async def test_choosing_from_the_clarifying_menu(client, db, redis_client):
    await text(client, CUSTOMER, "blorp")
    menu = (await conversation(redis_client))["menu"]
    reply = await text(client, CUSTOMER, "2")
    chosen = [e for e in await events_of(client, db) if e["kind"] == "classified"]
    assert chosen[0]["contact_type"] == menu[1]
    assert chosen[0]["data"] == {"confidence": 1.0, "via": "menu"}
    assert reply[-1] in ("Did that help? Reply YES or NO.",) or "team" in reply[-1]


async def test_vip_skips_self_service(client, db, redis_client):
    await upsert_customer(db, redis_client, identities=[("phone", CUSTOMER)],
                          display_name="Ana Silva", attributes={"tier": "vip"})
    reply = await text(client, CUSTOMER, "I need to track my order")
    assert "VIP desk team" in reply[0] and len(reply) == 1
    [entry] = await client.app[ROUTER].waiting("vip")
    assert (entry["reason"], entry["priority"]) == ("vip_customer", 1)
    assert entry["context"]["customer"]["attributes"] == {"tier": "vip"}
    events = await events_of(client, db)
    assert "customer_created" not in kinds(events)  # known to ops already
    assert [e["route_path"] for e in events if e["kind"] == "routed"] == ["root > vip"]


async def test_repeat_contact_within_the_window_goes_to_an_agent(client, db, redis_client):
    await text(client, CUSTOMER, "I need to track my order")
    await text(client, CUSTOMER, "yes")
    reply = await text(client, CUSTOMER, "I need to track my order")
    assert "Orders and delivery team" in reply[0]
    [entry] = await client.app[ROUTER].waiting("orders")
    assert entry["reason"] == "repeat_contact"
    assert entry["context"]["earlier_contacts"][0]["outcome"] == "self_service_resolved"


async def test_retried_webhook_is_answered_the_same_and_processed_once(client, db, redis_client):
    params = sms_params("I need to track my order", CUSTOMER, sid="SM" + "7" * 32)
    first = await post_signed(client, "/twilio/sms", params)
    again = await post_signed(client, "/twilio/sms", params)
    assert first.status == again.status == 200
    assert await first.text() == await again.text()
    assert kinds(await events_of(client, db)).count("received") == 1


@pytest.mark.parametrize("signature", ["", "bm90IHRoZSByaWdodCBvbmU=", "wrong"])
async def test_bad_signature_is_refused_and_nothing_is_stored(client, db, redis_client,
                                                              signature):
    response = await post_signed(client, "/twilio/sms", sms_params("hello", CUSTOMER),
                                 signature=signature)
    assert response.status == 403
    assert await redis_client.dbsize() == 0
    await client.app[EVENTS].flush()
    assert await db.fetchval("SELECT count(*) FROM contact_events") == 0


async def test_signature_over_another_url_is_refused(client, redis_client):
    params = sms_params("hello", CUSTOMER)
    response = await post_signed(client, "/twilio/sms", params,
                                 signature=sign("/twilio/sms?x=1", params))
    assert response.status == 403


async def test_missing_fields_are_a_400_and_nothing_is_stored(client, db, redis_client):
    params = sms_params("hello", CUSTOMER)
    del params["From"]
    response = await post_signed(client, "/twilio/sms", params)
    assert response.status == 400
    assert "From" in await response.text()
    assert await redis_client.dbsize() == 0


async def test_oversized_bodies_are_refused(client, db, redis_client):
    too_long = await post_signed(client, "/twilio/sms", sms_params("x" * 1601, CUSTOMER))
    assert too_long.status == 413
    huge = await post_signed(client, "/twilio/sms", sms_params("x" * 70_000, CUSTOMER))
    assert huge.status == 413
    assert await redis_client.dbsize() == 0
    await client.app[EVENTS].flush()
    assert await db.fetchval("SELECT count(*) FROM contact_events") == 0


async def test_not_a_form_is_refused(client, redis_client):
    response = await client.post("/twilio/sms", data=b"{}",
                                 headers={"Content-Type": "application/json",
                                          "X-Twilio-Signature": "x"})
    assert response.status == 415


async def test_stop_silences_the_bot_until_start(client, db, redis_client):
    await text(client, CUSTOMER, "I need to track my order")
    assert await text(client, CUSTOMER, "STOP") == []
    assert await text(client, CUSTOMER, "I need to track my order") == []
    assert await text(client, CUSTOMER, "start") == ["You're subscribed again. Text us any time."]
    assert (await text(client, CUSTOMER, "I forgot my password and can't log in"))[1] == \
        "Did that help? Reply YES or NO."
    events = await events_of(client, db)
    assert {"opted_out", "received_after_opt_out", "opted_in"} <= set(kinds(events))
    ended = [e for e in events if e["kind"] == "ended"]
    assert ended[0]["data"]["outcome"] == "opted_out"


async def test_help_keyword(client):
    reply = await text(client, CUSTOMER, "HELP")
    assert "Reply STOP to opt out" in reply[0]


async def test_idle_conversation_ends_and_the_next_text_is_a_new_contact(
        settings, redis_client, db):
    from aiohttp.test_utils import TestClient, TestServer

    from service.app import create_app
    from tests.conftest import _clean_tables, with_settings

    await _clean_tables(settings.database_url)
    app = create_app(with_settings(settings, sms_idle_timeout_s=1))
    async with TestClient(TestServer(app)) as quick:
        await text(quick, CUSTOMER, "I need to track my order")
        first = (await conversation(redis_client))["contact_id"]
        await redis_client.zadd("sb:idle", {"unused": 0})  # sweeper tolerates strays
        import asyncio
        await asyncio.sleep(1.2)
        await text(quick, CUSTOMER, "I want to change my delivery address")
        second = (await conversation(redis_client))["contact_id"]
        assert first != second
        events = await events_of(quick, db)
    ended = [e for e in events if e["kind"] == "ended"]
    assert [(str(e["contact_id"]), e["data"]["outcome"]) for e in ended] == \
        [(first, "idle_timeout")]


async def test_redis_outage_still_answers_twilio_and_keeps_the_message(settings, db):
    from aiohttp.test_utils import TestClient, TestServer

    from service.app import create_app
    from tests.conftest import _clean_tables, with_settings

    await _clean_tables(settings.database_url)
    app = create_app(with_settings(settings, redis_url="redis://127.0.0.1:1/0"))
    async with TestClient(TestServer(app)) as broken:
        response = await post_signed(broken, "/twilio/sms", sms_params("where is it", CUSTOMER))
        assert response.status == 200
        assert messages(await response.text())[0].startswith("Sorry, something went wrong")
        assert await broken.app[EVENTS].flush()
    row = await db.fetchrow("SELECT kind, data FROM contact_events")
    assert row["kind"] == "turn_failed"
    assert json.loads(row["data"])["text"] == "where is it"


@pytest.mark.parametrize("unrelated", ["what's the weather like tomorrow", "hi", "12345"])
async def test_an_unrelated_message_gets_a_clarifying_question_not_an_answer(
        client, db, redis_client, unrelated):
    reply = await text(client, CUSTOMER, unrelated)
    assert reply == ["Sorry, I'm not sure I understood. Is it about: 1) Track an order "
                     "2) Cancel an order 3) Get a refund? Reply with a number, or tell me in "
                     "other words. Reply AGENT to talk to a person."]
    events = await events_of(client, db)
    assert "self_service_started" not in kinds(events)
    [missed] = [e for e in events if e["kind"] == "classification_missed"]
    assert missed["reason"] == "out_of_scope"
    assert (await text(client, CUSTOMER, "1"))[1] == "Did that help? Reply YES or NO."


def metric_value(exposition: str, sample: str) -> float:
    """The value of one sample line ('name{labels}') of the Prometheus text, 0 when absent."""
    for line in exposition.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_each_turn_counts_in_the_turn_metrics(client):
    """The turn counter (by result) and the answer-time histogram move by one per text."""
    turns = 'switchboard_turns_total{channel="sms",result="self_service"}'
    answered = 'switchboard_turn_seconds_count{channel="sms"}'
    before = await (await client.get("/metrics")).text()
    await text(client, CUSTOMER, "I need to track my order")
    await text(client, CUSTOMER, "where is my package")  # the same contact, still confirming
    after = await (await client.get("/metrics")).text()
    assert metric_value(after, turns) - metric_value(before, turns) == 2
    assert metric_value(after, answered) - metric_value(before, answered) == 2
