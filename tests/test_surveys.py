"""Satisfaction surveys end to end on every channel, against the real PostgreSQL and Redis:
the webhooks and sockets drive the contacts, the report reads the figures back."""

from __future__ import annotations

import asyncio
import json
import shutil
import textwrap
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from service.appkeys import EVENTS
from service.conversations import prompts
from service.reporting import reports
from service.rules.surveys import load_surveys, sampled
from service.rules.yamlfile import ConfigError
from tests.conftest import PUBLIC_URL, ROOT, _clean_tables, with_settings
from tests.test_agents import ALL_SKILLS, instance, login
from tests.test_whatsapp import whatsapp
from tests.twilio_driver import SERVICE_NUMBER, Call, text
from tests.twilio_standin import start_standin

CUSTOMER = "+15555550123"
CSAT_TEXT = prompts.survey_question("csat", "text")
NPS_TEXT = prompts.survey_question("nps", "text")
RESOLVED = [prompts.RESOLVED_THEN_SURVEY]


def rules_with(tmp_path: Path, surveys: str) -> Path:
    """The shipped rules plus this surveys.yaml."""
    directory = tmp_path / "rules"
    shutil.copytree(ROOT / "routing_rules", directory, ignore=shutil.ignore_patterns("bank"),
                    dirs_exist_ok=True)
    (directory / "surveys.yaml").write_text(textwrap.dedent(surveys))
    return directory


CSAT_ALWAYS = """
    default:
      kind: csat
      once_per_days: 0
"""


@pytest.fixture
async def twilio():
    standin, server = await start_standin()
    yield standin, str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture
def surveyed(settings, tmp_path, twilio, redis_client):
    """A service on the shipped rules plus the surveys.yaml given."""
    async def start(surveys: str = CSAT_ALWAYS):
        await _clean_tables(settings.database_url)
        return instance(with_settings(
            settings, rules_dir=rules_with(tmp_path, surveys), twilio_api_base_url=twilio[1],
            twilio_account_sid="AC" + "1" * 32, offer_timeout_s=30,
            chat_identity_secret="host-site-secret"))
    return start


async def events(client, db, *kinds: str) -> list[dict]:
    assert await client.app[EVENTS].flush()
    rows = await db.fetch("SELECT kind, contact_id, data FROM contact_events "
                          "WHERE kind = ANY($1::text[]) ORDER BY occurred_at, seq", list(kinds))
    return [dict(r, data=json.loads(r["data"])) for r in rows]


async def totals(client, db) -> dict:
    assert await client.app[EVENTS].flush()
    window = reports.Window(datetime.now(timezone.utc) - timedelta(hours=1),
                            datetime.now(timezone.utc) + timedelta(hours=1))
    return (await reports.summary(db, window, reports.ReportRules()))["totals"]


async def resolve_by_sms(client, phone: str = CUSTOMER,
                         asked: str = "I need to track my order") -> list[str]:
    """A question answered in self-service and said to have helped; the reply to that."""
    assert (await text(client, phone, asked))[-1] == "Did that help? Reply YES or NO."
    return await text(client, phone, "yes")


async def survey_key(redis_client, phone: str = CUSTOMER, channel: str = "sms") -> dict | None:
    raw = await redis_client.get(f"sb:{{phone:{phone}}}:survey:{channel}")
    return json.loads(raw) if raw else None


# ---- SMS and WhatsApp ---------------------------------------------------------------------

async def test_sms_answer_4_gives_csat_4_and_opens_no_contact(surveyed, db, redis_client):
    async with await surveyed() as client:
        assert await resolve_by_sms(client) == RESOLVED + [CSAT_TEXT]
        assert await text(client, CUSTOMER, "4 quick and easy, card 4111 1111 1111 1111") == \
            ["Thank you for your feedback!"]
        assert await survey_key(redis_client) is None
        [sent, answered] = await events(client, db, "survey_sent", "survey_answered")
        assert sent["data"] == {"kind": "csat", "after": "self_service"}
        assert answered["contact_id"] == sent["contact_id"]
        assert answered["data"]["score"] == 4
        assert answered["data"]["comment"] == "quick and easy, card **** **** **** 1111"
        figures = await totals(client, db)
        assert (figures["contacts"], figures["surveys_sent"], figures["survey_responses"],
                figures["csat"], figures["nps"]) == (1, 1, 1, 4.0, None)
        assert figures["false_deflections"] == 0
        # the answer was no contact: the next text is a contact's first message
        assert (await text(client, CUSTOMER, "I want to change my address"))[-1] == \
            "Did that help? Reply YES or NO."
        assert (await totals(client, db))["contacts"] == 2


