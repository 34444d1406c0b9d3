"""A reply is never lost nor doubled by a dropped connection, in real headless Chromium against
the real app and the Twilio stand-in. The console's socket goes through a relay that can drop
frames and cut it: a reply that never reached the server goes after the reconnect, once; a
reply the server took whose answers were lost is not sent again, and its line shows Sent."""

from __future__ import annotations

import contextlib
import json
import re
from typing import AsyncIterator

import aiohttp
import pytest
from playwright.async_api import expect

from service.agents.desk import add_agent
from service.app import create_app
from tests.browser import TIMEOUT_MS, artifact, chromium, require_chromium, serve
from tests.test_agents import ALL_SKILLS, twilio  # noqa: F401
from tests.test_browser_chat_agent import sign_in_available, watch_for_errors
from tests.test_browser_outbox import GREETING, PHONE, app_settings, line  # noqa: F401
from tests.test_outbox import outbox_rows, wait_for
from tests.twilio_driver import text


@pytest.fixture(autouse=True)
def browser_installed():
    require_chromium()


class Relay:
    """The console's socket through a hand that can drop the page's frames of one type, mute
    the server's answers and cut the connection; each new connection starts clean."""

    def __init__(self) -> None:
        self.routes: list = []
        self.sent: list[list[dict]] = []  # per connection, what reached the server
        self.drop_type: str | None = None
        self.dropped: list[dict] = []
        self.mute_server = False
        self.muted: list[dict] = []

    def __call__(self, route) -> None:
        server = route.connect_to_server()
        self.routes.append(route)
        self.drop_type, self.mute_server = None, False
        sent: list[dict] = []
        self.sent.append(sent)

        def from_page(message) -> None:
            frame = json.loads(message)
            if frame.get("type") == self.drop_type and route is self.routes[-1]:
                self.dropped.append(frame)
                return
            sent.append(frame)
            server.send(message)

        def from_server(message) -> None:
            if self.mute_server and route is self.routes[-1]:
                self.muted.append(json.loads(message))
                return
            route.send(message)

        route.on_message(from_page)
        server.on_message(from_server)

    async def cut(self) -> None:
        await self.routes[-1].close(code=4000, reason="network dropped")


@contextlib.asynccontextmanager
async def agent_holding_a_texter(app, db, standin) -> AsyncIterator[tuple]:
    """Dana's console, its socket through a relay, holding a texter's contact whose greeting
    was sent; the page must end without a script error."""
    token = await add_agent(db, "Dana", ALL_SKILLS)
    errors: list[str] = []
    relay = Relay()
    async with serve(app) as base, chromium() as browser:
        standin.service_url = base
        page = await (await browser.new_context(viewport={"width": 1280, "height": 860})
                      ).new_page()
        watch_for_errors(page, errors)
        page.set_default_timeout(TIMEOUT_MS)
        await page.route_web_socket(re.compile(r"/agent/ws"), relay)
        await sign_in_available(page, base, token)
        async with aiohttp.ClientSession(base_url=base) as http:
            await text(http, PHONE, "I forgot my password and can't log in")
            await text(http, PHONE, "no")
        await page.get_by_role("button", name="Accept").click()
        await expect(line(page, GREETING).locator(".delivery")).to_have_text("Sent")
        yield page, relay
    assert errors == []


async def reconnected(page, relay: Relay) -> None:
    await relay.cut()
    await expect(page.locator("#connection")).to_have_text("Reconnecting…")
    await expect(page.locator("#connection")).to_have_text("Connected")
    assert len(relay.routes) == 2


