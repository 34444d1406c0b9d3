"""The web chat widget and the agent console in real headless Chromium, against the real app.

A customer who texted earlier opens /chat signed in (the host site signs their id), asks
for help, self-service does not solve it; an agent signed in at /agent in another browser
context gets the offer with the transcript and the earlier SMS contact, accepts, replies and
wraps up; the customer sees the reply. Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import sys

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import expect

from service.app import create_app
from tests.browser import ROOT, TIMEOUT_MS, artifact, chromium, require_chromium, serve
from tests.conftest import _clean_tables, with_settings
from tests.twilio_driver import text

SKILLS = "care,orders,accounts,billing,shipping"
PHONE = "+15557770123"
WEB_ID = "shop-customer-7"
SECRET = "example-shop-widget-secret"


@pytest.fixture(autouse=True)
def browser_installed():
    """Skip (or, under CI, fail) before any server starts when Chromium is missing."""
    require_chromium()


@pytest.fixture
async def app_settings(settings, redis_client):
    await _clean_tables(settings.database_url)
    return with_settings(settings, offer_timeout_s=90, chat_identity_secret=SECRET)


@contextlib.asynccontextmanager
async def live(settings, port: int = 0):
    async with serve(create_app(settings), port=port) as base_url:
        yield base_url


async def switchboard(settings, *argv: str) -> str:
    """Run the CLI in its own process against the test servers; return its last line."""
    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", *argv, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    return out.decode().strip().splitlines()[-1]


async def agent_and_customer(browser, errors: list[str]):
    """An agent's wide page and a customer's, in separate browser contexts."""
    agent = await (await browser.new_context(viewport={"width": 1440, "height": 900})).new_page()
    customer = await (await browser.new_context()).new_page()
    for page in (agent, customer):
        watch_for_errors(page, errors)
        page.set_default_timeout(TIMEOUT_MS)
    return agent, customer


async def open_chat_widget(customer, base: str):
    """An anonymous visitor opens the chat on the demo page; returns its log and text box."""
    await customer.goto(f"{base}/chat")
    await customer.get_by_role("button", name="Chat with us").click()
    log = customer.get_by_role("log", name="Messages")
    await expect(log).to_contain_text("Tell me in a few words")
    return log, customer.get_by_role("textbox", name="Message")


async def order_question_to_agent(agent, log, box, name: str = "Dana") -> None:
    """The visitor asks where their order is, says the answer did not help, and the agent
    (signed in, available) accepts the offer."""
    await box.fill("where is my order")
    await box.press("Enter")
    await expect(log).to_contain_text("Did that help?")
    await box.page.get_by_role("button", name="No", exact=True).click()
    await agent.get_by_role("button", name="Accept").click()
    await expect(log).to_contain_text(f"You're now talking with {name}.")


def watch_for_errors(page, errors: list[str]) -> None:
    """Collect uncaught exceptions and console errors (but not a refused WebSocket, which the
    browser itself logs while the widget retries)."""
    page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))
    page.on("console", lambda msg: errors.append(f"{page.url}: {msg.text}")
            if msg.type == "error" and not msg.text.startswith("WebSocket connection to")
            else None)


async def sign_in_available(agent, base: str, token: str):
    """The agent signs in (starting away) and switches to available; returns the switch."""
    await agent.goto(f"{base}/agent")
    await agent.get_by_label("Agent token").fill(token)
    await agent.get_by_role("button", name="Sign in").click()
    presence = agent.get_by_role("switch")
    await expect(presence).to_have_attribute("aria-checked", "false")
    await presence.click()
    await expect(presence).to_have_attribute("aria-checked", "true")
    await expect(presence).to_contain_text("Available")
    return presence


async def test_chat_customer_reaches_an_agent_who_sees_everything(app_settings, db):
    token = await switchboard(app_settings, "agents", "add", "Dana", "--skills", SKILLS)
    await switchboard(app_settings, "customers", "add", "--phone", PHONE, "--web-id", WEB_ID,
                      "--name", "Ana Lima", "--attr", "plan=plus")
    signature = hmac.new(SECRET.encode(), WEB_ID.encode(), hashlib.sha256).hexdigest()
    errors: list[str] = []

    async with live(app_settings) as base, chromium() as browser:
        # Earlier the same customer texted about an order and the answer helped.
        async with aiohttp.ClientSession(base_url=base) as http:
            answer = await text(http, PHONE, "I need to track my order")
            assert "example.com/orders" in " ".join(answer)
            assert "glad that helped" in " ".join(await text(http, PHONE, "yes"))

        agent = await (await browser.new_context(viewport={"width": 1440, "height": 900})
                       ).new_page()
        customer_context = await browser.new_context(viewport={"width": 1100, "height": 800})
        # What the shop's server renders for a signed-in visitor, before the widget tag.
        await customer_context.add_init_script(
            "window.switchboardSettings = " + json.dumps(
                {"customer": {"id": WEB_ID, "signature": signature}}))
        customer = await customer_context.new_page()
        for page in (agent, customer):
            watch_for_errors(page, errors)
            page.set_default_timeout(TIMEOUT_MS)
        try:
            await sign_in_available(agent, base, token)
            await expect(agent.locator("#agent-name")).to_have_text("Dana")

            # The customer opens the chat on the shop's help page.
            await customer.goto(f"{base}/chat")
            await customer.get_by_role("button", name="Chat with us").click()
            log = customer.get_by_role("log", name="Messages")
            await expect(log).to_contain_text("Welcome back")  # the signed id was recognised
            await customer.get_by_role("textbox", name="Message").fill(
                "I forgot my password and can't log in")
            await customer.get_by_role("button", name="Send").click()
            await expect(log).to_contain_text("choose Forgot password")
            await expect(log).to_contain_text("Did that help?")
            await customer.get_by_role("button", name="No", exact=True).click()
            status = customer.locator("switchboard-chat").locator(".status")
            await expect(status).to_have_text(
                re.compile(r"You're number 1 in line, about \d+ min"))

            # The offer reaches the agent with everything the customer already said and tried.
            offers = agent.get_by_role("list").filter(has=agent.locator(".offer"))
            await expect(offers).to_contain_text("Reset a password")
            transcript = agent.get_by_role("log", name="Conversation")
            await expect(transcript).to_contain_text("I forgot my password and can't log in")
            await expect(transcript).to_contain_text("choose Forgot password")
            context = agent.get_by_role("complementary", name="Customer context")
            await expect(context.locator("#ctx-type")).to_have_text("Reset a password")
            await expect(context).to_contain_text("% confident")
            await expect(context).to_contain_text("Self-service didn't solve it")
            await expect(context).to_contain_text("didn't help")
            await expect(context).to_contain_text(f"Signed-in customer {WEB_ID}")
            await expect(context).to_contain_text("Plan")
            earlier = context.locator("#ctx-earlier")
            await expect(earlier).to_contain_text("SMS")
            await expect(earlier).to_contain_text("Track an order")
            await expect(earlier).to_contain_text("Solved by self-service")

            await agent.screenshot(path=artifact("agent-offer.png"))
            await agent.get_by_role("button", name="Accept").click()
            contacts = agent.locator("#contacts")
            await expect(contacts).to_contain_text("Reset a password")
            await expect(agent.locator("#offers-empty")).to_be_visible()
            await expect(log).to_contain_text("You're now talking with Dana.")
            await expect(status).to_have_text("You're chatting with our team")

            # They talk.
            reply = agent.get_by_role("textbox", name="Reply to the customer")
            await reply.fill("Hi, I can help with that")
            await agent.get_by_role("button", name="Send").click()
            agent_line = log.locator(".msg.agent").last
            await expect(agent_line).to_contain_text("Hi, I can help with that")
            await customer.get_by_role("textbox", name="Message").fill("Thank you!")
            await customer.get_by_role("textbox", name="Message").press("Enter")
            await expect(transcript).to_contain_text("Thank you!")

            await agent.screenshot(path=artifact("agent-console.png"), full_page=True)
            await customer.screenshot(path=artifact("customer-chat.png"), full_page=True)

            # Wrap-up: resolved, with a note.
            wrap = agent.get_by_role("group", name="Wrap-up")
            await wrap.get_by_role("radio", name="Yes").check()
            await expect(wrap.get_by_label("Contact type")).to_have_value("")
            await wrap.get_by_label("Note").fill("Resent the reset link; it was in spam.")
            await wrap.get_by_role("button", name="Finish contact").click()
            await expect(agent.locator("#toast")).to_contain_text("Wrapped up")
            await expect(agent.locator("#contacts-empty")).to_be_visible()
            await expect(status).to_have_text("This chat has ended")
            await expect(customer.get_by_role("button", name="Start a new chat")).to_be_visible()
            await agent.screenshot(path=artifact("agent-console-wrapped-up.png"))
        except BaseException:
            await agent.screenshot(path=artifact("failed-agent-console.png"), full_page=True)
            await customer.screenshot(path=artifact("failed-customer-chat.png"), full_page=True)
            raise

    contact = await wait_for_outcome(db, "agent_resolved")
    assert contact["channel"] == "chat" and contact["contact_type"] == "recover_password"
    wrap_up = await db.fetchrow("SELECT data FROM contact_events WHERE kind = 'wrap_up'")
    assert json.loads(wrap_up["data"])["note"] == "Resent the reset link; it was in spam."
    assert errors == []


async def test_agent_console_survives_a_reload_and_customers_who_leave(app_settings, db):
    token = await switchboard(app_settings, "agents", "add", "Ravi", "--skills", SKILLS)
    errors: list[str] = []
    async with live(app_settings) as base, chromium() as browser:
        agent, customer = await agent_and_customer(browser, errors)
        try:
            presence = await sign_in_available(agent, base, token)

            # An anonymous visitor asks for a person, then gives up while the offer is open.
            log, message = await open_chat_widget(customer, base)
            await message.fill("I want to talk to a human")
            await message.press("Enter")
            accept = agent.get_by_role("button", name="Accept")
            await expect(accept).to_be_visible()
            context = agent.get_by_role("complementary", name="Customer context")
            await expect(context).to_contain_text("Asked for a person")
            await expect(context).to_contain_text("Anonymous web visitor")
            await expect(context.locator("#ctx-earlier")).to_contain_text("first contact")
            await customer.get_by_role("button", name="End chat").click()
            await expect(agent.locator("#toast")).to_contain_text("the customer left")
            await expect(agent.locator("#offers-empty")).to_be_visible()
            await expect(accept).to_be_hidden()

            # They come back; this time the agent takes it.
            await customer.get_by_role("button", name="Start a new chat").click()
            await expect(log).to_contain_text("Tell me in a few words")
            await message.fill("I want to talk to a human")
            await message.press("Enter")
            await accept.click()
            await expect(log).to_contain_text("You're now talking with Ravi.")

            # The agent's page reloads: signed straight back in, available, contact restored.
            await agent.reload()
            await expect(agent.locator("#agent-name")).to_have_text("Ravi")
            await expect(presence).to_have_attribute("aria-checked", "true")
            contacts = agent.locator("#contacts")
            await expect(contacts.get_by_role("button")).to_have_count(1)
            transcript = agent.get_by_role("log", name="Conversation")
            await expect(transcript).to_contain_text("I want to talk to a human")
            await message.fill("are you still there?")
            await message.press("Enter")
            await expect(transcript).to_contain_text("are you still there?")

            # The customer leaves: the agent is told, can no longer reply, and still wraps up.
            await customer.get_by_role("button", name="End chat").click()
            await expect(agent.get_by_text("The customer left. Wrap up when you're ready.")
                         ).to_be_visible()
            await expect(agent.get_by_role("textbox", name="Reply to the customer")
                         ).to_be_disabled()
            wrap = agent.get_by_role("group", name="Wrap-up")
            await wrap.get_by_role("radio", name="No").check()
            await wrap.get_by_label("Contact type").select_option(label="Reset a password")
            await wrap.get_by_label("Note").fill("Left before saying what they needed.")
            await agent.screenshot(path=artifact("agent-customer-left.png"))
            await wrap.get_by_role("button", name="Finish contact").click()
            await expect(agent.locator("#contacts-empty")).to_be_visible()
        except BaseException:
            await agent.screenshot(path=artifact("failed-agent-console-2.png"), full_page=True)
            await customer.screenshot(path=artifact("failed-customer-chat-2.png"), full_page=True)
            raise

    contact = await wait_for_outcome(db, "agent_unresolved")
    assert contact["channel"] == "chat"
    wrap_up = json.loads(await db.fetchval(
        "SELECT data FROM contact_events WHERE kind = 'wrap_up'"))
    assert wrap_up["resolved"] is False
    assert wrap_up["corrected_contact_type"] == "recover_password"
    assert errors == []


async def test_what_a_flow_collected_reaches_the_agent(app_settings, db):
    """The example deployment's refund flow asks for the order number; when it does not help,
    the agent's context shows the number, so nobody asks for it again."""
    token = await switchboard(app_settings, "agents", "add", "Mo", "--skills", SKILLS)
    errors: list[str] = []
    async with live(app_settings) as base, chromium() as browser:
        agent, customer = await agent_and_customer(browser, errors)
        try:
            await sign_in_available(agent, base, token)
            log, message = await open_chat_widget(customer, base)
            await message.fill("where is my refund?")
            await message.press("Enter")
            await expect(log).to_contain_text("Which order is the refund for?")
            await message.fill("EX24680")
            await message.press("Enter")
            await expect(log).to_contain_text("example.com/orders/EX24680")
            await customer.get_by_role("button", name="No", exact=True).click()

            context = agent.get_by_role("complementary", name="Customer context")
            steps = context.locator("#ctx-steps")
            await expect(steps).to_contain_text("Flow: Refund status")
            await expect(steps).to_contain_text("didn't help")
            await expect(steps.locator(".collected")).to_have_text("Order number: EX24680")
            await agent.screenshot(path=artifact("agent-offer-after-a-flow.png"))
        except BaseException:
            await agent.screenshot(path=artifact("failed-agent-flow.png"), full_page=True)
            raise
    assert errors == []


