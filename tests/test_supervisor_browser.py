"""The supervisor page in real headless Chromium, against the real app and servers: what it
shows equals /api/supervisor, it refreshes itself, and it sorts. A screenshot lands in
test-artifacts/supervisor.png. Without Chromium the test fails under CI (env CI set) and is
skipped elsewhere (tests/browser.py).
"""

from __future__ import annotations

import re
import time

import pytest
from playwright.async_api import expect

from service.agents.desk import add_agent
from service.infra.tokens import create_token
from tests.browser import artifact, chromium, require_chromium
from tests.test_agents import (
    ALL_SKILLS,
    instance,
    login,
    twilio,  # noqa: F401 (fixture)
)
from tests.test_agents import app_settings as agent_settings  # noqa: F401 (fixture)
from tests.test_ops_api import clock, events_landed  # noqa: F401 (fixture)
from tests.test_supervisor import view
from tests.twilio_driver import Call, text

STATE_LABELS = ("available", "busy", "away", "offline")


@pytest.fixture(autouse=True)
def browser_installed():
    """Skip (or, under CI, fail) before any server starts when Chromium is missing."""
    require_chromium()


def rate(value) -> str:
    """What supervisor.js prints for a service level."""
    return "–" if value is None else f"{round(value * 100)}%"


def contacts(held: dict) -> str:
    return " · ".join(f"{c} {n}" for c, n in sorted(held.items())) or "–"


async def a_busy_floor(client, db, clock) -> None:  # noqa: F811
    """Ada holds an SMS, Ben is away, Cy is available, Dee never came; a call waits too long."""
    await db.execute("DELETE FROM agents")
    await add_agent(db, "Dee", ["care"])
    ada = await login(client, db, "Ada", ALL_SKILLS, {"voice": 0, "chat": 3, "sms": 3})
    await text(client, "+15555550601", "I want to talk to a human")
    offer = await ada.next("offer")
    await ada.send(type="accept", contact_id=offer["contact_id"])
    await ada.next("assigned")
    await login(client, db, "Ben", ["billing"], available=False)
    await login(client, db, "Cy", ["billing"])  # not a care agent: the call waits
    clock.at(time.time() - 90)
    await (await Call(client, "+15555550602").dial()).press("0")
    clock.release()
    await events_landed(client.app)


async def test_the_page_shows_the_api_figures_refreshes_and_sorts(agent_settings, db,  # noqa: F811
                                                                  clock):  # noqa: F811
    async with instance(agent_settings) as client:
        await a_busy_floor(client, db, clock)
        token = await create_token(db, "supervisor", "browser test")
        async with chromium() as browser:
            page = await (await browser.new_context(viewport={"width": 1280, "height": 760})
                          ).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await sign_in(page, str(client.make_url("/supervisor")), token)
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
                    else None)
            await page.reload()  # the token is kept for the session
            await expect(page.locator("#floor")).to_be_visible()
            now = await view(client, token)
            await check_states(page, now)
            await check_agents(page, now)
            await check_queues(page, now)
            await check_sorting(page, now)
            await check_it_refreshes(page, client, db)
            await check_nothing_is_cut(page)
            await page.screenshot(path=artifact("supervisor.png"), full_page=True)
            assert errors == []


async def check_nothing_is_cut(page) -> None:
    """Every queue figure's value and label show whole in the cards (a wait of minutes too)."""
    cut = await page.eval_on_selector_all(
        ".figure-value, .figure-label",
        "cells => cells.filter(c => c.scrollWidth > c.clientWidth + 1"
        " || c.getBoundingClientRect().right > c.closest('.tile')"
        ".getBoundingClientRect().right + 1).map(c => c.textContent)")
    assert cut == []
    assert await page.locator(".figure-value", has_text="1m").count() >= 1  # the long wait


async def sign_in(page, url: str, token: str) -> None:
    await page.goto(url)
    await expect(page.locator("#login-view")).to_be_visible()
    await page.fill("#token", "not-a-token")
    await page.click("#sign-in")
    await expect(page.locator("#login-error")).to_contain_text("That token was not accepted")
    await page.fill("#token", token)
    await page.click("#sign-in")
    await expect(page.locator("#floor")).to_be_visible()


async def check_states(page, now: dict) -> None:
    assert now["agents_by_state"] == {"available": 1, "busy": 1, "away": 1, "offline": 1}
    for state in STATE_LABELS:
        await expect(page.locator(f'#states [data-state="{state}"] .value')).to_have_text(
            str(now["agents_by_state"][state]))


