"""Message templates end to end: an agent reaches a WhatsApp customer past the 24-hour window
with an approved template (Twilio's Content API), through the outbox, over real PostgreSQL
and Redis, the agent socket, signed webhooks and the Twilio stand-in; the rule file's checks."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from service.appkeys import EVENTS
from service.conversations.customers import upsert_customer
from service.infra.tokens import create_token
from service.rules.loader import load_rules
from service.rules.yamlfile import ConfigError
from tests.conftest import RULES_DIR, with_settings
from tests.test_agents import instance, twilio  # noqa: F401
from tests.test_outbox import Console, outbox_rows, status_of, wait_for
from tests.test_whatsapp import NUMBER, WA, WA_SERVICE, login, whatsapp
from tests.twilio_driver import text

FOLLOW_UP_SID = "HX00000000000000000000000000000001"
FOLLOW_UP = ("Hi {{1}}, this is {{2}} from Example Shop. I'm following up on the question you "
             "sent us. Reply to this message whenever suits you and we'll pick it up from "
             "there.")
STILL_SID = "HX00000000000000000000000000000002"
STILL = ("Hello from Example Shop. {{1}} here: we didn't hear back from you. Do you still need "
         "help? Just reply and we'll continue.")
FILLED = ("Hi Ana Lima, this is Dana from Example Shop. I'm following up on the question you "
          "sent us. Reply to this message whenever suits you and we'll pick it up from there.")


async def template_settings(settings, twilio, offer_timeout_s: float = 30):
    """Empty tables, the stand-in knowing the approved templates, the outbox retrying fast."""
    from tests.conftest import _clean_tables
    await _clean_tables(settings.database_url)
    standin, url = twilio
    standin.content_templates.update({FOLLOW_UP_SID: FOLLOW_UP, STILL_SID: STILL})
    return with_settings(settings, twilio_api_base_url=url,
                         twilio_account_sid="AC" + "1" * 32, offer_timeout_s=offer_timeout_s,
                         twilio_timeout_s=1.0, outbox_retry_base_s=0.2,
                         outbox_retry_max_s=1.0)


@pytest.fixture
async def app_settings(settings, twilio, redis_client):  # noqa: F811
    return await template_settings(settings, twilio)


async def named_customer(db, redis_client, name: str | None = "Ana Lima") -> None:
    """The number's customer in the directory, with a name or none."""
    await upsert_customer(db, redis_client, identities=[("phone", NUMBER)],
                          display_name=name, attributes={})


async def with_agent(client, db, standin, channel: str = "whatsapp") -> tuple[Console, str]:
    """A contact a NO sends to Dana, who accepts it; her console and the contact id."""
    agent = await login(client, db)
    say = whatsapp if channel == "whatsapp" else (lambda c, words: text(c, NUMBER, words))
    await say(client, "I forgot my password and can't log in")
    await say(client, "no")
    offer = await agent.next("offer")
    console = Console(agent)
    await console.send(type="accept", contact_id=offer["contact_id"])
    await console.wait(lambda f: f["type"] == "assigned")
    await wait_for(lambda: any("now talking with Dana" in m.get("Body", "")
                               for m in standin.messages))
    return console, offer["contact_id"]


async def window_closed(redis_client, contact_id: str) -> None:
    """The customer last wrote a day and an hour ago (the contact's transcript moved back)."""
    key = await redis_client.get(f"sb:{{contact:{contact_id}}}:conv")
    conv = orjson.loads(await redis_client.get(key))
    for line in conv["transcript"]:
        line["at"] -= 25 * 3600
    await redis_client.set(key, orjson.dumps(conv), keepttl=True)


async def transcript(redis_client, contact_id: str) -> list[dict]:
    key = await redis_client.get(f"sb:{{contact:{contact_id}}}:conv")
    return orjson.loads(await redis_client.get(key))["transcript"]


def error_for(console: Console, code: str):
    return lambda f: f["type"] == "error" and f["code"] == code


