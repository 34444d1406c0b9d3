"""Card numbers, the codes after them and configured patterns never land anywhere: Redis, the
event log and its spool, logs, the agent's offer; a look-up in a flow still gets the value."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from service.__main__ import main
from service.appkeys import EVENTS
from service.conversations.redaction import Redactor, luhn_valid
from service.rules.loader import load_rules
from tests.conftest import service_logs, service_with_rules, with_settings
from tests.test_agents import login, open_chat
from tests.twilio_driver import Call, text

ROOT = Path(__file__).resolve().parent.parent
SMS_CUSTOMER, CALLER = "+15555550171", "+15555550172"
REDACTION_YAML = "patterns:\n  member_id: 'M-\\d{6}'\n"
# Raw values typed below, and every way they could be spelled where they land.
SECRETS = ("4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111",
           "5500005555555559", "4012888888881881", "code 737", "cvv 9876", "M-123456")
ORDER_NUMBER = "1234567890123"  # 13 digits that fail the Luhn check: not a card


@pytest.fixture
def rules_dir(tmp_path) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "routing_rules", rules)
    (rules / "redaction.yaml").write_text(REDACTION_YAML)
    return rules


@pytest.fixture
def logs(capsys):
    """The service's own log output (JSON, debug level)."""
    with service_logs(capsys, "debug") as read:
        yield read


async def redis_dump(redis_client) -> str:
    """Every key and every value in Redis, whatever its type."""
    found = []
    async for key in redis_client.scan_iter(count=500):
        kind = (await redis_client.type(key)).decode()
        reads = {"string": redis_client.get, "hash": redis_client.hgetall,
                 "list": lambda k: redis_client.lrange(k, 0, -1),
                 "set": redis_client.smembers,
                 "zset": lambda k: redis_client.zrange(k, 0, -1, withscores=True),
                 "stream": lambda k: redis_client.xrange(k)}
        found.append(f"{key!r} {await reads[kind](key)!r}")
    return "\n".join(found)


async def database_dump(db) -> str:
    """Every row of every table, as text."""
    tables = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    rows = []
    for table in tables:
        rows += [r[0] for r in await db.fetch(f'SELECT t::text FROM "{table[0]}" t')]
    return "\n".join(rows)


def spool_dump(data_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in data_dir.rglob("*") if p.is_file())


def assert_nowhere(place: str, dump: str) -> None:
    leaked = [s for s in SECRETS if s in dump]
    assert not leaked, f"{leaked} found in {place}"


async def test_cards_codes_and_patterns_are_masked_on_every_channel(
        settings, redis_client, db, rules_dir, logs):
    async with service_with_rules(settings, rules_dir) as client:
        agent = await login(client, db)
        await text(client, SMS_CUSTOMER, f"card 4111 1111 1111 1111 code 737, member M-123456, "
                                          f"order {ORDER_NUMBER}")
        await text(client, SMS_CUSTOMER, "I want to talk to a human")
        sms_offer = await agent.next("offer")

        call = await Call(client, CALLER).dial()
        await call.speak("my card is 5500-0055-5555-5559 cvv 9876")
        await call.press("4012888888881881")  # two misses: the caller is queued
        assert "Enqueue" in call.verbs()
        voice_offer = await agent.next("offer")

        chat, _ = await open_chat(client)
        await chat.next("message")
        await chat.send(type="message", text="pay with 4111-1111-1111-1111 code 737")
        await chat.next("message")
        await chat.send(type="message", text="agent please")
        chat_offer = await agent.next("offer")
        await agent.send(type="accept", contact_id=chat_offer["contact_id"])
        await agent.next("assigned")
        await chat.send(type="message", text="it is 5500 0055 5555 5559 and code 737")
        assert (await agent.next("message"))["text"] == "it is **** **** **** 5559 and code ***"
        assert await client.app[EVENTS].flush()

        said = {o["channel"]: [m["text"] for m in o["context"]["transcript"]
                               if m["from"] == "customer"]
                for o in (sms_offer, voice_offer, chat_offer)}
        assert said["sms"][0] == ("card **** **** **** 1111 code ***, member [member_id], "
                                  f"order {ORDER_NUMBER}")
        assert said["voice"][:2] == ["my card is ****-****-****-5559 cvv ****",
                                     "[pressed ************1881]"]
        assert said["chat"][0] == "pay with ****-****-****-1111 code ***"
        assert_nowhere("the agent's offers", json.dumps([sms_offer, voice_offer, chat_offer]))
        redis = await redis_dump(redis_client)
        assert ORDER_NUMBER in redis and "**** **** **** 1111" in redis  # the search sees text
        assert_nowhere("Redis", redis)
        events = await database_dump(db)
        assert ORDER_NUMBER in events and "[member_id]" in events
        assert_nowhere("PostgreSQL", events)
        assert_nowhere("the event spool", spool_dump(settings.data_dir))
    output = logs()
    assert "turn" in output or "agent" in output  # the service did log while we watched
    assert_nowhere("the logs", output)


