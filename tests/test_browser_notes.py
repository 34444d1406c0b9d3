"""Private notes in the agent console, in real headless Chromium against the real app: the
agent switches the reply box to "Private note" with the keyboard, writes a note that shows in
the transcript on amber paper with a lock and "Only agents see this", a supervisor's whisper
arrives marked as the supervisor's, the customer's chat shows neither, and when the customer
comes back the earlier contact's notes are in the agent's history. Screenshots land in
test-artifacts/."""

from __future__ import annotations

import hashlib
import hmac
import json

import aiohttp
from playwright.async_api import expect

from service.infra.tokens import create_token
from tests.browser import artifact, chromium
from tests.test_browser_chat_agent import (
    SECRET,
    SKILLS,
    agent_and_customer,
    app_settings,  # noqa: F401 (fixture)
    browser_installed,  # noqa: F401 (fixture)
    live,
    sign_in_available,
    switchboard,
)

WEB_ID = "shop-customer-notes"
NOTE = "Asked twice about the refund; promised a call back by Friday"
WHISPER = "Go ahead with the goodwill credit, I approve it"
AMBER = "rgb(255, 246, 209)"


async def ask_for_a_person(customer, base: str, signature: str, first: bool = True):
    """The signed-in customer opens the chat and asks for a person; their chat log."""
    if first:
        await customer.context.add_init_script("window.switchboardSettings = " + json.dumps(
            {"customer": {"id": WEB_ID, "signature": signature}}))
        await customer.goto(f"{base}/chat")
        await customer.get_by_role("button", name="Chat with us").click()
    else:
        await customer.get_by_role("button", name="Start a new chat").click()
    log = customer.get_by_role("log", name="Messages")
    message = customer.get_by_role("textbox", name="Message")
    await message.fill("I want to talk to a person please")
    await message.press("Enter")
    return log


async def test_an_agent_writes_a_private_note_and_a_supervisor_whispers(app_settings, db):  # noqa: F811
    token = await switchboard(app_settings, "agents", "add", "Dana", "--skills", SKILLS)
    await switchboard(app_settings, "customers", "add", "--web-id", WEB_ID, "--name", "Ana")
    supervisor = await create_token(db, "supervisor", name="Sam")
    signature = hmac.new(SECRET.encode(), WEB_ID.encode(), hashlib.sha256).hexdigest()
    errors: list[str] = []
    async with live(app_settings) as base, chromium() as browser:
        agent, customer = await agent_and_customer(browser, errors)
        try:
            await sign_in_available(agent, base, token)
            log = await ask_for_a_person(customer, base, signature)
            await agent.get_by_role("button", name="Accept").click()
            await expect(log).to_contain_text("You're now talking with Dana.")

            # Alt+N from the reply box: the box becomes a private note, amber, locked.
            reply = agent.get_by_role("textbox", name="Reply to the customer")
            await expect(reply).to_be_focused()
            await reply.press("Alt+n")
            note_tab = agent.get_by_role("tab", name="Private note")
            await expect(note_tab).to_have_attribute("aria-selected", "true")
            box = agent.get_by_role("textbox", name="Private note")
            await expect(box).to_be_focused()
            await expect(agent.locator("#note-hint")).to_have_text(
                "Only agents see this: it is never sent to the customer.")
            await expect(box).to_have_css("background-color", AMBER)
            await expect(agent.get_by_role("button", name="Add note")).to_be_visible()
            await box.fill(NOTE)
            await agent.screenshot(path=artifact("agent-note-mode.png"))
            await box.press("Enter")

            transcript = agent.get_by_role("log", name="Conversation")
            note = transcript.locator(".line.note").filter(has_text=NOTE)
            await expect(note).to_contain_text("Private note")
            await expect(note).to_contain_text("You · Only agents see this")
            await expect(note.locator(".lock")).to_be_visible()
            await expect(note.locator(".text")).to_have_css("background-color", AMBER)
            await expect(box).to_have_value("")

            # A supervisor whispers over the API: it arrives marked as theirs.
            async with aiohttp.ClientSession(base_url=base) as http:
                contact_id = await agent.locator("#transcript").get_attribute("data-for")
                response = await http.post(f"/api/contacts/{contact_id}/notes",
                                           json={"text": WHISPER},
                                           headers={"Authorization": f"Bearer {supervisor}"})
                assert response.status == 201, await response.text()
            whisper = transcript.locator(".line.note.whisper")
            await expect(whisper).to_contain_text(WHISPER)
            await expect(whisper).to_contain_text("Supervisor note")
            await expect(whisper).to_contain_text("Sam · Only agents see this")

            # Back to the customer with the arrow keys on the tabs; the reply goes out.
            await note_tab.focus()
            await note_tab.press("ArrowLeft")
            reply_tab = agent.get_by_role("tab", name="Reply")
            await expect(reply_tab).to_have_attribute("aria-selected", "true")
            await expect(reply_tab).to_be_focused()
            await reply.fill("I've noted that; the credit is on its way")
            await reply.press("Enter")
            await expect(log).to_contain_text("the credit is on its way")
            await expect(log).not_to_contain_text("refund")
            await expect(log).not_to_contain_text("goodwill")
            await agent.screenshot(path=artifact("agent-private-notes.png"))

            wrap = agent.get_by_role("group", name="Wrap-up")
            await wrap.get_by_role("radio", name="Yes").check()
            await wrap.get_by_role("button", name="Finish contact").click()
            await expect(agent.locator("#contacts-empty")).to_be_visible()

            # The customer comes back: the earlier contact's notes are in the history.
            await ask_for_a_person(customer, base, signature, first=False)
            earlier = agent.get_by_role("complementary", name="Customer context").locator(
                "#ctx-earlier")
            notes = earlier.get_by_role("list", name="Private notes")
            await expect(notes).to_contain_text(NOTE)
            await expect(notes).to_contain_text(WHISPER)
            await expect(notes).to_contain_text("Sam (supervisor)")
            await expect(notes.locator("li").first).to_have_css("background-color", AMBER)
            await agent.screenshot(path=artifact("agent-earlier-notes.png"))
        except BaseException:
            await agent.screenshot(path=artifact("failed-agent-notes.png"), full_page=True)
            await customer.screenshot(path=artifact("failed-customer-notes.png"), full_page=True)
            raise
    assert errors == []
