"""Answers and flow texts with the customer's own data, on SMS, chat and voice, through the
signed webhooks and the chat socket: the customer's name and attributes, their last contact,
what a look-up returned; the wording without a value when it is missing (never "None" or a
"{placeholder}"); `rules check` errors for unknown or unguarded placeholders.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from service.__main__ import main
from service.conversations.customers import upsert_customer
from service.rules.templates import render, when
from tests.conftest import ROOT, service_with_rules
from tests.test_agents import open_chat
from tests.test_flows import _rules_with_order_flow, order_api  # noqa: F401 (fixture)
from tests.twilio_driver import Call, text

ANA, STRANGER, CALLER = "+15555550601", "+15555550602", "+15555550603"
CANCEL = ("You can cancel any order that has not shipped yet: open it at example.com/orders, "
          "choose Cancel order, and we email a confirmation.")
GREETING = "[Hi {customer.name}. ][Is this about the {last_contact.label} question you asked " \
           "{last_contact.when}? ]"
SAY = ("[Thanks, {customer.name}. ]Order {order_number} is {order.status}[ and should arrive "
       "{order.eta}].[ As a {customer.tier} member you pay no delivery.]")


def personalised_rules(tmp_path: Path, orders_url: str) -> Path:
    """The example rules, tracking an order a flow with a look-up; the cancellation answer
    and the flow's answer greet the customer and mention their data."""
    rules = _rules_with_order_flow(tmp_path, orders_url)
    flows = (rules / "flows.yaml").read_text()
    old = "      - say: Order {order_number} is {order.status} and should arrive {order.eta}.\n"
    assert old in flows
    (rules / "flows.yaml").write_text(flows.replace(old, f"      - say: '{SAY}'\n"))
    catalog = (rules / "catalog.yaml").read_text()
    start = catalog.index("  cancel_order:")
    answer = catalog.index("      answer: >-\n", start) + len("      answer: >-\n")
    end = catalog.index("    examples:", start)
    (rules / "catalog.yaml").write_text(
        catalog[:answer] + f"        {GREETING}{CANCEL}\n" + catalog[end:])
    return rules


@pytest.fixture
async def client(settings, redis_client, order_api, tmp_path):  # noqa: F811
    from tests.conftest import with_settings
    rules = personalised_rules(tmp_path, order_api[0])
    async with service_with_rules(with_settings(settings, chat_identity_secret="host-secret"),
                                  rules) as c:
        yield c


async def known_ana(db, redis_client) -> None:
    await upsert_customer(db, redis_client, identities=[("phone", ANA), ("web", "id:ana")],
                          display_name="Ana", attributes={"tier": "gold"})


def clean(messages: list[str]) -> None:
    for message in messages:
        assert "None" not in message and not re.search(r"[{}\[\]]", message), message


async def test_sms_answers_with_the_name_and_the_last_contact(client, db, redis_client):
    await known_ana(db, redis_client)
    await text(client, ANA, "I forgot my password")
    await text(client, ANA, "yes")
    reply = await text(client, ANA, "I want to cancel my order")
    assert reply[0] == ("Hi Ana. Is this about the Reset a password question you asked today? "
                        + CANCEL)
    clean(reply)


async def test_sms_without_the_values_gets_the_wording_without_them(client):
    reply = await text(client, STRANGER, "I want to cancel my order")
    assert reply[0] == CANCEL  # no name, no earlier contact: both optional parts left out
    clean(reply)


async def test_a_flow_says_what_the_lookup_returned_with_the_customers_data(client, db,
                                                                            redis_client):
    await known_ana(db, redis_client)
    await text(client, ANA, "I need to track my order")
    reply = await text(client, ANA, "EX12345")
    assert reply[0] == ("Thanks, Ana. Order EX12345 is shipped and should arrive Friday. "
                        "As a gold member you pay no delivery.")
    reply = await text(client, STRANGER, "I need to track my order")
    reply = await text(client, STRANGER, "EX80000")  # the look-up has no eta for it
    assert reply[0] == "Order EX80000 is shipped."
    clean(reply)


