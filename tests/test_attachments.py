"""Customers' photos and files reach the agent, end to end on real PostgreSQL and Valkey with
the Twilio stand-in serving media behind basic auth: a signed MMS while the contact is with an
agent reaches the agent's socket and the proxy endpoint hands that agent (and supervisors) the
bytes, nobody else; a photo with no words in self-service gets a clear answer and is kept for
the agent who takes the contact later; WhatsApp the same; foreign media URLs are dropped with
the words still handled; Twilio failing is a clear JSON error; an erasure drops the
references."""

from __future__ import annotations

import asyncio
import json
import time

from channels.twilio_rest import MAX_MEDIA_BYTES
from service.agents.desk import add_agent
from service.appkeys import EVENTS, HANDOFF, PG
from service.conversations import erasure, prompts
from service.infra.tokens import create_token
from tests.conftest import with_settings
from tests.test_agents import (  # noqa: F401 (fixtures)
    ALL_SKILLS,
    app_settings,
    instance,
    twilio,
)
from tests.test_notes import console_of, sms_contact_with
from tests.test_whatsapp import WA, wa_params
from tests.twilio_driver import messages, post_signed, sms_params, text

CUSTOMER = "+15555550188"  # sms_contact_with's customer
PHOTO = b"\xff\xd8\xff\xe0" + b"JFIF photo of a crushed parcel" + bytes(range(256)) * 8
PDF = b"%PDF-1.4\n% the delivery receipt\n"


async def mms(client, sender: str, body: str, media: list[tuple[str, str]],
              path: str = "/twilio/sms", params: dict[str, str] | None = None) -> list[str]:
    """One signed MMS (or WhatsApp, by `params`) with MediaUrl{N} and MediaContentType{N}."""
    form = params or sms_params(body, sender)
    form["NumMedia"] = str(len(media))
    for n, (url, kind) in enumerate(media):
        form[f"MediaUrl{n}"], form[f"MediaContentType{n}"] = url, kind
    response = await post_signed(client, path, form)
    assert response.status == 200, await response.text()
    return messages(await response.text())


