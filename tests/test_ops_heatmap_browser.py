"""The touchpoint heat map, the journeys flow and the customer segments of /ops, in real
headless Chromium against the API's figures.

Traffic goes through the signed webhooks and the agent socket, with surveys answered and
customers carrying a tier; the page must show what /api/reports/* return: each cell for every
metric and handling, the sort orders, the channel filter, the CSV download byte for byte, the
flow's nodes and links, and a dashboard filtered or split by tier. Screenshots land in
test-artifacts/ (ops-heatmap.png, ops-flow.png, ops-segments.png).
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from playwright.async_api import expect

from service.conversations.customers import upsert_customer
from service.infra.tokens import create_token
from service.reporting import reports
from tests.browser import artifact, chromium, fixed, require_chromium
from tests.test_agents import ALL_SKILLS, login
from tests.test_ops_api import events_landed
from tests.test_ops_browser import sign_in
from tests.test_surveys import surveyed, twilio  # noqa: F401 (fixtures)
from tests.twilio_driver import Call, text

GOLD, SILVER, PLAIN, CALLER = "+15555550411", "+15555550412", "+15555550413", "+15555550414"
METRICS = ("contacts", "true_deflection_rate", "csat", "nps", "survey_response_rate")


@pytest.fixture(autouse=True)
def browser_installed():
    require_chromium()


async def resolved_by_text(client, phone: str, asked: str, score: str) -> None:
    await text(client, phone, asked)
    await text(client, phone, "yes")
    await text(client, phone, score)


async def traffic(client, db, redis_client) -> None:
    """Tiered customers resolve things by text and rate it; one comes back by phone and
    leaves the queue; a caller solves it on the keypad; a texter is helped by an agent."""
    for phone, tier in ((GOLD, "gold"), (SILVER, "silver"), (CALLER, "gold")):
        await upsert_customer(db, redis_client, identities=[("phone", phone)],
                              display_name=None, attributes={"tier": tier, "language": "en"})
    await resolved_by_text(client, GOLD, "I need to track my order", "5")
    await resolved_by_text(client, SILVER, "where is my package", "2")
    await resolved_by_text(client, PLAIN, "I forgot my password", "4")
    call = await Call(client, GOLD).dial()  # back about the order: cross-channel, a false one
    await call.press("1")
    await call.hold()
    await call.leave_queue("hangup")
    await call.hang_up()
    call = await Call(client, CALLER).dial()
    await call.press("1")
    await call.press("1")  # solved on the keypad
    await call.press("3")  # its survey
    await call.hang_up()
    agent = await login(client, db, skills=ALL_SKILLS)
    await text(client, SILVER, "Can I talk to a real person please")
    offer = await agent.next("offer")
    await agent.send(type="accept", contact_id=offer["contact_id"])
    await agent.next("assigned")
    await agent.send(type="wrap_up", contact_id=offer["contact_id"], resolved=True,
                     contact_type="cancel_order")
    await agent.next("wrapped_up")
    await text(client, SILVER, "4")  # the survey after the agent
    await agent.ws.close()
    await events_landed(client.app)


async def api(client, name: str, token: str, window: dict, **extra) -> dict:
    response = await client.get(f"/api/reports/{name}", params={**window, **extra},
                                headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200, await response.text()
    return await response.json()


def shown(value, metric: str) -> str:
    """What the heat map prints for a figure."""
    if value is None:
        return "–"
    if metric == "contacts":
        return str(value)
    if metric == "csat":
        return fixed(value, 2)
    if metric == "nps":
        return f"{'+' if value > 0 else ''}{fixed(value, 1)}"
    return f"{fixed(value * 100, 1)}%"


def figures_of(cell: dict, handled: str) -> dict:
    return cell if handled == "all" else cell["by_handling"][handled]


async def test_heat_map_flow_and_segments_show_the_api_figures(surveyed, db, redis_client):
    now = datetime.now(timezone.utc)
    window = {"from": reports.iso(now - timedelta(days=1)),
              "to": reports.iso(now + timedelta(days=1))}
    async with await surveyed() as client:
        await traffic(client, db, redis_client)
        token = await create_token(db, "ops", "heat map test")
        matrix = await api(client, "matrix", token, window)
        journeys = await api(client, "journeys", token, window)
        assert {r["channel"] for r in matrix["rows"]} == {"sms", "voice"}
        assert any(r["csat"] is not None for r in matrix["rows"])
        url = str(client.make_url("/ops").with_query(window))
        async with chromium() as browser:
            context = await browser.new_context(viewport={"width": 1360, "height": 900},
                                                accept_downloads=True)
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await sign_in(page, url, token)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            await check_every_metric_and_handling(page, matrix)
            await check_sorting(page, matrix)
            await check_channel_filter(page, matrix)
            await page.select_option("#heatmap-metric", "csat")
            await page.locator("#heatmap").scroll_into_view_if_needed()
            await page.locator("#heatmap").locator("..").screenshot(
                path=artifact("ops-heatmap.png"))
            await check_csv_download(page, client, token, window)
            await check_flow(page, journeys, matrix)
            await check_segments(page, client, token, window)
            assert errors == []


async def cell_values(page) -> dict[tuple[str, str], tuple[str, str]]:
    """(type, channel) -> (data-value, text) of every drawn cell, totals excluded."""
    return {(t, c): (v, s) for t, c, v, s in await page.locator("#heatmap-table td.heat")
            .evaluate_all("cells => cells.map(td => [td.closest('tr').dataset.type, "
                          "td.dataset.channel, td.dataset.value, "
                          "td.querySelector('.value').textContent])")}


async def check_every_metric_and_handling(page, matrix: dict) -> None:
    for handled in ("all", "self_service", "agent", "abandoned"):
        await page.select_option("#heatmap-handled", handled)
        for metric in METRICS:
            await page.select_option("#heatmap-metric", metric)
            await expect(page.locator("#heatmap-table")).to_have_attribute("data-colour-by", metric)
            await expect(page.locator("#heatmap-table")).to_have_attribute("data-handled",
                                                                           handled)
            expected = {}
            for cell in matrix["rows"]:
                value = figures_of(cell, handled)[metric]
                expected[cell["contact_type"], cell["channel"]] = (
                    "null" if value is None else value, shown(value, metric))
            drawn = {key: (None if v == "null" else float(v), text)
                     for key, (v, text) in (await cell_values(page)).items()}
            assert drawn == {key: (None if v == "null" else float(v), text)
                             for key, (v, text) in expected.items()}, (handled, metric)
            coloured = page.locator("#heatmap-table td.heat[style*='background']")
            assert await coloured.count() == sum(1 for v, _ in expected.values() if v != "null")
    await page.select_option("#heatmap-handled", "all")
    await expect(page.locator("#heatmap-legend .legend-title")).to_have_text("Survey response rate")
    tip = await page.locator("#heatmap-table td.heat").first.get_attribute("title")
    assert "Contacts:" in tip and "CSAT:" in tip


def row_totals(matrix: dict, channels: set[str]) -> dict[str, dict]:
    totals: dict[str, dict] = {}
    for cell in matrix["rows"]:
        if cell["channel"] in channels:
            found = totals.setdefault(cell["contact_type"], {"label": cell["label"],
                                                             "contacts": 0, "csat_points": 0,
                                                             "csat_responses": 0})
            for name in ("contacts", "csat_points", "csat_responses"):
                found[name] += cell[name]
    return totals


async def check_sorting(page, matrix: dict) -> None:
    """By volume (most first, ties by name), by CSAT (none last), by name."""
    totals = row_totals(matrix, {"sms", "voice"})

    def order(key) -> list[str]:
        return [t for t, _ in sorted(totals.items(), key=key)]

    def csat(item):
        found = item[1]
        mean = found["csat_points"] / found["csat_responses"] if found["csat_responses"] else None
        return (mean is None, -(mean or 0), found["label"])

    for sort, expected in (
            ("contacts", order(lambda i: (-i[1]["contacts"], i[1]["label"]))),
            ("csat", order(csat)), ("label", order(lambda i: i[1]["label"]))):
        await page.select_option("#heatmap-sort", sort)
        await expect(page.locator("#heatmap-table")).to_have_attribute("data-sort", sort)
        assert await page.locator("#heatmap-table tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.type)") == expected, sort
    await page.select_option("#heatmap-sort", "contacts")


async def check_channel_filter(page, matrix: dict) -> None:
    """Voice off: its column goes, types seen only by phone go, totals are the texts'."""
    await page.select_option("#heatmap-metric", "contacts")
    await page.uncheck('#heatmap-channels input[data-channel="voice"]')
    await expect(page.locator('#heatmap-table th[data-channel="voice"]')).to_have_count(0)
    totals = row_totals(matrix, {"sms"})
    drawn = await page.locator("#heatmap-table tbody tr").evaluate_all(
        "rows => rows.map(r => [r.dataset.type, +r.querySelector('td.total').dataset.value])")
    assert dict(drawn) == {t: found["contacts"] for t, found in totals.items()}
    await page.check('#heatmap-channels input[data-channel="voice"]')
    await expect(page.locator('#heatmap-table th[data-channel="voice"]')).to_have_count(1)


