"""Files both ways in real headless Chromium against the real app: a chat customer attaches a
photo with the widget's paperclip, sees it in the conversation, and the agent sees it as a
thumbnail in the console (fetched through the proxy with the console's token); the agent
attaches a PDF next to the message box and the customer gets it in the widget as a download
card, then a photo shown inline. Screenshots land in test-artifacts/."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from service.agents.desk import add_agent
from tests.browser import artifact, chromium
from tests.conftest import _clean_tables
from tests.test_agents import ALL_SKILLS
from tests.test_browser_attachments import PDF, parcel_png
from tests.test_browser_chat_agent import (
    agent_and_customer,
    browser_installed,  # noqa: F401 (fixture)
    live,
    open_chat_widget,
    sign_in_available,
)


@pytest.fixture
async def app_settings(settings, redis_client):
    await _clean_tables(settings.database_url)
    return settings


async def test_a_chat_photo_reaches_the_agent_and_the_agents_files_reach_the_widget(
        app_settings, db, tmp_path):
    token = await add_agent(db, "Dana", ALL_SKILLS)
    photo = tmp_path / "broken-mug.png"
    photo.write_bytes(parcel_png())
    receipt = tmp_path / "refund-receipt.pdf"
    receipt.write_bytes(PDF)
    reply_photo = tmp_path / "replacement.png"
    reply_photo.write_bytes(parcel_png(360, 300))
    errors: list[str] = []
    async with live(app_settings) as base, chromium() as browser:
        agent, customer = await agent_and_customer(browser, errors)
        await sign_in_available(agent, base, token)
        log, box = await open_chat_widget(customer, base)
        await box.fill("I want to talk to a human")
        await box.press("Enter")
        await agent.get_by_role("button", name="Accept").click()
        await expect(log).to_contain_text("You're now talking with Dana.")

        # the customer attaches a photo with the paperclip; the first try fails (as when
        # PostgreSQL is down): the widget says so and offers to try again
        async def unavailable(route):
            await route.fulfill(status=503, content_type="application/json",
                                body='{"error": "the file could not be sent right now; '
                                     'try again in a moment"}')
        await customer.route("**/chat/files", unavailable)
        async with customer.expect_file_chooser() as chooser:
            await customer.get_by_role("button", name="Attach a photo or file").click()
        await (await chooser.value).set_files(str(photo))
        mine = log.get_by_role("link", name="Photo you sent: open full size")
        await expect(mine).to_be_visible()
        failed = log.locator(".msg.customer.failed")
        await expect(failed).to_contain_text("The file could not be sent right now; try again "
                                             "in a moment.")
        await customer.screenshot(path=artifact("chat-files-widget-retry.png"))
        await customer.unroute("**/chat/files")
        await failed.get_by_role("button", name="Retry").click()
        await expect(log.locator(".msg.customer.failed")).to_have_count(0)
        await expect(log.locator(".msg.customer.sending")).to_have_count(0)
        assert "/chat/files/" in (await mine.get_attribute("href") or "")  # the server's copy
        await customer.wait_for_function(
            "() => [...document.querySelector('switchboard-chat').shadowRoot"
            ".querySelectorAll('.msg.customer img')].some(i => i.complete && i.naturalWidth)")

        # the agent sees it as a thumbnail, fetched with the console's token
        transcript = agent.get_by_role("log", name="Conversation")
        thumb = transcript.get_by_role("link", name="Photo 1 from the customer: open full size")
        await expect(thumb).to_have_class("attachment photo ready")
        assert await thumb.locator("img").evaluate("img => img.naturalWidth") == 480
        await agent.screenshot(path=artifact("chat-files-agent-sees-photo.png"))

        # the agent sends a PDF with the paperclip next to the message box
        attach = agent.get_by_role("button", name="Attach a photo or file for the customer")
        await expect(attach).to_be_visible()
        async with agent.expect_file_chooser() as chooser:
            await attach.click()
        await (await chooser.value).set_files(str(receipt))
        sent = transcript.get_by_role(
            "link", name="PDF document (application/pdf) from you: download")
        await expect(sent).to_be_visible()
        card = log.get_by_role("link", name="PDF file from agent: download")
        await expect(card).to_be_visible()
        await expect(card).to_contain_text("Download")
        async with customer.expect_download() as fetched:
            await card.click()
        saved = await (await fetched.value).path()
        assert saved is not None and saved.read_bytes() == PDF

        # and a photo, shown inline in the widget
        async with agent.expect_file_chooser() as chooser:
            await attach.click()
        await (await chooser.value).set_files(str(reply_photo))
        await expect(transcript.get_by_role(
            "link", name="Photo 3 from you: open full size")).to_have_class("attachment photo ready")
        inline = log.get_by_role("link", name="Photo from agent: open full size")
        await expect(inline).to_be_visible()
        await customer.wait_for_function(
            "() => [...document.querySelector('switchboard-chat').shadowRoot"
            ".querySelectorAll('.msg.agent img')].some(i => i.complete && i.naturalWidth === 360)")
        await expect(transcript.locator(".delivery").last).to_have_text("Sent")
        await agent.screenshot(path=artifact("chat-files-agent-console.png"))
        await customer.screenshot(path=artifact("chat-files-widget.png"))
    # the browser logs the 503 the test played; nothing else went wrong
    assert [e for e in errors if "status of 503" not in e] == [], errors
