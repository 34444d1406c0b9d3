"""The console's Transfer action in real headless Chromium, against the real app: an agent
hands a chat warm to a named colleague, whose offer shows who had it and why it moved.
Screenshots land in test-artifacts/."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from service.agents.desk import add_agent
from service.conversations.transfer import PASSING_ON
from service.infra.tokens import hash_token
from tests.browser import TIMEOUT_MS, artifact, chromium, require_chromium
from tests.test_browser_chat_agent import (  # noqa: F401
    app_settings,
    live,
    open_chat_widget,
    sign_in_available,
    watch_for_errors,
)


@pytest.fixture(autouse=True)
def browser_installed():
    require_chromium()


async def target_of(db, token: str) -> str:
    """The Transfer picker's value for the agent of `token`: by id, since agents of earlier
    tests stay in the directory and some share a name."""
    agent_id = await db.fetchval("SELECT id::text FROM agents WHERE token_hash = $1",
                                 hash_token(token))
    return f"agent:{agent_id}"


async def test_an_agent_transfers_a_chat_warm_to_a_colleague(app_settings, db):
    ann_token = await add_agent(db, "Ann", ["care"])
    bob_token = await add_agent(db, "Bob", ["billing"])
    errors: list[str] = []
    async with live(app_settings) as base, chromium() as browser:
        pages = []
        for size in ({"width": 1440, "height": 1000}, {"width": 1440, "height": 1000}, None):
            page = await (await browser.new_context(viewport=size)).new_page()
            watch_for_errors(page, errors)
            page.set_default_timeout(TIMEOUT_MS)
            pages.append(page)
        ann, bob, customer = pages
        try:
            await sign_in_available(ann, base, ann_token)
            await sign_in_available(bob, base, bob_token)
            log, box = await open_chat_widget(customer, base)
            await box.fill("I want to talk to a human")
            await box.press("Enter")
            await ann.get_by_role("button", name="Accept").click()
            await expect(log).to_contain_text("You're now talking with Ann.")

            transfer = ann.get_by_role("group", name="Transfer")
            await transfer.get_by_label("To").select_option(await target_of(db, bob_token))
            await transfer.get_by_role("radio", name="Warm").check()
            await transfer.get_by_label("Note for the next agent").fill(
                "Asks about a double charge on May 3")
            await transfer.get_by_role("button", name="Transfer").click()
            await expect(ann.locator("#transfer-status")).to_contain_text(
                "Waiting for Bob to accept")
            await expect(transfer.get_by_role("button", name="Transfer")).to_be_disabled()
            await expect(log).to_contain_text(PASSING_ON["warm"])

            context = bob.get_by_role("complementary", name="Customer context")
            moved = context.locator("#ctx-transfer-section")
            await expect(moved).to_be_visible()
            await expect(moved).to_contain_text("From Ann (warm transfer)")
            await expect(moved).to_contain_text("Asks about a double charge on May 3")
            await expect(context).to_contain_text("Transferred by a colleague")
            bobs_transcript = bob.get_by_role("log", name="Conversation")
            await expect(bobs_transcript).to_contain_text("I want to talk to a human")
            await expect(bobs_transcript.locator(".line.agent .who").first).to_contain_text("Ann")
            await expect(ann.get_by_role("log", name="Conversation")).to_contain_text(
                PASSING_ON["warm"])
            await ann.screenshot(path=artifact("transfer-sender.png"))
            await bob.screenshot(path=artifact("transfer-offer.png"))

            await bob.get_by_role("button", name="Accept").click()
            await expect(log).to_contain_text("You're now talking with Bob.")
            await expect(ann.locator("#toast")).to_contain_text("Bob accepted the contact")
            await expect(ann.locator("#contacts-empty")).to_be_visible()
            await expect(bob.locator("#contacts")).to_contain_text("Web chat")
            await bob.screenshot(path=artifact("transfer-accepted.png"))
        except BaseException:
            for name, page in (("ann", ann), ("bob", bob), ("customer", customer)):
                await page.screenshot(path=artifact(f"failed-transfer-{name}.png"),
                                      full_page=True)
            raise
    assert errors == []


async def test_a_reconnect_keeps_the_transfer_the_agent_was_preparing(app_settings, db):
    """The socket drops while Ann is choosing a colleague and typing a note: the console
    reconnects, the server sends her contacts again, and her choice and note are still there."""
    ann_token = await add_agent(db, "Ann", ["care"])
    bob_token = await add_agent(db, "Bob", ["billing"])
    namesakes = [await target_of(db, await add_agent(db, "Zed Namesake", [skill]))
                 for skill in ("billing", "orders")]
    errors: list[str] = []
    async with live(app_settings) as base, chromium() as browser:
        ann, bob, customer = [await (await browser.new_context(viewport=size)).new_page()
                              for size in ({"width": 1440, "height": 1000}, None, None)]
        for page in (ann, bob, customer):
            watch_for_errors(page, errors)
            page.set_default_timeout(TIMEOUT_MS)
        sockets: list = []

        def relay(route) -> None:  # the console's socket, through a hand that can cut it
            route.connect_to_server()
            sockets.append(route)

        await ann.route_web_socket(re.compile(r"/agent/ws"), relay)
        try:
            await sign_in_available(ann, base, ann_token)
            await sign_in_available(bob, base, bob_token)
            log, box = await open_chat_widget(customer, base)
            await box.fill("I want to talk to a human")
            await box.press("Enter")
            await ann.get_by_role("button", name="Accept").click()
            await expect(log).to_contain_text("You're now talking with Ann.")
            transfer = ann.get_by_role("group", name="Transfer")
            picker = transfer.get_by_label("To")
            for value, label in zip(namesakes, ("Zed Namesake (billing)", "Zed Namesake (orders)")):
                await expect(picker.locator(f'option[value="{value}"]')).to_have_text(label)
            await picker.select_option(await target_of(db, bob_token))
            await transfer.get_by_role("radio", name="Warm").check()
            await transfer.get_by_label("Note for the next agent").fill("Double charge on May 3")
            wrap = ann.get_by_role("group", name="Wrap-up")
            await wrap.get_by_label("Contact type").select_option(label="Get a refund")

            await sockets[-1].close(code=4000, reason="network dropped")
            await expect(ann.locator("#connection")).to_have_text("Reconnecting…")
            await expect(ann.locator("#connection")).to_have_text("Connected")
            assert len(sockets) == 2
            await expect(ann.get_by_role("log", name="Conversation")).to_contain_text(
                "I want to talk to a human")  # the re-sync: the contact was sent again
            await expect(transfer.get_by_label("To")).to_have_value(
                await target_of(db, bob_token))
            await expect(transfer.get_by_label("Note for the next agent")).to_have_value(
                "Double charge on May 3")
            await expect(transfer.get_by_role("radio", name="Warm")).to_be_checked()
            await expect(wrap.get_by_label("Contact type")).to_have_value("get_refund")
            await expect(wrap.get_by_label("Contact type").locator("option").first).to_have_text(
                "Not classified")
            await transfer.get_by_role("button", name="Transfer").click()
            await expect(ann.locator("#transfer-status")).to_contain_text(
                "Waiting for Bob to accept")
        except BaseException:
            await ann.screenshot(path=artifact("failed-transfer-reconnect.png"), full_page=True)
            raise
    assert errors == []
