"""The agents panel of /ops in real headless Chromium: the figures the agent report API gives
for the scenario of tests/test_agent_report.py, a team row under them, and sorting by a click
on a heading. Screenshots land in test-artifacts/ops-agents*.png.
"""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from service.infra.tokens import create_token
from tests.browser import artifact, chromium, require_chromium
from tests.test_agent_report import (  # noqa: F401 (fixtures)
    agent_service,
    iso,
    play_the_scenario,
    report,
    twilio,
)
from tests.test_ops_browser import sign_in


@pytest.fixture(autouse=True)
def browser_installed():
    require_chromium()


async def names_in_order(page) -> list[str]:
    return await page.locator('#agents-table tbody td[data-field="name"]').all_inner_texts()


async def test_the_ops_panel_shows_each_agent_and_sorts(agent_service, db):  # noqa: F811
    async with await agent_service() as client:
        moments = await play_the_scenario(client, db)
        token = await create_token(db, "ops", "browser test")
        window = {"from": iso(moments["start"] - 60), "to": iso(moments["end"] + 60)}
        status, figures = await report(client, token, **window)
        assert status == 200
        url = str(client.make_url("/ops").with_query(window))
        async with chromium() as browser:
            page = await (await browser.new_context(viewport={"width": 1360, "height": 900})
                          ).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await sign_in(page, url, token)
            panel = page.locator("#agents-table")
            await expect(panel.locator("tbody tr")).to_have_count(2)
            # by contacts handled, most first
            assert await names_in_order(page) == ["Eli", "Dana"]
            await expect(panel.locator('th[aria-sort="descending"]')).to_have_text("Handled ▼")
            dana = panel.locator(f'tr[data-key="{figures["agents"][0]["id"]}"]')
            expected = {"offers": "4", "accepted": "2", "declined": "1", "expired": "1",
                        "acceptance_rate": "50.0%", "handled": "1", "resolved_rate": "100.0%",
                        "transfers_out": "1", "retyped": "1", "csat": "4.00 (1)"}
            for field, text in expected.items():
                await expect(dana.locator(f'[data-field="{field}"]')).to_have_text(text)
            eli = panel.locator(f'tr[data-key="{figures["agents"][1]["id"]}"]')
            await expect(eli.locator('[data-field="resolved_rate"]')).to_have_text("66.7%")
            await expect(eli.locator('[data-field="csat"]')).to_have_text("–")
            mean = figures["agents"][1]["handle_time_mean_s"]
            assert mean < 90  # the scenario takes seconds
            await expect(eli.locator('[data-field="handle_time_mean_s"]')).to_have_text(
                f"{round(mean)} s")
            team = panel.locator("tfoot tr.team")
            await expect(team.locator('[data-field="name"]')).to_have_text("Team")
            await expect(team.locator('[data-field="offers"]')).to_have_text("7")
            await expect(team.locator('[data-field="acceptance_rate"]')).to_have_text("71.4%")
            # time in status (test_away_reasons.py checks the figures): seconds here
            await expect(team.locator('[data-field="available_s"]')).to_have_text(
                re.compile(r"^\d+ s$"))
            await expect(dana.locator('[data-field="away_reasons_s"]')).to_have_text("–")
            await page.locator("#agents-heading").scroll_into_view_if_needed()
            await page.locator("#agents-table").screenshot(path=artifact("ops-agents.png"))

            await panel.locator('button[data-sort="offers"]').click()
            assert await names_in_order(page) == ["Dana", "Eli"]  # 4 offers, then 3
            await panel.locator('button[data-sort="offers"]').click()
            assert await names_in_order(page) == ["Eli", "Dana"]
            await expect(panel.locator('th[aria-sort="ascending"]')).to_have_text("Offers ▲")
            await panel.locator('button[data-sort="name"]').click()
            assert await names_in_order(page) == ["Dana", "Eli"]
            await expect(team.locator('[data-field="handled"]')).to_have_text("4")  # stays last
            await page.screenshot(path=artifact("ops-agents-page.png"), full_page=True)
            assert errors == []
