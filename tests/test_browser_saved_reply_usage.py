"""Which saved replies agents use, in real headless Chromium against the real app: an agent
picks a saved reply in the console and sends it as filled in; the ops dashboard's Saved
replies panel then counts it (one use, one agent, not edited). Screenshots land in
test-artifacts/."""

from __future__ import annotations

import asyncio

import aiohttp
from playwright.async_api import expect

from service.infra.tokens import create_token
from tests.browser import artifact, chromium
from tests.test_browser_chat_agent import (
    SKILLS,
    agent_and_customer,
    browser_installed,  # noqa: F401 (fixture)
    live,
    open_chat_widget,
    order_question_to_agent,
    sign_in_available,
    switchboard,
)
from tests.test_browser_saved_replies import app_settings  # noqa: F401 (fixture)


async def greeting_counted(base: str, token: str) -> dict:
    """The report's greeting row, once the event writer has put the message in PostgreSQL."""
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.get(f"{base}/api/reports/saved-replies",
                                   headers={"Authorization": f"Bearer {token}"}) as response:
                assert response.status == 200
                rows = {r["id"]: r for r in (await response.json())["replies"]}
            if rows["greeting"]["uses"]:
                return rows["greeting"]
            await asyncio.sleep(0.1)
    raise AssertionError("the greeting was never counted")


async def test_a_saved_reply_an_agent_sends_shows_in_the_ops_panel(app_settings, db):  # noqa: F811
    token = await switchboard(app_settings, "agents", "add", "Dana", "--skills", SKILLS)
    ops = await create_token(db, "ops", "saved replies browser test")
    errors: list[str] = []
    async with live(app_settings) as base, chromium() as browser:
        agent, customer = await agent_and_customer(browser, errors)
        await sign_in_available(agent, base, token)
        log, message = await open_chat_widget(customer, base)
        await order_question_to_agent(agent, log, message)

        reply = agent.get_by_role("textbox", name="Reply to the customer")
        await reply.press("/")
        panel = agent.get_by_role("dialog", name="Saved replies")
        await panel.get_by_role("combobox", name="Search saved replies").press_sequentially(
            "greeting")
        await panel.get_by_role("option", name="Greeting").click()
        greeting = await reply.input_value()
        assert greeting.startswith("Hi, I'm Dana from Example Shop.")
        await reply.press("Enter")
        await expect(log.locator(".msg.agent").last).to_contain_text(greeting)
        assert await greeting_counted(base, ops) == {
            "id": "greeting", "title": "Greeting", "uses": 1, "agents": 1, "edited": 0,
            "edited_share": 0.0}

        page = await (await browser.new_context(viewport={"width": 1360, "height": 900})
                      ).new_page()
        await page.goto(f"{base}/ops")
        await page.fill("#token", ops)
        await page.click("#sign-in")
        section = page.locator("section[aria-labelledby=saved-replies-heading]")
        row = section.locator("tr[data-key=greeting]")
        await expect(row.locator("[data-field=uses]")).to_have_text("1")
        await expect(row.locator("[data-field=agents]")).to_have_text("1")
        await expect(row.locator("[data-field=edited_share]")).to_have_text("0.0%")
        await expect(row.locator("[data-field=title]")).to_contain_text("Greeting")
        first = section.locator("tbody tr").first
        await expect(first).to_have_attribute("data-key", "greeting")  # most used first
        await expect(section.locator("tr[data-key=closing] [data-field=uses]")).to_have_text("0")
        await section.scroll_into_view_if_needed()
        await section.screenshot(path=artifact("ops-saved-replies.png"))
        assert errors == []
