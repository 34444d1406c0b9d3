"""The agent console shows each agent message's state, in real headless Chromium, against
the real app and the Twilio stand-in: queued while Twilio is down (retrying), sent once it
takes the message, delivered when Twilio's signed status callback says so, and not delivered
with the reason when Twilio refuses it for good."""

from __future__ import annotations

import aiohttp
import pytest
from playwright.async_api import expect

from service.agents.desk import add_agent
from service.app import create_app
from tests.browser import TIMEOUT_MS, artifact, chromium, require_chromium, serve
from tests.conftest import _clean_tables, with_settings
from tests.test_agents import ALL_SKILLS, twilio  # noqa: F401
from tests.test_browser_chat_agent import sign_in_available, watch_for_errors
from tests.twilio_driver import text

PHONE = "+15557770188"
GREETING = "You're now talking with Dana."


@pytest.fixture(autouse=True)
def browser_installed():
    require_chromium()


@pytest.fixture
async def app_settings(settings, twilio, redis_client):  # noqa: F811
    await _clean_tables(settings.database_url)
    return with_settings(settings, twilio_api_base_url=twilio[1],
                         twilio_account_sid="AC" + "1" * 32, offer_timeout_s=90,
                         twilio_timeout_s=1.0, outbox_retry_base_s=0.2,
                         outbox_retry_max_s=1.0)


def line(page, words: str):
    return page.locator("#transcript li.line.agent").filter(has_text=words)


async def test_the_console_shows_queued_sent_delivered_and_failed(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    token = await add_agent(db, "Dana", ALL_SKILLS)
    errors: list[str] = []
    async with serve(create_app(app_settings)) as base, chromium() as browser:
        standin.service_url = base
        page = await (await browser.new_context(viewport={"width": 1440, "height": 900})
                      ).new_page()
        watch_for_errors(page, errors)
        page.set_default_timeout(TIMEOUT_MS)
        await sign_in_available(page, base, token)
        async with aiohttp.ClientSession(base_url=base) as http:
            await text(http, PHONE, "I forgot my password and can't log in")
            await text(http, PHONE, "no")
        await page.get_by_role("button", name="Accept").click()
        greeting = line(page, GREETING)
        await expect(greeting.locator(".delivery")).to_have_text("Sent")

        standin.fail_with = 503
        reply = page.get_by_role("textbox", name="Reply")
        await reply.fill("Let me reset that for you.")
        await page.get_by_role("button", name="Send").click()
        mark = line(page, "Let me reset that for you.").locator(".delivery")
        await expect(mark).to_have_text("Queued · retrying")
        await expect(mark).to_have_attribute("title", "not sent yet, retrying: Twilio is busy "
                                             "(503); retrying")
        await page.screenshot(path=artifact("agent-outbox-retrying.png"))
        standin.fail_with = None
        await expect(mark).to_have_text("Sent")
        sid = next(s for s, m in standin.sids.items()
                   if m["Body"] == "Let me reset that for you.")
        assert await standin.send_status(sid, "delivered") == 200
        await expect(mark).to_have_text("Delivered")
        await expect(mark).to_have_attribute("data-state", "delivered")

        standin.refuse_with_code = 21610
        await reply.fill("Are you still there?")
        await page.get_by_role("button", name="Send").click()
        refused = line(page, "Are you still there?")
        await expect(refused.locator(".delivery")).to_contain_text("Not delivered")
        await expect(refused.locator(".delivery")).to_contain_text("21610")
        await expect(refused).to_have_class("line agent failed")
        await expect(greeting.locator(".delivery")).to_have_text("Sent")  # others unchanged
        await page.screenshot(path=artifact("agent-outbox-states.png"), full_page=True)

        await page.reload()  # the console re-syncs: every message's state comes back
        await expect(line(page, GREETING).locator(".delivery")).to_have_text("Sent")
        await expect(line(page, "Let me reset that for you.").locator(".delivery")
                     ).to_have_text("Delivered")
        await expect(line(page, "Are you still there?").locator(".delivery")
                     ).to_contain_text("21610")
    assert errors == []


async def test_the_ops_dashboard_shows_the_outbox_depth_and_failures(
        app_settings, db, twilio):  # noqa: F811
    from service.infra.tokens import create_token
    from tests.test_agents import login
    from tests.test_outbox import Console, status_of

    standin, _ = twilio
    ops_token = await create_token(db, "ops", "browser test")
    errors: list[str] = []
    async with serve(create_app(app_settings)) as base, chromium() as browser:
        async with aiohttp.ClientSession(base_url=base) as http:
            agent = await login(http, db)
            await text(http, PHONE, "I forgot my password and can't log in")
            await text(http, PHONE, "no")
            offer = await agent.next("offer")
            console = Console(agent)
            standin.refuse_with_code = 21610
            await console.send(type="accept", contact_id=offer["contact_id"])
            await console.wait(status_of(GREETING, "failed"))
            standin.refuse_with_code = None
            await standin.stop()  # Twilio unreachable: the next text waits in the outbox
            await console.send(type="message", contact_id=offer["contact_id"], text="Hello?")
            await console.wait(status_of("Hello?", "queued"))
            page = await (await browser.new_context(viewport={"width": 1360, "height": 900})
                          ).new_page()
            watch_for_errors(page, errors)
            page.set_default_timeout(TIMEOUT_MS)
            await page.goto(f"{base}/ops")
            await page.fill("#token", ops_token)
            await page.click("#sign-in")
            await expect(page.locator("#outbox-depth")).to_have_text("1")
            await expect(page.locator("#outbox-retrying")).to_have_text("1")
            await expect(page.locator("#outbox-failed")).to_have_text("1")
            row = page.locator("#outbox-failures tbody tr")
            await expect(row).to_have_count(1)
            await expect(row.locator('[data-field="Code"]')).to_have_text("21610")
            await expect(row.locator('[data-field="What"]')).to_have_text("connecting the agent")
            await expect(row.locator('[data-field="reason"]')).to_contain_text("unsubscribed")
            await page.locator("#outbox-heading").scroll_into_view_if_needed()
            await page.screenshot(path=artifact("ops-outbox.png"))
            await standin.start()
    assert errors == []