async def test_the_cli_report_and_csv_show_the_survey_figures(surveyed, db):
    from service.reporting.cli import report_csv, report_table
    async with await surveyed() as client:
        await resolve_by_sms(client)
        await text(client, CUSTOMER, "4")
        assert await client.app[EVENTS].flush()
        now = datetime.now(timezone.utc)
        report = await reports.summary(db, reports.Window(now - timedelta(hours=1), now),
                                       reports.ReportRules())
        table = report_table(report).splitlines()
        header = table.index(next(line for line in table if line.startswith("satisfaction")))
        assert table[header].split()[2:] == ["surveys", "responses", "resp_rate", "csat", "nps"]
        assert table[header + 1].split() == ["total", "1", "1", "100.0%", "4.00", "-"]
        rows = report_csv(report).splitlines()
        columns = rows[0].split(",")
        total = dict(zip(columns, rows[1].split(",")))
        assert (total["surveys_sent"], total["survey_responses"], total["csat"], total["nps"]) \
            == ("1", "1", "4.0", "")


async def test_a_survey_answer_costs_two_redis_round_trips(surveyed, monkeypatch):
    from service.appkeys import REDIS_BATCH
    async with await surveyed() as client:
        await resolve_by_sms(client)
        batcher, sent = client.app[REDIS_BATCH], []
        execute = batcher.execute

        async def counted(*commands, **options):
            if any(CUSTOMER in str(arg) for c in commands for arg in c):
                sent.append(commands)
            return await execute(*commands, **options)

        monkeypatch.setattr(batcher, "execute", counted)
        assert await text(client, CUSTOMER, "5") == ["Thank you for your feedback!"]
        assert len(sent) == 2  # read (the survey with the rest), then write


async def test_nps_answers_9_and_3_give_nps_0(surveyed, db):
    async with await surveyed("""
        default: {kind: csat, once_per_days: 0}
        contact_types:
          track_order: {kind: nps}
    """) as client:
        for phone, score in (("+15555550201", "9"), ("+15555550202", "3")):
            assert await resolve_by_sms(client, phone) == RESOLVED + [NPS_TEXT]
            assert await text(client, phone, score) == ["Thank you for your feedback!"]
        figures = await totals(client, db)
        assert (figures["survey_responses"], figures["nps"], figures["csat"]) == (2, 0.0, None)
        assert (figures["nps_promoters"], figures["nps_detractors"]) == (1, 1)


async def test_a_malformed_answer_is_reprompted_once_then_a_valid_one_counts(surveyed, db):
    async with await surveyed() as client:
        await resolve_by_sms(client)
        assert await text(client, CUSTOMER, "it was fine") == \
            [prompts.survey_again("csat", "text")]
        assert await text(client, CUSTOMER, "5") == ["Thank you for your feedback!"]
        found = await events(client, db, "survey_answer_rejected", "survey_answered")
        assert [(e["kind"], e["data"].get("score")) for e in found] == \
            [("survey_answer_rejected", None), ("survey_answered", 5)]
        figures = await totals(client, db)
        assert (figures["survey_responses"], figures["csat"], figures["contacts"]) == (1, 5.0, 1)


async def test_two_malformed_answers_let_the_survey_go_and_are_no_response(surveyed, db):
    async with await surveyed() as client:
        await resolve_by_sms(client)
        assert await text(client, CUSTOMER, "hmm") == [prompts.survey_again("csat", "text")]
        assert await text(client, CUSTOMER, "7") == [prompts.SURVEY_LET_GO["text"]]
        [closed] = await events(client, db, "survey_closed")
        assert closed["data"] == {"reason": "invalid"}
        figures = await totals(client, db)
        assert (figures["surveys_sent"], figures["survey_responses"], figures["csat"],
                figures["contacts"]) == (1, 0, None, 1)


async def test_help_is_answered_even_while_a_survey_waits(surveyed, db):
    async with await surveyed() as client:
        await resolve_by_sms(client)
        assert await text(client, CUSTOMER, "HELP") == [prompts.SMS_HELP]
        [closed] = await events(client, db, "survey_closed")
        assert closed["data"] == {"reason": "new_contact"}


