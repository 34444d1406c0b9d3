"""Away reasons in real headless Chromium, against the real app and servers: the agent
console's reason picker (mouse and keyboard) and its header timer, and the supervisor view
showing why an agent is away, for how long and over the reason's limit. Screenshots land in
test-artifacts/away-console.png and away-supervisor.png.
"""

from __future__ import annotations

import re
import time

import pytest
from playwright.async_api import expect

from service.agents.desk import add_agent
from service.infra.tokens import create_token
from tests.browser import artifact, chromium, require_chromium
from tests.conftest import ROOT, service_with_rules
from tests.test_agents import app_settings as agent_settings  # noqa: F401 (fixture)
from tests.test_agents import login, twilio  # noqa: F401 (fixture)
from tests.test_away_reasons import activity_clock  # noqa: F401 (fixture)
from tests.test_supervisor import by_name, supervised, view  # noqa: F401 (fixture)
from tests.test_supervisor_browser import sign_in


@pytest.fixture(autouse=True)
def browser_installed():
    require_chromium()


def watch(page, errors: list[str]) -> None:
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)


async def test_the_console_picks_a_reason_and_times_it(supervised, db):  # noqa: F811
    async with service_with_rules(supervised, ROOT / "routing_rules") as client:
        token = await add_agent(db, "Dana", ["care"])
        supervisor = await create_token(db, "supervisor", "floor")
        async with chromium() as browser:
            page = await (await browser.new_context(viewport={"width": 1280, "height": 720})
                          ).new_page()
            errors: list[str] = []
            watch(page, errors)
            await page.goto(str(client.make_url("/agent")))
            await page.get_by_label("Agent token").fill(token)
            await page.get_by_role("button", name="Sign in").click()
            switch = page.get_by_role("switch")
            await expect(switch).to_have_attribute("aria-checked", "false")
            reasons = page.get_by_role("radiogroup", name="Why are you away?")
            await expect(reasons.get_by_role("radio")).to_have_text(
                ["Break", "Lunch", "Meeting", "Training", "After-call work", "Other"])
            await expect(page.locator("#status-text")).to_have_text("Away")

            await reasons.get_by_role("radio", name="Lunch").click()
            await expect(reasons.get_by_role("radio", name="Lunch")).to_have_attribute(
                "aria-checked", "true")
            await expect(page.locator("#status-text")).to_have_text("Lunch")
            await expect(page.locator("#status-time")).to_have_text(re.compile(r"^0:0[0-9]$"))
            assert by_name(await view(client, supervisor))["Dana"]["reason"] == "lunch"
            await page.wait_for_timeout(2100)  # the header's timer runs
            await expect(page.locator("#status-time")).not_to_have_text("0:00")
            await page.screenshot(path=artifact("away-console.png"))

            # by keyboard: the checked reason holds the tab stop, arrows move, Enter picks
            await reasons.get_by_role("radio", name="Lunch").focus()
            await page.keyboard.press("ArrowRight")
            await expect(reasons.get_by_role("radio", name="Meeting")).to_be_focused()
            await page.keyboard.press("Enter")
            await expect(page.locator("#status-text")).to_have_text("Meeting")
            assert by_name(await view(client, supervisor))["Dana"]["reason"] == "meeting"

            await switch.click()  # available: no reason, the picker goes
            await expect(switch).to_have_attribute("aria-checked", "true")
            await expect(page.locator("#reason-picker")).to_be_hidden()
            await expect(page.locator("#status-text")).to_have_text("Available")

            await switch.click()  # going away asks why first, and sends nothing yet
            picker = page.get_by_role("radiogroup", name="Why are you going away?")
            await expect(picker.get_by_role("radio", name="Break")).to_be_focused()
            assert by_name(await view(client, supervisor))["Dana"]["state"] == "available"
            await page.screenshot(path=artifact("away-console-choosing.png"))
            await page.keyboard.press("Escape")
            await expect(page.locator("#reason-picker")).to_be_hidden()
            await expect(switch).to_be_focused()
            await switch.click()
            await picker.get_by_role("radio", name="Break").press("Enter")
            await expect(switch).to_have_attribute("aria-checked", "false")
            await expect(page.locator("#status-text")).to_have_text("Break")
            assert by_name(await view(client, supervisor))["Dana"]["reason"] == "break"

            # a reload closes the socket (the service forgets why); the console says it again
            await page.reload()
            await expect(page.get_by_role("radio", name="Break")).to_have_attribute(
                "aria-checked", "true")
            await expect(page.locator("#status-text")).to_have_text("Break")
            seen = by_name(await view(client, supervisor))["Dana"]
            assert (seen["state"], seen["reason"]) == ("away", "break")
            assert errors == []


async def test_the_supervisor_sees_why_an_agent_is_away_and_for_how_long(
        supervised, db, activity_clock):  # noqa: F811
    async with service_with_rules(supervised, ROOT / "routing_rules") as client:
        token = await create_token(db, "supervisor", "floor")
        await login(client, db, "Ada")  # available
        ben = await login(client, db, "Ben", available=False)
        cy = await login(client, db, "Cy", available=False)
        dee = await login(client, db, "Dee", available=False)
        for agent, minutes, reason in ((ben, 12, "lunch"), (cy, 21, "break"), (dee, 3, "break")):
            activity_clock.at(time.time() - minutes * 60 - 5)
            await agent.send(type="presence", status="away", reason=reason)
            await agent.next("presence")
        activity_clock.release()
        async with chromium() as browser:
            page = await (await browser.new_context(viewport={"width": 1280, "height": 640})
                          ).new_page()
            errors: list[str] = []
            await sign_in(page, str(client.make_url("/supervisor")), token)  # a bad token first
            watch(page, errors)
            seen = by_name(await view(client, token))
            ben_row = page.locator(f'#agents tr[data-key="{seen["Ben"]["id"]}"]')
            await expect(ben_row.locator('[data-field="reason"]')).to_have_text("Lunch")
            await expect(ben_row.locator('[data-field="in_state"]')).to_have_text(
                re.compile(r"^12m \d\ds$"))
            await expect(ben_row.locator('[data-field="over_limit"]')).to_have_count(0)
            cy_row = page.locator(f'#agents tr[data-key="{seen["Cy"]["id"]}"]')
            await expect(cy_row.locator('[data-field="over_limit"]')).to_have_text(
                "over 15 min")
            await expect(cy_row.locator('[data-field="in_state"]')).to_have_class(
                re.compile("over-limit"))
            dee_row = page.locator(f'#agents tr[data-key="{seen["Dee"]["id"]}"]')
            await expect(dee_row.locator('[data-field="reason"]')).to_have_text("Break")
            await expect(dee_row.locator('[data-field="over_limit"]')).to_have_count(0)
            away = page.locator('#states [data-state="away"]')
            await expect(away.locator(".value")).to_have_text("3")
            await expect(away.locator('[data-field="away_by_reason"]')).to_have_text(
                "Break 2 · Lunch 1")
            await expect(away).to_have_attribute("title", "Away: Break 2 · Lunch 1")
            await page.screenshot(path=artifact("away-supervisor.png"), full_page=True)
            assert errors == []
