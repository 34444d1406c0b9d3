"""Self-service flows end to end: ask, look up over HTTP, say, confirm; and every way out."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from service.appkeys import EVENTS, ROUTER
from service.rules.loader import load_rules
from service.rules.yamlfile import ConfigError
from tests.conftest import service_with_rules
from tests.test_agents import open_chat
from tests.twilio_driver import Call, text

ROOT = Path(__file__).resolve().parent.parent
CUSTOMER = "+15555550161"
ORDERS = {"EX12345": {"status": "shipped", "eta": "Friday"}}

LOOKUPS = """
lookups:
  orders:
    url: {orders_url}/orders/{{order_number}}
    timeout_s: 1
"""
WHERE_IS_MY_ORDER = """flows:
  where_is_my_order:
    steps:
      - ask: What's your order number? It starts with EX, like EX12345.
        save: order_number
        expect: 'EX\\d{5}'
        retry: That doesn't look like an order number. It starts with EX, like EX12345.
      - lookup: orders
        save: order
      - say: Order {order_number} is {order.status} and should arrive {order.eta}.
"""


@pytest.fixture
async def order_api():
    """The shop's order API: one known order, one that fails, one that never answers."""
    asked: list[str] = []

    async def order(request: web.Request) -> web.Response:
        number = request.match_info["number"]
        asked.append(request.path_qs)
        if number == "EX50000":
            return web.Response(status=500)
        if number == "EX70000":
            await asyncio.sleep(5)
        if number == "EX60000":
            return web.Response(text="<html>maintenance</html>", content_type="text/html")
        if number == "EX80000":
            return web.json_response({"status": "shipped", "eta": None})
        if number == "EX90000":
            return web.json_response({"status": "shipped", "eta": "x" * 100_000})
        found = ORDERS.get(number.upper())
        return web.json_response(found) if found else web.json_response({}, status=404)

    app = web.Application()
    app.router.add_get("/orders/{number}", order)
    async with TestServer(app) as server:
        yield str(server.make_url("")).rstrip("/"), asked


@pytest.fixture
async def flow_client(settings, redis_client, order_api, tmp_path):
    """The service with the example rules, where tracking an order is a flow with a look-up."""
    async with service_with_rules(settings, _rules_with_order_flow(tmp_path, order_api[0])) as c:
        yield c


def _rules_with_order_flow(tmp_path: Path, orders_url: str,
                                 not_found: str | None = None) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "routing_rules", rules)
    flow = WHERE_IS_MY_ORDER
    if not_found:
        flow = flow.replace("        save: order\n",
                            f"        save: order\n        not_found: {not_found}\n")
    example = (rules / "flows.yaml").read_text().replace("flows:\n", flow, 1)
    (rules / "flows.yaml").write_text(LOOKUPS.format(orders_url=orders_url) + example)
    catalog = (rules / "catalog.yaml").read_text()
    start = catalog.index("  track_order:")
    answer = catalog.index("    self_service:", start)
    examples = catalog.index("    examples:", start)
    flow_ref = "    self_service:\n      flow: where_is_my_order\n"
    (rules / "catalog.yaml").write_text(catalog[:answer] + flow_ref + catalog[examples:])
    return rules


async def events(client, db, kinds=None) -> list[dict]:
    assert await client.app[EVENTS].flush()
    rows = await db.fetch("SELECT kind, reason, data FROM contact_events ORDER BY seq")
    found = [dict(r, data=json.loads(r["data"])) for r in rows]
    return [e for e in found if kinds is None or e["kind"] in kinds]


async def test_sms_flow_asks_looks_up_and_answers(flow_client, db, order_api, redis_client):
    assert await text(flow_client, CUSTOMER, "I need to track my order") == [
        "What's your order number? It starts with EX, like EX12345."]
    assert await text(flow_client, CUSTOMER, "it's the blue one") == [
        "That doesn't look like an order number. It starts with EX, like EX12345."]
    assert await text(flow_client, CUSTOMER, "ex 12345") == [
        "Order ex12345 is shipped and should arrive Friday.", "Did that help? Reply YES or NO."]
    assert order_api[1] == ["/orders/ex12345"]
    state = json.loads(await redis_client.get(f"sb:{{phone:{CUSTOMER}}}:conv:sms:+15005550006"))
    assert state["status"] == "confirming" and "flow" not in state  # the order data is dropped
    assert await text(flow_client, CUSTOMER, "yes") == [
        "Great, glad that helped! Text us any time if you need anything else."]
    steps = await events(flow_client, db, {"self_service_started", "flow_answer_rejected",
                                           "self_service_resolved", "ended"})
    assert [(e["kind"], e["data"].get("step") or e["data"].get("outcome")) for e in steps] == [
        ("self_service_started", "flow:where_is_my_order"),
        ("flow_answer_rejected", None),
        ("self_service_resolved", "flow:where_is_my_order"),
        ("ended", "self_service_resolved")]


