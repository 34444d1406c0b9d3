"""Files agents send, end to end on real PostgreSQL and Valkey with the Twilio stand-in: the
console posts a file to `POST /api/contacts/{id}/files`; an SMS customer gets it as a message
whose MediaUrl is a signed, expiring link on our public URL (the stand-in fetches it back with
the right bytes; a forged or expired link is refused); Twilio failing at first then taking it
delivers it once; the console's id makes a resend a no-op; a web chat customer gets it in the
widget's frames at a link the session may open; bad input keeps nothing; the agent's event
names the file and an erasure deletes its row."""

from __future__ import annotations

import asyncio
import io
import json
import os
import uuid

import pytest

from channels.base import signed_file_url
from service.agents.desk import add_agent
from service.appkeys import EVENTS, FILES
from service.infra.tokens import create_token
from service.model import MAX_FILE_BYTES
from tests.conftest import PUBLIC_URL, with_settings
from tests.test_agents import ALL_SKILLS, instance, open_chat, twilio  # noqa: F401 (fixtures)
from tests.test_agents import app_settings as agent_settings  # noqa: F401
from tests.test_attachments import get
from tests.test_chat_files import PDF, PNG, chat_with_agent, erase_and_wait, rows
from tests.test_notes import console_of, sms_contact_with
from tests.test_outbox import wait_for
from tests.test_whatsapp import WA, wa_params
from tests.twilio_driver import Call, post_signed


@pytest.fixture
def app_settings(agent_settings):  # noqa: F811
    return with_settings(agent_settings, twilio_timeout_s=1.0, outbox_retry_base_s=0.2,
                         outbox_retry_max_s=1.0)


async def send(client, contact: str, token: str | None, body: bytes, content_type: str,
               message_id: str | None = None):
    headers = {"Content-Type": content_type, "X-Message-Id": message_id or str(uuid.uuid4())}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return await client.post(f"/api/contacts/{contact}/files", data=io.BytesIO(body),
                             headers=headers)


def with_media(standin) -> list[dict]:
    return [m for m in standin.messages if m.get("MediaUrl")]


