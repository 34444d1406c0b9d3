"""A customer's MMS photo and PDF in the agent console, in real headless Chromium against the
real app and the Twilio stand-in (media behind basic auth): the photo shows as a contained,
rounded thumbnail that opens full size, the PDF as a download card with its type, both fetched
with the console's token (never from Twilio directly). Screenshots land in test-artifacts/."""

from __future__ import annotations

import struct
import zlib

import aiohttp
import pytest
from playwright.async_api import expect

from service.agents.desk import add_agent
from tests.browser import artifact, chromium
from tests.conftest import _clean_tables, with_settings
from tests.test_agents import ALL_SKILLS, twilio  # noqa: F401 (fixture)
from tests.test_attachments import mms
from tests.test_browser_chat_agent import (
    agent_and_customer,
    browser_installed,  # noqa: F401 (fixture)
    live,
    sign_in_available,
)
from tests.twilio_driver import text

PHONE = "+15557770188"
PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj 2 0 obj<</Type/Pages/Kids[]"
       b"/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")


@pytest.fixture
async def app_settings(settings, redis_client, twilio):  # noqa: F811
    await _clean_tables(settings.database_url)
    return with_settings(settings, offer_timeout_s=90, twilio_api_base_url=twilio[1],
                         twilio_account_sid="AC" + "1" * 32)


def parcel_png(width: int = 480, height: int = 360) -> bytes:
    """A picture of a dented cardboard box on a table, as a PNG (no imaging library)."""
    rows = []
    for y in range(height):
        row = bytearray([0])  # filter: none
        for x in range(width):
            colour = (226, 232, 240) if y < height * 0.72 else (176, 136, 96)  # wall, table
            inside = 110 < x < 370 and 70 < y < 300
            dent = inside and abs((x - 150) - (y - 90) * 0.8) < 7 and y < 200
            if inside:
                colour = (92, 64, 38) if dent else (196, 150, 98) if y > 110 else (214, 170, 116)
            if inside and abs(x - 240) < 14:
                colour = (230, 215, 180)  # tape
            row += bytes(colour)
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b""))


async def test_the_console_shows_an_mms_photo_as_a_thumbnail_and_a_pdf_as_a_download(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    token = await add_agent(db, "Dana", ALL_SKILLS)
    photo_bytes = parcel_png()
    errors: list[str] = []
    async with live(app_settings) as base, chromium() as browser:
        agent, _ = await agent_and_customer(browser, errors)
        await sign_in_available(agent, base, token)
        async with aiohttp.ClientSession(base_url=base) as http:
            # a screenshot alone in self-service: kept, shown on the offer, opened on accept
            first = standin.media_url("image/png", parcel_png(320, 480))
            await mms(http, PHONE, "", [(first, "image/png")])
            await text(http, PHONE, "I want to talk to a human")
            transcript = agent.get_by_role("log", name="Conversation")
            await expect(transcript).to_contain_text("Photo 1 (image/png): accept to open")
            await agent.screenshot(path=artifact("agent-attachment-offer.png"))
            assert not standin.media_fetches  # nothing fetched before the contact is theirs
            await agent.get_by_role("button", name="Accept").click()
            await expect(transcript).to_contain_text("You're now talking with Dana.")
            await expect(transcript.get_by_role(
                "link", name="Photo 1 from the customer: open full size")).to_have_class(
                "attachment photo ready")
            photo = standin.media_url("image/png", photo_bytes)
            receipt = standin.media_url("application/pdf", PDF)
            await mms(http, PHONE, "The box arrived crushed, photo and receipt attached",
                      [(photo, "image/png"), (receipt, "application/pdf")])

        thumb = transcript.get_by_role("link", name="Photo 2 from the customer: open full size")
        await expect(thumb).to_have_class("attachment photo ready")
        image = thumb.locator("img")
        await expect(image).to_be_visible()
        assert await image.evaluate("img => img.complete && img.naturalWidth") == 480
        assert await image.evaluate("img => img.src.startsWith('blob:')")
        box = await thumb.bounding_box()
        assert box is not None and box["width"] <= 242 and box["height"] <= 240
        await expect(thumb).to_have_css("border-top-left-radius", "12px")
        await expect(thumb).to_contain_text("Photo 2 · PNG")

        download = transcript.get_by_role(
            "link", name="PDF document (application/pdf) from the customer: download")
        await expect(download).to_contain_text("application/pdf · Download")
        await agent.screenshot(path=artifact("agent-attachments.png"))
        await thumb.screenshot(path=artifact("agent-attachment-thumbnail.png"))

        async with agent.expect_download() as fetched:
            await download.click()
        saved = await (await fetched.value).path()
        assert saved is not None and saved.read_bytes() == PDF
        assert (await fetched.value).suggested_filename == "attachment-3.pdf"

        async with agent.context.expect_page() as opened:
            await thumb.click()
        full = await opened.value
        assert full.url.startswith("blob:")
        await full.close()

        # only the console fetched the files, through the proxy, with the account's auth
        assert len(standin.media_fetches) == 3
        assert all(f["authorised"] == "True" for f in standin.media_fetches)
    assert not errors, errors
