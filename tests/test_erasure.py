"""Erasing a customer (right to erasure) end to end: a customer texts, chats, reaches an agent
whose replies go through the outbox to the Twilio stand-in; then ops erase them over the HTTP
API or the CLI, and nothing of theirs is left in any table or Redis key, while every report
figure stays the same."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from service.__main__ import main
from service.appkeys import EVENTS, PG
from service.conversations import erasure
from service.conversations.customers import upsert_customer
from service.infra.tokens import create_token
from service.reporting import partitions, reports
from service.reporting.events import Event
from service.reporting.reports import FROM_EVENTS, ReportRules, Window
from tests.test_agents import app_settings, instance, login, open_chat, twilio  # noqa: F401
from tests.test_outbox import GREETING, Console, wait_for
from tests.twilio_driver import text

PHONE = "+15555550777"
WEB_ID = "web-erase-7731"
NAME = "Philippa Quist"
ATTRIBUTE = "member-zq88"
SAID_BY_SMS = "I want to talk to a human about parcel PX-ALPHA-991 at 12 Quayside Lane"
SAID_LATER = "Thanks, Quayside Lane it is"
SAID_IN_CHAT = "Where is my refund for order ZX-4471"
AGENT_REPLY = "I see parcel PX-ALPHA-991; sending a new one to Quayside Lane"
NOTE = "Philippa at Quayside Lane, resent PX-ALPHA-991"
PRIVATE_NOTE = "Philippa Quist's neighbour Oswin signs for parcels at Quayside"
WHISPER = "Philippa is owed the Marlowe-7 goodwill credit"
SECRETS = (PHONE, WEB_ID, NAME, ATTRIBUTE, SAID_BY_SMS, SAID_LATER, SAID_IN_CHAT, AGENT_REPLY,
           NOTE, "PX-ALPHA-991", "Quayside", "ZX-4471", PRIVATE_NOTE, WHISPER, "Oswin",
           "Marlowe-7")


@pytest.fixture(autouse=True)
async def no_erasures_yet(db):
    await db.execute("TRUNCATE erased_customers")


# ---- what is stored, everywhere --------------------------------------------------------------

async def tables_holding(db, secret: str) -> list[str]:
    """Every table of the database (from information_schema, so new tables are covered) with
    a row whose any column, text, JSON or composite, contains `secret`."""
    tables = await db.fetch("SELECT table_name FROM information_schema.tables "
                            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")
    return [t["table_name"] for t in tables if await db.fetchval(
        f'SELECT count(*) FROM "{t["table_name"]}" t WHERE strpos(t::text, $1) > 0', secret)]


async def redis_dump(client) -> dict[str, str]:
    """Every key of the server with its value, whatever its type, as text."""
    dump = {}
    async for key in client.scan_iter(count=1000):
        kind = (await client.type(key)).decode()
        read = {"string": client.get, "hash": client.hgetall, "set": client.smembers,
                "list": lambda k: client.lrange(k, 0, -1), "stream": client.xrange,
                "zset": lambda k: client.zrange(k, 0, -1, withscores=True)}[kind]
        dump[key.decode()] = repr(await read(key))
    return dump


def redis_holding(dump: dict[str, str], secret: str) -> list[str]:
    return [key for key, value in dump.items() if secret in key or secret in value]


async def stored_rows(db) -> dict[str, list]:
    """The tables an erasure changes, row by row, to show that nothing changed."""
    return {table: sorted(str(dict(r)) for r in await db.fetch(f"SELECT * FROM {table}"))
            for table in ("customers", "customer_identities", "contact_events", "contact_replay",
                          "outbox", "contact_facts", "erased_customers")}


# ---- reports ---------------------------------------------------------------------------------

def window_around_now() -> tuple[str, str]:
    now = datetime.now(timezone.utc)
    return (now - timedelta(days=1)).isoformat(), (now + timedelta(days=1)).isoformat()


async def served_reports(client, token: str, start: str, end: str) -> dict[str, dict]:
    served = {}
    for name in ("summary", "matrix", "journeys"):
        response = await client.get(f"/api/reports/{name}", params={"from": start, "to": end},
                                    headers={"Authorization": f"Bearer {token}"})
        assert response.status == 200, await response.text()
        body = await response.json()
        body.pop("as_of")
        served[name] = body
    return served


async def reports_from_events(db, start: str, end: str) -> dict[str, dict]:
    """The same reports computed from the raw events (reports.FROM_EVENTS): what erasure
    rewrites must keep every field they read."""
    window, rules = Window(datetime.fromisoformat(start), datetime.fromisoformat(end)), \
        ReportRules()
    computed = {"summary": await reports.summary(db, window, rules, queries=FROM_EVENTS),
                "matrix": await reports.matrix(db, window, rules, queries=FROM_EVENTS),
                "journeys": await reports.journeys(db, window, rules, queries=FROM_EVENTS)}
    for report in computed.values():
        report.pop("as_of")
    return computed


# ---- the customer's contacts ------------------------------------------------------------------

async def known_customer(db, redis_client) -> str:
    return await upsert_customer(db, redis_client,
                                 identities=[("phone", PHONE), ("web", f"id:{WEB_ID}")],
                                 display_name=NAME, attributes={"loyalty": ATTRIBUTE})


async def chat_and_leave(client) -> None:
    signature = hmac.new(b"host-site-secret", WEB_ID.encode(), hashlib.sha256).hexdigest()
    chat, _ = await open_chat(client, customer={"id": WEB_ID, "signature": signature})
    await chat.next("message")
    await chat.send(type="message", text=SAID_IN_CHAT)
    await chat.next("message")
    await chat.send(type="end")
    await chat.next("status")
    await chat.ws.close()


async def served_by_an_agent(client, db, standin) -> Console:
    """The customer texts, reaches an agent who replies (outbox, Twilio) and wraps up."""
    agent = await login(client, db)
    await text(client, PHONE, SAID_BY_SMS)
    offer = await agent.next("offer")
    console, contact_id = Console(agent), offer["contact_id"]
    await console.send(type="accept", contact_id=contact_id)
    await console.wait(lambda f: f["type"] == "assigned")
    await wait_for(lambda: GREETING in standin.bodies())
    await console.send(type="message", contact_id=contact_id, text=AGENT_REPLY)
    await wait_for(lambda: AGENT_REPLY in standin.bodies())
    # private notes: the agent's own and a supervisor's whisper
    await console.send(type="note", contact_id=contact_id, text=PRIVATE_NOTE)
    await console.wait(lambda f: f["type"] == "note" and f["note"]["text"] == PRIVATE_NOTE)
    whisper = await client.post(f"/api/contacts/{contact_id}/notes", json={"text": WHISPER},
                                headers={"Authorization": "Bearer " + await create_token(
                                    db, "supervisor", "floor lead")})
    assert whisper.status == 201, await whisper.text()
    await text(client, PHONE, SAID_LATER)
    await console.wait(lambda f: f.get("type") == "message" and f.get("text") == SAID_LATER)
    await console.send(type="wrap_up", contact_id=contact_id, resolved=True, note=NOTE)
    await console.wait(lambda f: f["type"] == "wrapped_up")
    return console


async def settled(client, db) -> None:
    """Every event in PostgreSQL and every outbound message past its first state."""
    async def outbox_settled() -> bool:
        return not await db.fetchval("SELECT count(*) FROM outbox WHERE state = 'queued'")
    for _ in range(200):
        if await outbox_settled():
            break
        await asyncio.sleep(0.05)
    assert await outbox_settled()
    assert await client.app[EVENTS].flush()


def erase_request(client, customer_id: str, token: str | None, **params: str):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.delete(f"/api/customers/{customer_id}", headers=headers, params=params)


# ---- tests -----------------------------------------------------------------------------------

async def test_an_erased_customer_leaves_nothing_personal_and_every_figure_unchanged(
        app_settings, db, redis_client, twilio):  # noqa: F811
    standin, _ = twilio
    customer_id = await known_customer(db, redis_client)
    async with instance(app_settings) as client:
        token = await create_token(db, "ops", "privacy desk")
        await chat_and_leave(client)
        console = await served_by_an_agent(client, db, standin)
        await settled(client, db)
        assert await tables_holding(db, PHONE) and await tables_holding(db, AGENT_REPLY)
        for private in (PRIVATE_NOTE, WHISPER):  # note_added events (partitions)
            assert {t.split("_20")[0] for t in await tables_holding(db, private)} == \
                {"contact_events"}
        assert redis_holding(await redis_dump(redis_client), PHONE)
        assert redis_holding(await redis_dump(redis_client), WHISPER)  # earlier contacts' notes
        window = window_around_now()
        served_before, computed_before = await served_reports(client, token, *window), \
            await reports_from_events(db, *window)
        assert served_before["summary"]["totals"]["contacts"] == 2

        response = await erase_request(client, customer_id, token)
        assert response.status == 200, await response.text()
        done = await response.json()
        assert done["customer_id"] == customer_id and not done["dry_run"]
        counts = done["counts"]
        assert counts["customers"] == 1 and counts["identities"] == 2
        assert counts["events"] >= 5 and counts["replay"] == 2 and counts["outbox"] >= 2
        assert counts["redis_keys"] >= 3
        assert done["kept"] == {"opt_out_records": 0}
        record = await db.fetchrow("SELECT * FROM erased_customers")
        assert (str(record["customer_id"]), record["erased_by"], record["redis_keys"]) == \
            (customer_id, "api: privacy desk", None)
        assert json.loads(record["counts"]) == counts | {"opt_out_records_kept": 0}

        # (a) nothing personal in any column of any table; (b) nor in any Redis key or value
        for secret in SECRETS:
            assert await tables_holding(db, secret) == [], secret
        dump = await redis_dump(redis_client)
        for secret in SECRETS:
            assert redis_holding(dump, secret) == [], secret
        # the pseudonymous id stays, so per-customer figures hold
        assert await db.fetchval("SELECT count(*) FROM contact_facts WHERE customer_id = $1",
                                 uuid.UUID(customer_id)) == 2
        # (c) every figure the same, served and computed from the raw events
        assert await served_reports(client, token, *window) == served_before
        assert await reports_from_events(db, *window) == computed_before

        again = await erase_request(client, customer_id, token)
        assert again.status == 404 and "was erased at" in (await again.json())["error"]

        # (g) an event of the customer that lands after the erasure (a spool flushed late),
        # and the customer row its customer_created projects again, are scrubbed by the upkeep
        late_contact = str(uuid.uuid4())
        client.app[EVENTS].emit(
            Event("customer_created", None, customer_id, "sms",
                  data={"identity_kind": "phone", "identity_value": PHONE}),
            Event("contact_started", late_contact, customer_id, "sms",
                  data={"address": PHONE, "service_address": "+15005550006", "thread": None}),
            Event("received", late_contact, customer_id, "sms",
                  data={"text": SAID_LATER, "input": "message", "dedupe_key": "SMlate"}))
        assert await client.app[EVENTS].flush()
        assert await tables_holding(db, PHONE) and await tables_holding(db, SAID_LATER)
        await partitions.maintain(db, 0)
        for secret in (PHONE, SAID_LATER):
            assert await tables_holding(db, secret) == [], secret
        assert await db.fetchval("SELECT count(*) FROM customers WHERE id = $1",
                                 uuid.UUID(customer_id)) == 0
        assert await db.fetchval("SELECT data->>'input' FROM contact_events WHERE kind = "
                                 "'received' AND contact_id = $1", uuid.UUID(late_contact)) \
            == "message"

        # (d) the same number texting again is a new customer with no earlier contacts
        await text(client, PHONE, "I want to talk to a human")
        offer = await console.wait(lambda f: f["type"] == "offer")
        assert offer["context"]["customer"]["id"] != customer_id
        assert offer["context"]["customer"]["attributes"] == {}
        assert offer["context"]["earlier_contacts"] == []
        assert [m["text"] for m in offer["context"]["transcript"]] == \
            ["I want to talk to a human"]
        await console.ws.close()


async def test_an_open_contact_is_refused_with_409_naming_it_and_nothing_changes(
        app_settings, db, redis_client, twilio):  # noqa: F811
    customer_id = await known_customer(db, redis_client)
    async with instance(app_settings) as client:
        token = await create_token(db, "ops", "tests")
        await text(client, PHONE, SAID_BY_SMS)  # queued for an agent
        assert await client.app[EVENTS].flush()
        contact_id = str(await db.fetchval(
            "SELECT contact_id FROM contact_events WHERE kind = 'contact_started'"))
        rows, keys = await stored_rows(db), await redis_dump(redis_client)
        response = await erase_request(client, customer_id, token)
        assert response.status == 409
        body = await response.json()
        assert body["open_contacts"] == [contact_id] and contact_id in body["error"]
        assert "erase once they have ended" in body["error"]
        dry = await erase_request(client, customer_id, token, dry_run="true")
        assert dry.status == 409
        assert await stored_rows(db) == rows
        assert await redis_dump(redis_client) == keys


async def test_bad_requests_are_refused_and_change_nothing(app_settings, db,
                                                           redis_client):  # noqa: F811
    customer_id = await known_customer(db, redis_client)
    async with instance(app_settings) as client:
        token = await create_token(db, "ops", "tests")
        supervisor = await create_token(db, "supervisor", "tests")
        rows = await stored_rows(db)
        cases = [("not-a-uuid", token, {}, 400, "not a customer id: 'not-a-uuid'"),
                 (customer_id, None, {}, 401, "an ops token is required"),
                 (customer_id, "sb_ops_wrong", {}, 401, "an ops token is required"),
                 (customer_id, supervisor, {}, 403, "cannot read or erase customers"),
                 (customer_id, token, {"dry_run": "maybe"}, 400, "dry_run is true or false"),
                 (str(uuid.uuid4()), token, {}, 404, "no customer ")]
        for target, bearer, params, status, message in cases:
            response = await erase_request(client, target, bearer, **params)
            assert response.status == status, (target, await response.text())
            assert message in (await response.json())["error"]
        assert await stored_rows(db) == rows


async def test_the_cli_counts_on_a_dry_run_then_erases_once(app_settings, db, redis_client,
                                                           monkeypatch):  # noqa: F811
    monkeypatch.setenv("DATABASE_URL", app_settings.database_url)
    monkeypatch.setenv("REDIS_URL", app_settings.redis_url)
    customer_id = await known_customer(db, redis_client)
    async with instance(app_settings) as client:
        await text(client, PHONE, "I forgot my password and can't log in")
        await text(client, PHONE, "yes")  # resolved: the contact has ended
        assert await client.app[EVENTS].flush()
    rows, keys = await stored_rows(db), await redis_dump(redis_client)

    def run(*args: str) -> tuple[int, str, str]:
        import contextlib
        import io
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["customers", "erase", *args])
        return code, out.getvalue(), err.getvalue()

    code, out, _ = await asyncio.to_thread(run, "--phone", PHONE, "--dry-run")
    assert code == 0
    dry = json.loads(out)
    assert dry["dry_run"] and dry["customer_id"] == customer_id
    assert dry["counts"]["customers"] == 1 and dry["counts"]["identities"] == 2
    # started, the customer's 2 texts and the bot's 2 replies
    assert dry["counts"]["events"] == 5 and dry["counts"]["replay"] == 1
    assert dry["counts"]["redis_keys"] >= 3
    assert await stored_rows(db) == rows and await redis_dump(redis_client) == keys

    code, out, _ = await asyncio.to_thread(run, "--web-id", WEB_ID)
    assert code == 0
    done = json.loads(out)
    assert not done["dry_run"] and done["counts"] == dry["counts"]
    assert await tables_holding(db, PHONE) == [] and redis_holding(
        await redis_dump(redis_client), PHONE) == []

    code, _, err = await asyncio.to_thread(run, "--customer", customer_id)
    assert code == 1 and f"customer {customer_id} was erased at" in err
    code, _, err = await asyncio.to_thread(run, "--phone", PHONE)
    assert code == 1 and f"no customer has the phone address '{PHONE}'" in err
    code, _, err = await asyncio.to_thread(run, "--customer", "12")
    assert code == 2 and "not a customer id: '12'" in err


async def test_an_erasure_cut_short_after_its_transaction_is_finished_by_running_it_again(
        app_settings, db, redis_client, monkeypatch):  # noqa: F811
    customer_id = await known_customer(db, redis_client)
    async with instance(app_settings) as client:
        token = await create_token(db, "ops", "tests")
        await text(client, PHONE, "I forgot my password and can't log in")
        await text(client, PHONE, "yes")
        assert await client.app[EVENTS].flush()
        real_delete = erasure._delete_keys

        async def crash(*_args, **_kwargs):
            raise ConnectionError("the process died here")

        monkeypatch.setattr(erasure, "_delete_keys", crash)
        with pytest.raises(ConnectionError):
            await erasure.erase(client.app[PG], redis_client, customer_id, by="test")
        pending = await db.fetchval("SELECT redis_keys FROM erased_customers")
        assert pending and all(any(part in key for part in (PHONE, WEB_ID, customer_id,
                                                            "contact:")) for key in pending)
        assert redis_holding(await redis_dump(redis_client), PHONE)
        monkeypatch.setattr(erasure, "_delete_keys", real_delete)

        response = await erase_request(client, customer_id, token)
        assert response.status == 200
        resumed = await response.json()
        assert resumed["resumed"] is True and resumed["counts"]["identities"] == 2
        assert resumed["kept"] == {"opt_out_records": 0}
        assert redis_holding(await redis_dump(redis_client), PHONE) == []
        assert await tables_holding(db, PHONE) == []


async def test_an_opted_out_number_keeps_only_its_suppression_record(app_settings, db,
                                                                    redis_client):  # noqa: F811
    customer_id = await known_customer(db, redis_client)
    async with instance(app_settings) as client:
        token = await create_token(db, "ops", "tests")
        await text(client, PHONE, "I forgot my password and can't log in")
        await text(client, PHONE, "yes")
        await text(client, PHONE, "STOP")
        assert await client.app[EVENTS].flush()
        response = await erase_request(client, customer_id, token)
        assert response.status == 200
        assert (await response.json())["kept"] == {"opt_out_records": 1}
        dump = await redis_dump(redis_client)
        assert redis_holding(dump, PHONE) == [f"sb:{{phone:{PHONE}}}:optout:sms"]
        assert dump[f"sb:{{phone:{PHONE}}}:optout:sms"] == "b'1'"
        assert await tables_holding(db, PHONE) == []
        assert await text(client, PHONE, "hello again") == []  # still opted out


async def test_an_erasure_on_a_redis_cluster_leaves_no_key_of_the_customer_on_any_node(
        app_settings, db, valkey_cluster):  # noqa: F811
    from service.infra.redis_url import client_for, close_client
    from tests.conftest import with_settings

    primaries = valkey_cluster.primaries()
    for primary in primaries:
        primary.flushall()
    on_cluster = with_settings(app_settings, redis_url=valkey_cluster.url)
    cluster = client_for(valkey_cluster.url)
    try:
        customer_id = await known_customer(db, cluster)
    finally:
        await close_client(cluster)
    async with instance(on_cluster) as client:
        token = await create_token(db, "ops", "tests")
        await text(client, PHONE, "I forgot my password and can't log in")
        await text(client, PHONE, "yes")
        await chat_and_leave(client)
        assert await client.app[EVENTS].flush()

        def holding(secret: str) -> list[str]:
            found = []
            for primary in primaries:
                for key in primary.scan_iter(count=1000):
                    kind = primary.type(key).decode()
                    value = primary.get(key) if kind == "string" else \
                        primary.hgetall(key) if kind == "hash" else \
                        primary.zrange(key, 0, -1) if kind == "zset" else kind
                    if secret in key.decode() or secret in repr(value):
                        found.append(key.decode())
            return found

        assert len({key.split("}")[0] for key in holding(PHONE) + holding(WEB_ID)}) == 2
        response = await erase_request(client, customer_id, token)
        assert response.status == 200, await response.text()
        assert (await response.json())["counts"]["redis_keys"] >= 5
        assert holding(PHONE) == [] and holding(WEB_ID) == [] and holding(customer_id) == []


async def test_only_an_erasures_transaction_may_rewrite_the_log_and_none_may_delete(db):
    import asyncpg

    for statement in ("UPDATE contact_events SET data = '{}'", "DELETE FROM contact_events"):
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await db.execute(statement)
    async with db.transaction():
        await db.execute("SET LOCAL switchboard.erasing = 'on'")
        await db.execute("UPDATE contact_events SET data = data WHERE false")
        with pytest.raises(asyncpg.RaiseError, match="append-only: DELETE"):
            async with db.transaction():
                await db.execute("DELETE FROM contact_events WHERE false")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):  # the setting went with it
        await db.execute("UPDATE contact_events SET data = data WHERE false")
