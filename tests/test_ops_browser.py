"""The ops dashboard in real headless Chromium, against the real app and servers.

Traffic goes through the signed webhooks; the dashboard is opened with an ops token and must
show the figures the report API returns and draw its charts. A screenshot lands in
test-artifacts/ops-dashboard.png. Without Chromium the test fails under CI (env CI set) and
is skipped elsewhere (tests/browser.py).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import expect

from service.infra.tokens import create_token
from service.reporting import reports
from tests.browser import artifact, chromium, fixed, require_chromium
from tests.test_agents import app_settings, login, twilio  # noqa: F401 (fixtures)
from tests.test_ops_api import events_landed, ops_app
from tests.twilio_driver import Call, text

HEADLINE = {"contacts": "count", "deflection_rate": "rate", "true_deflection_rate": "rate",
            "containment_rate": "rate", "abandonment_rate": "rate", "service_level": "rate",
            "false_deflections": "count", "escalated": "count", "transferred": "count",
            "callbacks_requested": "count"}
SERIES = ("deflection_rate", "true_deflection_rate", "containment_rate", "abandonment_rate")


@pytest.fixture(autouse=True)
def browser_installed():
    """Skip (or, under CI, fail) before any server starts when Chromium is missing."""
    require_chromium()


def shown(value, kind: str = "rate") -> str:
    """What ops.js prints for a figure."""
    if kind == "count":
        return str(value)
    return "–" if value is None else f"{fixed(value * 100, 1)}%"


async def a_morning_of_traffic(client: TestClient) -> None:
    await text(client, "+15555550301", "I need to track my order")
    await text(client, "+15555550301", "yes")
    call = await Call(client, "+15555550301").dial()  # calls about it: a false deflection
    await call.press("1")
    await call.hold()
    await call.leave_queue("hangup")
    await call.hang_up()
    call = await Call(client, "+15555550302").dial()
    await call.press("2")
    await call.press("1")  # solved on the keypad: contained
    await call.hang_up()
    await (await Call(client, "+15555550303").dial()).hang_up()
    await text(client, "+15555550304", "Can I talk to a real person please")
    await events_landed(client.app)


async def an_agent_takes_the_texter(client: TestClient, db) -> None:
    """The texter who asked for a person is accepted and wrapped up as a cancellation (agent
    time to rank); then the agent steps away and another texter waits."""
    agent = await login(client, db)
    offer = await agent.next("offer")
    await agent.send(type="accept", contact_id=offer["contact_id"])
    await agent.next("assigned")
    await agent.send(type="wrap_up", contact_id=offer["contact_id"], resolved=True,
                     contact_type="cancel_order")  # what it turned out to be about
    await agent.next("wrapped_up")
    await agent.send(type="presence", status="away")
    await agent.next("presence")
    await agent.ws.close()
    await text(client, "+15555550305", "Can I talk to a real person please")  # still waits
    await events_landed(client.app)


async def api(client: TestClient, name: str, token: str, window: dict) -> dict:
    response = await client.get(f"/api/reports/{name}", params=window,
                                headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200
    return await response.json()


async def test_dashboard_shows_the_api_figures_and_draws_its_charts(app_settings, db):
    settings = app_settings
    now = datetime.now(timezone.utc)
    window = {"from": reports.iso(now - timedelta(days=1)),
              "to": reports.iso(now + timedelta(days=1))}
    async with TestClient(TestServer(ops_app(settings))) as client:
        await a_morning_of_traffic(client)
        await an_agent_takes_the_texter(client, db)
        token = await create_token(db, "ops", "browser test")
        summary, matrix, journeys, trend = await asyncio.gather(*(
            api(client, name, token, window) for name in ("summary", "matrix", "journeys",
                                                          "trend")))
        assert summary["totals"]["contacts"] == 6 and summary["totals"]["false_deflections"] == 1
        url = str(client.make_url("/ops").with_query(window))
        async with chromium() as browser:
            page = await (await browser.new_context(viewport={"width": 1360, "height": 900})
                          ).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await sign_in(page, url, token)  # the browser logs the refused token's 401 itself
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
                    else None)
            await page.reload()  # the token is kept for the session
            await expect(page.locator("#dashboard")).to_be_visible()
            await check_headline(page, summary)
            await check_tables(page, summary, matrix, journeys)
            await check_charts(page, summary, trend)
            await check_candidates(page, await api(client, "candidates", token, window))
            queues = await client.get("/api/queues",
                                      headers={"Authorization": f"Bearer {token}"})
            await check_queues(page, await queues.json())
            await page.screenshot(path=artifact("ops-dashboard.png"), full_page=True)
            assert errors == []


async def check_candidates(page, candidates: dict) -> None:
    """The ranking as the API gives it, the formula under it."""
    assert candidates["rows"], "the morning has agent-handled contacts to rank"
    await expect(page.locator("#candidates tbody tr")).to_have_count(len(candidates["rows"]))
    for row in candidates["rows"]:
        shown_row = page.locator(f'#candidates tr[data-key="{row["contact_type"]}"]')
        await expect(shown_row.locator('[data-field="rank"]')).to_have_text(str(row["rank"]))
        await expect(shown_row.locator('[data-field="score"]')).to_have_text(
            fixed(row["score"], 1))
        success = shown(row["success"]) + (" (est.)" if row["success_estimated"] else "")
        await expect(shown_row.locator('[data-field="success"]')).to_have_text(success)
    await expect(page.locator("#candidates-formula")).to_have_text(candidates["formula"])


async def sign_in(page, url: str, token: str) -> None:
    await page.goto(url)
    await expect(page.locator("#login-view")).to_be_visible()
    await page.fill("#token", "not-a-token")
    await page.click("#sign-in")
    await expect(page.locator("#login-error")).to_contain_text("That token was not accepted")
    await page.fill("#token", token)
    await page.click("#sign-in")
    await expect(page.locator("#dashboard")).to_be_visible()
    await expect(page.locator("#login-view")).to_be_hidden()


async def check_headline(page, summary: dict) -> None:
    for key, kind in HEADLINE.items():
        value = page.locator(f'[data-metric="{key}"] .value')
        await expect(value).to_have_text(shown(summary["totals"][key], kind))
    await expect(page.locator('[data-metric="true_deflection_rate"] .value')).to_have_text(
        "16.7%")  # 2 of 6 resolved in self-service, 1 of them came back
    await expect(page.locator('[data-metric="callbacks_requested"] .detail')).to_have_text(
        f"asked for while queued, {summary['totals']['callbacks_completed']} completed")
    await expect(page.locator("#metric-version")).to_have_text("2")
    await expect(page.locator("#footnote")).to_contain_text(summary["from"])


async def check_tables(page, summary: dict, matrix: dict, journeys: dict) -> None:
    channels = page.locator("#channels tbody tr")
    await expect(channels).to_have_count(len(summary["by_channel"]))
    for name, figures in summary["by_channel"].items():
        row = page.locator(f'#channels tr[data-key="{name}"]')
        await expect(row.locator('[data-field="contacts"]')).to_have_text(str(figures["contacts"]))
        await expect(row.locator('[data-field="containment_rate"]')).to_have_text(
            shown(figures["containment_rate"]))
    await expect(page.locator("#matrix tbody tr")).to_have_count(len(matrix["rows"]))
    for cell in matrix["rows"]:
        row = page.locator(f'#matrix tr[data-key="{cell["contact_type"]}/{cell["channel"]}"]')
        await expect(row.locator('[data-field="contacts"]')).to_have_text(str(cell["contacts"]))
        await expect(row.locator('[data-field="false_deflections"]')).to_have_text(
            str(cell["false_deflections"]))
    paths = [f'{j["contact_type"]}|{j["path"]}' for j in journeys["journeys"]]
    assert "track_order|sms:self_service -> voice:abandoned" in paths
    await expect(page.locator("#journeys li")).to_have_count(len(paths))
    assert await page.locator("#journeys li").evaluate_all(
        "items => items.map(li => li.dataset.path)") == paths
    await expect(page.locator("#dropouts tbody tr")).to_have_count(len(journeys["dropouts"]))


async def check_queues(page, now: dict) -> None:
    """The live panel shows the queues as /api/queues has them: one still waits for a person."""
    assert now["queues"]["general"]["waiting"] == 1
    await expect(page.locator("#queues tbody tr")).to_have_count(len(now["queues"]))
    for name, queue in now["queues"].items():
        row = page.locator(f'#queues tr[data-key="{name}"]')
        await expect(row.locator('[data-field="label"]')).to_have_text(queue["label"])
        await expect(row.locator('[data-field="waiting"]')).to_have_text(str(queue["waiting"]))
    await expect(page.locator("#agents-available")).to_have_text("0")
    await expect(page.locator("#queues-as-of")).to_contain_text("every 10 s")


async def check_charts(page, summary: dict, trend: dict) -> None:
    reasons = page.locator("#reasons-chart rect[data-reason]")
    await expect(reasons).to_have_count(len(summary["escalation_reasons"]))
    drawn = await reasons.evaluate_all(
        "bars => Object.fromEntries(bars.map(b => [b.dataset.reason, +b.dataset.count]))")
    assert drawn == summary["escalation_reasons"]
    chart = page.locator("#trend-chart svg")
    await expect(chart).to_have_attribute("data-points", str(len(trend["points"])))
    await expect(chart.locator("rect.volume")).to_have_count(len(trend["points"]))
    for series in SERIES:
        values = [p[series] for p in trend["points"] if p[series] is not None]
        assert values, series
        dots = chart.locator(f'g[data-series="{series}"] circle')
        await expect(dots).to_have_count(len(values))
        assert [float(v) for v in await dots.evaluate_all(
            "dots => dots.map(d => d.dataset.value)")] == values
        path = await chart.locator(f'g[data-series="{series}"] path').get_attribute("d")
        assert path.startswith("M")
    box = await chart.bounding_box()
    assert box["width"] > 600 and box["height"] > 150