async def test_a_reply_that_never_reached_the_server_goes_once_after_the_reconnect(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with agent_holding_a_texter(create_app(app_settings), db, standin) as (page, relay):

        relay.drop_type = "message"  # the network eats the reply on its way
        reply = page.get_by_role("textbox", name="Reply")
        await reply.fill("I've reset your password: check your texts.")
        await reply.press("Enter")
        sent = line(page, "I've reset your password")
        await expect(sent.locator(".delivery")).to_have_text("Sending…")
        await page.screenshot(path=artifact("agent-frame-never-arrived-sending.png"))
        [lost] = relay.dropped
        assert re.fullmatch(r"[0-9a-f-]{36}", lost["id"])

        await reconnected(page, relay)
        await expect(sent.locator(".delivery")).to_have_text("Sent")
        await expect(sent).to_have_count(1)
        again = [f for f in relay.sent[1] if f.get("type") == "message"]
        assert [f["id"] for f in again] == [lost["id"]]  # the same id, sent again
        await page.screenshot(path=artifact("agent-frame-never-arrived-sent.png"))
        await wait_for(lambda: "I've reset your password: check your texts." in standin.bodies())
        assert standin.bodies().count("I've reset your password: check your texts.") == 1
        assert [r["id"] for r in await outbox_rows(db) if r["action"] == "send"] == [lost["id"]]
        assert await page.evaluate("sessionStorage.getItem('switchboard.agent.unacked')") is None


async def test_a_reply_whose_answers_were_lost_is_not_sent_twice_and_shows_sent(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with agent_holding_a_texter(create_app(app_settings), db, standin) as (page, relay):

        relay.mute_server = True  # the server takes the reply; its answers are lost
        words = "Your new password is on its way by text."
        reply = page.get_by_role("textbox", name="Reply")
        await reply.fill(words)
        await reply.press("Enter")
        await wait_for(lambda: words in standin.bodies())  # it reached the customer
        sent = line(page, words)
        await expect(sent.locator(".delivery")).to_have_text("Sending…")
        assert any(f["type"] == "message_status" for f in relay.muted)
        await page.screenshot(path=artifact("agent-frame-answers-lost-sending.png"))

        await reconnected(page, relay)
        await expect(sent.locator(".delivery")).to_have_text("Sent")
        await expect(sent).to_have_count(1)
        [frame] = [f for f in relay.sent[0] if f.get("type") == "message"]
        assert [f["id"] for f in relay.sent[1] if f.get("type") == "message"] == [frame["id"]]
        await page.screenshot(path=artifact("agent-frame-answers-lost-sent.png"))
        await page.wait_for_timeout(800)
        assert standin.bodies().count(words) == 1
        rows = [r for r in await outbox_rows(db) if r["action"] == "send"]
        assert [(r["id"], r["state"]) for r in rows] == [(frame["id"], "sent")]
        await expect(sent).to_have_count(1)  # still one line, after every answer came
        assert await page.evaluate("sessionStorage.getItem('switchboard.agent.unacked')") is None


async def test_a_note_whose_answer_was_lost_is_kept_once_and_stops_sending(
        app_settings, db, twilio):  # noqa: F811
    from service.appkeys import EVENTS
    standin, _ = twilio
    app = create_app(app_settings)
    async with agent_holding_a_texter(app, db, standin) as (page, relay):

        relay.mute_server = True
        await page.get_by_role("tab", name="Private note").click()
        box = page.get_by_role("textbox", name="Private note")
        await box.fill("Locked out twice this week")
        await box.press("Enter")
        note = page.locator("#transcript .line.note").filter(has_text="Locked out twice")
        await expect(note.locator(".delivery")).to_have_text("Sending…")
        await wait_for(lambda: any(f["type"] == "note" for f in relay.muted))
        await page.screenshot(path=artifact("agent-note-answer-lost-sending.png"))

        await reconnected(page, relay)
        await expect(note).to_have_count(1)
        await expect(note.locator(".delivery")).to_have_count(0)
        await expect(note).to_contain_text("Only agents see this")
        await page.screenshot(path=artifact("agent-note-answer-lost-kept.png"))
        assert await app[EVENTS].flush()
        added = await db.fetchval("SELECT count(*) FROM contact_events "
                                  "WHERE kind = 'note_added'")
        assert added == 1
        assert await page.evaluate("sessionStorage.getItem('switchboard.agent.unacked')") is None
        assert "Locked out twice this week" not in standin.bodies()


async def test_a_reply_answered_unavailable_goes_again_by_itself_with_its_id(
        app_settings, db, twilio):  # noqa: F811
    """The server could not do it now (`unavailable`, as when Redis is away): the line says it
    is retrying and the console sends the same frame again after a pause, without the agent."""
    standin, _ = twilio
    async with agent_holding_a_texter(create_app(app_settings), db, standin) as (page, relay):

        relay.drop_type = "message"
        words = "Give me a moment to look."
        await page.get_by_role("textbox", name="Reply").fill(words)
        await page.get_by_role("button", name="Send").click()
        await wait_for(lambda: len(relay.dropped) == 1)
        [frame] = relay.dropped
        relay.drop_type = None
        relay.routes[-1].send(json.dumps({
            "type": "error", "code": "unavailable", "contact_id": frame["contact_id"],
            "id": frame["id"], "message": "that could not be done now; try again in a moment"}))
        mark = line(page, words).locator(".delivery")
        await expect(mark).to_have_text("Retrying…")
        await expect(mark).to_have_attribute("title", "that could not be done now; try again "
                                             "in a moment")
        await page.screenshot(path=artifact("agent-frame-retrying.png"))
        await expect(mark).to_have_text("Sent")
        assert [f["id"] for f in relay.sent[0] if f.get("type") == "message"] == [frame["id"]]
        assert standin.bodies().count(words) == 1
        assert len(relay.routes) == 1  # no reconnect was needed


async def test_a_reply_not_yet_acknowledged_survives_a_reload_and_goes_once(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with agent_holding_a_texter(create_app(app_settings), db, standin) as (page, relay):

        relay.drop_type = "message"
        words = "I'm sending you a reset link now."
        reply = page.get_by_role("textbox", name="Reply")
        await reply.fill(words)
        await reply.press("Enter")
        await expect(line(page, words).locator(".delivery")).to_have_text("Sending…")
        [lost] = relay.dropped
        await page.reload()  # the agent reloads the page before anything came back
        await expect(line(page, words).locator(".delivery")).to_have_text("Sent")
        await expect(line(page, words)).to_have_count(1)
        assert [f["id"] for f in relay.sent[-1] if f.get("type") == "message"] == [lost["id"]]
        await page.wait_for_timeout(500)
        assert standin.bodies().count(words) == 1
