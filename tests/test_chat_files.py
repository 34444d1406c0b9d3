"""Web chat customers' files, end to end on real PostgreSQL and Valkey: a file posted to
`/chat/files` with the session's credential is kept (type sniffed from its bytes) and reaches
the agent as an ordinary attachment, which the agent opens through the existing proxy with the
same bytes; the widget gets it back at a signed link; bad input (too large, empty, a forged or
missing credential, a non-image claiming to be a PNG) is a clear JSON error that keeps nothing;
PostgreSQL down is a 503 while the words still go through; an erasure deletes the rows."""

from __future__ import annotations

import asyncio
import io
import json
import os
from contextlib import AsyncExitStack

import asyncpg

from service.agents.desk import add_agent
from service.appkeys import EVENTS, PG
from service.conversations import erasure, prompts
from service.infra.files import sniffed_type
from service.infra.tokens import create_token
from service.model import MAX_FILE_BYTES, FileRefused
from tests.conftest import with_settings
from tests.dedicated_servers import dedicated_postgres, dedicated_valkey
from tests.test_agents import (  # noqa: F401 (fixtures)
    ALL_SKILLS,
    ChatSocket,
    app_settings,
    instance,
    open_chat,
    twilio,
)
from tests.test_attachments import get
from tests.test_notes import console_of
from tests.test_outages import world

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR a photo of a cracked mug" + bytes(200)
PDF = b"%PDF-1.7\n% a receipt for order 1234\n"


async def upload(client, credential: str | None, body: bytes, content_type: str):
    headers = {"Content-Type": content_type}
    if credential is not None:
        headers["Authorization"] = f"Bearer {credential}"
    return await client.post("/chat/files", data=io.BytesIO(body), headers=headers)


async def rows(db) -> int:
    return await db.fetchval("SELECT count(*) FROM uploaded_files")


async def erase_and_wait(client, redis_client, db, customer_id: str) -> None:
    """Erase the customer; the outbox deletes their one stored file (polled, not slept)."""
    done = await erasure.erase(client.app[PG], redis_client, customer_id, by="test")
    assert done.counts["file_deletions"] == 1
    for _ in range(100):
        if not await rows(db):
            break
        await asyncio.sleep(0.1)
    assert await rows(db) == 0


async def chat_with_agent(client, db) -> tuple[ChatSocket, dict, object, str, str]:
    """A chat customer who asked for a person, accepted by Dana: the chat socket, its session
    frame, Dana's console, the contact and Dana's token."""
    token = await add_agent(db, "Dana", ALL_SKILLS)
    console = await console_of(client, token)
    chat, session = await open_chat(client)
    await chat.next("message")
    await chat.send(type="message", text="agent")
    offer = await console.wait(lambda f: f["type"] == "offer")
    await console.send(type="accept", contact_id=offer["contact_id"])
    await console.wait(lambda f: f["type"] == "assigned")
    while (await chat.next("message"))["from"] != "agent":
        pass
    return chat, session, console, offer["contact_id"], token


