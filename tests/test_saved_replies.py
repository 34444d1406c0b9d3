"""Saved replies (replies.yaml): checked with file, line and key path like every rule file,
loaded and reloaded all or nothing, stored with each rules version; and served to the agent
who holds a contact over the agent socket (`replies` frame), filled in for its customer and
agent, those for its contact type first with the catalog's answer among them."""

from __future__ import annotations

import asyncio
import json
import shutil
import textwrap
from pathlib import Path

import pytest

from service.__main__ import main
from service.appkeys import PG, RULES
from service.conversations.customers import upsert_customer
from service.infra.tokens import create_token
from service.rules.loader import load_rules, rule_files
from tests.conftest import ROOT, service_with_rules
from tests.test_agents import ALL_SKILLS, login
from tests.test_rules_audit import cli, cli_env, reload  # noqa: F401 (fixture)
from tests.test_rules_validation import errors, write_rules
from tests.twilio_driver import SERVICE_NUMBER, text

GOOD = """\
replies:
  - id: greeting
    title: Greeting
    text: "Hi[ {customer.name}], I'm {agent.name}."
  - id: where_is_it
    title: Where is it
    text: "[Thanks, {customer.name}. ]Your {customer.tier} order is on its way."
    contact_types: [track_order]
"""


def with_replies(tmp_path: Path, replies: str) -> Path:
    directory = write_rules(tmp_path)
    (directory / "replies.yaml").write_text(textwrap.dedent(replies))
    return directory


def reply_errors(tmp_path: Path, replies: str) -> list[str]:
    (tmp_path / "replies.yaml").write_text(textwrap.dedent(replies))
    return errors(tmp_path)


CASES = [
    ("unknown key", GOOD.replace("    title: Greeting\n", "    title: Greeting\n    tone: warm\n"),
     ["replies.yaml:4: unknown key 'tone' (replies -> 0 -> tone)"]),
    ("duplicate id", GOOD.replace("id: where_is_it", "id: greeting"),
     ["replies.yaml:5: duplicate reply id 'greeting' (first at line 2) (replies -> 1 -> id)"]),
    ("unknown contact type", GOOD.replace("[track_order]", "[track_order, trak_order]"),
     ["replies.yaml:8: unknown contact type 'trak_order' (replies -> 1 -> contact_types -> 1)"]),
    ("unknown placeholder", GOOD.replace("{customer.tier}", "{order.tier}"),
     ["replies.yaml:7: unknown placeholder '{order.tier}': saved replies may use "
      "{customer.name}, {customer.<attribute>}, {agent.name} and "
      "{last_contact.label|type|channel|when} (replies -> 1 -> text)"]),
    ("agent field", GOOD.replace("{agent.name}", "{agent.email}"),
     ["replies.yaml:4: '{agent.email}': the agent has only {agent.name} "
      "(replies -> 0 -> text)"]),
    ("unbalanced bracket", GOOD.replace("Hi[ {customer.name}]", "Hi[ {customer.name}"),
     ["replies.yaml:4: square brackets mark an optional part: each [ needs its ] and they do "
      "not nest (replies -> 0 -> text)"]),
    ("not a placeholder", GOOD.replace("{agent.name}", "{Agent Name}"),
     ["replies.yaml:4: '{Agent Name}' is not a placeholder: write {name} or {name.field} in "
      "lower_snake_case (replies -> 0 -> text)"]),
    ("bad id", GOOD.replace("id: greeting", "id: Greeting-1"),
     ["replies.yaml:2: reply id 'Greeting-1' must be lower_snake_case, e.g. ask_order_number "
      "(replies -> 0 -> id)"]),
    ("missing text", GOOD.replace("    text: \"Hi[ {customer.name}], I'm {agent.name}.\"\n", ""),
     ["replies.yaml:2: missing required key 'text' (replies -> 0)"]),
    ("long title", GOOD.replace("title: Greeting", "title: " + "x" * 61),
     ["replies.yaml:3: title must be text of 1 to 60 characters (replies -> 0 -> title)"]),
    ("types not a list", GOOD.replace("[track_order]", "track_order"),
     ["replies.yaml:8: contact_types must be a list of contact type ids "
      "(replies -> 1 -> contact_types)"]),
    ("empty list", "replies: []\n",
     ["replies.yaml:1: expected a non-empty list of replies (replies)"]),
    ("unknown top-level key", GOOD + "macros: []\n",
     ["replies.yaml:9: unknown key 'macros' (macros)"]),
]


