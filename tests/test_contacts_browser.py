"""The contact search page in real headless Chromium, against the real app and servers: sign
in, search by a phone number typed another way, move through the results with the keyboard,
open a contact and read its bubbles (notes private, with a lock) and its timeline, follow the
customer's other contact, and open one by deep link. Screenshots land in test-artifacts/."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from service.conversations.customers import upsert_customer
from service.infra.tokens import create_token
from tests.browser import artifact, chromium, require_chromium
from tests.test_agents import app_settings, instance, twilio  # noqa: F401 (fixtures)
from tests.test_attachments import mms
from tests.test_browser_attachments import PDF, parcel_png
from tests.test_contacts import found, sms_resolved
from tests.test_erasure import (
    AGENT_REPLY,
    NAME,
    NOTE,
    PHONE,
    PRIVATE_NOTE,
    SAID_BY_SMS,
    WHISPER,
    served_by_an_agent,
    settled,
)
from tests.twilio_driver import text

MMS_PHONE = "+15555550877"


@pytest.fixture(autouse=True)
def browser_installed():
    require_chromium()


async def test_search_open_a_contact_and_read_its_story(app_settings, db, redis_client,  # noqa: F811
                                                        twilio):  # noqa: F811
    standin, _ = twilio
    await upsert_customer(db, redis_client, identities=[("phone", PHONE)], display_name=NAME,
                          attributes={})
    async with instance(app_settings) as client:
        await sms_resolved(client, PHONE)
        await served_by_an_agent(client, db, standin)
        for n in range(3):  # other customers' contacts
            await text(client, f"+1555555098{n}", "I want a refund")
        await settled(client, db)
        token = await create_token(db, "supervisor", "browser test")
        [served, earlier] = await found(client, token, customer=PHONE)
        async with chromium() as browser:
            page = await (await browser.new_context(viewport={"width": 1360, "height": 860})
                          ).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(str(client.make_url("/contacts")))
            await page.fill("#token", "not-a-token")
            await page.click("#sign-in")
            await expect(page.locator("#login-error")).to_contain_text(
                "That token was not accepted")
            await page.fill("#token", token)
            await page.click("#sign-in")
            await expect(page.locator("#results tbody tr[data-contact]")).to_have_count(5)
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
                    else None)  # after the refused token's 401

            await page.fill("#q", "(555) 555-0777")
            await page.press("#q", "Enter")
            rows = page.locator("#results tbody tr[data-contact]")
            await expect(rows).to_have_count(2)
            await expect(rows.nth(0)).to_have_attribute("data-contact", served["contact_id"])
            await expect(rows.nth(0)).to_contain_text(NAME)
            await page.press("#q", "ArrowDown")  # into the table, then open by keyboard
            await expect(rows.nth(0)).to_be_focused()
            await page.keyboard.press("ArrowDown")
            await expect(page.locator("#contact-heading")).to_have_text(NAME)
            await expect(page.locator(".facts")).to_contain_text("Self-served")
            await page.keyboard.press("ArrowUp")
            await expect(page.locator('.facts .pill[data-handling="agent"]')).to_be_visible()
            await page.keyboard.press("Enter")
            await expect(page).to_have_url(re.compile(f"#{served['contact_id']}$"))
            await expect(page.locator(".facts")).to_contain_text("Dana")

            bubbles = page.locator(".bubbles .line:not(.system)")
            await expect(bubbles).to_have_count(8)
            assert await bubbles.evaluate_all("ls => ls.map(l => l.dataset.from)") == \
                ["customer", "bot", "agent", "agent", "note", "note", "customer", "note"]
            await expect(bubbles.nth(0)).to_contain_text(SAID_BY_SMS)
            await expect(bubbles.nth(1)).to_contain_text("You're number 1 in line")
            await expect(bubbles.nth(2)).to_contain_text("You're now talking with Dana.")
            await expect(bubbles.nth(3)).to_contain_text(AGENT_REPLY)
            for n, said in ((4, PRIVATE_NOTE), (5, WHISPER), (7, NOTE)):
                await expect(bubbles.nth(n)).to_contain_text(said)
                await expect(bubbles.nth(n).locator(".lock")).to_be_visible()
            assert await _side(bubbles.nth(0)) == "left"
            assert await _side(bubbles.nth(1)) == "right"
            assert await _side(bubbles.nth(3)) == "right"
            await page.screenshot(path=artifact("contacts-conversation.png"))

            await page.click("#tab-timeline")
            events = page.locator("#panel-timeline .event")
            await expect(page.locator("#panel-timeline")).to_be_visible()
            kinds = await events.evaluate_all("es => es.map(e => e.dataset.kind)")
            assert kinds[0] == "contact_started" and kinds[-1] == "ended"
            assert kinds.index("agent_accepted") < kinds.index("wrap_up")
            await expect(page.locator('#panel-timeline .event[data-kind="agent_accepted"]')
                         ).to_contain_text("Dana accepted")
            assert await page.locator("#panel-timeline .event.private").count() == 3
            await expect(page.locator('#panel-timeline .event[data-kind="replied"]')
                         ).to_contain_text("You're number 1 in line")
            await page.locator('#panel-timeline .event[data-kind="wrap_up"] summary').click()
            await expect(page.locator('#panel-timeline .event[data-kind="wrap_up"] dl')
                         ).to_contain_text(NOTE)
            await page.screenshot(path=artifact("contacts-timeline.png"))

            await page.click(f'.others a[data-contact="{earlier["contact_id"]}"]')
            await expect(page.locator(".facts")).to_contain_text("Self-served")
            await page.click("#tab-conversation")
            await expect(page.locator(".bubbles .line.bot .choices")).to_contain_text("Yes")
            await expect(page.locator(".bubbles .line.bot .as-now")).to_have_count(0)

            await page.goto(str(client.make_url(f"/contacts#{served['contact_id']}")))
            await page.reload()  # a fresh page opened on the link: the token is kept
            await expect(page.locator("#contact-heading")).to_have_text(NAME)
            await expect(page.locator(
                f'#results tr[data-contact="{served["contact_id"]}"]')).to_have_attribute(
                "aria-selected", "true")
            await page.set_viewport_size({"width": 1024, "height": 800})
            await page.screenshot(path=artifact("contacts-narrow.png"))
            assert errors == []


async def _side(bubble) -> str:
    """Which side of the conversation a bubble sits on."""
    return await bubble.evaluate(
        "b => { const p = b.parentElement.getBoundingClientRect(), r = b.getBoundingClientRect();"
        " return r.left - p.left < p.right - r.right ? 'left' : 'right'; }")


async def test_a_customers_mms_photo_and_pdf_show_in_their_bubble(app_settings, db,  # noqa: F811
                                                                  twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        photo = standin.media_url("image/png", parcel_png())
        pdf = standin.media_url("application/pdf", PDF)
        sent = await mms(client, MMS_PHONE, "My parcel arrived crushed",
                         [(photo, "image/png"), (pdf, "application/pdf")])
        sent += await text(client, MMS_PHONE, "no")
        await settled(client, db)
        token = await create_token(db, "supervisor", "browser test")
        [contact] = await found(client, token, customer=MMS_PHONE)
        async with chromium() as browser:
            page = await (await browser.new_context(viewport={"width": 1360, "height": 860})
                          ).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
                    else None)
            await page.goto(str(client.make_url("/contacts")))
            await page.fill("#token", token)
            await page.click("#sign-in")
            await expect(page.locator("#results tbody tr[data-contact]")).to_have_count(1)
            await page.goto(str(client.make_url(f"/contacts#{contact['contact_id']}")))
            await page.reload()
            customer = page.locator(".bubbles .line.customer").first
            await expect(customer).to_contain_text("My parcel arrived crushed")
            thumbnail = customer.locator(".attachment.photo.ready img")
            await expect(thumbnail).to_be_visible()
            assert await thumbnail.evaluate("i => i.naturalWidth") == 480  # the real picture
            assert (await thumbnail.get_attribute("src")).startswith("blob:")
            assert await thumbnail.evaluate("i => i.getBoundingClientRect().width") <= 240
            await expect(customer.locator(".attachment.file")).to_contain_text("PDF document")
            await expect(customer.locator(".attachment.file")).to_contain_text("application/pdf")
            assert "/Media/" not in await page.content()  # never Twilio's own address
            bot = page.locator(".bubbles .line.bot")
            assert await bot.evaluate_all("ls => ls.map(l => l.querySelector('.text')"
                                          ".textContent)") == sent
            await expect(page.locator(".bubbles .as-now")).to_have_count(0)
            await page.screenshot(path=artifact("contacts-attachments.png"))
            assert errors == []
