"""Contact search and a contact's timeline (GET /api/contacts, /api/contacts/{id}) end to end:
contacts made through signed SMS webhooks, voice calls and the agent socket, then found by
phone in other formats, email, name, id, window and filters, page by page; a contact that went
bot -> agent -> wrap-up told in order with its notes private; an erased customer's contact
showing nothing personal."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from service.conversations.customers import upsert_customer
from service.infra.tokens import create_token
from tests.test_agents import (  # noqa: F401 (fixtures)
    app_settings,
    instance,
    login,
    open_chat,
    twilio,
)
from tests.test_erasure import (
    AGENT_REPLY,
    NAME,
    NOTE,
    PHONE,
    PRIVATE_NOTE,
    SAID_BY_SMS,
    SAID_LATER,
    SECRETS,
    WHISPER,
    erase_request,
    served_by_an_agent,
    settled,
)
from tests.test_ops_api import clock, events_landed, iso  # noqa: F401 (fixture)
from tests.twilio_driver import Call, text

ANA = "+15555550142"
ANA_NAME = "Ana Lima-Ferreira"
ANA_EMAIL = "ana.lima@example.com"
HOUR = 3600


async def get(client, path: str, token: str | None, **query) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.get(path, params=query, headers=headers)
    return response.status, await response.json()


async def found(client, token: str, **query) -> list[dict]:
    status, body = await get(client, "/api/contacts", token, **query)
    assert status == 200, body
    return body["contacts"]


def ids(rows: list[dict]) -> list[str]:
    return [r["contact_id"] for r in rows]


async def sms_resolved(client, phone: str) -> None:
    assert (await text(client, phone, "I need to track my order"))[-1] == \
        "Did that help? Reply YES or NO."
    assert (await text(client, phone, "yes"))[0].startswith("Great, glad that helped")


@pytest.fixture
async def ops_token(db, app_settings):  # noqa: F811
    await db.execute("TRUNCATE erased_customers")
    return await create_token(db, "ops", "contacts tests")


async def test_a_customer_is_found_by_phone_in_any_format_email_name_and_ids(
        app_settings, db, redis_client, ops_token):  # noqa: F811
    customer_id = await upsert_customer(db, redis_client, identities=[
        ("phone", ANA), ("email", ANA_EMAIL)], display_name=ANA_NAME, attributes={})
    async with instance(app_settings) as client:
        await sms_resolved(client, ANA)
        await sms_resolved(client, "+15555550199")  # someone else, who comes back
        await text(client, "+15555550199", "I need to track my order")
        await events_landed(client.app)
        came_back, again = (await found(client, ops_token, customer="+15555550199"))[::-1]
        assert (came_back["came_back"], came_back["handling"]) == (True, "self_service")
        assert came_back["customer"]["name"] is None  # not in the directory
        assert again["came_back"] is None and again["handling"] == "queued"  # a repeat: to an agent
        [mine] = await found(client, ops_token, customer=ANA)
        for typed in ("(555) 555-0142", "555.555.0142", "+1 555 555 0142", "1-555-555-0142",
                      "001 555 555 0142", "whatsapp:+15555550142", "ANA.LIMA@example.COM",
                      "lima-fer", "ana LIMA", customer_id):
            assert ids(await found(client, ops_token, customer=typed)) == \
                [mine["contact_id"]], typed
        assert mine["customer"] == {"id": customer_id, "name": ANA_NAME, "erased": False,
                                    "address": ANA}
        assert (mine["channel"], mine["contact_type"], mine["contact_type_label"]) == \
            ("sms", "track_order", "Track an order")
        assert (mine["handling"], mine["outcome"], mine["escalated"]) == \
            ("self_service", "self_service_resolved", False)
        assert mine["came_back"] is False and mine["agents"] == [] and mine["csat"] is None
        assert 0 <= mine["duration_s"] < 60
        for prefix in (mine["contact_id"][:8], mine["contact_id"][:13].upper(),
                       mine["contact_id"]):
            assert ids(await found(client, ops_token, contact_id=prefix)) == \
                [mine["contact_id"]], prefix
        status, body = await get(client, "/api/contacts", ops_token, customer="555 555 0100")
        assert (status, body["contacts"], body["customers_matched"]) == (200, [], 0)
        assert await found(client, ops_token, customer="Nobody-by-this-name") == []


async def test_windows_filters_and_pages_find_each_contact_once(app_settings, db,  # noqa: F811
                                                                clock, ops_token):  # noqa: F811
    base = time.time() - 10 * HOUR
    since_base = {"from": iso(base - HOUR)}
    async with instance(app_settings) as client:
        for n in range(5):  # resolved by self-service, an hour apart
            clock.at(base + n * HOUR)
            await sms_resolved(client, f"+1555555030{n}")
        clock.at(base + 5 * HOUR)
        await text(client, "+15555550310", "I want to talk to a human")  # waits: no agent
        clock.at(base + 6 * HOUR)
        await (await Call(client, "+15555550311").dial()).press("0")  # waits on the phone
        clock.release()
        chat, _ = await open_chat(client)  # now: asks, then leaves before answering
        await chat.next("message")
        await chat.send(type="message", text="I forgot my password and can't log in")
        await chat.next("message")
        await chat.send(type="end")
        await chat.next("status")
        await chat.ws.close()
        await events_landed(client.app)
        everything = await found(client, ops_token, **{"from": iso(base - HOUR)})
        assert len(everything) == 8
        starts = [r["started_at"] for r in everything]
        assert starts == sorted(starts, reverse=True)  # newest first
        assert [r["channel"] for r in everything[:3]] == ["chat", "voice", "sms"]
        [left] = await found(client, ops_token, channel="chat", **{"from": iso(base - HOUR)})
        assert (left["handling"], left["outcome"], left["contact_type"]) == \
            ("dropped", "customer_left", "recover_password")
        assert ids(await found(client, ops_token, outcome="dropped")) == [left["contact_id"]]
        assert ids(await found(client, ops_token, outcome="customer_left")) == \
            [left["contact_id"]]
        unclassified = await found(client, ops_token, contact_type="unclassified", **since_base)
        assert {r["channel"] for r in unclassified} == {"sms", "voice"}
        assert all(r["contact_type"] is None for r in unclassified) and len(unclassified) == 2
        # contacts 1, 2, 3 (a minute's margin: a time stored keeps microseconds, rounded)
        window = {"from": iso(base + HOUR - 60), "to": iso(base + 4 * HOUR - 60)}
        assert [r["started_at"][:16] for r in await found(client, ops_token, **window)] == \
            [iso(base + n * HOUR)[:16] for n in (3, 2, 1)]
        since = {"from": iso(base - HOUR)}
        resolved = await found(client, ops_token, outcome="self_service", **since)
        waiting = await found(client, ops_token, outcome="escalated", **since)
        assert (len(resolved), len(waiting)) == (5, 2)
        assert {r["handling"] for r in waiting} == {"queued"}
        assert len(await found(client, ops_token, outcome="queued", **since)) == 2
        assert len(await found(client, ops_token, outcome="self_service_resolved", **since)) == 5
        assert ids(await found(client, ops_token, outcome="escalated", channel="voice",
                               **since)) == [everything[1]["contact_id"]]
        assert len(await found(client, ops_token, contact_type="track_order", channel="sms",
                               **window)) == 3
        assert await found(client, ops_token, channel="whatsapp", **since) == []
        # the same words as the reports: their counts agree over the window
        status, summary = await get(client, "/api/reports/summary", ops_token, **since)
        assert status == 200
        assert (summary["totals"]["self_service_resolved"], summary["totals"]["escalated"]) == \
            (len(resolved), len(waiting))

        paged, before, pages = [], None, 0
        while True:
            query = {"limit": "2", **since, **({"before": before} if before else {})}
            status, body = await get(client, "/api/contacts", ops_token, **query)
            assert status == 200 and len(body["contacts"]) <= 2
            paged += ids(body["contacts"])
            pages += 1
            before = body["next_before"]
            if before is None:
                break
        assert paged == ids(everything) and pages == 4  # each once, in the same order
        assert len(set(paged)) == 8


async def test_only_ops_and_supervisor_tokens_read_contacts(app_settings, db,  # noqa: F811
                                                            ops_token):
    async with instance(app_settings) as client:
        agent = await login(client, db, "Ada", available=False)
        await agent.ws.close()
        for path in ("/api/contacts", f"/api/contacts/{uuid.uuid4()}"):
            status, body = await get(client, path, None)
            assert status == 401 and "ops or supervisor token" in body["error"]
            status, _ = await get(client, path, "sb_ops_not-a-real-token")
            assert status == 401
            status, body = await get(client, path, await create_token(db, "agent", "console"))
            assert status == 403 and "'agent'" in body["error"]
            status, _ = await get(client, path, await create_token(db, "supervisor", "floor"))
            assert status in (200, 404)
        response = await client.get("/contacts")  # the page itself needs no token
        assert response.status == 200 and response.content_type == "text/html"
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        for asset in ("/contacts/contacts.js", "/contacts/contacts.css"):
            assert (await client.get(asset)).status == 200


async def test_an_agents_console_token_is_refused(app_settings, db, ops_token):  # noqa: F811
    from service.agents.desk import add_agent
    token = await add_agent(db, "Bo", ["care"])
    async with instance(app_settings) as client:
        status, body = await get(client, "/api/contacts", token)
        assert status == 403 and "console token" in body["error"]


@pytest.mark.parametrize("query, parameter", [
    ({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"from": "yesterday"}, "from"), ({"to": "2024-13-01"}, "to"),
    ({"from": "2024-05-02", "to": "2024-05-01"}, "from"), ({"channel": "fax"}, "channel"),
    ({"outcome": "Went Well!"}, "outcome"), ({"before": "page-two"}, "before"),
    ({"contact_id": "not-hex"}, "contact_id"), ({"customer": "a"}, "customer"),
    ({"contact_type": "track order?"}, "contact_type"), ({"colour": "blue"}, "colour"),
    ({"customer": "x" * 201}, "customer"),
])
async def test_bad_parameters_are_a_400_naming_the_parameter(app_settings, db, ops_token,  # noqa: F811
                                                             query, parameter):
    async with instance(app_settings) as client:
        status, body = await get(client, "/api/contacts", ops_token, **query)
        assert status == 400 and body["parameter"] == parameter, body
        assert body["error"]


async def test_an_unknown_or_malformed_contact_id(app_settings, db, ops_token):  # noqa: F811
    async with instance(app_settings) as client:
        status, body = await get(client, f"/api/contacts/{uuid.uuid4()}", ops_token)
        assert status == 404 and "no contact" in body["error"]
        status, body = await get(client, "/api/contacts/12ab", ops_token)
        assert status == 400 and body["parameter"] == "contact_id"


async def test_a_contact_from_bot_to_agent_to_wrap_up_is_told_in_order(
        app_settings, db, redis_client, twilio, ops_token):  # noqa: F811
    standin, _ = twilio
    customer_id = await upsert_customer(db, redis_client, identities=[("phone", PHONE)],
                                        display_name=NAME, attributes={})
    async with instance(app_settings) as client:
        await sms_resolved(client, PHONE)  # an earlier contact of the same customer
        await served_by_an_agent(client, db, standin)
        await settled(client, db)
        [served, earlier] = await found(client, ops_token, customer=PHONE)
        status, story = await get(client, f"/api/contacts/{served['contact_id']}", ops_token)
        assert status == 200
        contact = story["contact"]
        assert contact == served
        assert (contact["handling"], contact["outcome"], contact["queue"]) == \
            ("agent", "agent_resolved", "general")
        assert [a["name"] for a in contact["agents"]] == ["Dana"]
        assert contact["customer"]["id"] == customer_id

        kinds = [e["kind"] for e in story["timeline"]]
        expected = ["contact_started", "received", "escalated", "queued", "offered",
                    "agent_accepted", "agent_message", "note_added", "note_added",
                    "received", "wrap_up", "ended"]
        assert [k for k in kinds if k in expected] == expected
        times = [e["at"] for e in story["timeline"]]
        assert times == sorted(times)
        by_kind = {e["kind"]: e for e in story["timeline"]}
        assert by_kind["agent_accepted"]["description"].startswith("Dana accepted")
        assert by_kind["agent_accepted"]["details"]["agent_name"] == "Dana"
        assert by_kind["escalated"]["description"] == \
            "Escalated to Customer care: requested agent"
        assert by_kind["wrap_up"]["private"] and by_kind["wrap_up"]["details"]["note"] == NOTE
        assert "resolved" in by_kind["wrap_up"]["description"]
        notes = [e for e in story["timeline"] if e["kind"] == "note_added"]
        assert [n["private"] for n in notes] == [True, True]
        assert notes[1]["description"].startswith("Supervisor's whisper")

        said = [(b["from"], b["text"], b["private"]) for b in story["conversation"]
                if b["from"] != "system"]
        queued = said[1][1]
        assert said == [("customer", SAID_BY_SMS, False), ("bot", queued, False),
                        ("agent", "You're now talking with Dana.", False),
                        ("agent", AGENT_REPLY, False),
                        ("note", PRIVATE_NOTE, True), ("note", WHISPER, True),
                        ("customer", SAID_LATER, False), ("note", NOTE, True)]
        assert "You're number 1 in line" in queued  # the words sent, as sent
        agent_line = next(b for b in story["conversation"] if b["from"] == "agent")
        assert agent_line["author"] == "Dana"
        systems = [b["text"] for b in story["conversation"] if b["from"] == "system"]
        assert "Dana joined" in systems and systems[-1] == "Ended: agent resolved"
        assert story["other_contacts"] == [{
            "contact_id": earlier["contact_id"], "started_at": earlier["started_at"],
            "channel": "sms", "contact_type": "track_order",
            "contact_type_label": "Track an order", "handling": "self_service",
            "outcome": "self_service_resolved"}]

        status, first = await get(client, f"/api/contacts/{earlier['contact_id']}", ops_token)
        bot = [b for b in first["conversation"] if b["from"] == "bot"]
        assert len(bot) == 3 and not any(b["reconstructed"] for b in bot)  # as sent
        assert bot[1]["text"] == "Did that help? Reply YES or NO."
        assert bot[1]["choices"] == ["Yes", "No"]
        assert [b["from"] for b in first["conversation"] if b["from"] != "system"] == \
            ["customer", "bot", "bot", "customer", "bot"]
        assert ids(await found(client, ops_token, agent="dana")) == [served["contact_id"]]
        assert ids(await found(client, ops_token, agent="Nobody")) == []


async def test_an_erased_customers_contact_shows_nothing_personal(
        app_settings, db, redis_client, twilio, ops_token):  # noqa: F811
    standin, _ = twilio
    customer_id = await upsert_customer(db, redis_client, identities=[("phone", PHONE)],
                                        display_name=NAME, attributes={})
    async with instance(app_settings) as client:
        await served_by_an_agent(client, db, standin)
        await settled(client, db)
        [before] = await found(client, ops_token, customer=NAME)
        response = await erase_request(client, customer_id, ops_token)
        assert response.status == 200, await response.text()

        status, story = await get(client, f"/api/contacts/{before['contact_id']}", ops_token)
        assert status == 200
        served = json.dumps(story)
        assert [s for s in SECRETS if s in served] == []
        assert story["contact"]["customer"] == {"id": customer_id, "name": None, "erased": True,
                                                "address": None}
        assert story["contact"]["handling"] == "agent"  # the facts stay
        lines = [b for b in story["conversation"] if b["from"] in ("customer", "agent", "note",
                                                                     "bot")]
        greeting = "You're now talking with Dana."  # the agent's name, not the customer's data
        assert [b["text"] for b in lines if not b["erased"]] == [greeting]
        assert len(lines) > 4 and all(b["text"] == "" for b in lines if b["text"] != greeting)
        assert [e["kind"] for e in story["timeline"]][-2:] == ["wrap_up", "ended"]

        status, body = await get(client, "/api/contacts", ops_token, customer=PHONE)
        assert body["contacts"] == [] and body["customers_matched"] == 0
        assert await found(client, ops_token, customer=NAME) == []
        [row] = await found(client, ops_token, customer=customer_id)  # the pseudonymous id
        assert row["customer"]["erased"] and NAME not in json.dumps(row)


async def test_nothing_is_cached_and_the_database_failing_is_a_503(app_settings, db,  # noqa: F811
                                                                   ops_token, monkeypatch):
    from service.reporting import contact_search
    async with instance(app_settings) as client:
        response = await client.get("/api/contacts",
                                    headers={"Authorization": f"Bearer {ops_token}"})
        assert response.status == 200 and response.headers["Cache-Control"] == "no-store"

        async def broken(*args, **kwargs):
            raise ConnectionRefusedError("connection refused")

        monkeypatch.setattr(contact_search, "search", broken)
        monkeypatch.setattr(contact_search, "contact", broken)
        for path in ("/api/contacts", f"/api/contacts/{uuid.uuid4()}"):
            status, body = await get(client, path, ops_token)
            assert (status, body) == (503, {"error": "the event log cannot be read right "
                                                     "now; try again"})


async def test_a_transferred_and_surveyed_contact_shows_both_agents_the_note_and_the_answer(
        app_settings, db, tmp_path, ops_token):  # noqa: F811
    from service.conversations.transfer import PASSING_ON
    from tests.conftest import with_settings
    from tests.test_surveys import CSAT_ALWAYS, rules_with
    from tests.test_transfers import sign_in, take
    surveyed = with_settings(app_settings, rules_dir=rules_with(tmp_path, CSAT_ALWAYS))
    async with instance(surveyed) as client:
        ann = await sign_in(client, db, "Ann", ["care", "orders"])
        await text(client, "+15555550166", "I want to talk to a human")
        contact_id = (await take(ann))["contact_id"]
        bob = await sign_in(client, db, "Bob", ["billing"])
        await ann.send(type="transfer", contact_id=contact_id, queue="billing", mode="cold",
                       note="wants a refund for order 1234")
        assert (await ann.next("transfer_result"))["told_customer"] == PASSING_ON["cold"]
        await take(bob)
        await bob.send(type="wrap_up", contact_id=contact_id, resolved=True)
        await bob.next("wrapped_up")
        await events_landed(client.app)
        answered = await text(client, "+15555550166", "5")  # the CSAT question's answer
        assert answered
        await events_landed(client.app)

        status, story = await get(client, f"/api/contacts/{contact_id}", ops_token)
        assert status == 200
        contact = story["contact"]
        assert [a["name"] for a in contact["agents"]] == ["Ann", "Bob"]
        assert (contact["transferred"], contact["csat"], contact["survey"]) == \
            (True, 5, {"kind": "csat", "score": 5})
        by_kind = {e["kind"]: e for e in story["timeline"]}
        requested = by_kind["transfer_requested"]
        assert requested["private"] and requested["description"] == \
            "Transfer requested by Ann to Billing and refunds (cold)"
        assert requested["details"]["from_agent_name"] == "Ann"
        assert by_kind["wrap_up"]["description"] == "Bob wrapped up: resolved"
        assert by_kind["survey_answered"]["description"] == "CSAT answered 5/5"
        kinds = [e["kind"] for e in story["timeline"]]
        assert kinds.index("transferred") < kinds.index("wrap_up") < \
            kinds.index("survey_answered") and kinds.index("survey_sent") < \
            kinds.index("survey_answered")
        [note] = [b for b in story["conversation"] if b["from"] == "note"]
        assert (note["text"], note["author"], note["private"]) == \
            ("wants a refund for order 1234", "Ann (transfer note)", True)
        customer, thanks = story["conversation"][-2:]
        assert (customer["from"], customer["text"]) == ("customer", "5")
        assert (thanks["from"], [thanks["text"]]) == ("bot", answered)  # the words sent
        assert ids(await found(client, ops_token, agent="bob")) == [contact_id]


UK, FRANCE, FRANCE_TOO = "+447700900123", "+33612345678", "+33712345678"


async def test_a_national_number_without_its_country_code_finds_the_customer(
        app_settings, db, redis_client, ops_token):  # noqa: F811
    uk = await upsert_customer(db, redis_client, identities=[("phone", UK)],
                               display_name="Olivia Bennett", attributes={})
    france = await upsert_customer(db, redis_client, identities=[("phone", FRANCE)],
                                   display_name="Camille Durand", attributes={})
    await upsert_customer(db, redis_client, identities=[("phone", FRANCE_TOO)],
                          display_name="Louis Martin", attributes={})
    async with instance(app_settings) as client:
        await sms_resolved(client, UK)
        await sms_resolved(client, FRANCE)
        await events_landed(client.app)
        [uk_contact] = await found(client, ops_token, customer=UK)
        [france_contact] = await found(client, ops_token, customer=FRANCE)
        assert uk_contact["customer"]["id"] == uk
        assert france_contact["customer"]["id"] == france
        for typed, contact in (
                ("07700 900123", uk_contact), ("07700900123", uk_contact),
                ("7700 900 123", uk_contact), ("+44 (0)7700 900123", uk_contact),
                ("0044 7700 900123", uk_contact), ("06 12 34 56 78", france_contact),
                ("06.12.34.56.78", france_contact), ("6 12 34 56 78", france_contact),
                ("+33 6 12 34 56 78", france_contact)):
            status, body = await get(client, "/api/contacts", ops_token, customer=typed)
            assert status == 200, body
            assert (ids(body["contacts"]), body["customers_matched"]) == \
                ([contact["contact_id"]], 1), typed
        # the last 8 digits two customers' numbers share: both named, one has a contact
        status, body = await get(client, "/api/contacts", ops_token, customer="12 34 56 78")
        assert (ids(body["contacts"]), body["customers_matched"]) == \
            ([france_contact["contact_id"]], 2)
        # a different number ending in the same digits, and an international one, find nobody
        for other in ("01632 900123", "+1 632 900 123", "+33 7700 900123"):
            status, body = await get(client, "/api/contacts", ops_token, customer=other)
            assert (status, body["contacts"], body["customers_matched"]) == (200, [], 0), other
        # too few digits to be searched as the end of a number: the 400 says so
        for short in ("900123", "0 900 123", "(0)7 34"):
            status, body = await get(client, "/api/contacts", ops_token, customer=short)
            assert status == 400 and body["parameter"] == "customer", short
            assert "at least 7 digits" in body["error"], body
        # the existing look-ups are as they were
        assert ids(await found(client, ops_token, customer="Olivia Benn")) == \
            [uk_contact["contact_id"]]
        status, body = await get(client, "/api/contacts", ops_token, customer="a")
        assert status == 400 and body["parameter"] == "customer"