async def check_csv_download(page, client, token: str, window: dict) -> None:
    async with page.expect_download() as waiting:
        await page.click("#heatmap-csv")
    download = await waiting.value
    saved = Path(await download.path()).read_text(encoding="utf-8")
    response = await client.get("/api/reports/matrix.csv", params=window,
                                headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200 and response.content_type == "text/csv"
    served = await response.text()
    assert download.suggested_filename == \
        f"touchpoint-matrix-{window['from'][:10]}-{window['to'][:10]}.csv"
    assert saved == served
    matrix = await api(client, "matrix", token, window)
    rows = csv_rows(served)
    assert len(rows) == 4 * len(matrix["rows"])
    for cell in matrix["rows"]:
        for handled in ("all", "self_service", "agent", "abandoned"):
            [row] = [r for r in rows if (r["contact_type"], r["channel"], r["handled_by"]) ==
                     (cell["contact_type"], cell["channel"], handled)]
            figures = figures_of(cell, handled)
            assert int(row["contacts"]) == figures["contacts"]
            assert row["csat"] == ("" if figures["csat"] is None else str(figures["csat"]))


def csv_rows(body: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(body)))


async def check_flow(page, journeys: dict, matrix: dict) -> None:
    """Every contact type's flow as the API has it; track_order went from text to phone."""
    labels = {r["contact_type"]: r["label"] for r in matrix["rows"]}
    assert journeys["flows"]["track_order"]["links"] == [
        {"stage": 1, "from": "sms:self_service", "to": "voice:abandoned", "journeys": 1}]
    for contact_type, flow in journeys["flows"].items():
        await page.select_option("#flow-type", contact_type)
        chart = page.locator("#flow-chart svg")
        await expect(chart).to_have_attribute("data-type", labels.get(contact_type,
                                                                      contact_type))
        nodes = await chart.locator("g.node").evaluate_all(
            "gs => gs.map(g => [+g.dataset.stage, g.dataset.step, +g.dataset.journeys, "
            "+g.dataset.ended])")
        assert sorted(map(tuple, nodes)) == sorted(
            (n["stage"], n["step"], n["journeys"], n["ended"]) for n in flow["nodes"])
        links = await chart.locator("path.link").evaluate_all(
            "ps => ps.map(p => [+p.dataset.stage, p.dataset.from, p.dataset.to, "
            "+p.dataset.journeys])")
        assert sorted(map(tuple, links)) == sorted(
            (k["stage"], k["from"], k["to"], k["journeys"]) for k in flow["links"])
    await page.select_option("#flow-type", "track_order")
    await expect(page.locator("#flow-summary")).to_contain_text("1 came back")
    await page.locator("#flow").locator("..").screenshot(path=artifact("ops-flow.png"))