async def test_a_late_answer_is_thanked_and_not_counted(surveyed, db, redis_client):
    async with await surveyed() as client:
        await resolve_by_sms(client)
        waiting = await survey_key(redis_client)
        assert waiting["due_at"] - waiting["sent_at"] == 3600  # the default: an hour
        waiting["due_at"] = time.time() - 1  # the hour has passed
        await redis_client.set(f"sb:{{phone:{CUSTOMER}}}:survey:sms", json.dumps(waiting))
        assert await text(client, CUSTOMER, "5 thanks") == [prompts.SURVEY_LATE["text"]]
        [late] = await events(client, db, "survey_late")
        assert (late["data"]["score"], late["data"]["comment"]) == (5, "thanks")
        figures = await totals(client, db)
        assert (figures["surveys_sent"], figures["survey_responses"], figures["csat"]) == \
            (1, 0, None)


async def test_an_unanswered_survey_is_not_a_response(surveyed, db):
    async with await surveyed() as client:
        await resolve_by_sms(client)
        figures = await totals(client, db)
        assert (figures["surveys_sent"], figures["survey_responses"],
                figures["survey_response_rate"], figures["csat"]) == (1, 0, 0.0, None)


async def test_a_message_that_is_clearly_no_answer_starts_a_contact(surveyed, db, redis_client):
    async with await surveyed() as client:
        await resolve_by_sms(client)
        reply = await text(client, CUSTOMER, "I want to change my delivery address")
        assert reply[-1] == "Did that help? Reply YES or NO."
        assert await survey_key(redis_client) is None
        [closed] = await events(client, db, "survey_closed")
        assert closed["data"] == {"reason": "new_contact"}
        started = await events(client, db, "contact_started", "received")
        assert [e["kind"] for e in started][-2:] == ["contact_started", "received"]
        assert started[-1]["data"]["text"] == "I want to change my delivery address"
        assert (await totals(client, db))["contacts"] == 2


async def test_whatsapp_answer(surveyed, db):
    async with await surveyed() as client:
        assert (await whatsapp(client, "I need to track my order"))[-1] == \
            "Did that help? Reply YES or NO."
        assert await whatsapp(client, "yes") == RESOLVED + [CSAT_TEXT]
        assert await whatsapp(client, "3") == ["Thank you for your feedback!"]
        [answered] = await events(client, db, "survey_answered")
        assert answered["data"]["score"] == 3
        assert (await totals(client, db))["csat"] == 3.0


# ---- sampling, once per N days, STOP ------------------------------------------------------

def test_sampling_is_a_stable_hash_of_the_contact_id():
    ids = [str(uuid.UUID(int=n)) for n in range(2000)]
    half = [i for i in ids if sampled(i, 0.5)]
    assert 900 < len(half) < 1100
    assert half == [i for i in ids if sampled(i, 0.5)]  # the same every time
    assert all(sampled(i, 1.0) for i in ids) and not any(sampled(i, 0.0) for i in ids)
    assert set(i for i in ids if sampled(i, 0.2)) <= set(half)  # a lower rate, a subset


async def test_the_sample_rate_surveys_exactly_the_sampled_contacts(surveyed, db):
    async with await surveyed("""
        default: {kind: csat, sample_rate: 0.5, once_per_days: 0}
    """) as client:
        phones = [f"+1555555{n:04d}" for n in range(12)]
        for phone in phones:
            await resolve_by_sms(client, phone)
        assert await client.app[EVENTS].flush()
        resolved = {str(r["contact_id"]) for r in await db.fetch(
            "SELECT contact_id FROM contact_events WHERE kind = 'self_service_resolved'")}
        sent = {str(e["contact_id"]) for e in await events(client, db, "survey_sent")}
        assert len(resolved) == 12
        assert sent == {c for c in resolved if sampled(c, 0.5)}


async def test_a_customer_is_surveyed_at_most_once_in_n_days(surveyed, db, redis_client):
    async with await surveyed("""
        default: {kind: csat, once_per_days: 30}
    """) as client:
        assert await resolve_by_sms(client) == RESOLVED + [CSAT_TEXT]
        assert await text(client, CUSTOMER, "5") == ["Thank you for your feedback!"]
        asked_already = await resolve_by_sms(client, asked="I want to cancel my order")
        assert asked_already == [prompts.RESOLVED["text"]]
        key = f"sb:{{phone:{CUSTOMER}}}:surveyed"
        await redis_client.set(key, time.time() - 31 * 86400)  # 31 days later
        assert await resolve_by_sms(client, asked="how do I get a refund") == \
            RESOLVED + [CSAT_TEXT]
        assert len(await events(client, db, "survey_sent")) == 2