async def test_a_chat_customers_photo_reaches_the_agent_who_opens_the_same_bytes(
        app_settings, db):
    async with instance(app_settings) as client:
        chat, session, console, contact, token = await chat_with_agent(client, db)
        assert session["files"]  # the session's upload credential

        response = await upload(client, session["files"], PNG, "image/png")
        assert response.status == 200, await response.text()
        sent = (await response.json())["file"]
        assert (sent["content_type"], sent["size"]) == ("image/png", len(PNG))
        assert sent["url"].startswith("/chat/files/")

        pushed = await console.wait(lambda f: f["type"] == "message" and f.get("attachments"))
        assert (pushed["contact_id"], pushed["text"]) == (contact, "")
        assert pushed["attachments"] == [{"n": 1, "content_type": "image/png"}]
        assert "stored:" not in json.dumps(pushed)  # the reference stays on the server

        opened = await get(client, contact, 1, token)  # the existing proxy, unchanged
        assert opened.status == 200 and await opened.read() == PNG
        assert opened.headers["Content-Type"] == "image/png"
        # the widget's signed link serves it too; a changed signature or file does not
        link = await client.get(sent["url"])
        assert link.status == 200 and await link.read() == PNG
        forged = sent["url"][:-4] + ("0000" if not sent["url"].endswith("0000") else "1111")
        assert (await client.get(forged)).status == 403

        # a PDF claimed as anything is kept as a PDF (its bytes say so), a download
        response = await upload(client, session["files"], PDF, "application/octet-stream")
        assert response.status == 200
        assert (await response.json())["file"]["content_type"] == "application/pdf"
        pushed = await console.wait(lambda f: f["type"] == "message"
                                    and f.get("attachments", [{}])[0].get("n") == 2)
        assert pushed["attachments"] == [{"n": 2, "content_type": "application/pdf"}]
        opened = await get(client, contact, 2, token)
        assert await opened.read() == PDF
        assert opened.headers["Content-Disposition"].startswith("attachment")

        # a reconnect replays the transcript with the files as fresh signed links
        await chat.ws.close()
        again, resumed = await open_chat(client, session=session["session"])
        assert resumed["contact_id"] == contact
        replayed = []
        while True:
            frame = await again.next("message")
            if frame.get("files"):
                replayed.append(frame)
            if len(replayed) == 2:
                break
        assert [f["files"][0]["content_type"] for f in replayed] == ["image/png",
                                                                     "application/pdf"]
        link = await client.get(replayed[0]["files"][0]["url"])
        assert await link.read() == PNG
        assert await rows(db) == 2


async def test_a_photo_alone_in_self_service_is_answered_on_the_socket_and_kept(app_settings,
                                                                                 db):
    async with instance(app_settings) as client:
        chat, session = await open_chat(client)
        await chat.next("message")
        await chat.next("status")
        response = await upload(client, session["files"], PNG, "image/png")
        assert response.status == 200
        answer = await chat.next("message")  # the reply's frames arrive on the socket
        assert answer == {"type": "message", "from": "bot", "text": prompts.MEDIA_ONLY}
        assert await client.app[EVENTS].flush()
        [received] = [json.loads(r["data"]) for r in await db.fetch(
            "SELECT data FROM contact_events WHERE kind = 'received'")]
        assert received["attachments"][0]["content_type"] == "image/png"
        assert received["attachments"][0]["ref"].startswith("stored:")


async def test_bad_uploads_get_a_clear_error_and_keep_nothing(app_settings, db):
    shop = "https://shop.example"
    async with instance(with_settings(app_settings, chat_origins=(shop,))) as client:
        chat, session = await open_chat(client)
        await chat.next("message")
        credential = session["files"]
        before = await rows(db)

        too_large = await upload(client, credential, b"\xff\xd8\xff" + bytes(MAX_FILE_BYTES),
                                 "image/jpeg")
        assert too_large.status == 413
        assert "over 5 MB" in (await too_large.json())["error"]
        empty = await upload(client, credential, b"", "image/png")
        assert empty.status == 400 and "empty" in (await empty.json())["error"]
        fake = await upload(client, credential, b"<svg onload=alert(1)>", "image/png")
        assert fake.status == 415 and "not a image/png image" in (await fake.json())["error"]
        not_pdf = await upload(client, credential, b"<html>", "application/pdf")
        assert not_pdf.status == 415

        other, other_session = await open_chat(client)
        named, mac = credential.split(".")
        for wrong in (None, "", "nonsense", f"{named}.{'0' * 64}",
                      f"{other_session['files'].split('.')[0]}.{mac}"):
            refused = await upload(client, wrong, PNG, "image/png")
            assert refused.status == 401, wrong
            assert "may not send files" in (await refused.json())["error"]
        foreign = await client.post("/chat/files", data=PNG, headers={
            "Authorization": f"Bearer {credential}", "Origin": "https://evil.example"})
        assert foreign.status == 403 and "error" in await foreign.json()
        preflight = await client.options("/chat/files", headers={
            "Origin": shop, "Access-Control-Request-Method": "POST"})
        assert preflight.status == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == shop
        assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
        assert await rows(db) == before
        assert (await client.get("/chat/files/abc?expires=99999999999&sig=" + "0" * 64)
                ).status == 403
        assert (await client.get("/chat/files/abc")).status == 403