@pytest.mark.parametrize("replies, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_replies_errors_name_file_line_and_key_path(tmp_path, replies, expected):
    write_rules(tmp_path)
    assert reply_errors(tmp_path, replies) == expected


def test_a_good_file_loads_and_is_part_of_the_version(tmp_path):
    directory = write_rules(tmp_path)
    without = load_rules(directory, with_classifier=False)
    assert without.replies.replies == ()
    (directory / "replies.yaml").write_text(GOOD)
    rules = load_rules(directory, with_classifier=False)
    assert [(r.id, r.contact_types) for r in rules.replies.replies] == \
        [("greeting", ()), ("where_is_it", ("track_order",))]
    assert rules.files["replies.yaml"] == GOOD == rule_files(directory)["replies.yaml"]
    assert rules.digest != without.digest  # the digest covers the file
    edited = GOOD.replace("on its way", "out for delivery")
    (directory / "replies.yaml").write_text(edited)
    assert load_rules(directory, with_classifier=False).digest != rules.digest


@pytest.mark.parametrize("directory", ["routing_rules", "routing_rules/bank"])
def test_the_example_replies_pass_rules_check(directory, capsys):
    assert main(["rules", "check", str(ROOT / directory)]) == 0
    assert " saved replies" in capsys.readouterr().out
    assert load_rules(ROOT / directory, with_classifier=False).replies.replies


async def test_reload_with_bad_replies_keeps_the_rules_and_versions_store_the_file(
        settings, redis_client, tmp_path, capsys, cli_env):  # noqa: F811
    directory = with_replies(tmp_path, GOOD)
    async with service_with_rules(settings, directory) as client:
        ops = await create_token(client.app[PG], "ops", name="deploy-bot")
        first = client.app[RULES].current

        (directory / "replies.yaml").write_text(GOOD.replace("[track_order]", "[biling]"))
        (directory / "routes.yaml").write_text(
            (directory / "routes.yaml").read_text().replace("priority: 5", "priority: 4"))
        status, body = await reload(client, ops)
        assert status == 422 and not body["ok"]
        assert body["errors"] == [f"{directory}/replies.yaml:8: unknown contact type 'biling' "
                                  "(replies -> 1 -> contact_types -> 0)"]
        current = client.app[RULES].current
        assert current is first  # all or nothing: the routes' good change waits too
        assert current.tree.root.settings.priority == 5

        (directory / "replies.yaml").write_text(GOOD.replace("on its way", "packed"))
        status, body = await reload(client, ops)
        assert status == 200 and body["ok"]
        assert client.app[RULES].current.replies.replies[1].text == \
            "[Thanks, {customer.name}. ]Your {customer.tier} order is packed."
        stored = await client.app[PG].fetch(
            "SELECT id, files FROM rule_versions ORDER BY id")
        assert [json.loads(r["files"]).get("replies.yaml") for r in stored] == \
            [GOOD, GOOD.replace("on its way", "packed")]
        # the ids go on from earlier tests' versions (the table is emptied, its sequence not)
        code, out, _ = await cli(capsys, "rules", "diff", *(str(r["id"]) for r in stored))
        assert code == 0 and "replies.yaml" in out
        assert "-    text: \"[Thanks, {customer.name}. ]Your {customer.tier} order is on its " \
            "way.\"" in out


# ---- the agent socket ---------------------------------------------------------------------

ANA, STRANGER = "+15555550701", "+15555550702"
MEMBER_REPLY = """
  - id: confirm_member_number
    title: Confirm the member number
    text: "Your member number is {customer.member_number}[, {customer.name}]."
    contact_types: [track_order]
"""


@pytest.fixture
async def shop(settings, redis_client, tmp_path):
    """The example shop's rules with one more reply whose value customers may lack."""
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "routing_rules", rules, ignore=shutil.ignore_patterns("bank"))
    with (rules / "replies.yaml").open("a") as replies:
        replies.write(MEMBER_REPLY)
    async with service_with_rules(settings, rules) as client:
        yield client


async def escalate(client, phone: str, *messages: str) -> None:
    for message in messages:
        await text(client, phone, message)


async def test_a_contact_gets_its_types_replies_first_filled_in(shop, db, redis_client):
    await upsert_customer(db, redis_client, identities=[("phone", ANA)], display_name="Ana",
                          attributes={"tier": "gold"})
    agent = await login(shop, db, name="Dana", skills=ALL_SKILLS)
    await escalate(shop, ANA, "I need to track my order", "no")
    offer = await agent.next("offer")
    assert offer["context"]["contact_type"] == "track_order"

    # Only the agent who holds the contact may have its replies (they carry its data).
    await agent.send(type="replies", contact_id=offer["contact_id"])
    refused = await agent.ws.receive_json()
    assert (refused["type"], refused["code"]) == ("error", "not_assigned")

    await agent.send(type="accept", contact_id=offer["contact_id"])
    await agent.next("assigned")
    await agent.send(type="replies", contact_id=offer["contact_id"])
    frame = await agent.next("replies")
    assert (frame["contact_id"], frame["contact_type"]) == (offer["contact_id"], "track_order")
    replies = {r["id"]: r for r in frame["replies"]}
    assert [(r["id"], r["group"]) for r in frame["replies"]] == [
        ("ask_order_number", "type"), ("sorry_for_the_delay", "type"),
        ("confirm_member_number", "type"), ("answer.track_order", "type"),
        ("greeting", "any"), ("looking_into_it", "any"), ("vip_thanks", "any"),
        ("anything_else", "any"), ("closing", "any"), ("refund_timing", "other")]
    assert replies["ask_order_number"]["text"].startswith(
        "Thanks, Ana. Could you give me the order number?")
    assert replies["greeting"]["text"].startswith("Hi Ana, I'm Dana from Example Shop.")
    assert "as a gold member" in replies["vip_thanks"]["text"]
    assert replies["closing"]["text"].endswith("Have a great day! Dana")
    # The catalog's answer, as self-service gave it, offered for this type.
    answer = replies["answer.track_order"]
    assert answer["title"] == "Self-service answer: Track an order"
    assert answer["text"].startswith("Every order is listed under Orders at example.com/orders")
    assert answer["contact_types"] == ["track_order"]
    # A required value Ana lacks stays as its placeholder, named in `gaps`.
    assert replies["confirm_member_number"]["text"] == \
        "Your member number is {customer.member_number}, Ana."
    assert replies["confirm_member_number"]["gaps"] == ["{customer.member_number}"]
    assert all(r["gaps"] == [] for r in frame["replies"] if r["id"] != "confirm_member_number")
    assert all("{" not in r["text"] and "[" not in r["text"] for r in frame["replies"]
               if r["id"] != "confirm_member_number")