async def test_never_after_stop(surveyed, db, redis_client):
    async with await surveyed() as client:
        await resolve_by_sms(client)
        assert await text(client, CUSTOMER, "STOP") == []
        assert await survey_key(redis_client) is None
        [closed] = await events(client, db, "survey_closed")
        assert closed["data"] == {"reason": "opted_out"}
        assert await text(client, CUSTOMER, "5") == []  # opted out: never answered
        assert await text(client, CUSTOMER, "START") == [prompts.SMS_RESUBSCRIBED]
        assert await events(client, db, "survey_answered", "survey_late") == []
        assert (await totals(client, db))["survey_responses"] == 0


# ---- agents -------------------------------------------------------------------------------

async def test_sms_survey_after_the_agent_wraps_up(surveyed, db, twilio):
    standin, _ = twilio
    async with await surveyed() as client:
        agent = await login(client, db, skills=ALL_SKILLS)
        await text(client, CUSTOMER, "I need to talk to a person")
        offer = await agent.next("offer")
        await agent.send(type="accept", contact_id=offer["contact_id"])
        await agent.next("assigned")
        await agent.send(type="wrap_up", contact_id=offer["contact_id"], resolved=True)
        await agent.next("wrapped_up")
        sent = dict(standin.messages[-1])
        assert sent.pop("StatusCallback").startswith(f"{PUBLIC_URL}/twilio/sms/status")
        assert sent == {"To": CUSTOMER, "From": SERVICE_NUMBER, "Body": CSAT_TEXT}
        assert await text(client, CUSTOMER, "2 took a while") == ["Thank you for your feedback!"]
        [sent, answered] = await events(client, db, "survey_sent", "survey_answered")
        assert sent["data"]["after"] == "agent"
        replies = [e["data"]["messages"] for e in await events(client, db, "replied")
                   if str(e["contact_id"]) == offer["contact_id"]]
        assert replies[-2:] == [[CSAT_TEXT], ["Thank you for your feedback!"]]  # as read
        assert str(sent["contact_id"]) == offer["contact_id"] == str(answered["contact_id"])
        window = reports.Window(datetime.now(timezone.utc) - timedelta(hours=1),
                                datetime.now(timezone.utc) + timedelta(hours=1))
        [cell] = (await reports.matrix(db, window, reports.ReportRules()))["rows"]
        assert cell["by_handling"]["agent"]["csat"] == 2.0
        assert cell["by_handling"]["self_service"]["surveys_sent"] == 0


async def test_no_survey_after_an_agent_for_a_customer_who_sent_stop(surveyed, db, twilio):
    standin, _ = twilio
    async with await surveyed() as client:
        agent = await login(client, db, skills=ALL_SKILLS)
        await text(client, CUSTOMER, "I need to talk to a person")
        offer = await agent.next("offer")
        assert await text(client, CUSTOMER, "STOP") == []  # while queued: still offered
        await agent.send(type="accept", contact_id=offer["contact_id"])
        await agent.next("assigned")
        await agent.send(type="wrap_up", contact_id=offer["contact_id"], resolved=True)
        await agent.next("wrapped_up")
        await asyncio.sleep(0.1)
        assert CSAT_TEXT not in [m["Body"] for m in standin.messages]
        assert await events(client, db, "survey_sent") == []


async def test_no_survey_after_an_agent_when_the_rule_says_self_service_only(surveyed, db,
                                                                            twilio):
    standin, _ = twilio
    async with await surveyed("""
        default: {kind: csat, once_per_days: 0, after: [self_service]}
    """) as client:
        agent = await login(client, db, skills=ALL_SKILLS)
        await text(client, CUSTOMER, "I need to talk to a person")
        offer = await agent.next("offer")
        await agent.send(type="accept", contact_id=offer["contact_id"])
        await agent.next("assigned")
        await agent.send(type="wrap_up", contact_id=offer["contact_id"], resolved=True)
        await agent.next("wrapped_up")
        await asyncio.sleep(0.1)
        assert [m["Body"] for m in standin.messages] == ["You're now talking with Dana."]
        assert await events(client, db, "survey_sent") == []


