"""The chat widget's rating in real headless Chromium, against the real app and servers: a
survey after self-service and after an agent's wrap-up, answered with the rating buttons."""

from __future__ import annotations

import json

import aiohttp
import pytest
from playwright.async_api import expect

from service.agents.desk import add_agent
from service.app import create_app
from service.conversations import prompts
from tests.browser import TIMEOUT_MS, artifact, chromium, require_chromium, serve
from tests.conftest import _clean_tables, with_settings
from tests.test_browser_chat_agent import open_chat_widget, watch_for_errors
from tests.test_surveys import CSAT_ALWAYS, rules_with

QUESTION = prompts.survey_question("csat", "buttons")


@pytest.fixture(autouse=True)
def browser_installed():
    require_chromium()


@pytest.fixture
async def app_settings(settings, redis_client, tmp_path):
    await _clean_tables(settings.database_url)
    return with_settings(settings, rules_dir=rules_with(tmp_path, CSAT_ALWAYS))


async def answered_scores(db) -> list[tuple[str, int]]:
    rows = await db.fetch("SELECT data FROM contact_events WHERE kind = 'survey_answered' "
                          "ORDER BY occurred_at")
    return [(json.loads(r["data"])["input"], json.loads(r["data"])["score"]) for r in rows]


async def wait_for_scores(db, count: int) -> list[tuple[str, int]]:
    for _ in range(100):  # the event writer flushes every 200 ms
        found = await answered_scores(db)
        if len(found) >= count:
            return found
        await __import__("asyncio").sleep(0.1)
    return await answered_scores(db)


async def test_chat_rating_after_self_service(app_settings, db):
    errors: list[str] = []
    async with serve(create_app(app_settings)) as base, chromium() as browser:
        page = await (await browser.new_context()).new_page()
        watch_for_errors(page, errors)
        page.set_default_timeout(TIMEOUT_MS)
        log, box = await open_chat_widget(page, base)
        await box.fill("I need to track my order")
        await page.get_by_role("button", name="Send").click()
        await page.get_by_role("button", name="Yes", exact=True).click()
        await expect(log).to_contain_text(QUESTION)
        rating = page.get_by_role("group", name="Rating")
        await expect(rating.get_by_role("button")).to_have_count(5)
        await expect(rating.get_by_role("button", name="1", exact=True)).to_be_enabled()
        await page.screenshot(path=artifact("survey-chat-rating.png"))
        await rating.get_by_role("button", name="4", exact=True).click()
        await expect(log).to_contain_text(prompts.SURVEY_THANKS["buttons"])
        await expect(page.get_by_role("button", name="Start a new chat")).to_be_visible()
        await page.screenshot(path=artifact("survey-chat-thanks.png"))
    assert await wait_for_scores(db, 1) == [("message", 4)]
    assert errors == []


async def test_chat_rating_after_the_agent_wraps_up(app_settings, db):
    token = await add_agent(db, "Dana", ["care", "orders", "accounts", "billing", "shipping"])
    errors: list[str] = []
    async with serve(create_app(app_settings)) as base, chromium() as browser, \
            aiohttp.ClientSession() as http:
        agent = await http.ws_connect(f"{base.replace('http', 'ws')}/agent/ws")
        await agent.send_json({"type": "auth", "token": token})
        await agent.send_json({"type": "presence", "status": "available"})
        page = await (await browser.new_context()).new_page()
        watch_for_errors(page, errors)
        page.set_default_timeout(TIMEOUT_MS)
        log, box = await open_chat_widget(page, base)
        await box.fill("I want to talk to a person")
        await page.get_by_role("button", name="Send").click()
        offer = await next_frame(agent, "offer")
        await agent.send_json({"type": "accept", "contact_id": offer["contact_id"]})
        await next_frame(agent, "assigned")
        await expect(log).to_contain_text("You're now talking with Dana.")
        await agent.send_json({"type": "wrap_up", "contact_id": offer["contact_id"],
                               "resolved": True})
        await expect(log).to_contain_text(QUESTION)
        rating = page.get_by_role("group", name="Rating")
        await rating.get_by_role("button", name="5", exact=True).click()
        await expect(log).to_contain_text(prompts.SURVEY_THANKS["buttons"])
        await expect(page.get_by_role("button", name="Start a new chat")).to_be_visible()
        await agent.close()
    assert await wait_for_scores(db, 1) == [("message", 5)]
    assert errors == []


async def next_frame(ws, kind: str) -> dict:
    while True:
        frame = await ws.receive_json(timeout=10)
        if frame["type"] == kind:
            return frame