@pytest.mark.parametrize("answers, reason, collected", [
    (["EX00000"], "lookup_not_found", {"order_number": "EX00000"}),
    (["EX50000"], "lookup_failed", {"order_number": "EX50000"}),
    (["EX70000"], "lookup_failed", {"order_number": "EX70000"}),  # over the 1 s timeout
    (["EX60000"], "lookup_failed", {"order_number": "EX60000"}),  # not JSON
    (["EX80000"], "lookup_failed", {"order_number": "EX80000"}),  # no eta to say
    (["EX90000"], "lookup_failed", {"order_number": "EX90000"}),  # over 64 KiB
    (["the blue one", "no idea"], "flow_input_failed", {}),
    (["EX12345", "no"], "self_service_failed", {"order_number": "EX12345"}),
])
async def test_every_way_out_of_a_flow_reaches_an_agent_with_what_it_collected(
        flow_client, db, answers, reason, collected):
    await text(flow_client, CUSTOMER, "I need to track my order")
    for answer in answers:
        reply = await text(flow_client, CUSTOMER, answer)
    assert "Orders and delivery team" in reply[-1]
    [entry] = await flow_client.app[ROUTER].waiting("orders")
    assert entry["reason"] == reason
    [step] = entry["context"]["self_service_steps"]
    assert (step["type"], step["flow"], step["outcome"], step["collected"]) == \
        ("flow", "where_is_my_order", "failed", collected)
    [failed] = await events(flow_client, db, {"self_service_failed"})
    assert failed["data"] == {"step": "flow:where_is_my_order", "failure": reason}


async def test_a_number_the_lookup_does_not_know_is_asked_for_again(settings, redis_client,
                                                                    order_api, tmp_path, db):
    """With not_found, a 404 says so and takes another answer; a second 404 goes to an agent."""
    rules = _rules_with_order_flow(tmp_path, order_api[0], not_found=(
        "I can't find order {order_number}. Please check the number and send it again."))
    async with service_with_rules(settings, rules) as c:
        await text(c, CUSTOMER, "I need to track my order")
        assert await text(c, CUSTOMER, "EX00000") == [
            "I can't find order EX00000. Please check the number and send it again."]
        assert await text(c, CUSTOMER, "EX12345") == [
            "Order EX12345 is shipped and should arrive Friday.",
            "Did that help? Reply YES or NO."]
        await text(c, CUSTOMER, "yes")
        other = "+15555550162"  # CUSTOMER asking again would be a repeat contact, for agents
        await text(c, other, "I need to track my order")
        await text(c, other, "EX00001")
        assert "Orders and delivery team" in (await text(c, other, "EX00002"))[-1]
        [entry] = await c.app[ROUTER].waiting("orders")
        assert entry["reason"] == "lookup_not_found"
        assert entry["context"]["self_service_steps"][-1]["collected"] == \
            {"order_number": "EX00002"}
        rejected = await events(c, db, {"flow_answer_rejected"})
    assert [e["data"]["misses"] for e in rejected] == [1, 1, 2]


async def test_asking_for_a_person_inside_a_flow(flow_client):
    await text(flow_client, CUSTOMER, "I need to track my order")
    reply = await text(flow_client, CUSTOMER, "just put me through to an agent")
    assert "Orders and delivery team" in reply[-1]
    [entry] = await flow_client.app[ROUTER].waiting("orders")
    assert entry["reason"] == "requested_agent"


async def test_voice_flow_takes_a_spoken_order_number(flow_client, order_api):
    call = await Call(flow_client, CUSTOMER).dial()
    await call.press("1")
    gather = call.twiml.find("Gather")
    assert call.said() == ["What's your order number? It starts with EX, like EX12345."]
    assert gather.get("finishOnKey") == "#" and gather.get("numDigits") is None
    await call.speak("E X 1 2 3 4 5", confidence=0.8)
    assert call.said() == ["Order EX12345 is shipped and should arrive Friday.",
                           "Did that help? Press 1 for yes or 2 for no, or say yes or no."]
    assert call.twiml.find("Gather").get("numDigits") == "1"
    await call.press("1")
    assert call.verbs() == ["Say", "Hangup"]


async def test_the_example_deployment_asks_which_order_a_refund_is_for(settings, redis_client):
    """Chat, with the example deployment's own flow (no look-up): the answer links the order."""
    async with service_with_rules(settings, ROOT / "routing_rules") as client:
        chat, _ = await open_chat(client)
        await chat.next("message")
        await chat.send(type="message", text="where is my refund?")
        assert (await chat.next("message"))["text"] == (
            "Which order is the refund for? The order number starts with EX, like EX12345.")
        await chat.send(type="message", text="EX24680")
        answer = await chat.next("message")
        assert "order EX24680 shows at example.com/orders/EX24680" in answer["text"]
        confirm = await chat.next("message")
        assert [c["value"] for c in confirm["choices"]] == ["yes", "no"]