async def test_a_failed_turn_keeps_the_words_masked(settings, db, rules_dir):
    """Redis down: the customer's words are kept in turn_failed, masked like any other."""
    broken = with_settings(settings, redis_url="redis://127.0.0.1:1/0")
    async with service_with_rules(broken, rules_dir) as client:
        await text(client, SMS_CUSTOMER, "card 4111 1111 1111 1111 code 737")
        assert await client.app[EVENTS].flush()
    row = await db.fetchrow("SELECT kind, data FROM contact_events")
    assert (row["kind"], json.loads(row["data"])["text"]) == (
        "turn_failed", "card **** **** **** 1111 code ***")
    assert_nowhere("the spool", spool_dump(settings.data_dir))


async def test_a_flow_looks_up_the_card_as_typed_and_keeps_only_the_mask(
        settings, redis_client, db, rules_dir):
    asked: list[str] = []

    async def balance(request: web.Request) -> web.Response:
        asked.append(request.match_info["card"])
        return web.json_response({"balance": "12.50"})

    app = web.Application()
    app.router.add_get("/cards/{card}", balance)
    async with TestServer(app) as server:
        _with_gift_card_flow(rules_dir, str(server.make_url("")).rstrip("/"))
        async with service_with_rules(settings, rules_dir) as client:
            assert await text(client, SMS_CUSTOMER, "I need to track my order") == [
                "Your gift card number?"]
            assert (await text(client, SMS_CUSTOMER, "4111 1111 1111 1111"))[0] == \
                "Card ************1111 has 12.50 left."
            assert asked == ["4111111111111111"]
            assert await client.app[EVENTS].flush()
            assert "************1111" in await redis_dump(redis_client)
            assert_nowhere("Redis", await redis_dump(redis_client))
            assert_nowhere("PostgreSQL", await database_dump(db))


def _with_gift_card_flow(rules: Path, url: str) -> None:
    flows = (rules / "flows.yaml").read_text().replace("flows:\n", (
        "flows:\n  gift_card:\n    steps:\n      - ask: Your gift card number?\n"
        "        save: card\n        expect: '\\d{13,19}'\n      - lookup: cards\n"
        "        save: result\n      - say: Card {card} has {result.balance} left.\n"), 1)
    (rules / "flows.yaml").write_text(f"lookups:\n  cards:\n    url: {url}/cards/{{card}}\n"
                                      + flows)
    catalog = (rules / "catalog.yaml").read_text()
    start = catalog.index("  track_order:")
    answer, examples = catalog.index("    self_service:", start), catalog.index("    examples:",
                                                                               start)
    (rules / "catalog.yaml").write_text(catalog[:answer] + "    self_service:\n      flow: "
                                        "gift_card\n" + catalog[examples:])


@pytest.mark.parametrize("text, masked", [
    ("4111111111111111", "************1111"),
    ("4111 1111 1111 1111 123", "**** **** **** 1111 ***"),
    ("4111 1111 1111 1111 714", "**** **** **** 1111 ***"),  # 19 digits pass Luhn: still a code
    ("3782 822463 10005 exp 12/27 cvc 1234", "**** ****** *0005 exp 12/27 cvc ****"),
    ("order 1234567890123 and 456", "order 1234567890123 and 456"),  # not Luhn: no card
    ("call 555 then 4012888888881881", "call 555 then ************1881"),  # codes come after
    ("4111111111111111111111", "4111111111111111111111"),  # 22 digits: no card
])
def test_what_counts_as_a_card_and_a_code(text, masked):
    assert Redactor().mask(text) == masked


def test_luhn():
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")


def test_card_masking_can_be_turned_off_and_patterns_are_named(rules_dir):
    (rules_dir / "redaction.yaml").write_text("card_numbers: false\n" + REDACTION_YAML)
    redactor = load_rules(rules_dir, with_classifier=False).redactor
    assert redactor.mask("4111111111111111 M-123456") == "4111111111111111 [member_id]"
    assert load_rules(ROOT / "routing_rules", with_classifier=False).redactor.mask(
        "4111111111111111") == "************1111"  # on by default, without a redaction.yaml


@pytest.mark.parametrize("yaml, message", [
    ("patterns:\n  member_id: 'M-(\\d{6}'\n  ok: 'x'\n  bad: '[a'\n",
     ["redaction.yaml:2: not a valid regular expression: missing ), unterminated subpattern",
      "redaction.yaml:4: not a valid regular expression: unterminated character set"]),
    ("card_numbers: yes please\n", ["redaction.yaml:1: card_numbers must be true or false"]),
    ("patterns:\n  Member: 'M'\n", ["redaction.yaml:2: pattern names are lower_snake_case"]),
    ("patterns:\n  anything: '.*'\n", ["redaction.yaml:2: the pattern matches empty text"]),
    ("pattern:\n  a: 'b'\n", ["redaction.yaml:1: unknown key 'pattern'"]),
])
def test_bad_redaction_config_names_file_and_line(rules_dir, capsys, yaml, message):
    (rules_dir / "redaction.yaml").write_text(yaml)
    assert main(["rules", "check", str(rules_dir)]) != 0
    err = capsys.readouterr().err.replace(f"{rules_dir}/", "")
    for expected in message:
        assert expected.split(": ", 1)[0] in err and expected.split(": ", 1)[1] in err, err