async def check_segments(page, client, token: str, window: dict) -> None:
    """Split by tier: one row per tier as the API splits it; then only gold customers."""
    await page.select_option("#segment-by", "customer.tier")
    await expect(page.locator("#segments-panel")).to_be_visible()
    split = await api(client, "summary", token, window, segment_by="customer.tier")
    assert [s["value"] for s in split["segments"]] == [None, "gold", "silver"]
    for part in split["segments"]:
        row = page.locator(f'#segments tr[data-key="{part["value"] or ""}"]')
        await expect(row.locator('[data-field="contacts"]')).to_have_text(
            str(part["totals"]["contacts"]))
    await page.locator("#segments-panel").screenshot(path=artifact("ops-segments.png"))
    await page.select_option("#segment-value", "gold")
    gold = await api(client, "summary", token, window, segment_by="customer.tier",
                     segment="gold")
    await expect(page.locator('[data-metric="contacts"] .value')).to_have_text(
        str(gold["totals"]["contacts"]))
    assert gold["totals"]["contacts"] == 3  # two of GOLD's, the caller's
    await expect(page.locator("#segments-panel")).to_be_hidden()
    gold_matrix = await api(client, "matrix", token, window, segment_by="customer.tier",
                            segment="gold")
    await expect(page.locator("#heatmap-table td.heat")).to_have_count(len(gold_matrix["rows"]))
    assert "segment_by=customer.tier" in page.url and "segment=gold" in page.url
    await page.screenshot(path=artifact("ops-dashboard-gold.png"), full_page=True)