async def test_past_the_window_a_text_is_refused_a_template_goes_and_the_answer_reopens_it(
        app_settings, db, twilio, redis_client):  # noqa: F811
    standin, _ = twilio
    await named_customer(db, redis_client)
    async with instance(app_settings) as client:
        console, contact_id = await with_agent(client, db, standin)
        assigned = await console.wait(lambda f: f["type"] == "assigned")
        window = assigned["reply_window"]
        assert (window["seconds"], window["templates"]) == (24 * 3600, True)
        assert abs(window["customer_last_at"] - window["now"]) < 30
        await window_closed(redis_client, contact_id)
        sent = len(standin.messages)

        await console.send(type="message", contact_id=contact_id, text="Still there?")
        refused = await console.wait(error_for(console, "outside_window"))
        assert "24 hours" in refused["message"]
        assert len(standin.messages) == sent

        await console.send(type="templates", contact_id=contact_id)
        listed = await console.wait(lambda f: f["type"] == "templates")
        assert [(t["id"], t["gaps"]) for t in listed["templates"]] == [
            ("follow_up", []), ("still_need_help", [])]
        assert listed["templates"][0]["text"] == FILLED

        await console.send(type="template", contact_id=contact_id, template_id="follow_up")
        status = await console.wait(status_of(FILLED, "sent"))
        [message] = standin.templated()
        assert message["ContentSid"] == FOLLOW_UP_SID and "Body" not in message
        assert json.loads(message["ContentVariables"]) == {"1": "Ana Lima", "2": "Dana"}
        assert (message["To"], message["From"]) == (WA, WA_SERVICE)
        assert message["StatusCallback"].endswith(f"?message={status['message_id']}")
        line = (await transcript(redis_client, contact_id))[-1]
        assert (line["from"], line["text"], line["template"]) == ("agent", FILLED, "follow_up")

        assert await whatsapp(client, "yes I still need help") == []  # the window opens
        await console.wait(lambda f: f["type"] == "message" and f["text"].startswith("yes I"))
        await console.send(type="message", contact_id=contact_id, text="Great, let's go on.")
        await console.wait(status_of("Great, let's go on.", "sent"))
        assert standin.messages[-1]["Body"] == "Great, let's go on."
        assert not [f for f in console.errors() if f["code"] != "outside_window"]
        assert await client.app[EVENTS].flush()
    rows = await db.fetch("SELECT data FROM contact_events WHERE kind = 'agent_message' "
                          "ORDER BY occurred_at")
    said = [json.loads(r["data"]) for r in rows]
    assert [(d["text"], d.get("template")) for d in said][-2:] == [
        (FILLED, "follow_up"), ("Great, let's go on.", None)]
    [job] = [r for r in await outbox_rows(db) if r["action"] == "template"]
    assert job["state"] == "sent"
    assert json.loads(job["payload"])["ref"] == FOLLOW_UP_SID