async def test_a_file_reaches_an_sms_customer_as_a_signed_media_url_once(app_settings, db,
                                                                          twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        standin.service_url = str(client.make_url("")).rstrip("/")
        console, contact, token = await sms_contact_with(client, db, standin)
        assert (await console.wait(lambda f: f["type"] == "assigned"))["sends_files"] is True
        message_id = str(uuid.uuid4())
        response = await send(client, contact, token, PNG, "image/png", message_id)
        assert response.status == 200, await response.text()
        answer = await response.json()
        assert answer["message_id"] == message_id
        assert answer["attachments"] == [{"n": 1, "content_type": "image/png"}]
        await console.wait(lambda f: f["type"] == "message_status"
                           and f["message_id"] == message_id and f["state"] == "sent")

        [message] = with_media(standin)
        assert message["To"] == "+15555550188" and not message.get("Body")
        assert message["MediaUrl"].startswith(f"{PUBLIC_URL}/twilio/sms/files/")
        assert "expires=" in message["MediaUrl"] and "sig=" in message["MediaUrl"]
        [fetched] = standin.media_sent
        assert (fetched["status"], fetched["data"]) == (200, PNG)
        assert fetched["content_type"] == "image/png"

        # a forged signature, another file's, or an expired link: refused
        url = message["MediaUrl"]
        forged = await standin.fetch_media_url(url[:-6] + "abcdef")
        assert forged["status"] == 403 and b"not valid or has expired" in forged["data"]
        file_id = url.split("/files/")[1].split("?")[0]
        expired = signed_file_url(client.app[FILES], PUBLIC_URL, "/twilio/sms", file_id, -5)
        assert (await standin.fetch_media_url(expired))["status"] == 403
        later = url.replace("expires=", "expires=9")
        assert (await standin.fetch_media_url(later))["status"] == 403
        assert (await standin.fetch_media_url(url.replace("/twilio/sms/", "/chat/")))[
            "status"] == 403  # a link is for the route it was signed for

        # the same id again (a console resending): nothing new kept or sent
        again = await send(client, contact, token, PNG, "image/png", message_id)
        assert again.status == 200 and (await again.json())["state"] == "sent"
        await asyncio.sleep(0.3)
        assert len(with_media(standin)) == 1 and await rows(db) == 1

        opened = await get(client, contact, 1, token)  # the agent's own file, by number
        assert opened.status == 200 and await opened.read() == PNG
        assert await client.app[EVENTS].flush()
        [said] = [json.loads(r["data"]) for r in await db.fetch(
            "SELECT data FROM contact_events WHERE kind = 'agent_message' "
            "AND data->>'message_id' = $1", message_id)]
        assert said["attachments"][0]["n"] == 1
        assert said["attachments"][0]["ref"] == f"stored:{file_id}"


async def test_twilio_failing_at_first_then_taking_the_file_delivers_it_once(app_settings, db,
                                                                             twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        standin.service_url = str(client.make_url("")).rstrip("/")
        console, contact, token = await sms_contact_with(client, db, standin)
        standin.fail_with = 503
        message_id = str(uuid.uuid4())
        receipt = PDF + os.urandom(2 * 1024 * 1024)  # a scanned receipt: many reads' worth
        response = await send(client, contact, token, receipt, "application/pdf", message_id)
        assert response.status == 200 and (await response.json())["state"] == "queued"
        await wait_for(lambda: len(standin.attempts) >= 3, timeout_s=15)
        assert not with_media(standin)
        standin.fail_with = None
        await console.wait(lambda f: f["type"] == "message_status"
                           and f["message_id"] == message_id and f["state"] == "sent",
                           timeout_s=15)
        await asyncio.sleep(0.5)
        [message] = with_media(standin)
        [fetched] = standin.media_sent
        assert fetched["data"] == receipt and fetched["content_type"] == "application/pdf"
        assert await db.fetchval("SELECT attempts FROM outbox WHERE id = $1::uuid",
                                 message_id) >= 2


async def test_a_file_reaches_a_chat_customer_at_a_link_the_session_opens(app_settings, db):
    async with instance(app_settings) as client:
        chat, session, console, contact, token = await chat_with_agent(client, db)
        response = await send(client, contact, token, PDF, "application/pdf")
        assert response.status == 200, await response.text()
        frame = await chat.next("message")
        assert (frame["from"], frame["text"]) == ("agent", "")
        [shown] = frame["files"]
        assert shown["content_type"] == "application/pdf"
        link = await client.get(shown["url"])
        assert link.status == 200 and await link.read() == PDF
        assert link.headers["Content-Disposition"].startswith("attachment")

        # a reconnect replays the agent's file among the transcript
        await chat.ws.close()
        again, _ = await open_chat(client, session=session["session"])
        while not (replayed := await again.next("message")).get("files"):
            pass
        assert replayed["from"] == "agent"
        assert await (await client.get(replayed["files"][0]["url"])).read() == PDF


async def test_bad_files_from_agents_get_a_clear_error_and_keep_nothing(app_settings, db,
                                                                        twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact, token = await sms_contact_with(client, db, standin)
        big = await send(client, contact, token, b"\x89PNG\r\n\x1a\n" + bytes(MAX_FILE_BYTES),
                         "image/png")
        assert big.status == 413 and "over 5 MB" in (await big.json())["error"]
        fake = await send(client, contact, token, b"<svg onload=alert(1)>", "image/png")
        assert fake.status == 415 and "not a image/png" in (await fake.json())["error"]
        empty = await send(client, contact, token, b"", "application/pdf")
        assert empty.status == 400
        bad_id = await client.post(f"/api/contacts/{contact}/files", data=PNG, headers={
            "Authorization": f"Bearer {token}", "X-Message-Id": "one"})
        assert bad_id.status == 400 and "X-Message-Id" in (await bad_id.json())["error"]
        other = await add_agent(db, "Eve", ALL_SKILLS)
        refused = await send(client, contact, other, PNG, "image/png")
        assert refused.status == 403 and "not assigned" in (await refused.json())["error"]
        assert (await send(client, contact, None, PNG, "image/png")).status == 401
        assert (await send(client, str(uuid.uuid4()), token, PNG, "image/png")).status == 403
        assert await rows(db) == 0 and not with_media(standin)


async def test_an_erasure_deletes_the_files_agents_sent(app_settings, db, twilio, redis_client):
    standin, _ = twilio
    async with instance(app_settings) as client:
        standin.service_url = str(client.make_url("")).rstrip("/")
        console, contact, token = await sms_contact_with(client, db, standin)
        message_id = str(uuid.uuid4())
        assert (await send(client, contact, token, PNG, "image/png", message_id)).status == 200
        await console.wait(lambda f: f["type"] == "message_status"
                           and f["message_id"] == message_id and f["state"] == "sent")
        await console.send(type="wrap_up", contact_id=contact, resolved=True, note="")
        await console.wait(lambda f: f["type"] == "wrapped_up")
        assert await rows(db) == 1
        assert await client.app[EVENTS].flush()
        # the contact's page shows the agent's file; a supervisor opens it from the log
        supervisor = await create_token(db, "supervisor", "floor lead")
        story = await (await client.get(f"/api/contacts/{contact}", headers={
            "Authorization": f"Bearer {supervisor}"})).json()
        [sent] = [b for b in story["conversation"] if b["from"] == "agent" and
                  b.get("attachments")]
        assert sent["attachments"] == [{"n": 1, "content_type": "image/png", "erased": False}]
        late = await get(client, contact, 1, supervisor)
        assert late.status == 200 and await late.read() == PNG
        customer_id = await db.fetchval("SELECT customer_id::text FROM customer_identities "
                                        "WHERE value = $1", "+15555550188")
        await erase_and_wait(client, redis_client, db, customer_id)
        assert (await standin.fetch_media_url(with_media(standin)[0]["MediaUrl"]))[
            "status"] == 404
        assert not standin.media_deletes  # our own file: nothing asked of Twilio
        story = await (await client.get(f"/api/contacts/{contact}", headers={
            "Authorization": f"Bearer {supervisor}"})).json()
        [sent] = [b for b in story["conversation"] if b["from"] == "agent" and
                  b.get("attachments")]
        assert sent["attachments"] == [{"n": 1, "content_type": "image/png", "erased": True}]
        assert (await get(client, contact, 1, supervisor)).status == 404


async def test_a_call_carries_no_files_and_whatsapp_gets_one_as_media(app_settings, db, twilio):
    standin, _ = twilio
    async with instance(app_settings) as client:
        standin.service_url = str(client.make_url("")).rstrip("/")
        token = await add_agent(db, "Dana", ALL_SKILLS)
        console = await console_of(client, token)
        call = await Call(client, "+15555550199").dial()
        await call.press("0")
        offer = await console.wait(lambda f: f["type"] == "offer")
        await console.send(type="accept", contact_id=offer["contact_id"])
        assigned = await console.wait(lambda f: f["type"] == "assigned")
        assert assigned["sends_files"] is False  # the console hides its paperclip
        refused = await send(client, offer["contact_id"], token, PNG, "image/png")
        assert refused.status == 409 and "cannot carry files" in (await refused.json())["error"]
        assert await rows(db) == 0

        await post_signed(client, "/twilio/whatsapp", wa_params("I want to talk to a human"))
        offer = await console.wait(lambda f: f["type"] == "offer"
                                   and f["channel"] == "whatsapp")
        await console.send(type="accept", contact_id=offer["contact_id"])
        assigned = await console.wait(lambda f: f["type"] == "assigned"
                                      and f["contact_id"] == offer["contact_id"])
        assert assigned["sends_files"] is True
        response = await send(client, offer["contact_id"], token, PNG, "image/png")
        assert response.status == 200, await response.text()
        await wait_for(lambda: len(standin.media_sent) == 1)
        [message] = with_media(standin)
        assert message["To"] == WA
        assert message["MediaUrl"].startswith(f"{PUBLIC_URL}/twilio/whatsapp/files/")
        assert standin.media_sent[0]["data"] == PNG