async def check_agents(page, now: dict) -> None:
    await expect(page.locator("#agents tbody tr")).to_have_count(len(now["agents"]))
    for agent in now["agents"]:
        row = page.locator(f'#agents tr[data-key="{agent["id"]}"]')
        await expect(row.locator('[data-field="name"]')).to_have_text(agent["name"])
        await expect(row.locator('[data-field="state"]')).to_have_text(agent["state"])
        held = row.locator('[data-field="contacts"] li[data-contact]')
        await expect(held).to_have_count(len(agent["held"]))
        if not agent["held"]:
            await expect(row.locator('[data-field="contacts"]')).to_have_text(
                contacts(agent["contacts"]))
        await expect(row.locator('[data-field="offers"]')).to_have_text(str(agent["offers"]))
        cell = row.locator('[data-field="in_state"]')
        if agent["since"] is None:
            await expect(cell).to_have_text("–")
        else:
            await expect(cell).to_have_attribute("data-since", agent["since"])
            await expect(cell).to_have_text(re.compile(r"^\d+s$"))
    [held] = next(a["held"] for a in now["agents"] if a["name"] == "Ada")
    ada = page.locator(f'#agents tr[data-state="busy"] li[data-contact="{held["contact_id"]}"]')
    await expect(ada.locator(".channel")).to_have_text("sms")
    await expect(ada.locator(".who")).to_have_text("Unknown customer")
    await expect(ada.locator(".type")).to_have_text("Something else")
    await expect(ada.get_by_role("button", name="Whisper to Ada about Unknown customer")
                 ).to_be_visible()


async def check_queues(page, now: dict) -> None:
    await expect(page.locator("#queues .tile")).to_have_count(len(now["queues"]))
    general = now["queues"]["general"]
    assert general["waiting"] == 1 and general["waiting_over_target"] == 1
    assert general["service_level"] == 0.5 and general["below_goal"]  # 1 of 2 judged
    for name, queue in now["queues"].items():
        tile = page.locator(f'#queues .tile[data-key="{name}"]')
        await expect(tile.locator('[data-field="label"]')).to_have_text(queue["label"])
        await expect(tile.locator('[data-field="service_level"]')).to_have_text(
            rate(queue["service_level"]))
        await expect(tile.locator('[data-field="waiting"]')).to_have_text(str(queue["waiting"]))
        await expect(tile.locator('[data-field="abandoned"]')).to_have_text(
            str(queue["abandoned"]))
        await expect(tile.locator('[data-field="target"]')).to_have_text(
            f"goal {rate(queue['goal'])} within {queue['target_s']} s")
        assert ("below-goal" in (await tile.get_attribute("class")).split()) == \
            queue["below_goal"]
    first = page.locator("#queues .tile").first  # needs attention first
    await expect(first).to_have_attribute("data-key", "general")


async def check_sorting(page, now: dict) -> None:
    names = sorted(a["name"] for a in now["agents"])
    await page.click('#agents th button[data-sort="name"]')
    await expect(page.locator('#agents tbody [data-field="name"]')).to_have_text(names)
    await page.click('#agents th button[data-sort="name"]')
    await expect(page.locator('#agents tbody [data-field="name"]')).to_have_text(names[::-1])
    await expect(page.locator('#agents th[aria-sort="descending"]')).to_have_text("Agent")
    await page.click('#agents th button[data-sort="state"]')
    await expect(page.locator('#agents tbody [data-field="state"]')).to_have_text(
        list(STATE_LABELS))
    await page.select_option("#queue-sort", "label")
    labels = sorted(q["label"] for q in now["queues"].values())
    await expect(page.locator('#queues .tile [data-field="label"]')).to_have_text(labels)
    await page.select_option("#queue-sort", "attention")


async def check_it_refreshes(page, client, db) -> None:
    """A new agent logging in shows up without reloading the page."""
    await login(client, db, "Eve", ["care"])
    row = page.locator('#agents tr:has([data-field="name"]:text-is("Eve"))')
    await expect(row.locator('[data-field="state"]')).to_have_text("available")
    await expect(page.locator('#states [data-state="available"] .value')).to_have_text("2")


async def test_an_ops_user_goes_from_the_dashboard_to_the_floor_without_signing_in_again(
        agent_settings, db):  # noqa: F811
    async with instance(agent_settings) as client:
        await db.execute("DELETE FROM agents")
        await login(client, db, "Ada", ["care"])
        token = await create_token(db, "ops", "browser test")
        async with chromium() as browser:
            page = await (await browser.new_context()).new_page()
            await page.goto(str(client.make_url("/ops")))
            await page.fill("#token", token)
            await page.click("#sign-in")
            await expect(page.locator("#dashboard")).to_be_visible()
            await page.click('a[href="/supervisor"]')
            await expect(page.locator("#floor")).to_be_visible()
            await expect(page.locator("#login-view")).to_be_hidden()
            await expect(page.locator('#agents [data-field="state"]')).to_have_text(
                ["available"])
