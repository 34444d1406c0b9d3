"""Saved replies in the agent console, in real headless Chromium against the real app: the
agent types "/" in the reply box, filters, picks with the keyboard, and the reply lands filled
in for the customer; edited and sent, it reaches the customer's chat. A reply whose value the
customer lacks shows the gap, selects it, and is not sent until it is filled in. Screenshots
land in test-artifacts/."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil

import pytest
from playwright.async_api import expect

from service.conversations.customers import upsert_customer
from tests.browser import ROOT, artifact, chromium
from tests.conftest import _clean_tables, with_settings
from tests.test_browser_chat_agent import (
    SECRET,
    SKILLS,
    agent_and_customer,
    browser_installed,  # noqa: F401 (fixture)
    live,
    order_question_to_agent,
    sign_in_available,
    switchboard,
)
from tests.test_saved_replies import MEMBER_REPLY

WEB_ID = "shop-customer-9"


@pytest.fixture
async def app_settings(settings, redis_client, tmp_path):
    """The example shop's rules, with one more reply whose value customers may lack."""
    await _clean_tables(settings.database_url)
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "routing_rules", rules, ignore=shutil.ignore_patterns("bank"))
    with (rules / "replies.yaml").open("a") as replies:
        replies.write(MEMBER_REPLY)
    return with_settings(settings, offer_timeout_s=90, chat_identity_secret=SECRET,
                         rules_dir=rules)


async def test_an_agent_inserts_a_saved_reply_with_the_keyboard(app_settings, db, redis_client):
    token = await switchboard(app_settings, "agents", "add", "Dana", "--skills", SKILLS)
    await upsert_customer(db, redis_client, identities=[("web", f"id:{WEB_ID}")],
                          display_name="Ana", attributes={"tier": "gold"})
    signature = hmac.new(SECRET.encode(), WEB_ID.encode(), hashlib.sha256).hexdigest()
    errors: list[str] = []
    async with live(app_settings) as base, chromium() as browser:
        agent, customer = await agent_and_customer(browser, errors)
        await customer.context.add_init_script("window.switchboardSettings = " + json.dumps(
            {"customer": {"id": WEB_ID, "signature": signature}}))
        try:
            await sign_in_available(agent, base, token)
            await customer.goto(f"{base}/chat")
            await customer.get_by_role("button", name="Chat with us").click()
            log = customer.get_by_role("log", name="Messages")
            await order_question_to_agent(
                agent, log, customer.get_by_role("textbox", name="Message"))

            # "/" at the start of the reply box opens the list, this contact's type first.
            reply = agent.get_by_role("textbox", name="Reply to the customer")
            await expect(reply).to_be_focused()
            box_before = await reply.bounding_box()
            await reply.press("/")
            panel = agent.get_by_role("dialog", name="Saved replies")
            search = panel.get_by_role("combobox", name="Search saved replies")
            await expect(search).to_be_focused()
            options = panel.get_by_role("option")
            await expect(options.first).to_contain_text("Ask for the order number")
            await expect(options.first).to_have_attribute("aria-selected", "true")
            await expect(panel).to_contain_text("For Track an order")
            await expect(panel).to_contain_text("Self-service answer: Track an order")
            await expect(panel).to_contain_text("Any contact")
            await expect(panel.get_by_role("option", name="Confirm the member number")
                         ).to_contain_text("needs customer's member number")
            assert await reply.input_value() == ""  # the "/" opened the list, it is not text
            assert await reply.bounding_box() == box_before  # the list floats: nothing moves
            await agent.screenshot(path=artifact("agent-saved-replies.png"))

            # Typing filters; arrows move; Enter inserts the filled-in text, not sent.
            await search.press_sequentially("order")
            await expect(options.first).to_contain_text("Ask for the order number")
            await search.press("ArrowDown")
            await expect(options.nth(1)).to_have_attribute("aria-selected", "true")
            await search.press("ArrowUp")
            await search.press_sequentially(" number")
            await expect(options).to_have_count(1)
            await agent.screenshot(path=artifact("agent-saved-replies-filtered.png"))
            await search.press("Enter")
            await expect(panel).to_be_hidden()
            await expect(reply).to_be_focused()
            inserted = await reply.input_value()
            assert inserted.startswith("Thanks, Ana. Could you give me the order number?")
            await expect(log).not_to_contain_text("Could you give me the order number?")

            # The agent edits it, then sends it; the customer reads it.
            await reply.press_sequentially(" Or the email address you ordered with.")
            await agent.screenshot(path=artifact("agent-saved-reply-inserted.png"))
            await reply.press("Enter")
            await expect(log.locator(".msg.agent").last).to_contain_text(
                "Thanks, Ana. Could you give me the order number?")
            await expect(log.locator(".msg.agent").last).to_contain_text(
                "Or the email address you ordered with.")
            await expect(reply).to_have_value("")

            # Escape closes and gives the reply box back; the button opens it too.
            await reply.press("/")
            await expect(panel).to_be_visible()
            await search.press("Escape")
            await expect(panel).to_be_hidden()
            await expect(reply).to_be_focused()
            await reply.press("/")
            await search.press("/")  # "//" types a slash
            await expect(panel).to_be_hidden()
            await expect(reply).to_have_value("/")
            await reply.fill("")
            await agent.get_by_role("button", name="Replies").click()
            await expect(search).to_be_focused()

            # A value Ana lacks: the gap is selected, and Send waits until it is filled in.
            await search.press_sequentially("member")
            await panel.get_by_role("option", name="Confirm the member number").click()
            assert await reply.input_value() == \
                "Your member number is {customer.member_number}, Ana."
            selected = await reply.evaluate("box => box.value.slice(box.selectionStart, "
                                            "box.selectionEnd)")
            assert selected == "{customer.member_number}"
            await reply.press("Enter")
            await expect(agent.locator("#toast")).to_contain_text("Fill in the marked gap")
            await expect(reply).not_to_have_value("")
            await agent.screenshot(path=artifact("agent-saved-reply-gap.png"))
            await agent.keyboard.type("M-2291")
            await reply.press("Enter")
            await expect(log.locator(".msg.agent").last).to_contain_text(
                "Your member number is M-2291, Ana.")
            await customer.screenshot(path=artifact("customer-chat-saved-reply.png"))
        except BaseException:
            await agent.screenshot(path=artifact("failed-agent-saved-replies.png"), full_page=True)
            await customer.screenshot(path=artifact("failed-customer-saved-replies.png"))
            raise
    assert errors == []