def test_the_type_comes_from_the_bytes_for_images_and_pdfs():
    assert sniffed_type(PNG, "application/octet-stream") == "image/png"
    assert sniffed_type(b"\xff\xd8\xff\xe0 jfif", "image/png") == "image/jpeg"
    assert sniffed_type(b"GIF89a...", "") == "image/gif"
    assert sniffed_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp") == "image/webp"
    assert sniffed_type(b"hello", "text/plain; charset=utf-8") == "text/plain"
    assert sniffed_type(b"<html>", "text/html") == "application/octet-stream"
    for data, claimed in ((b"<svg/>", "image/svg+xml"), (b"MZ", "image/gif"),
                          (b"", "text/plain"), (b"x", "application/pdf")):
        try:
            sniffed_type(data, claimed)
        except FileRefused:
            continue
        raise AssertionError(f"{claimed} {data!r} was taken")


async def test_postgres_down_the_upload_is_a_503_and_the_words_still_go_through(tmp_path):
    async with AsyncExitStack() as stack:
        postgres = stack.enter_context(dedicated_postgres())
        valkey = stack.enter_context(dedicated_valkey(tmp_path / "valkey"))
        w = await stack.enter_async_context(world(postgres.url, valkey.url, tmp_path / "data"))
        chat, session = await open_chat(w.client)
        await chat.next("message")
        await chat.next("status")

        await asyncio.to_thread(postgres.stop)
        refused = await upload(w.client, session["files"], PNG, "image/png")
        assert refused.status == 503
        assert "could not be sent right now" in (await refused.json())["error"]
        await chat.send(type="message", text="I forgot my password")  # text unaffected
        answer = await chat.next("message")
        assert "password" in answer["text"].lower()

        await asyncio.to_thread(postgres.start)
        for _ in range(50):  # the pool's connections were cut: the next acquire reconnects
            retried = await upload(w.client, session["files"], PNG, "image/png")
            if retried.status == 200:
                break
            await asyncio.sleep(0.2)
        assert retried.status == 200
        conn = await asyncpg.connect(postgres.url)
        assert await conn.fetchval("SELECT count(*) FROM uploaded_files") == 1
        await conn.close()


async def test_an_erasure_deletes_the_uploaded_rows(app_settings, db, redis_client):
    async with instance(app_settings) as client:
        chat, session, console, contact, token = await chat_with_agent(client, db)
        response = await upload(client, session["files"], PNG, "image/png")
        assert response.status == 200
        await console.wait(lambda f: f["type"] == "message" and f.get("attachments"))
        await console.send(type="wrap_up", contact_id=contact, resolved=True, note="")
        await console.wait(lambda f: f["type"] == "wrapped_up")
        assert await rows(db) == 1
        assert await client.app[EVENTS].flush()
        customer_id = await db.fetchval(
            "SELECT customer_id::text FROM contact_facts WHERE contact_id = $1::uuid", contact)
        await erase_and_wait(client, redis_client, db, customer_id)
        assert (await client.get((await response.json())["file"]["url"])).status == 404
        supervisor = await create_token(db, "supervisor", "floor lead")
        assert (await get(client, contact, 1, supervisor)).status == 404


async def test_a_large_photo_arrives_whole_and_a_flood_of_uploads_is_refused(app_settings, db):
    async with instance(app_settings) as client:
        chat, session, console, contact, token = await chat_with_agent(client, db)
        big = b"\xff\xd8\xff\xe0" + os.urandom(3 * 1024 * 1024)  # far over one read's chunk
        response = await upload(client, session["files"], big, "image/jpeg")
        assert response.status == 200, await response.text()
        assert (await response.json())["file"]["size"] == len(big)
        await console.wait(lambda f: f["type"] == "message" and f.get("attachments"))
        opened = await get(client, contact, 1, token)
        assert opened.status == 200 and await opened.read() == big

        async def chunks():  # no Content-Length: the cap holds while reading
            for _ in range(6):
                yield b"\xff\xd8\xff" + bytes(1024 * 1024)
        streamed = await client.post("/chat/files", data=chunks(), headers={
            "Authorization": f"Bearer {session['files']}", "Content-Type": "image/jpeg"})
        assert streamed.status == 413 and "over 5 MB" in (await streamed.json())["error"]

        statuses = [(await upload(client, session["files"], PNG, "image/png")).status
                    for _ in range(8)]
        assert 429 in statuses and statuses[0] == 200
        assert await rows(db) == 1 + statuses.count(200)
