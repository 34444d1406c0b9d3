"""The supervisor whispers from the supervisor view, in real headless Chromium against the real
app: a customer's chat reaches an agent's console (a second page); the supervisor's view lists
the contact under the agent; "Whisper" opens an inline box that keeps its text and the
keyboard while the view refreshes, Enter sends ("Sent to Priya"), Escape closes it and gives
the keyboard back to the button, and the agent's console shows the supervisor's note; once
the agent wraps up, a whisper shows the API's refusal inline. Screenshots land in
test-artifacts/."""

from __future__ import annotations

import hashlib
import hmac
import re

from playwright.async_api import expect

from service.infra.tokens import create_token
from tests.browser import TIMEOUT_MS, artifact, chromium
from tests.test_browser_chat_agent import (
    SECRET,
    SKILLS,
    agent_and_customer,
    app_settings,  # noqa: F401 (fixture)
    browser_installed,  # noqa: F401 (fixture)
    live,
    sign_in_available,
    switchboard,
    watch_for_errors,
)
from tests.test_browser_notes import WEB_ID, WHISPER, ask_for_a_person


async def supervisor_page(browser, base: str, token: str, errors: list[str]):
    page = await (await browser.new_context(viewport={"width": 1440, "height": 900})).new_page()
    watch_for_errors(page, errors)
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto(f"{base}/supervisor#token={token}")
    return page


async def a_refresh(page) -> None:
    """Wait until the view has redrawn from a newer answer."""
    before = await page.locator("#as-of").text_content()
    await expect(page.locator("#as-of")).not_to_have_text(before or "")


async def test_a_supervisor_whispers_from_the_view_and_sees_refusals_inline(app_settings, db):  # noqa: F811
    token = await switchboard(app_settings, "agents", "add", "Priya", "--skills", SKILLS)
    await switchboard(app_settings, "agents", "add", "Omar", "--skills", SKILLS)
    await switchboard(app_settings, "customers", "add", "--web-id", WEB_ID, "--name", "Ana")
    supervisor = await create_token(db, "supervisor", name="Sam")
    signature = hmac.new(SECRET.encode(), WEB_ID.encode(), hashlib.sha256).hexdigest()
    errors: list[str] = []
    async with live(app_settings) as base, chromium() as browser:
        agent, customer = await agent_and_customer(browser, errors)
        floor = await supervisor_page(browser, base, supervisor, errors)
        try:
            await sign_in_available(agent, base, token)
            log = await ask_for_a_person(customer, base, signature)
            await agent.get_by_role("button", name="Accept").click()
            await expect(log).to_contain_text("You're now talking with Priya.")
            contact_id = await agent.locator("#transcript").get_attribute("data-for")

            # the view lists the contact under Priya; Omar holds none
            priya = floor.locator("#agents tbody tr").filter(has_text="Priya")
            held = priya.get_by_role("list", name="Contacts Priya holds")
            item = held.locator(f'li[data-contact="{contact_id}"]')
            await expect(item).to_contain_text("Ana")
            await expect(item.locator(".channel")).to_have_text("chat")
            await expect(item.locator(".for")).to_have_text(re.compile(r"^\d+s$"))
            omar = floor.locator("#agents tbody tr").filter(has_text="Omar")
            await expect(omar.locator('td[data-field="contacts"]')).to_have_text("–")

            # Whisper opens the box with the keyboard in it; a refresh keeps text and focus
            button = item.get_by_role("button", name="Whisper to Priya about Ana")
            await button.click()
            await expect(button).to_have_attribute("aria-expanded", "true")
            box = floor.get_by_role("textbox", name="Whisper to Priya")
            await expect(box).to_be_focused()
            first, rest = WHISPER[:17], WHISPER[17:]
            await floor.keyboard.type(first)
            await floor.screenshot(path=artifact("supervisor-whisper-open.png"))
            await a_refresh(floor)
            await expect(box).to_be_focused()
            await expect(box).to_have_value(first)
            await floor.keyboard.type(rest)
            await expect(box).to_have_value(WHISPER)
            await floor.keyboard.press("Enter")
            status = floor.get_by_role("form", name="Whisper to Priya").get_by_role("status")
            await expect(status).to_have_text("Sent to Priya")
            await expect(box).to_have_value("")
            await floor.screenshot(path=artifact("supervisor-whisper-sent.png"))

            # Escape closes the box and gives the keyboard back; Enter on the button reopens
            await box.press("Escape")
            await expect(floor.get_by_role("form", name="Whisper to Priya")).to_have_count(0)
            await expect(button).to_be_focused()
            await expect(button).to_have_attribute("aria-expanded", "false")
            await a_refresh(floor)
            await expect(button).to_be_focused()  # a redraw keeps it too
            await floor.keyboard.press("Enter")
            await expect(box).to_be_focused()
            await expect(status).to_have_text(
                "Only Priya sees this, never the customer. Enter sends, Esc closes.")

            # the agent's console shows the supervisor's note
            note = agent.get_by_role("log", name="Conversation").locator(".line.note.whisper")
            await expect(note).to_contain_text(WHISPER)
            await expect(note).to_contain_text("Sam · Only agents see this")
            await expect(log).not_to_contain_text("goodwill")

            # the agent wraps up: the open box stays, a whisper shows the API's refusal
            wrap = agent.get_by_role("group", name="Wrap-up")
            await wrap.get_by_role("radio", name="Yes").check()
            await wrap.get_by_role("button", name="Finish contact").click()
            await expect(agent.locator("#contacts-empty")).to_be_visible()
            await expect(item.locator(".ended")).to_have_text("no longer live")
            await box.fill("Are you still there?")
            async with floor.expect_response(f"**/api/contacts/{contact_id}/notes") as answer:
                await box.press("Enter")
            refused = await answer.value
            assert refused.status in (404, 409)
            await expect(status).to_have_text((await refused.json())["error"])
            await expect(status).to_have_class("whisper-status error")
            await expect(box).to_have_value("Are you still there?")
            await floor.screenshot(path=artifact("supervisor-whisper-refused.png"))

            # Escape closes the box, and the ended contact goes with it
            await box.press("Escape")
            await expect(floor.get_by_role("form", name="Whisper to Priya")).to_have_count(0)
            await expect(held).to_have_count(0)
            await expect(priya.locator('td[data-field="contacts"]')).to_have_text("–")
        except BaseException:
            await floor.screenshot(path=artifact("failed-supervisor-whisper.png"), full_page=True)
            await agent.screenshot(path=artifact("failed-agent-whisper.png"), full_page=True)
            raise
    # the browser itself logs the refused request; anything else is a fault of the page
    refusals = [e for e in errors if e.endswith(f"/supervisor: Failed to load resource: the "
                                                f"server responded with a status of "
                                                f"{refused.status} ({refused.status_text})")]
    assert len(refusals) == 1 and errors == refusals