FLOW_ERRORS = [
    ("steps:\n      - ask: Order number?\n        save: order_number\n      - lookup: shop\n"
     "        save: order\n      - say: It is {order.status}.",
     "flows.yaml:9: unknown look-up 'shop' (flows -> f -> steps -> 1 -> lookup)"),
    ("steps:\n      - say: Your order {order_number} is on its way.",
     "flows.yaml:7: '{order_number}' is not saved by an earlier step (flows -> f -> steps -> 0 "
     "-> say)"),
    ("steps:\n      - ask: Order number?\n        save: order_number",
     "flows.yaml:7: a flow ends with a 'say' step: the answer the customer is then asked to "
     "confirm (flows -> f -> steps -> 0)"),
    ("steps:\n      - ask: Order number?\n        say: Thanks\n        save: n\n      - say: ok",
     "flows.yaml:7: each step has exactly one of 'ask', 'lookup' or 'say' (flows -> f -> steps "
     "-> 0)"),
    ("steps:\n      - ask: Order number?\n        save: n\n        expect: 'EX(\\d'\n"
     "      - say: ok",
     "flows.yaml:9: expect is not a valid regular expression: missing ), unterminated subpattern "
     "at position 2 (flows -> f -> steps -> 0 -> expect)"),
    ("steps:\n      - ask: Order number?\n        save: Order Number\n      - say: ok",
     "flows.yaml:8: save names a value in lower_snake_case (flows -> f -> steps -> 0 -> save)"),
    ("steps:\n      - lookup: orders\n        save: order\n        not_found: No such order.\n"
     "      - say: ok",
     ("flows.yaml:7: '{n}' is not saved by an earlier step (flows -> f -> steps -> 0 -> "
      "lookup)",
      "flows.yaml:9: not_found asks the last question again: put an 'ask' before this look-up "
      "(flows -> f -> steps -> 0 -> not_found)")),
    ("steps:\n      - ask: Order number?\n        save: n\n        when: always\n"
     "      - say: ok",
     "flows.yaml:9: unknown key 'when' (flows -> f -> steps -> 0 -> when)"),
]


@pytest.mark.parametrize("flow, message", FLOW_ERRORS)
def test_flow_errors_name_file_line_and_path(tmp_path, flow, message):
    rules = _rules_with_flows(tmp_path, "lookups:\n  orders:\n    url: http://127.0.0.1:9/o/{n}\n"
                              f"flows:\n  f:\n    {flow}\n")
    with pytest.raises(ConfigError) as caught:
        load_rules(rules, with_classifier=False)
    messages = (message,) if isinstance(message, str) else message
    assert [str(i) for i in caught.value.issues] == [f"{rules}/{m}" for m in messages]


def test_lookup_errors_and_a_catalog_naming_an_unknown_flow_are_reported_together(tmp_path):
    rules = _rules_with_flows(tmp_path, "lookups:\n  orders:\n    url: ftp://x/{n}\n"
                              "    timeout_s: 30\nflows:\n  f:\n    steps:\n      - say: hi\n",
                              track_order_flow="wheres_my_order")
    with pytest.raises(ConfigError) as caught:
        load_rules(rules, with_classifier=False)
    assert [str(i) for i in caught.value.issues] == [
        f"{rules}/flows.yaml:3: url must be an http:// or https:// URL (lookups -> orders -> url)",
        f"{rules}/flows.yaml:4: timeout_s must be a number of seconds, more than 0 and at most 5 "
        "(lookups -> orders -> timeout_s)"]
    (rules / "flows.yaml").write_text("flows:\n  f:\n    steps:\n      - say: hi\n")
    with pytest.raises(ConfigError) as caught:
        load_rules(rules, with_classifier=False)
    [issue] = caught.value.issues
    assert str(issue).startswith(f"{rules}/catalog.yaml:")
    assert str(issue).endswith("unknown flow 'wheres_my_order' (flows.yaml defines: f) "
                               "(contact_types -> track_order -> self_service -> flow)")


def test_the_flows_file_is_part_of_the_rules_digest(tmp_path):
    rules = _rules_with_flows(tmp_path, "flows:\n  f:\n    steps:\n      - say: hi\n")
    before = load_rules(rules, with_classifier=False).digest
    (rules / "flows.yaml").write_text("flows:\n  f:\n    steps:\n      - say: hello\n")
    assert load_rules(rules, with_classifier=False).digest != before


def _rules_with_flows(tmp_path: Path, flows: str, track_order_flow: str | None = None) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "routing_rules", rules)
    (rules / "flows.yaml").write_text(flows)
    catalog = (rules / "catalog.yaml").read_text().replace("      flow: refund_status",
                                                           "      answer: See your orders.")
    if track_order_flow:
        start = catalog.index("  track_order:")
        answer = catalog.index("    self_service:", start)
        examples = catalog.index("    examples:", start)
        catalog = (catalog[:answer] + f"    self_service:\n      flow: {track_order_flow}\n"
                   + catalog[examples:])
    (rules / "catalog.yaml").write_text(catalog)
    return rules