async def get(client, contact_id: str, n: int | str, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await client.get(f"/api/contacts/{contact_id}/attachments/{n}", headers=headers)


async def received_events(client, db, contact_id: str) -> list[dict]:
    assert await client.app[EVENTS].flush()
    rows = await db.fetch("SELECT data FROM contact_events WHERE kind = 'received' "
                          "AND contact_id = $1::uuid ORDER BY seq", contact_id)
    return [json.loads(r["data"]) for r in rows]


def with_files(contact_id: str):
    return lambda f: (f["type"] == "message" and f["contact_id"] == contact_id
                      and f.get("attachments"))


async def test_an_mms_photo_reaches_the_agent_and_only_they_and_supervisors_may_open_it(
        app_settings, db, twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact, token = await sms_contact_with(client, db, standin)
        photo = standin.media_url("image/jpeg", PHOTO)
        receipt = standin.media_url("application/pdf", PDF)
        assert await mms(client, CUSTOMER, "The parcel arrived like this",
                         [(photo, "image/jpeg"), (receipt, "application/pdf")]) == []

        pushed = await console.wait(with_files(contact))
        assert pushed["text"] == "The parcel arrived like this"
        assert pushed["attachments"] == [{"n": 1, "content_type": "image/jpeg"},
                                         {"n": 2, "content_type": "application/pdf"}]
        assert "ref" not in json.dumps(pushed)  # the provider's URL never reaches a browser

        response = await get(client, contact, 1, token)
        assert response.status == 200, await response.text()
        assert await response.read() == PHOTO
        assert response.headers["Content-Type"] == "image/jpeg"
        assert response.headers["Content-Disposition"].startswith("inline")
        assert response.headers["Cache-Control"].startswith("private")
        assert response.headers["X-Content-Type-Options"] == "nosniff"

        response = await get(client, contact, 2, token)
        assert response.status == 200 and await response.read() == PDF
        assert response.headers["Content-Type"] == "application/pdf"
        assert response.headers["Content-Disposition"] == \
            'attachment; filename="attachment-2.pdf"'

        # a photo alone, while with the agent: straight to the agent, nothing said back
        third = standin.media_url("image/png", b"\x89PNG screenshot")
        assert await mms(client, CUSTOMER, "", [(third, "image/png")]) == []
        alone = await console.wait(lambda f: with_files(contact)(f) and f["text"] == "")
        assert alone["attachments"] == [{"n": 3, "content_type": "image/png"}]

        missing = await get(client, contact, 4, token)
        assert missing.status == 404 and "no attachment 4" in (await missing.json())["error"]
        assert (await get(client, contact, "one", token)).status == 400
        other = await add_agent(db, "Eve", ALL_SKILLS)
        refused = await get(client, contact, 1, other)
        assert refused.status == 403 and "not assigned to you" in (await refused.json())["error"]
        assert (await get(client, contact, 1, None)).status == 401
        assert (await get(client, contact, 1, "sb_agent_forged")).status == 401
        supervisor = await create_token(db, "supervisor", "floor lead")
        seen = await get(client, contact, 1, supervisor)
        assert seen.status == 200 and await seen.read() == PHOTO
        assert all(f["authorised"] == "True" for f in standin.media_fetches)

        # Twilio answers with a redirect to its file host: followed, the credentials not sent
        standin.redirect_media = True
        moved = await get(client, contact, 2, token)
        assert moved.status == 200 and await moved.read() == PDF
        assert [r["authorization"] for r in standin.file_host_requests] == [""]
        standin.redirect_media = False

        # the transcript and the event log keep them; the log keeps the reference too
        _, conv = await client.app[HANDOFF].conversation(contact)
        line = next(line for line in conv["transcript"]
                    if line["text"] == "The parcel arrived like this")
        assert line["attachments"] == pushed["attachments"]
        events = [e for e in await received_events(client, db, contact) if "attachments" in e]
        assert [[a["ref"] for a in e["attachments"]] for e in events] == \
            [[photo, receipt], [third]]


async def test_a_photo_alone_in_self_service_is_answered_and_kept_for_the_agent(
        app_settings, db, twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        token = await add_agent(db, "Dana", ALL_SKILLS)
        console = await console_of(client, token)
        photo = standin.media_url("image/jpeg", PHOTO)
        assert await mms(client, CUSTOMER, "", [(photo, "image/jpeg")]) == [prompts.MEDIA_ONLY]
        # the words that follow are understood as usual
        assert await text(client, CUSTOMER, "I want to talk to a human")
        offer = await console.wait(lambda f: f["type"] == "offer")
        first = offer["context"]["transcript"][0]
        assert (first["from"], first["text"], first["attachments"]) == \
            ("customer", "", [{"n": 1, "content_type": "image/jpeg"}])
        contact = offer["contact_id"]
        assert (await get(client, contact, 1, token)).status == 403  # offered, not yet held

        await console.send(type="accept", contact_id=contact)
        assigned = await console.wait(lambda f: f["type"] == "assigned")
        assert assigned["context"]["transcript"][0]["attachments"] == first["attachments"]
        response = await get(client, contact, 1, token)
        assert response.status == 200 and await response.read() == PHOTO
        # a console that reconnects gets them in the context package again
        again = await console_of(client, token, available=False)
        resynced = await again.wait(lambda f: f["type"] == "assigned")
        assert resynced["context"]["transcript"][0]["attachments"] == first["attachments"]

        # after wrap-up the customer comes back: their history counts the files
        await console.send(type="wrap_up", contact_id=contact, resolved=True, note="")
        await console.wait(lambda f: f["type"] == "wrapped_up")
        assert (await get(client, contact, 1, token)).status == 403  # no longer theirs
        supervisor = await create_token(db, "supervisor", "floor lead")
        assert await client.app[EVENTS].flush()
        late = await get(client, contact, 1, supervisor)  # from the event log
        assert late.status == 200 and await late.read() == PHOTO
        assert (await get(client, contact, 2, supervisor)).status == 404
        await text(client, CUSTOMER, "I want to talk to a human again")
        offer = await console.wait(lambda f: f["type"] == "offer" and f["contact_id"] != contact)
        [earlier] = offer["context"]["earlier_contacts"]
        assert (earlier["contact_id"], earlier["attachments"]) == (contact, 1)


async def test_a_whatsapp_photo_with_words_is_understood_and_reaches_the_agent(app_settings, db,
                                                                              twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        token = await add_agent(db, "Dana", ALL_SKILLS)
        console = await console_of(client, token)
        photo = standin.media_url("image/webp", PHOTO)
        await mms(client, WA, "", [(photo, "image/webp")], path="/twilio/whatsapp",
                  params=wa_params("I want to talk to a human"))
        offer = await console.wait(lambda f: f["type"] == "offer")
        assert offer["channel"] == "whatsapp"
        assert offer["context"]["transcript"][0]["attachments"] == \
            [{"n": 1, "content_type": "image/webp"}]
        await console.send(type="accept", contact_id=offer["contact_id"])
        await console.wait(lambda f: f["type"] == "assigned")
        response = await get(client, offer["contact_id"], 1, token)
        assert response.status == 200 and await response.read() == PHOTO
        assert response.headers["Content-Disposition"].startswith("inline")


async def test_foreign_or_malformed_media_is_dropped_and_the_words_still_handled(
        app_settings, db, twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        good = standin.media_url("image/jpeg", PHOTO)
        foreign = [
            ("https://attacker.example/2010-04-01/Accounts/AC" + "1" * 32
             + "/Messages/MM" + "1" * 32 + "/Media/ME" + "1" * 32, "image/jpeg"),
            (standin.media_url("image/jpeg", PHOTO, account="AC" + "2" * 32), "image/jpeg"),
            (f"{standin.url}/internal/admin", "image/jpeg"),
            (good.replace("http://", "http://user:pw@"), "image/jpeg"),
            ("", "image/jpeg"),
            (good, "image jpeg<script>"),  # kept, as an unknown type
        ]
        reply = await mms(client, CUSTOMER, "where is my order", foreign)
        assert reply[-1] == "Did that help? Reply YES or NO."
        assert await client.app[EVENTS].flush()
        contact = await db.fetchval("SELECT id::text FROM contacts")
        _, conv = await client.app[HANDOFF].conversation(contact)
        assert [(a["n"], a["content_type"], a["ref"]) for a in conv["attachments"]] == \
            [(1, "application/octet-stream", good)]
        assert not standin.media_fetches  # nothing was fetched on the way in

        # all of it foreign and no words: answered at the edge, nothing kept
        assert await mms(client, "+15555550190", "", foreign[:2]) == [
            "Sorry, I can only read text, so I couldn't open what you sent. Please tell me "
            "in a few words what you need, or reply AGENT to talk to a person."]
        # more than Twilio's 10: the first ten kept
        many = [(standin.media_url("image/png", b"png"), "image/png") for _ in range(12)]
        await mms(client, "+15555550191", "where is my order", many)
        assert await client.app[EVENTS].flush()
        [data] = [json.loads(r["data"]) for r in await db.fetch(
            "SELECT data FROM contact_events WHERE kind = 'received' AND data ? 'attachments' "
            "AND contact_id <> $1::uuid", contact)]
        assert [a["n"] for a in data["attachments"]] == list(range(1, 11))


async def test_twilio_failing_to_hand_over_a_file_is_a_clear_error_never_a_hang(
        app_settings, db, twilio):
    standin, _ = twilio
    settings = with_settings(app_settings, twilio_timeout_s=1.0)
    async with instance(settings) as client:
        console, contact, token = await sms_contact_with(client, db, standin)
        photo = standin.media_url("image/jpeg", PHOTO)
        big = standin.media_url("image/jpeg", b"x" * (MAX_MEDIA_BYTES + 1))
        await mms(client, CUSTOMER, "look", [(photo, "image/jpeg"), (big, "image/jpeg")])
        await console.wait(with_files(contact))

        standin.fail_media_with = 500
        response = await get(client, contact, 1, token)
        assert response.status == 502
        assert "Twilio answered 500" in (await response.json())["error"]
        standin.fail_media_with = None

        standin.hang_media = True
        started = time.monotonic()
        response = await get(client, contact, 1, token)
        assert response.status == 502 and "did not hand over" in (await response.json())["error"]
        assert time.monotonic() - started < 8
        standin.hang_media = False

        too_big = await get(client, contact, 2, token)
        assert too_big.status == 502 and "larger than 5 MB" in (await too_big.json())["error"]

        standin.media.clear()  # deleted at Twilio
        gone = await get(client, contact, 1, token)
        assert gone.status == 404 and "no longer has" in (await gone.json())["error"]

        await standin.stop()  # Twilio unreachable
        try:
            down = await get(client, contact, 1, token)
            assert down.status == 502 and down.content_type == "application/json"
        finally:
            await standin.start()


async def test_an_erasure_drops_the_references_and_deletes_the_files_at_twilio(
        app_settings, db, twilio, redis_client):
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact, token = await sms_contact_with(client, db, standin)
        photo = standin.media_url("image/jpeg", PHOTO)
        await mms(client, CUSTOMER, "see attached", [(photo, "image/jpeg")])
        await console.wait(with_files(contact))
        await console.send(type="wrap_up", contact_id=contact, resolved=True, note="")
        await console.wait(lambda f: f["type"] == "wrapped_up")
        for _ in range(100):  # the greeting settles in the outbox
            if not await db.fetchval("SELECT count(*) FROM outbox WHERE state = 'queued'"):
                break
            await asyncio.sleep(0.05)
        [event] = [e for e in await received_events(client, db, contact) if "attachments" in e]
        assert event["attachments"][0]["ref"] == photo
        customer_id = await db.fetchval("SELECT customer_id::text FROM customer_identities "
                                        "WHERE value = $1", CUSTOMER)
        standin.fail_media_with = 503  # Twilio busy: the deletion waits in the outbox
        done = await erasure.erase(client.app[PG], redis_client, customer_id, by="test")
        assert done.counts["file_deletions"] == 1

        [event] = [e for e in await received_events(client, db, contact) if "attachments" in e]
        assert event["attachments"] == [{"n": 1, "content_type": "image/jpeg"}]
        assert photo not in json.dumps(
            [dict(r) for r in await db.fetch("SELECT data::text FROM contact_events")])
        supervisor = await create_token(db, "supervisor", "floor lead")
        assert (await get(client, contact, 1, supervisor)).status == 404

        media_sid = photo.rsplit("/", 1)[1]
        for _ in range(40):  # retried until Twilio takes it
            if await db.fetchval("SELECT attempts FROM outbox "
                                 "WHERE action = 'delete_attachment'") >= 1:
                break
            await asyncio.sleep(0.1)
        assert media_sid in standin.media and not standin.media_deletes
        standin.fail_media_with = None
        for _ in range(200):
            if standin.media_deletes:
                break
            await asyncio.sleep(0.1)
        assert standin.media_deletes == [media_sid] and media_sid not in standin.media
        await wait_for_state(db, "sent")
        async with client.app[PG].acquire() as conn:
            assert (await erasure.reapply(conn))["file_references"] == 1
        payload = await db.fetchval("SELECT payload::text FROM outbox "
                                    "WHERE action = 'delete_attachment'")
        assert json.loads(payload) == {"content_type": "image/jpeg"}


async def wait_for_state(db, state: str) -> None:
    for _ in range(100):
        if await db.fetchval("SELECT state FROM outbox WHERE action = 'delete_attachment'") \
                == state:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the deletion never reached {state}")


async def test_after_a_transfer_the_next_agent_sees_and_opens_the_files_and_the_first_cannot(
        app_settings, db, twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact, first = await sms_contact_with(client, db, standin)
        photo = standin.media_url("image/gif", PHOTO)
        await mms(client, CUSTOMER, "", [(photo, "image/gif")])
        await console.wait(with_files(contact))
        second = await add_agent(db, "Bob", ["billing"])
        colleague = await console_of(client, second)
        await console.send(type="transfer", contact_id=contact, queue="billing", mode="cold")
        offer = await colleague.wait(lambda f: f["type"] == "offer")
        lines = [line for line in offer["context"]["transcript"] if line.get("attachments")]
        assert [line["attachments"] for line in lines] == [[{"n": 1, "content_type": "image/gif"}]]
        await colleague.send(type="accept", contact_id=contact)
        await colleague.wait(lambda f: f["type"] == "assigned")
        taken = await get(client, contact, 1, second)
        assert taken.status == 200 and await taken.read() == PHOTO
        assert (await get(client, contact, 1, first)).status == 403