async def test_chat_verified_visitor_and_anonymous_visitor(client, db, redis_client):
    await known_ana(db, redis_client)
    signed = hmac.new(b"host-secret", b"ana", hashlib.sha256).hexdigest()
    chat, _ = await open_chat(client, customer={"id": "ana", "signature": signed})
    await chat.next("message")  # the greeting
    await chat.send(type="message", text="I want to cancel my order")
    assert (await chat.next("message"))["text"] == f"Hi Ana. {CANCEL}"
    anonymous, _ = await open_chat(client)
    await anonymous.next("message")
    await anonymous.send(type="message", text="I want to cancel my order")
    answer = (await anonymous.next("message"))["text"]
    assert answer == CANCEL
    clean([answer])


async def test_voice_speaks_the_personalised_answer(client, db, redis_client):
    await upsert_customer(db, redis_client, identities=[("phone", CALLER)], display_name="Bo",
                          attributes={})
    call = await Call(client, CALLER).dial()
    await call.press("2")  # cancel an order
    assert call.said()[0] == f"Hi Bo. {CANCEL}"
    stranger = await Call(client, "+15555550604").dial()
    await stranger.press("2")
    assert stranger.said()[0] == CANCEL
    clean(stranger.said())


@pytest.mark.parametrize("answer, problem", [
    ("Hi {customer.name}. " + CANCEL, "'{customer.name}' may be missing for a customer: put it "
                                      "inside [ ] with the words that go with it"),
    ("[Your order {order.status}. ]" + CANCEL, "unknown placeholder '{order.status}': answers "
                                               "may use {customer.name}"),
    ("[Last time: {last_contact.mood}. ]" + CANCEL, "'{last_contact.mood}': last_contact has "
                                                    "type, label, channel, when"),
    ("[Hi {customer.name}. " + CANCEL, "square brackets mark an optional part"),
    ("[Hi {Customer Name}. ]" + CANCEL, "'{Customer Name}' is not a placeholder"),
])
def test_rules_check_reports_a_bad_placeholder_with_file_line_and_path(tmp_path, capsys,
                                                                        answer, problem):
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "routing_rules", rules, ignore=shutil.ignore_patterns("bank"))
    catalog = (rules / "catalog.yaml").read_text()
    start = catalog.index("  cancel_order:")
    line = catalog[:catalog.index("      answer:", start)].count("\n") + 1
    first = catalog.index("      answer: >-\n", start)
    end = catalog.index("    examples:", start)
    (rules / "catalog.yaml").write_text(
        catalog[:first] + f"      answer: '{answer}'\n" + catalog[end:])
    assert main(["rules", "check", str(rules)]) == 1
    err = capsys.readouterr().err
    assert f"{rules}/catalog.yaml:{line}: {problem}" in err, err
    assert "(contact_types -> cancel_order -> self_service -> answer)" in err


def test_a_flow_cannot_save_under_a_reserved_name(tmp_path, capsys):
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "routing_rules", rules, ignore=shutil.ignore_patterns("bank"))
    flows = (rules / "flows.yaml").read_text().replace("save: order_number",
                                                       "save: customer", 1)
    (rules / "flows.yaml").write_text(flows)
    assert main(["rules", "check", str(rules)]) == 1
    assert "'customer' is the customer's own data in texts" in capsys.readouterr().err


def test_render_and_when():
    day = 86400
    monday = 1714953600  # 2024-05-06 00:00 UTC, a Monday
    assert [when(monday + 3600, monday + 7200), when(monday, monday + day + 60),
            when(monday, monday + 3 * day), when(monday, monday + 20 * day)] == [
        "today", "yesterday", "on Monday", "on 6 May"]
    assert render("[Hi {customer.name}, ]thanks[ ({customer.tier})].", {"customer": {}}) == \
        "thanks."
    assert render("[Hi {customer.name}, ]thanks.", {"customer": {"name": ""}}) == "thanks."


async def test_a_returning_customer_is_asked_about_yesterdays_question_by_its_day(
        client, redis_client):
    """The built-in "welcome back" names when the earlier contact was, not just "earlier"."""
    phone = "+15555550604"
    await text(client, phone, "I need to track my order")
    assert await text(client, phone, "yes")
    key = f"sb:{{phone:{phone}}}:contacts"
    [(contact_id, raw)] = (await redis_client.hgetall(key)).items()
    summary = json.loads(raw)
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    summary["started_at"] = (today - timedelta(hours=12)).timestamp()  # yesterday, at noon
    await redis_client.hset(key, contact_id, json.dumps(summary))
    call = await Call(client, phone).dial()
    assert call.said() == ["Welcome back. Are you calling about your track an order question "
                           "from yesterday? Press 1 for yes, or 2 for something else."]