async def test_a_template_on_a_channel_without_the_trait_is_refused(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact_id = await with_agent(client, db, standin, channel="sms")
        assigned = await console.wait(lambda f: f["type"] == "assigned")
        assert "reply_window" not in assigned  # SMS has no reply window
        await console.send(type="templates", contact_id=contact_id)
        assert (await console.wait(lambda f: f["type"] == "templates"))["templates"] == []
        sent = len(standin.messages)
        await console.send(type="template", contact_id=contact_id, template_id="follow_up")
        refused = await console.wait(error_for(console, "not_template"))
        assert "templates_after_window" in refused["message"]
        await asyncio.sleep(0.3)
        assert len(standin.messages) == sent and standin.templated() == []
    assert [r["action"] for r in await outbox_rows(db)] == ["connect"]


async def test_a_value_the_customer_lacks_refuses_the_template_naming_the_gap(
        app_settings, db, twilio, redis_client):  # noqa: F811
    standin, _ = twilio
    await named_customer(db, redis_client, name=None)  # no name in the directory
    async with instance(app_settings) as client:
        console, contact_id = await with_agent(client, db, standin)
        await window_closed(redis_client, contact_id)
        await console.send(type="templates", contact_id=contact_id)
        listed = await console.wait(lambda f: f["type"] == "templates")
        gaps = {t["id"]: t["gaps"] for t in listed["templates"]}
        assert gaps == {"follow_up": ["{customer.name}"], "still_need_help": []}
        assert listed["templates"][0]["text"].startswith("Hi {customer.name}, this is Dana")
        lines = len(await transcript(redis_client, contact_id))
        await console.send(type="template", contact_id=contact_id, template_id="follow_up")
        refused = await console.wait(error_for(console, "template_gaps"))
        assert "{customer.name}" in refused["message"]
        await console.send(type="template", contact_id=contact_id, template_id="nope")
        assert "nope" in (await console.wait(error_for(console, "unknown_template")))["message"]
        await asyncio.sleep(0.3)
        assert standin.templated() == []
        assert len(await transcript(redis_client, contact_id)) == lines
        await console.send(type="template", contact_id=contact_id,
                           template_id="still_need_help")  # no customer value: it goes
        await wait_for(lambda: len(standin.templated()) == 1)
        assert json.loads(standin.templated()[0]["ContentVariables"]) == {"1": "Dana"}


async def test_twilio_failing_then_recovering_delivers_the_template_exactly_once(
        app_settings, db, twilio, redis_client):  # noqa: F811
    standin, _ = twilio
    await named_customer(db, redis_client)
    async with instance(app_settings) as client:
        console, contact_id = await with_agent(client, db, standin)
        await window_closed(redis_client, contact_id)
        standin.fail_with = 503
        await console.send(type="template", contact_id=contact_id, template_id="follow_up")
        retrying = await console.wait(lambda f: f["type"] == "message_status"
                                      and f["state"] == "queued" and f["reason"])
        assert "503" in retrying["reason"] and retrying["text"] == FILLED
        await wait_for(lambda: len(standin.attempts) >= 4)  # the greeting, then retries
        assert standin.templated() == []
        standin.fail_with = None
        await console.wait(status_of(FILLED, "sent"))
        await asyncio.sleep(1.0)
        assert len(standin.templated()) == 1
        [job] = [r for r in await outbox_rows(db) if r["action"] == "template"]
        assert job["state"] == "sent" and job["attempts"] >= 2
        assert job["provider_id"] in standin.sids


async def test_a_lost_answer_is_looked_up_by_the_rendered_text_and_not_sent_twice(
        app_settings, db, twilio, redis_client):  # noqa: F811
    standin, _ = twilio
    await named_customer(db, redis_client)
    async with instance(app_settings) as client:
        console, contact_id = await with_agent(client, db, standin)
        await window_closed(redis_client, contact_id)
        standin.lose_answers = True  # Twilio takes it; its answer never comes
        await console.send(type="template", contact_id=contact_id, template_id="follow_up")
        await console.wait(status_of(FILLED, "sent"), timeout_s=10)
        standin.lose_answers = False
        await asyncio.sleep(0.6)
        assert len(standin.templated()) == 1 and standin.lookups


async def test_twilio_refusing_the_content_sid_reaches_the_agent_with_its_code(
        app_settings, db, twilio, redis_client):  # noqa: F811
    standin, _ = twilio
    await named_customer(db, redis_client)
    standin.content_templates.pop(FOLLOW_UP_SID)  # not approved on this account
    async with instance(app_settings) as client:
        console, contact_id = await with_agent(client, db, standin)
        await console.send(type="template", contact_id=contact_id, template_id="follow_up")
        refused = await console.wait(error_for(console, "delivery_failed"))
        assert "21655" in refused["message"] and "ContentSid" in refused["message"]
        assert await client.app[EVENTS].flush()
    failed = await db.fetchval("SELECT data FROM contact_events WHERE kind = "
                               "'delivery_failed'")
    assert (json.loads(failed)["code"], json.loads(failed)["action"]) == ("21655", "template")


# ---- the rule file -----------------------------------------------------------------------

def rules_with(tmp_path: Path, templates: str) -> Path:
    directory = tmp_path / "rules"
    shutil.copytree(RULES_DIR, directory, ignore=shutil.ignore_patterns("bank"))
    text = (directory / "replies.yaml").read_text()
    replies = text[text.index("# Saved replies"):]  # the example's templates left out
    (directory / "replies.yaml").write_text(f"{replies}\ntemplates:\n{templates}")
    return directory


BAD_TEMPLATES = """\
  - id: follow_up
    title: Follow up
    channel_trait: templates_after_window
    content_sid: HX123
    text: Hi {{1}}, {{2}} here about {{3}}.
    variables:
      "1": "{customer.nickname.first}"
      "2": "Dana"
      "4": "{agent.name}"
  - id: other
    title: Other
    channel_trait: whatsapp
    content_sid: HX00000000000000000000000000000003
    text: Hello
    colour: blue
  - id: order
    title: Order
    channel_trait: templates_after_window
    content_sid: HX00000000000000000000000000000004
    text: Your order {{1}}
    variables:
      "1": "{order.id}"
"""


def test_every_mistake_in_templates_is_reported_with_file_line_and_key_path(tmp_path):
    directory = rules_with(tmp_path, BAD_TEMPLATES)
    with pytest.raises(ConfigError) as raised:
        load_rules(directory, with_classifier=False)
    found = {(i.line, " -> ".join(map(str, i.path))): i.message for i in raised.value.issues}
    file_lines = (directory / "replies.yaml").read_text().splitlines()

    def line_of(fragment: str) -> int:
        return next(n for n, line in enumerate(file_lines, 1) if fragment in line)

    assert "HX and 32 hex" in found[(line_of("content_sid: HX123"),
                                     "templates -> 0 -> content_sid")]
    assert "{{3}} of the text is not filled" in found[(line_of("variables:"),
                                                       "templates -> 0 -> variables")]
    assert "customer.name" in found[(line_of('"1": "{customer.nickname'),
                                     "templates -> 0 -> variables -> 1")]
    assert "filled from the contact" in found[(line_of('"2": "Dana"'),
                                               "templates -> 0 -> variables -> 2")]
    assert "no {{4}}" in found[(line_of('"4": "{agent.name}"'),
                                "templates -> 0 -> variables -> 4")]
    assert "unknown channel trait 'whatsapp'" in found[(line_of("channel_trait: whatsapp"),
                                                        "templates -> 1 -> channel_trait")]
    assert "unknown key 'colour'" in found[(line_of("colour: blue"),
                                            "templates -> 1 -> colour")]
    assert "unknown placeholder '{order.id}'" in found[(line_of('"1": "{order.id}"'),
                                                        "templates -> 2 -> variables -> 1")]


def test_rules_check_reports_template_errors_with_file_and_line(tmp_path):
    directory = rules_with(tmp_path, BAD_TEMPLATES)
    done = subprocess.run([sys.executable, "-m", "service", "rules", "check", str(directory)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    line = next(n for n, text in enumerate((directory / "replies.yaml").read_text()
                                           .splitlines(), 1) if "content_sid: HX123" in text)
    assert f"{directory}/replies.yaml:{line}:" in done.stderr
    assert "templates -> 0 -> content_sid" in done.stderr


def test_the_example_templates_load_and_a_file_of_templates_alone_is_valid(tmp_path):
    rules = load_rules(RULES_DIR, with_classifier=False)
    assert [(t.id, t.ref, t.variables) for t in rules.replies.templates] == [
        ("follow_up", FOLLOW_UP_SID, (("1", "{customer.name}"), ("2", "{agent.name}"))),
        ("still_need_help", STILL_SID, (("1", "{agent.name}"),))]
    assert rules.replies.templates[0].text == FOLLOW_UP
    directory = rules_with(tmp_path, "")
    only = (directory / "replies.yaml")
    only.write_text("templates:\n  - id: hello\n    title: Hello\n"
                    "    channel_trait: templates_after_window\n"
                    f"    content_sid: {STILL_SID}\n    text: Hello from us.\n")
    alone = load_rules(directory, with_classifier=False).replies
    assert (alone.replies, [t.id for t in alone.templates]) == ((), ["hello"])


async def test_an_erasure_blanks_a_sent_templates_text_and_values(
        app_settings, db, twilio, redis_client):  # noqa: F811
    standin, _ = twilio
    await named_customer(db, redis_client)
    async with instance(app_settings) as client:
        console, contact_id = await with_agent(client, db, standin)
        await console.send(type="template", contact_id=contact_id, template_id="follow_up")
        await console.wait(status_of(FILLED, "sent"))
        await console.send(type="wrap_up", contact_id=contact_id, resolved=True)
        await console.wait(lambda f: f["type"] == "wrapped_up")
        assert await client.app[EVENTS].flush()
        customer_id = await db.fetchval("SELECT customer_id FROM customer_identities "
                                        "WHERE value = $1", NUMBER)
        token = await create_token(db, "ops", "tests")
        response = await client.delete(f"/api/customers/{customer_id}",
                                       headers={"Authorization": f"Bearer {token}"})
        assert response.status == 200, await response.text()
    [job] = [r for r in await outbox_rows(db) if r["action"] == "template"]
    assert "Ana" not in job["payload"] and json.loads(job["payload"])["ref"] == FOLLOW_UP_SID
    said = await db.fetch("SELECT data FROM contact_events WHERE kind = 'agent_message'")
    assert not [r for r in said if "Ana" in r["data"]]
    assert [json.loads(r["data"]).get("template") for r in said].count("follow_up") == 1
