"""The chat widget's rating in real headless Chromium, against the real app and servers: a
survey after self-service and after an agent's wrap-up, answered with the rating buttons."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

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
        await asyncio.sleep(0.1)
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


async def test_ops_dashboard_shows_csat_nps_and_the_matrix_split(app_settings, db):
    from aiohttp.test_utils import TestClient, TestServer

    from service.infra.tokens import create_token
    from service.reporting import reports
    from tests.test_ops_api import events_landed, ops_app
    from tests.test_surveys import resolve_by_sms
    from tests.twilio_driver import text

    now = datetime.now(timezone.utc)
    window = {"from": reports.iso(now - timedelta(days=1)),
              "to": reports.iso(now + timedelta(days=1))}
    async with TestClient(TestServer(ops_app(app_settings))) as client:
        for phone, score in (("+15555550401", "4"), ("+15555550402", "2 slow")):
            await resolve_by_sms(client, phone)
            await text(client, phone, score)
        await resolve_by_sms(client, "+15555550403")  # never answers
        await events_landed(client.app)
        token = await create_token(db, "ops", "survey browser test")
        async with chromium() as browser:
            page = await (await browser.new_context(viewport={"width": 1360, "height": 900})
                          ).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(str(client.make_url("/ops").with_query(window)))
            await page.fill("#token", token)
            await page.click("#sign-in")
            await expect(page.locator("#dashboard")).to_be_visible()
            await expect(page.locator('[data-metric="csat"] .value')).to_have_text("3.00")
            await expect(page.locator('[data-metric="nps"] .value')).to_have_text("–")
            responses = page.locator('[data-metric="survey_responses"]')
            await expect(responses.locator(".value")).to_have_text("2")
            await expect(responses.locator(".detail")).to_have_text("of 3 surveys sent")
            row = page.locator('#matrix tr[data-key="track_order/sms"]')
            await expect(row.locator('[data-field="csat.self_service"]')).to_have_text("3.00")
            await expect(row.locator('[data-field="csat.agent"]')).to_have_text("–")
            await expect(row.locator(
                '[data-field="survey_response_rate.self_service"]')).to_have_text("66.7%")
            await page.screenshot(path=artifact("survey-ops-dashboard.png"), full_page=True)
            assert errors == []
