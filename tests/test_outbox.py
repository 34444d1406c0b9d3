"""The durable outbox end to end: real PostgreSQL and Redis, the agent socket, and the Twilio
stand-in playing Twilio's failure modes (503, 429 with Retry-After, refused connections, a lost
answer, permanent error codes) and posting signed status callbacks."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import asyncpg
import pytest

from service.appkeys import EVENTS, OUTBOX, ROUTER
from service.infra.tokens import create_token
from tests.conftest import AUTH_TOKEN, with_settings
from tests.test_agents import CUSTOMER, instance, login, twilio  # noqa: F401
from tests.twilio_driver import Call, text

GREETING = "You're now talking with Dana."


@pytest.fixture
async def app_settings(settings, twilio, redis_client):  # noqa: F811
    from tests.conftest import _clean_tables
    await _clean_tables(settings.database_url)
    return with_settings(settings, twilio_api_base_url=twilio[1],
                         twilio_account_sid="AC" + "1" * 32, offer_timeout_s=30,
                         twilio_timeout_s=1.0, outbox_retry_base_s=0.2,
                         outbox_retry_max_s=1.0)


class Console:
    """An agent's socket that keeps every frame, so tests can look for any of them."""

    def __init__(self, agent):
        self.ws = agent.ws
        self.frames: list[dict] = []
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            self.frames.append(json.loads(msg.data))

    async def send(self, **frame) -> None:
        await self.ws.send_json(frame)

    async def wait(self, predicate, timeout_s: float = 8.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for frame in self.frames:
                if predicate(frame):
                    return frame
            await asyncio.sleep(0.02)
        raise AssertionError(f"no such frame; got {self.frames}")

    def statuses(self, message_id: str) -> list[str]:
        return [f["state"] for f in self.frames
                if f["type"] == "message_status" and f["message_id"] == message_id]

    def errors(self) -> list[dict]:
        return [f for f in self.frames if f["type"] == "error"]


def status_of(text: str, state: str):
    return lambda f: (f["type"] == "message_status" and f["text"] == text
                      and f["state"] == state)


async def wait_for(predicate, timeout_s: float = 8.0) -> float:
    """Wait until predicate() holds; the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def escalate(client, db, number: str = CUSTOMER) -> tuple[Console, str]:
    """An SMS contact a NO sends to an agent, who is offered it; the console and contact id."""
    agent = await login(client, db)
    await text(client, number, "I forgot my password and can't log in")
    await text(client, number, "no")
    offer = await agent.next("offer")
    return Console(agent), offer["contact_id"]


async def accepted(client, db, standin) -> tuple[Console, str]:
    console, contact_id = await escalate(client, db)
    await console.send(type="accept", contact_id=contact_id)
    await console.wait(lambda f: f["type"] == "assigned")
    await wait_for(lambda: GREETING in standin.bodies())
    return console, contact_id


async def outbox_rows(db) -> list[dict]:
    return [dict(r) for r in await db.fetch(
        "SELECT id::text, action, state, provider_id, attempts, failure, failure_code, "
        "payload FROM outbox ORDER BY seq")]


async def test_accept_while_twilio_answers_503_assigns_and_greets_once_after_recovery(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact_id = await escalate(client, db)
        standin.fail_with = 503
        await console.send(type="accept", contact_id=contact_id)
        assigned = await console.wait(lambda f: f["type"] == "assigned")
        assert assigned["contact_id"] == contact_id and not console.errors()
        assert await client.app[ROUTER].assigned_agent(contact_id) is not None
        retrying = await console.wait(lambda f: f["type"] == "message_status"
                                      and f["state"] == "queued" and f["reason"])
        assert "503" in retrying["reason"] and retrying["text"] == GREETING
        await wait_for(lambda: len(standin.attempts) >= 2)  # retried while Twilio is down
        assert standin.messages == []
        standin.fail_with = None
        took = await wait_for(lambda: GREETING in standin.bodies())
        assert took < 2.0  # backoff capped at 1 s in these settings
        await console.wait(status_of(GREETING, "sent"))
        await asyncio.sleep(0.5)
        assert standin.bodies() == [GREETING]  # once
        [row] = await outbox_rows(db)
        assert (row["action"], row["state"]) == ("connect", "sent")
        assert row["provider_id"] in standin.sids and row["attempts"] >= 3


async def test_two_replies_while_twilio_refuses_connections_arrive_once_in_order(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact_id = await accepted(client, db, standin)
        await standin.stop()
        for words in ("First, let me check.", "Second: found it."):
            await console.send(type="message", contact_id=contact_id, text=words)
        await console.wait(status_of("Second: found it.", "queued"))
        await asyncio.sleep(1.0)  # several retries against a closed port
        assert not console.errors()
        first = next(r for r in await outbox_rows(db)
                     if r["payload"] == '{"text": "First, let me check."}')
        assert first["state"] == "queued" and first["attempts"] >= 2
        assert "could not be reached" in first["failure"]
        await standin.start()
        await wait_for(lambda: len(standin.messages) == 3)
        await asyncio.sleep(0.5)
        assert standin.bodies() == [GREETING, "First, let me check.", "Second: found it."]
        await console.wait(status_of("Second: found it.", "sent"))
        assert [r["state"] for r in await outbox_rows(db)] == ["sent"] * 3


async def test_429_with_retry_after_is_not_retried_before_it(app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact_id = await accepted(client, db, standin)
        standin.fail_with, standin.retry_after = 429, "2"
        before = len(standin.attempts)
        await console.send(type="message", contact_id=contact_id, text="One moment please.")
        await wait_for(lambda: len(standin.attempts) == before + 1)
        standin.fail_with = None
        await wait_for(lambda: "One moment please." in standin.bodies(), timeout_s=5)
        waited = standin.attempts[-1] - standin.attempts[before]
        assert len(standin.attempts) == before + 2  # one refusal, then the send
        assert 2.0 <= waited < 3.0, waited  # Retry-After, not the 0.2 s backoff


async def test_21610_stops_at_once_and_the_agent_is_told_why(app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact_id = await escalate(client, db)
        standin.refuse_with_code = 21610  # the customer replied STOP to our number
        await console.send(type="accept", contact_id=contact_id)
        await console.wait(lambda f: f["type"] == "assigned")  # the accept still stands
        greeting = await console.wait(status_of(GREETING, "failed"))
        assert "21610" in greeting["reason"] and greeting["code"] == "21610"
        await console.send(type="message", contact_id=contact_id, text="Hello?")
        error = await console.wait(lambda f: f["type"] == "error")
        assert error["code"] == "delivery_failed" and "21610" in error["message"]
        assert error["contact_id"] == contact_id
        failed = await console.wait(status_of("Hello?", "failed"))
        assert "21610" in failed["reason"]
        await asyncio.sleep(0.6)
        assert len(standin.attempts) == 2  # one attempt each, never retried
        rows = await outbox_rows(db)
        assert [(r["state"], r["failure_code"], r["attempts"]) for r in rows] == \
            [("failed", "21610", 1)] * 2
        assert await client.app[EVENTS].flush()
    events = await db.fetch("SELECT data FROM contact_events WHERE kind = 'delivery_failed'")
    assert sorted(json.loads(e["data"])["action"] for e in events) == ["connect", "send"]


async def test_sends_queued_when_the_app_stops_are_delivered_by_the_next_one(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact_id = await escalate(client, db)
        await standin.stop()
        await console.send(type="accept", contact_id=contact_id)
        await console.wait(lambda f: f["type"] == "assigned")
        await console.send(type="message", contact_id=contact_id, text="Are you there?")
        await console.wait(status_of("Are you there?", "queued"))
    assert [r["state"] for r in await outbox_rows(db)] == ["queued", "queued"]
    await standin.start()
    async with instance(app_settings):  # a new process against the same database
        took = await wait_for(lambda: len(standin.messages) == 2)
        await asyncio.sleep(0.5)
    assert standin.bodies() == [GREETING, "Are you there?"]
    assert took < 3.0
    assert [r["state"] for r in await outbox_rows(db)] == ["sent", "sent"]


async def test_a_lost_answer_is_looked_up_not_sent_twice(app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact_id = await escalate(client, db)
        standin.lose_answers = True  # Twilio takes the message; its answer never comes
        await console.send(type="accept", contact_id=contact_id)
        await console.wait(lambda f: f["type"] == "assigned")
        sent = await console.wait(status_of(GREETING, "sent"))
        assert len(standin.messages) == 1 and standin.lookups  # looked up, adopted
        lookup = standin.lookups[0]
        assert lookup["To"] == CUSTOMER and lookup["From"] == "+15005550006"
        assert any(key.startswith("DateSent") for key in lookup)
        await asyncio.sleep(0.6)
        assert len(standin.messages) == 1
        [row] = await outbox_rows(db)
        [sid] = standin.sids
        assert (row["id"], row["state"], row["provider_id"]) == (sent["message_id"], "sent", sid)


async def test_a_dropped_connection_is_looked_up_and_sent_again_when_twilio_lacks_it(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact_id = await accepted(client, db, standin)
        await console.send(type="message", contact_id=contact_id, text="ok")
        await wait_for(lambda: standin.bodies().count("ok") == 1)
        standin.drop_connections = 1  # the same words again: this time Twilio never gets them
        await console.send(type="message", contact_id=contact_id, text="ok")
        await wait_for(lambda: standin.bodies().count("ok") == 2)
        await asyncio.sleep(0.5)
        assert standin.bodies() == [GREETING, "ok", "ok"]  # the earlier "ok" is not adopted
        assert len(standin.lookups) == 1
        rows = await outbox_rows(db)
        assert [r["state"] for r in rows] == ["sent"] * 3
        assert len({r["provider_id"] for r in rows}) == 3 and rows[2]["attempts"] == 2


async def test_a_callback_with_a_bad_signature_is_403_and_a_valid_one_moves_the_state(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        standin.service_url = str(client.make_url("")).rstrip("/")
        console, contact_id = await accepted(client, db, standin)
        await console.wait(status_of(GREETING, "sent"))
        [sid] = standin.sids
        assert await standin.send_status(sid, "delivered", signature="forged") == 403
        await asyncio.sleep(0.2)
        assert [r["state"] for r in await outbox_rows(db)] == ["sent"]
        assert "delivered" not in [f.get("state") for f in console.frames]
        assert await standin.send_status(sid, "delivered") == 200
        delivered = await console.wait(status_of(GREETING, "delivered"))
        assert delivered["contact_id"] == contact_id
        assert await standin.send_status(sid, "sent") == 200  # late news never goes back
        await asyncio.sleep(0.2)
        assert [r["state"] for r in await outbox_rows(db)] == ["delivered"]
        # a carrier failure after Twilio took it reaches the agent with Twilio's code
        await console.send(type="message", contact_id=contact_id, text="Anything else?")
        await wait_for(lambda: len(standin.sids) == 2)
        await console.wait(status_of("Anything else?", "sent"))
        second = list(standin.sids)[-1]
        assert await standin.send_status(second, "undelivered", error_code="30003") == 200
        failed = await console.wait(status_of("Anything else?", "failed"))
        assert "30003" in failed["reason"]


async def test_a_callback_names_our_message_even_when_the_create_answer_was_lost(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        standin.service_url = str(client.make_url("")).rstrip("/")
        console, contact_id = await escalate(client, db)
        standin.lose_answers = True
        await console.send(type="accept", contact_id=contact_id)
        await wait_for(lambda: len(standin.sids) == 1)
        [sid] = standin.sids
        assert await standin.send_status(sid, "delivered") == 200  # before the timeout
        await console.wait(status_of(GREETING, "delivered"))
        await asyncio.sleep(1.5)  # past the client's timeout: no second send, no look-up
        assert len(standin.messages) == 1
        [row] = await outbox_rows(db)
        assert (row["state"], row["provider_id"]) == ("delivered", sid)


async def test_a_call_bridge_waits_in_the_outbox_while_twilio_is_down(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        agent = await login(client, db)
        call = await Call(client, "+15555550199").dial()
        await call.press("0")
        offer = await agent.next("offer")
        standin.fail_with = 503
        await agent.send(type="accept", contact_id=offer["contact_id"])
        await agent.next("assigned")
        await asyncio.sleep(0.5)
        assert standin.call_updates == []
        standin.fail_with = None
        await wait_for(lambda: len(standin.call_updates) == 1)
        assert standin.call_updates[0]["call_sid"] == call.sid
        assert [r["action"] for r in await outbox_rows(db)] == ["connect"]


async def test_two_instances_share_the_outbox_and_each_send_goes_out_once(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as first, instance(app_settings) as second:
        console, contact_id = await accepted(first, db, standin)
        await standin.stop()
        words = [f"Update {n}" for n in range(6)]
        for line in words:
            await console.send(type="message", contact_id=contact_id, text=line)
        await console.wait(status_of(words[-1], "queued"))
        assert second.app[OUTBOX] is not first.app[OUTBOX]
        await standin.start()
        await wait_for(lambda: len(standin.messages) == 7)
        await asyncio.sleep(0.6)
    assert standin.bodies() == [GREETING, *words]


async def test_ops_see_the_outbox_on_metrics_and_the_ops_api(app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact_id = await accepted(client, db, standin)
        standin.refuse_with_code = 21211
        await console.send(type="message", contact_id=contact_id, text="Wrong number?")
        await console.wait(status_of("Wrong number?", "failed"))
        standin.refuse_with_code = None
        await standin.stop()
        await console.send(type="message", contact_id=contact_id, text="Still queued")
        await console.wait(status_of("Still queued", "queued"))
        await asyncio.sleep(1.2)  # the worker refreshes the gauges every poll
        body = await (await client.get("/metrics")).text()
        assert "switchboard_outbox_depth 1.0" in body
        assert 'switchboard_outbox_failed_total{channel="sms",reason="refused"}' in body
        assert 'switchboard_outbox_attempts_total{channel="sms",result="retry"}' in body
        token = await create_token(db, "ops", "tests")
        assert (await client.get("/api/outbox")).status == 401
        response = await client.get("/api/outbox", headers={"Authorization": f"Bearer {token}"})
        outbox = await response.json()
        assert response.status == 200, outbox
        assert outbox["depth"] == 1 and outbox["oldest_queued_s"] > 0
        assert outbox["last_24h"]["failed"] == 1 and outbox["last_24h"]["sent"] == 1
        [failure] = outbox["recent_failures"]
        assert (failure["code"], failure["contact_id"], failure["action"]) == \
            ("21211", contact_id, "send")
        await standin.start()


async def test_a_callback_for_an_unknown_message_or_a_bad_id_changes_nothing(
        app_settings, db, twilio):  # noqa: F811
    from tests.twilio_driver import post_signed
    standin, _ = twilio
    async with instance(app_settings) as client:
        await accepted(client, db, standin)
        for path in ("/twilio/sms/status", "/twilio/sms/status?message=not-a-uuid",
                     f"/twilio/sms/status?message={uuid.uuid4()}"):
            response = await post_signed(client, path, {"MessageSid": "SM404",
                                                        "MessageStatus": "delivered"})
            assert response.status == 200, path
        assert [r["state"] for r in await outbox_rows(db)] == ["sent"]
    assert AUTH_TOKEN == standin.auth_token  # the stand-in signs as the service expects


async def test_once_twilio_takes_a_send_every_waiting_contact_goes_without_its_backoff(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    slow = with_settings(app_settings, outbox_retry_base_s=8.0, outbox_retry_max_s=30.0)
    async with instance(slow) as client:
        first, first_id = await accepted(client, db, standin)
        await first.send(type="presence", status="away")  # the next contact goes to Bo
        await first.wait(lambda f: f["type"] == "presence")
        bo = await login(client, db, "Bo")
        await text(client, "+15555550123", "I forgot my password and can't log in")
        await text(client, "+15555550123", "no")
        offer = await bo.next("offer")
        second = Console(bo)
        await second.send(type="accept", contact_id=offer["contact_id"])
        await second.wait(lambda f: f["type"] == "assigned")
        await standin.stop()
        await first.send(type="message", contact_id=first_id, text="Waiting out a backoff")
        await first.wait(lambda f: status_of("Waiting out a backoff", "queued")(f)
                         and f["reason"])  # the first attempt failed and was rescheduled
        due = await db.fetchval("SELECT extract(epoch FROM next_attempt_at - now()) FROM "
                                "outbox WHERE state = 'queued'")
        assert due > 3.0  # 4-8 s away with these settings
        await standin.start()
        await second.send(type="message", contact_id=offer["contact_id"], text="Hi from Bo")
        took = await wait_for(lambda: "Waiting out a backoff" in standin.bodies(), 3.0)
    assert took < 1.5 and standin.bodies()[-2:] == ["Hi from Bo", "Waiting out a backoff"]


def test_backoff_doubles_with_jitter_up_to_its_cap_and_never_undercuts_retry_after():
    from service.conversations.outbox import RetryPolicy
    policy = RetryPolicy(base_s=1.0, max_s=30.0)
    for attempts, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (40, 30.0)):
        delays = [policy.delay(attempts, None) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 10  # jittered, not one value
    assert all(policy.delay(1, 7.0) >= 7.0 for _ in range(50))


def test_retry_after_is_read_as_seconds_or_an_http_date_and_capped():
    from email.utils import formatdate

    from channels.twilio_rest import MAX_RETRY_AFTER_S, retry_after
    assert retry_after({"Retry-After": "3"}) == 3.0
    assert 9 <= retry_after({"Retry-After": formatdate(time.time() + 10, usegmt=True)}) <= 10
    assert retry_after({"Retry-After": "in a while"}) is None
    assert retry_after({}) is None
    assert retry_after({"Retry-After": "99999999"}) == MAX_RETRY_AFTER_S
    assert retry_after({"Retry-After": "-5"}) == 0.0


async def test_a_reconnecting_console_gets_each_messages_state_again(app_settings, db, twilio):  # noqa: F811
    from service.agents.desk import add_agent
    from tests.test_agents import ALL_SKILLS, AgentSocket
    standin, _ = twilio
    token = await add_agent(db, "Dana", ALL_SKILLS)

    async def connect(client) -> Console:
        ws = await client.ws_connect("/agent/ws")
        await ws.send_json({"type": "auth", "token": token})
        agent = AgentSocket(ws)
        await agent.next("ready")
        return Console(agent)

    async with instance(app_settings) as client:
        console = await connect(client)
        await console.send(type="presence", status="available")
        await text(client, CUSTOMER, "I forgot my password and can't log in")
        await text(client, CUSTOMER, "no")
        offer = await console.wait(lambda f: f["type"] == "offer")
        await console.send(type="accept", contact_id=offer["contact_id"])
        await console.wait(status_of(GREETING, "sent"))
        standin.refuse_with_code = 21211
        await console.send(type="message", contact_id=offer["contact_id"], text="Hello?")
        await console.wait(status_of("Hello?", "failed"))
        standin.refuse_with_code, standin.fail_with = None, 503
        await console.send(type="message", contact_id=offer["contact_id"], text="Still there?")
        await console.wait(lambda f: status_of("Still there?", "queued")(f) and f["reason"])
        await console.ws.close()
        again = await connect(client)
        await again.wait(lambda f: f["type"] == "message_status" and f["text"] == "Still there?")
        statuses = [(f["text"], f["state"], f["code"]) for f in again.frames
                    if f["type"] == "message_status"]
        assert statuses[:3] == [(GREETING, "sent", None), ("Hello?", "failed", "21211"),
                                ("Still there?", "queued", None)]
        kinds = [f["type"] for f in again.frames]
        assert kinds.index("assigned") < kinds.index("message_status")
        retrying = next(f for f in again.frames if f.get("text") == "Still there?")
        assert "503" in retrying["reason"]
        standin.fail_with = None



def _conv(n: int) -> dict:
    return {"contact_id": str(uuid.uuid4()), "channel": "sms", "customer_id": None,
            "address": f"+1555777{n:04d}", "service_address": "+15005550006",
            "transcript": [], "contact_type": None, "route_path": None}


async def test_a_send_taken_never_waits_for_a_waiting_row_another_statement_holds(
        app_settings, db, twilio):  # noqa: F811
    """A send Twilio took makes the channel's waiting jobs due. When Twilio comes back many
    sends succeed at once, each waking the same rows; a statement that waited for rows
    another one holds could deadlock with it (seen under load: the loser's job, sent, stayed
    leased until its lease ran out). So rows held elsewhere are skipped, not waited for."""
    standin, _ = twilio
    slow = with_settings(app_settings, outbox_retry_base_s=30.0, outbox_retry_max_s=60.0)
    async with instance(slow) as client:
        outbox = client.app[OUTBOX]
        await standin.stop()
        waiting = await outbox.submit(_conv(1), "send", {"text": "waiting out a backoff"}, None)
        assert waiting.state == "queued"
        await standin.start()
        holder = await asyncpg.connect(app_settings.database_url)
        try:
            async with holder.transaction():
                await holder.execute("SELECT 1 FROM outbox WHERE id = $1 FOR UPDATE",
                                     uuid.UUID(waiting.message_id))
                taken = await asyncio.wait_for(
                    outbox.submit(_conv(2), "send", {"text": "taken"}, None), 5.0)
                assert taken.state == "sent"
        finally:
            await holder.close()
        assert standin.bodies() == ["taken"]  # the held row was skipped, still in its backoff
        again = await outbox.submit(_conv(3), "send", {"text": "taken again"}, None)
        assert again.state == "sent"  # this one wakes it
        await wait_for(lambda: "waiting out a backoff" in standin.bodies(), 5.0)
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE state = 'queued'") == 0