async def test_an_unknown_customer_gets_the_wording_without_their_values(shop, db):
    agent = await login(shop, db, name="Ravi", skills=ALL_SKILLS)
    await escalate(shop, STRANGER, "I want to talk to a human agent")
    offer = await agent.next("offer")
    await agent.send(type="accept", contact_id=offer["contact_id"])
    await agent.next("assigned")
    await agent.send(type="replies", contact_id=offer["contact_id"])
    frame = await agent.next("replies")
    replies = {r["id"]: r for r in frame["replies"]}
    assert frame["contact_type"] is None  # asked for a person: no type, so no answer either
    assert not any(r["group"] == "type" for r in frame["replies"])
    assert replies["greeting"]["text"].startswith("Hi, I'm Ravi from Example Shop.")
    assert replies["ask_order_number"]["text"].startswith("Could you give me the order number?")
    assert replies["vip_thanks"]["text"].startswith("Thanks for being with us.")
    assert replies["anything_else"]["text"] == \
        "Is there anything else I can help you with today?"
    member = replies["confirm_member_number"]
    assert (member["group"], member["text"], member["gaps"]) == \
        ("other", "Your member number is {customer.member_number}.",
         ["{customer.member_number}"])
    await agent.send(type="replies", contact_id="")
    assert (await asyncio.wait_for(agent.ws.receive_json(), 5))["code"] == "bad_frame"


async def test_a_canary_contact_gets_the_canarys_replies(settings, redis_client, db, tmp_path):
    stable, candidate = (tmp_path / name for name in ("stable", "candidate"))
    for directory in (stable, candidate):
        shutil.copytree(ROOT / "routing_rules", directory, ignore=shutil.ignore_patterns("bank"))
    replies = (candidate / "replies.yaml").read_text()
    (candidate / "replies.yaml").write_text(replies.replace("Hi[ {customer.name}], I'm",
                                                            "CANARY hello, I'm"))
    async with service_with_rules(settings, stable) as client:
        token = await create_token(db, "ops", "tests")
        response = await client.post(
            "/api/rules/canary", headers={"Authorization": f"Bearer {token}"},
            json={"directory": str(candidate), "share": 0.5, "guardrails": []})
        assert response.status == 200, await response.text()
        agent = await login(client, db, name="Dana", skills=ALL_SKILLS, capacity={"sms": 20})
        arms: dict[str, str] = {}  # arm -> the phone of a contact in it
        for i in range(20):
            phone = f"+1555333{i:04d}"
            await text(client, phone, "I want to talk to a human agent")
            raw = await redis_client.get(f"sb:{{phone:{phone}}}:conv:sms:{SERVICE_NUMBER}")
            arms.setdefault(json.loads(raw)["canary"]["arm"], phone)
            if len(arms) == 2:
                break
        # Every offer is taken; the two contacts' replies are asked for once they are ours
        # (frames come in any order, so none is skipped).
        wanted = {phone: arm for arm, phone in arms.items()}
        arm_of: dict[str, str] = {}
        greetings: dict[str, str] = {}
        while len(greetings) < 2:
            frame = await asyncio.wait_for(agent.ws.receive_json(), 15)
            if frame["type"] == "offer":
                await agent.send(type="accept", contact_id=frame["contact_id"])
            elif frame["type"] == "assigned":
                arm = wanted.get(frame["context"]["customer"]["address"])
                if arm:
                    arm_of[frame["contact_id"]] = arm
                    await agent.send(type="replies", contact_id=frame["contact_id"])
            elif frame["type"] == "replies":
                greetings[arm_of[frame["contact_id"]]] = next(
                    r["text"] for r in frame["replies"] if r["id"] == "greeting")
        assert greetings["canary"].startswith("CANARY hello, I'm Dana from Example Shop.")
        assert greetings["stable"].startswith("Hi, I'm Dana from Example Shop.")
