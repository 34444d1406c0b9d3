"""Message templates in the agent console, in real headless Chromium against the real app and
the Twilio stand-in: a WhatsApp contact whose customer last wrote over 24 hours ago refuses a
typed reply, the reply box then says the window closed and offers "Send a template"; the
picker shows each template filled in for the customer with its gaps marked; the one sent
appears as a bubble marked as a template, Twilio gets its ContentSid, a reload shows the
closed window from the contact's context, and the customer's answer opens it again.
Screenshots land in test-artifacts/."""

from __future__ import annotations

import json

import aiohttp
import orjson
import pytest
from playwright.async_api import expect

from service.agents.desk import add_agent
from service.app import create_app
from tests.browser import TIMEOUT_MS, artifact, chromium, serve
from tests.test_agents import ALL_SKILLS, twilio  # noqa: F401
from tests.test_browser_chat_agent import (
    browser_installed,  # noqa: F401 (fixture)
    sign_in_available,
    watch_for_errors,
)
from tests.test_message_templates import STILL_SID, template_settings
from tests.test_whatsapp import whatsapp

STILL_FILLED = ("Hello from Example Shop. Dana here: we didn't hear back from you. Do you still "
                "need help? Just reply and we'll continue.")


@pytest.fixture
async def app_settings(settings, twilio, redis_client):  # noqa: F811
    return await template_settings(settings, twilio, offer_timeout_s=90)  # a page is slower


async def hours_later(redis_client, hours: float) -> None:
    """Every line of the open WhatsApp contact moved `hours` back."""
    [pointer] = [k async for k in redis_client.scan_iter("sb:{contact:*}:conv")]
    key = await redis_client.get(pointer)
    conv = orjson.loads(await redis_client.get(key))
    for line in conv["transcript"]:
        line["at"] -= hours * 3600
    await redis_client.set(key, orjson.dumps(conv), keepttl=True)


async def test_an_agent_reaches_a_customer_after_the_window_with_a_template(
        app_settings, db, twilio, redis_client):  # noqa: F811
    standin, _ = twilio
    token = await add_agent(db, "Dana", ALL_SKILLS)
    errors: list[str] = []
    async with serve(create_app(app_settings)) as base, chromium() as browser, \
            aiohttp.ClientSession(base_url=base) as http:
        standin.service_url = base
        page = await (await browser.new_context(viewport={"width": 1440, "height": 900})
                      ).new_page()
        watch_for_errors(page, errors)
        page.set_default_timeout(TIMEOUT_MS)
        await sign_in_available(page, base, token)
        await whatsapp(http, "I forgot my password and can't log in")
        await whatsapp(http, "no")
        await page.get_by_role("button", name="Accept").click()
        reply = page.get_by_role("textbox", name="Reply to the customer")
        await expect(reply).to_be_enabled()
        closed = page.locator("#window-closed")
        await expect(closed).to_be_hidden()

        # Half an hour before the window closes, the console counts down (read on a reload).
        await hours_later(redis_client, 23.5)
        await page.reload()
        note = page.locator("#window-note")
        await expect(note).to_have_text("Reply window closes in 30 min")
        await expect(reply).to_be_enabled()
        await page.screenshot(path=artifact("agent-window-closing-soon.png"))

        # A day later: the typed reply is refused and the box offers a template instead.
        await hours_later(redis_client, 1.5)
        await reply.fill("Are you still there?")
        await page.get_by_role("button", name="Send", exact=True).click()
        await expect(closed).to_be_visible()
        await expect(closed).to_contain_text("24-hour reply window has closed")
        await expect(note).to_be_hidden()
        await expect(reply).to_be_disabled()
        offer = page.get_by_role("button", name="Send a template")
        await expect(offer).to_be_focused()
        await expect(page.locator(".line.agent.failed")).to_contain_text("Are you still there?")
        await page.screenshot(path=artifact("agent-window-closed.png"))

        # The picker: each template filled in for this customer, the gap marked.
        await offer.click()
        panel = page.get_by_role("dialog", name="Message templates")
        search = panel.get_by_role("combobox", name="Search approved templates")
        await expect(search).to_be_focused()
        options = panel.get_by_role("option")
        await expect(options).to_have_count(2)
        follow_up = panel.get_by_role("option", name="Follow up on their request")
        await expect(follow_up).to_contain_text("can't send: customer's name unknown")
        await expect(follow_up).to_have_attribute("aria-disabled", "true")
        await expect(follow_up.locator("mark.gap")).to_have_text("{customer.name}")
        await expect(panel.get_by_role("option", name="Do you still need help?")
                     ).to_contain_text(STILL_FILLED)
        await expect(panel).to_contain_text("Enter send")
        await page.screenshot(path=artifact("agent-template-picker.png"))
        await expect(follow_up).to_have_attribute("aria-selected", "true")
        await search.press("Enter")  # a gap: refused in the page, nothing sent
        await expect(page.get_by_role("alert")).to_contain_text("can't be sent")
        assert standin.templated() == []

        # Chosen with the keyboard, it is sent as approved and shows as a template bubble.
        await search.press_sequentially("still")
        await expect(options).to_have_count(1)
        await search.press("Enter")
        await expect(panel).to_be_hidden()
        bubble = page.locator(".line.agent").last
        await expect(bubble).to_contain_text(STILL_FILLED)
        await expect(bubble.locator(".template-tag")).to_have_text("Approved template")
        await expect(bubble.locator(".delivery")).to_have_text("Sent")
        [message] = standin.templated()
        assert message["ContentSid"] == STILL_SID and "Body" not in message
        assert json.loads(message["ContentVariables"]) == {"1": "Dana"}
        await expect(closed).to_contain_text("Template sent")
        await page.screenshot(path=artifact("agent-template-sent.png"))

        # A reload reads the closed window from the contact's context.
        await page.reload()
        await expect(closed).to_be_visible()
        await expect(closed).to_contain_text("Template sent")
        await expect(page.get_by_role("textbox", name="Reply to the customer")
                     ).to_be_disabled()
        await expect(page.locator(".line.agent .template-tag")).to_have_count(1)

        # The customer answers: the window opens and a typed reply goes again.
        await whatsapp(http, "yes please, still locked out")
        await expect(closed).to_be_hidden()
        reply = page.get_by_role("textbox", name="Reply to the customer")
        await expect(reply).to_be_enabled()
        await reply.fill("Thanks! I've sent you a reset link.")
        await reply.press("Enter")
        await expect(page.locator(".line.agent").last.locator(".delivery")).to_have_text("Sent")
        assert standin.messages[-1]["Body"] == "Thanks! I've sent you a reset link."
        await page.screenshot(path=artifact("agent-window-open-again.png"))
    assert not [e for e in errors if "outside" not in e], errors