# ---- voice --------------------------------------------------------------------------------

async def test_voice_keypad_survey_before_hanging_up(surveyed, db):
    async with await surveyed() as client:
        call = await Call(client, "+15555550188").dial()
        await call.press("1")  # track an order
        await call.press("1")  # yes, it helped
        assert call.said() == [prompts.RESOLVED_THEN_SURVEY, prompts.survey_question("csat",
                                                                                    "keys")]
        gather = call.twiml.find("Gather")
        assert gather.get("numDigits") == "1"
        await call.press("4")
        assert call.said() == [prompts.SURVEY_THANKS["keys"]]
        assert call.verbs() == ["Say", "Hangup"]
        await call.hang_up()
        [answered] = await events(client, db, "survey_answered")
        assert (answered["data"]["score"], answered["data"]["input"]) == (4, "digits")
        figures = await totals(client, db)
        assert (figures["contacts"], figures["csat"], figures["voice_contained"]) == (1, 4.0, 1)


async def test_voice_nps_takes_two_keys_and_silence_lets_the_caller_go(surveyed, db):
    async with await surveyed("""
        default: {kind: nps, once_per_days: 0}
    """) as client:
        call = await Call(client, "+15555550188").dial()
        await call.press("1")
        await call.press("1")
        assert call.twiml.find("Gather").get("finishOnKey") == "#"
        await call.press("10")
        assert call.said() == [prompts.SURVEY_THANKS["keys"]]
        other = await Call(client, "+15555550189").dial()
        await other.press("1")
        await other.press("1")
        await other.stay_silent()
        assert other.said() == [prompts.SURVEY_LET_GO["keys"]]
        assert other.verbs() == ["Say", "Hangup"]
        figures = await totals(client, db)
        assert (figures["surveys_sent"], figures["survey_responses"], figures["nps"]) == \
            (2, 1, 100.0)


# ---- rules --------------------------------------------------------------------------------

def test_surveys_yaml_is_checked_with_file_and_line(tmp_path):
    (tmp_path / "surveys.yaml").write_text(textwrap.dedent("""\
        default:
          kind: stars
          sample_rate: 1.5
          once_per_days: -1
          answer_within_min: 0
          after: [whenever]
          colour: blue
        contact_types:
          no_such_type: {kind: nps}
          track_order:
            enabled: maybe
    """))
    with pytest.raises(ConfigError) as raised:
        load_surveys(tmp_path, "rules", {"track_order"})
    assert str(raised.value).splitlines() == [
        "rules/surveys.yaml:2: kind must be one of csat, nps, not 'stars' (default -> kind)",
        "rules/surveys.yaml:3: sample_rate must be a number from 0 to 1, not 1.5 "
        "(default -> sample_rate)",
        "rules/surveys.yaml:4: once_per_days must be a whole number of at least 0, not -1 "
        "(default -> once_per_days)",
        "rules/surveys.yaml:5: answer_within_min must be a whole number of at least 1, not 0 "
        "(default -> answer_within_min)",
        "rules/surveys.yaml:6: after must list one or both of self_service, agent, not "
        "['whenever'] (default -> after)",
        "rules/surveys.yaml:7: unknown key 'colour' (default -> colour)",
        "rules/surveys.yaml:9: unknown contact type 'no_such_type' "
        "(contact_types -> no_such_type)",
        "rules/surveys.yaml:11: enabled must be true or false, not 'maybe' "
        "(contact_types -> track_order -> enabled)",
    ]


def test_a_type_overrides_the_default_key_by_key(tmp_path):
    (tmp_path / "surveys.yaml").write_text(textwrap.dedent("""\
        default: {kind: csat, sample_rate: 0.25, question: "How did we do?"}
        contact_types:
          track_order: {kind: nps}
          payment_issue: {enabled: false}
    """))
    rules = load_surveys(tmp_path, "rules", {"track_order", "payment_issue", "cancel_order"})
    track = rules.rule_for("track_order", "agent")
    assert (track.kind, track.sample_rate, track.question) == ("nps", 0.25, "How did we do?")
    assert rules.rule_for("payment_issue", "self_service") is None
    assert rules.rule_for("cancel_order", "self_service").kind == "csat"
    assert rules.rule_for(None, "agent").kind == "csat"
    assert load_surveys(tmp_path / "missing", "rules", set()).rule_for("x", "agent") is None
