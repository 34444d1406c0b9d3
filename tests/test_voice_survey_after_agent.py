"""The survey after an agent on a phone call, through the signed voice webhooks and the
Twilio stand-in: the agent's leg ends with the caller still on the line, the agent wraps up
while both are on it, or the caller hung up first (nobody is asked). Answers are survey events
like on every other channel, and the reports count them under the agent's handling.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from service.conversations import prompts
from service.reporting import reports
from tests.conftest import PUBLIC_URL
from tests.test_agents import ALL_SKILLS, login
from tests.test_surveys import events, surveyed, totals, twilio  # noqa: F401 (fixtures)
from tests.twilio_driver import Call, post_signed

CALLER = "+15555550177"
QUESTION = prompts.survey_question("csat", "keys")
AFTER_AGENT = f"{PUBLIC_URL}/twilio/voice/after-agent"


async def connected_call(client, db, standin):
    """A caller who asked for a person, accepted by an agent and bridged into the contact's
    conference; the agent, the call, the contact id and where the agent's leg is reported."""
    agent = await login(client, db, skills=ALL_SKILLS)
    call = await Call(client, CALLER).dial()
    await call.press("0")
    offer = await agent.next("offer")
    await agent.send(type="accept", contact_id=offer["contact_id"])
    await agent.next("assigned")
    await call.leave_queue("redirected")  # the REST update took it into the conference
    [added] = [p for p in standin.participants if p["action"] == "create"]
    assert added["ConferenceStatusCallbackEvent"] == "join leave"
    assert added["ConferenceStatusCallback"].startswith(
        f"{PUBLIC_URL}/twilio/voice/conference-status?call={call.sid}&")
    return agent, call, offer["contact_id"], added


async def agent_leg_ends(client, standin, contact: str, added: dict) -> None:
    """Twilio reports the agent's participant leaving the contact's conference (twice: a
    retried callback changes nothing)."""
    left = {"ConferenceSid": standin.conferences[f"contact-{contact}"],
            "FriendlyName": f"contact-{contact}", "StatusCallbackEvent": "participant-leave",
            "ParticipantLabel": added["Label"], "CallSid": added["participant"],
            "AccountSid": "AC" + "0" * 32}
    path = added["ConferenceStatusCallback"].removeprefix(PUBLIC_URL)
    for _ in range(2):
        response = await post_signed(client, path, left)
        assert response.status == 200 and "<Response" in await response.text()


def redirects(standin) -> list[dict]:
    return [u for u in standin.call_updates if "Url" in u]


async def wrap_up(agent, contact: str) -> None:
    await agent.send(type="wrap_up", contact_id=contact, resolved=True)
    await agent.next("wrapped_up")


async def test_agent_hangs_up_and_the_caller_hears_the_survey(surveyed, db, twilio):
    standin, _ = twilio
    async with await surveyed() as client:
        agent, call, contact, added = await connected_call(client, db, standin)
        await agent_leg_ends(client, standin, contact, added)
        [moved] = redirects(standin)
        assert (moved["call_sid"], moved["Url"], moved["Method"]) == \
            (call.sid, AFTER_AGENT, "POST")
        await call._post("/twilio/voice/after-agent")  # Twilio fetches the call's new TwiML
        assert call.said() == [QUESTION]
        assert call.twiml.find("Gather").get("numDigits") == "1"
        again = call.raw
        await call._post("/twilio/voice/after-agent")  # a retried fetch: the same question
        assert call.raw == again
        await call.press("4")
        assert call.said() == [prompts.SURVEY_THANKS["keys"]]
        assert call.verbs() == ["Say", "Hangup"]
        await call.hang_up()
        await wrap_up(agent, contact)  # the agent's wrap-up asks nothing more
        assert len(redirects(standin)) == 1
        [sent] = await events(client, db, "survey_sent")
        [answered] = await events(client, db, "survey_answered")
        assert str(sent["contact_id"]) == str(answered["contact_id"]) == contact
        assert sent["data"] == {"kind": "csat", "after": "agent"}
        assert (answered["data"]["score"], answered["data"]["input"]) == (4, "digits")
        figures = await totals(client, db)
        assert (figures["surveys_sent"], figures["survey_responses"], figures["csat"]) == \
            (1, 1, 4.0)
        now = datetime.now(timezone.utc)
        matrix = await reports.matrix(db, reports.Window(now - timedelta(hours=1),
                                                         now + timedelta(hours=1)),
                                      reports.ReportRules())
        [cell] = [c for c in matrix["rows"] if c["channel"] == "voice"]
        assert cell["by_handling"]["agent"]["csat"] == 4.0
        assert cell["by_handling"]["agent"]["surveys_sent"] == 1


async def test_agent_wraps_up_first_and_the_caller_is_moved_to_the_survey(surveyed, db,
                                                                          twilio):
    standin, _ = twilio
    async with await surveyed() as client:
        agent, call, contact, added = await connected_call(client, db, standin)
        await wrap_up(agent, contact)  # while both are still on the line
        [moved] = redirects(standin)
        assert (moved["call_sid"], moved["Url"]) == (call.sid, AFTER_AGENT)
        await call._post("/twilio/voice/after-agent")
        assert call.said() == [QUESTION]
        # the caller left the conference, which ended it; the agent's leg is reported gone
        standin.ended.add(standin.conferences[f"contact-{contact}"])
        await agent_leg_ends(client, standin, contact, added)
        await call.stay_silent()  # no key pressed: let go politely
        assert call.said() == [prompts.SURVEY_LET_GO["keys"]]
        await call.hang_up()
        assert len(redirects(standin)) == 1
        assert [e["data"]["after"] for e in await events(client, db, "survey_sent")] == ["agent"]
        [closed] = await events(client, db, "survey_closed")
        assert closed["data"]["reason"] == "no_input"
        figures = await totals(client, db)
        assert (figures["surveys_sent"], figures["survey_responses"]) == (1, 0)


async def test_nobody_is_asked_when_the_caller_hung_up_first(surveyed, db, twilio):
    standin, _ = twilio
    async with await surveyed() as client:
        agent, call, contact, added = await connected_call(client, db, standin)
        await call.hang_up()
        standin.ended.add(standin.conferences[f"contact-{contact}"])
        await agent_leg_ends(client, standin, contact, added)
        await wrap_up(agent, contact)
        assert redirects(standin) == []
        assert await events(client, db, "survey_sent", "delivery_failed") == []


async def test_an_agent_leaving_without_a_survey_rule_says_goodbye(surveyed, db, twilio):
    standin, _ = twilio
    async with await surveyed("""
        default: {kind: csat, once_per_days: 0, after: [self_service]}
    """) as client:
        agent, call, contact, added = await connected_call(client, db, standin)
        await agent_leg_ends(client, standin, contact, added)
        assert len(redirects(standin)) == 1
        await call._post("/twilio/voice/after-agent")
        assert call.said() == [prompts.AFTER_AGENT_GOODBYE]
        assert call.verbs() == ["Say", "Hangup"]
        await call.hang_up()
        await wrap_up(agent, contact)
        assert len(redirects(standin)) == 1
        assert await events(client, db, "survey_sent") == []
