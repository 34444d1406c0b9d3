"""A callback in the agent console, in real headless Chromium against the real app (Twilio's
REST API stood in for): the offer says it is a callback and to which number, accepting shows
the call being placed, and an unanswered call takes the contact back to its queue with a word
to the agent. Screenshots land in test-artifacts/."""

from __future__ import annotations

import aiohttp
import pytest
from playwright.async_api import expect

from service.agents.desk import add_agent
from tests.browser import TIMEOUT_MS, artifact, chromium, require_chromium
from tests.conftest import with_settings
from tests.test_browser_chat_agent import (  # noqa: F401
    app_settings,
    live,
    sign_in_available,
    watch_for_errors,
)
from tests.test_callbacks import CALLER, ask_callback, placed_calls, queued_call
from tests.twilio_standin import start_standin


@pytest.fixture(autouse=True)
def browser_installed():
    require_chromium()


async def test_an_agent_takes_a_callback_that_is_not_answered(app_settings, db):
    standin, _ = await start_standin()
    settings = with_settings(app_settings, twilio_api_base_url=standin.url,
                             twilio_account_sid="AC" + "1" * 32)
    token = await add_agent(db, "Ann", ["care"])
    errors: list[str] = []
    try:
        async with live(settings) as base, chromium() as browser, \
                aiohttp.ClientSession(base_url=base) as twilio_side:
            standin.service_url = base
            call = await queued_call(twilio_side)
            await ask_callback(call)
            page = await (await browser.new_context(
                viewport={"width": 1440, "height": 900})).new_page()
            watch_for_errors(page, errors)
            page.set_default_timeout(TIMEOUT_MS)
            try:
                await sign_in_available(page, base, token)
                offers = page.locator("#offers")
                await expect(offers).to_contain_text(f"Callback to {CALLER}")
                await expect(page.locator("#conversation-meta")).to_contain_text(f"Callback to {CALLER}")
                await page.screenshot(path=artifact("callback-offer.png"))

                await page.get_by_role("button", name="Accept").click()
                banner = page.locator("#ended-banner")
                await expect(banner).to_contain_text(f"Calling the customer back at {CALLER}")
                await expect(page.locator("#conversation-meta")).to_contain_text(
                    "(attempt 1 of 3)")
                await expect(page.get_by_role("log", name="Conversation")).to_contain_text(
                    "[pressed 1: call me back]")
                [placed] = await placed_calls(standin, 1)
                await page.screenshot(path=artifact("callback-calling.png"))

                assert await standin.send_call_status(placed, "no-answer") == 200
                await expect(page.locator("#toast")).to_contain_text(
                    "The customer didn't answer. It goes back to the queue and is tried "
                    "again in 5 min.")
                await expect(page.locator("#contacts-empty")).to_be_visible()
                await page.screenshot(path=artifact("callback-not-answered.png"))
            except BaseException:
                await page.screenshot(path=artifact("failed-callback.png"), full_page=True)
                raise
    finally:
        await standin.stop()
    assert errors == []


async def test_a_callback_twilio_refuses_at_once_leaves_no_contact_behind(app_settings, db):
    """The call fails within the accept itself, so its result reaches the console before the
    accept's answer: the console must not keep the contact the server already took back."""
    standin, _ = await start_standin()
    standin.refuse_calls_with_code = 21211
    settings = with_settings(app_settings, twilio_api_base_url=standin.url,
                             twilio_account_sid="AC" + "1" * 32)
    token = await add_agent(db, "Ann", ["care"])
    errors: list[str] = []
    try:
        async with live(settings) as base, chromium() as browser, \
                aiohttp.ClientSession(base_url=base) as twilio_side:
            call = await queued_call(twilio_side)
            await ask_callback(call)
            page = await (await browser.new_context(
                viewport={"width": 1280, "height": 800})).new_page()
            watch_for_errors(page, errors)
            page.set_default_timeout(TIMEOUT_MS)
            await sign_in_available(page, base, token)
            await expect(page.locator("#offers")).to_contain_text(f"Callback to {CALLER}")
            await page.get_by_role("button", name="Accept").click()
            await expect(page.locator("#toast")).to_contain_text(
                "The customer couldn't be reached. It goes back to the queue")
            await expect(page.locator("#contacts-empty")).to_be_visible()
            await expect(page.locator("#offers-empty")).to_be_visible()
            await page.screenshot(path=artifact("callback-refused.png"))
    finally:
        await standin.stop()
    assert errors == []
