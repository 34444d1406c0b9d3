"""The /ops dashboard split by an attribute asked for the first time, in real headless
Chromium: it asks with `Prefer: respond-async`, shows "Preparing figures by tier: N of M days"
with a progress bar while the roll-ups by tier are prepared (held back here by another
session holding the warming lock), then the split with the API's figures; then the same for
another attribute, the earlier split hidden meanwhile. Screenshots land in
test-artifacts/ops-preparing.png and ops-preparing-done.png.
"""

from __future__ import annotations

import asyncpg
import pytest
from playwright.async_api import expect

from service.app import create_app
from service.infra.tokens import create_token
from service.reporting import ops_api, reports, rollups
from service.reporting.reports import Window
from tests.browser import artifact, chromium, require_chromium, serve
from tests.conftest import _clean_tables, with_settings
from tests.test_first_split import PAST_DAYS, past_start, random_past_log
from tests.test_rollups_warm import midnight, today


@pytest.fixture(autouse=True)
def browser_installed():
    require_chromium()


async def test_the_dashboard_shows_the_progress_of_a_first_split_then_the_split(
        settings, db, database_url):
    await _clean_tables(settings.database_url)
    await random_past_log(db, seed=45)
    token = await create_token(db, "ops", "preparing test")
    app = create_app(with_settings(settings, report_warm_days=0))
    if not any(r.canonical == "/api/reports/summary" for r in app.router.resources()):
        app.router.add_routes(ops_api.routes())
    window = Window(past_start(), midnight(today()))
    query = (f"from={window.start.date()}&to={window.end.date()}"
             f"&segment_by=customer.tier#token={token}")
    holder = await asyncpg.connect(database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", rollups.WARM_LOCK_KEY)
        async with serve(app) as base, chromium() as browser:
            page = await (await browser.new_context(
                viewport={"width": 1280, "height": 640})).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            await page.goto(f"{base}/ops?{query}")
            progress = page.locator("#segment-progress")
            await expect(progress).to_be_visible()
            await expect(progress).to_have_text(f"Preparing figures by tier: 0 of {PAST_DAYS} days")
            bar = page.locator("#segment-progress-bar")
            assert await bar.get_attribute("max") == str(PAST_DAYS)
            assert await bar.evaluate("bar => bar.value") == 0
            await expect(page.locator("#headline")).not_to_be_empty()  # the rest is shown meanwhile
            await expect(page.locator("#segments-panel")).to_be_hidden()
            await page.screenshot(path=artifact("ops-preparing.png"))

            await holder.execute("SELECT pg_advisory_unlock($1)", rollups.WARM_LOCK_KEY)
            await expect(page.locator("#segments-panel")).to_be_visible(timeout=60_000)
            await expect(progress).to_be_hidden()
            split = await reports.split(reports.summary, db, window,
                                        ops_api.report_rules(app), "tier")
            assert [part["value"] for part in split["segments"]] == [None, "bronze", "gold",
                                                                     "silver"]
            for part in split["segments"]:
                row = page.locator(f'#segments tr[data-key="{part["value"] or ""}"]')
                await expect(row.locator("td").nth(1)).to_have_text(
                    str(part["totals"]["contacts"]))
            await page.locator("#segments-panel").screenshot(
                path=artifact("ops-preparing-done.png"))

            # Another attribute asked for the first time: the tiers' table goes meanwhile.
            await holder.execute("SELECT pg_advisory_lock($1)", rollups.WARM_LOCK_KEY)
            await page.select_option("#segment-by", "customer.language")
            await expect(progress).to_have_text(
                f"Preparing figures by language: 0 of {PAST_DAYS} days")
            await expect(page.locator("#segments-panel")).to_be_hidden()
            await holder.execute("SELECT pg_advisory_unlock($1)", rollups.WARM_LOCK_KEY)
            await expect(page.locator('#segments tr[data-key="fr"]')).to_be_visible(
                timeout=60_000)
            await expect(progress).to_be_hidden()
            assert "segment_by=customer.language" in page.url
            assert errors == []
    finally:
        await holder.close()