async def wait_for_outcome(db, outcome: str, timeout_s: float = 10) -> dict:
    for _ in range(int(timeout_s / 0.1)):
        row = await db.fetchrow("SELECT id, channel, contact_type, outcome FROM contacts "
                                "WHERE outcome = $1", outcome)
        if row:
            return dict(row)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no contact with outcome {outcome!r} after {timeout_s} s")


SHOP_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Another shop</title>
<link rel="icon" href="data:,">
<style>
  /* A hostile host page: none of this may reach the widget. */
  body > * {{ display: none !important; }}
  body > main {{ display: block !important; }}
  button {{ background: rgb(255, 0, 0) !important; font-size: 40px !important; }}
  ol, li {{ list-style: upper-roman !important; color: rgb(0, 255, 0) !important; }}
</style></head>
<body><main><h1>Another shop</h1><button>Buy now</button></main>
<script src="{base}/chat/widget.js" data-switchboard-url="{base}"
        data-title="Ask Another Shop" defer></script>
</body></html>"""


async def test_widget_on_a_foreign_page_resumes_after_a_reload_and_a_restart(app_settings):
    errors: list[str] = []
    async with chromium() as browser:
        first = contextlib.AsyncExitStack()
        base = await first.enter_async_context(live(app_settings))
        port = int(base.rsplit(":", 1)[1])

        async def shop(request: web.Request) -> web.Response:
            return web.Response(text=SHOP_PAGE.format(base=base), content_type="text/html")

        shop_app = web.Application()
        shop_app.router.add_get("/", shop)
        # "localhost" and "127.0.0.1" are different origins: the widget runs cross-origin.
        async with serve(shop_app) as shop_url:
            page = await (await browser.new_context()).new_page()
            watch_for_errors(page, errors)
            page.set_default_timeout(TIMEOUT_MS)
            await page.goto(shop_url.replace("127.0.0.1", "localhost"))
            launcher = page.get_by_role("button", name="Chat with us")
            await expect(launcher).to_be_visible()
            # The host's CSS did not reach into the widget.
            background = await launcher.evaluate("b => getComputedStyle(b).backgroundColor")
            assert background != "rgb(255, 0, 0)"
            await launcher.click()
            await expect(page.get_by_role("heading", name="Ask Another Shop")).to_be_visible()
            log = page.get_by_role("log", name="Messages")
            message = page.get_by_role("textbox", name="Message")
            await expect(log).to_contain_text("Tell me in a few words")
            await message.fill("I need to track my order")
            await page.get_by_role("button", name="Send").click()
            await expect(log).to_contain_text("example.com/orders")
            session = await page.evaluate("localStorage.getItem('switchboard.chat.session')")
            assert session

            # A reload resumes the same conversation: the server replays it, quick replies too.
            await page.reload()
            await expect(log).to_contain_text("I need to track my order")
            await expect(log).to_contain_text("example.com/orders")
            await expect(page.get_by_role("button", name="No", exact=True)).to_be_visible()
            assert await page.evaluate(
                "localStorage.getItem('switchboard.chat.session')") == session
            colour = await log.locator("li").first.evaluate("li => getComputedStyle(li).color")
            assert colour != "rgb(0, 255, 0)"
            await page.screenshot(path=artifact("widget-foreign-page.png"))

            # The service restarts: the widget notices, waits, reconnects and carries on.
            try:
                await first.aclose()
                lost = page.get_by_text("Connection lost. Reconnecting…")
                await expect(lost).to_be_visible()
                await expect(message).to_be_disabled()
                async with live(app_settings, port=port):
                    await expect(lost).to_be_hidden()
                    await expect(message).to_be_enabled()
                    await expect(log).to_contain_text("example.com/orders")
                    await page.get_by_role("button", name="No", exact=True).click()
                    status = page.locator("switchboard-chat").locator(".status")
                    await expect(status).to_have_text(re.compile(r"You're number 1 in line"))

                    # Ending the chat forgets the session; a new chat starts fresh.
                    await page.get_by_role("button", name="End chat").click()
                    await expect(log).to_contain_text("You ended the chat.")
                    assert await page.evaluate(
                        "localStorage.getItem('switchboard.chat.session')") is None
                    await page.get_by_role("button", name="Start a new chat").click()
                    await expect(log).to_contain_text("Tell me in a few words")
                    await expect(log).not_to_contain_text("track my order")
                    await page.close()
            finally:
                await first.aclose()
    assert errors == []
