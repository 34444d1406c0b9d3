"""The experiments panel of /ops in real headless Chromium: an experiment's arms and a running
canary, driven through the signed SMS webhook, shown with the figures the API returns. A
screenshot lands in test-artifacts/ops-experiments.png."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone

import pytest
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import expect

from service.app import create_app
from service.appkeys import RULES
from service.infra.tokens import create_token
from service.reporting import reports
from tests.browser import artifact, chromium, fixed, require_chromium
from tests.conftest import _clean_tables, with_settings
from tests.test_canary import reworded
from tests.test_experiments import ASK, SHORT, rules_dir
from tests.test_ops_api import events_landed
from tests.test_ops_browser import sign_in
from tests.twilio_driver import text

EXPERIMENT = f"""
    experiments:
      order_wording:
        contact_type: track_order
        control: catalog
        min_contacts: 3
        arms:
          catalog: {{}}
          short:
            answer: "{SHORT}"
"""


@pytest.fixture(autouse=True)
def browser_installed():
    require_chromium()


def rate(value) -> str:
    return "–" if value is None else f"{fixed(value * 100, 1)}%"


def interval(bounds, kind: str = "rate") -> str:
    if bounds is None:
        return ""
    if kind == "rate":
        return f"{fixed(bounds[0] * 100, 1)}–{fixed(bounds[1] * 100, 1)}%"
    return f"{fixed(bounds[0], 2)}–{fixed(bounds[1], 2)}"


async def check_arm(page, key: str, arm: dict) -> None:
    row = page.locator(f'#experiments tr[data-key="{key}"]')
    await expect(row.locator('td[data-field="contacts"]')).to_have_text(str(arm["contacts"]))
    for field in ("true_deflection", "escalation", "false_deflection"):
        cell = row.locator(f'td[data-field="{field}_rate"]')
        await expect(cell.locator(".figure")).to_have_text(rate(arm[f"{field}_rate"]))
        await expect(cell.locator(".interval")).to_have_text(interval(arm[f"{field}_interval"]))
    csat = "–" if arm["csat"] is None else fixed(arm["csat"], 2)
    await expect(row.locator('td[data-field="csat"] .figure')).to_have_text(csat)
    await expect(row.locator('td[data-field="csat"] .interval')).to_have_text(
        interval(arm["csat_interval"], "mean"))


async def test_the_experiments_panel_shows_the_api_figures(settings, redis_client, db, tmp_path):
    await _clean_tables(settings.database_url)
    stable = rules_dir(tmp_path, EXPERIMENT)
    candidate = reworded(shutil.copytree(stable, tmp_path / "candidate"))
    app = create_app(with_settings(settings, rules_dir=stable, canary_check_s=0.5))
    async with TestClient(TestServer(app)) as client:
        token = await create_token(db, "ops", "browser test")
        auth = {"Authorization": f"Bearer {token}"}
        response = await client.post("/api/rules/canary", headers=auth, json={
            "directory": str(candidate), "share": 0.5, "min_contacts": 50,
            "guardrails": ["true_deflection:-0.2", "csat:-0.5"]})
        assert response.status == 200, await response.text()
        arms = {"catalog": 0, "short": 0}
        for i in range(40):
            if min(arms.values()) >= 4:
                break
            phone = f"+1555666{i:04d}"
            said = await text(client, phone, ASK)
            arm = "short" if said[0] == SHORT else "catalog"
            arms[arm] += 1
            if arm == "catalog" and arms[arm] % 2 == 0:
                await text(client, phone, "no")  # half the control's customers go to a person
                continue
            await text(client, phone, "yes")
            await text(client, phone, "5" if arms[arm] % 3 else "4")
        await events_landed(client.app)
        now = datetime.now(timezone.utc)
        window = {"from": reports.iso(now - timedelta(days=1)),
                  "to": reports.iso(now + timedelta(days=1))}
        response = await client.get("/api/reports/experiments", params=window, headers=auth)
        report = await response.json()
        [experiment] = report["experiments"]
        assert report["canary"]["state"] == "running"
        assert client.app[RULES].canary is not None

        async with chromium() as browser:
            page = await (await browser.new_context(viewport={"width": 1360, "height": 900})
                          ).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await sign_in(page, str(client.make_url("/ops").with_query(window)), token)
            panel = page.locator("#experiments")
            await expect(panel.locator("tbody tr")).to_have_count(4)
            for arm in experiment["arms"]:
                await check_arm(page, f'order_wording/{arm["arm"]}', arm)
                verdict = page.locator(f'#experiments tr[data-key="order_wording/{arm["arm"]}"] '
                                       '.verdict')
                await expect(verdict).to_have_text(arm["verdict"]["verdict"] if arm["verdict"]
                                                   else "control")
            for name in ("canary", "stable"):
                await check_arm(page, f"canary/{name}", report["canary"]["arms"][name])
            canary = page.locator(f'[data-canary="{report["canary"]["id"]}"]')
            await expect(canary.locator(".state")).to_have_text("running")
            await expect(canary.locator("li[data-guardrail]")).to_have_count(2)
            await expect(canary.locator('li[data-guardrail="true_deflection:-0.2"]')).to_contain_text(
                "judged after 50 contacts")
            await expect(page.locator("#experiments-rule")).to_have_text(
                report["definitions"]["verdict"])
            drawn = await panel.locator("svg.ci").count()
            assert drawn == sum(1 for arm in [*experiment["arms"],
                                              *report["canary"]["arms"].values()]
                                for key in ("true_deflection_interval", "escalation_interval",
                                            "false_deflection_interval", "csat_interval")
                                if arm[key] is not None)
            section = page.locator("section[aria-labelledby='experiments-heading']")
            await section.scroll_into_view_if_needed()
            await section.screenshot(path=artifact("ops-experiments.png"))
            assert errors == []
