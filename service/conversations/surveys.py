"""Satisfaction surveys (CSAT 1-5, NPS 0-10) after a contact ends, on every channel.

A contact resolved in self-service is asked in the same reply (a text, a rating in the chat
widget, a keypad question before the call hangs up); one an agent wrapped up is asked through
the channel's outbound side (a text, a survey frame in the widget; a call with the caller
still on the line is moved to the survey's keypad question). A call whose agent leaves while
the caller stays on is asked then (`agent_left` in the orchestrator), not again at wrap-up.
Which survey, how often and for whom is `rules.surveys`
(surveys.yaml). The question waits in Redis under the customer's address and channel; the
next message there is read as its answer before it can open a contact:

    a number on the scale (a comment may follow)  -> survey_answered, thanked
    the same after the answer window              -> survey_late, thanked, not a response
    something the classifier understands, AGENT   -> survey_closed (new_contact), a contact opens
    anything else                                 -> one reprompt, then survey_closed (invalid)

A contact opening on the address, or STOP, closes a waiting survey; an unanswered survey is
simply never answered (reports count responses, not silences).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import structlog

from service.conversations import prompts
from service.conversations.context import address_of, identities_of, survey_key, surveyed_key
from service.conversations.record import Conversation, contact_state
from service.infra.redis_batch import Command, json_value
from service.model import ChannelTraits, Choice, Inbound, PromptStyle, Reply
from service.reporting.events import Event
from service.rules.loader import Rules
from service.understanding.understand import understand

log = structlog.get_logger(__name__)

LATE_KEPT_S = 86400  # how long after its window a late answer is still recognised
SURVEYED_KEPT_S = 400 * 86400  # longer than any sensible once_per_days
MAX_COMMENT_CHARS = 500
ANSWER_INPUT = ("message", "digits", "no_input")  # what may answer a waiting survey
_ANSWER = re.compile(r"^\s*(\d{1,2})(?!\d)\s*(?:(?:/|out of)\s*(?:5|10)\b)?[\s,.:;!)\-]*(.*)$",
                     re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, slots=True)
class Answer:
    score: int
    comment: str


@dataclass(frozen=True, slots=True)
class Asked:
    """A survey just decided: what to say, and the state and event that record it."""
    text: str
    choices: tuple[Choice, ...]
    pending: dict[str, Any]
    commands: tuple[Command, ...]
    event: Event


@dataclass(frozen=True, slots=True)
class Answered:
    """What a message did to a waiting survey; `reply` None: it goes on as a normal turn."""
    reply: Reply | None
    events: tuple[Event, ...]
    commands: tuple[Command, ...]


def parse_answer(text: str, kind: str) -> Answer | None:
    """A score on the survey's scale at the start of the text, and what follows as comment."""
    found = _ANSWER.match(text)
    if not found:
        return None
    low, high = prompts.SCALES[kind]
    score = int(found.group(1))
    if not low <= score <= high:
        return None
    return Answer(score, found.group(2).strip()[:MAX_COMMENT_CHARS])


def choices_for(kind: str, style: PromptStyle) -> tuple[Choice, ...]:
    return tuple(Choice(label, value, value if style == "keys" else None)
                 for label, value in prompts.survey_scale(kind, style))


def offer(rules: Rules, conv: Conversation, style: PromptStyle, moment: str, now: float,
          surveyed_at: float | None, opted_out: bool, turn: int = 0) -> Asked | None:
    """The survey this ended contact gets, if its type's rule, the sample, the customer's
    last survey and their opt-out allow one."""
    rule = rules.surveys.rule_for(conv.get("contact_type"), moment)
    if rule is None or opted_out or not rule.samples(conv["contact_id"]):
        return None
    if surveyed_at is not None and now - surveyed_at < rule.once_per_days * 86400:
        return None
    pending = {"contact_id": conv["contact_id"], "customer_id": conv["customer_id"],
               "channel": conv["channel"], "thread": conv.get("thread"),
               "contact_type": conv.get("contact_type"),
               "route_path": conv.get("route_path"), "kind": rule.kind,
               "question": rule.question, "sent_at": now, "due_at": now + rule.answer_within_s,
               "reprompted": False, "turn": turn, "after": moment}
    kind, value = address_of(conv)
    commands: list[Command] = [_keep(kind, value, pending)]
    commands += [("SET", surveyed_key(k, v), now, "EX", SURVEYED_KEPT_S)
                 for k, v in identities_of(conv)]
    event = _event("survey_sent", pending, now, kind=rule.kind, after=moment)
    return Asked(prompts.survey_question(rule.kind, style, rule.question),
                 choices_for(rule.kind, style), pending, tuple(commands), event)


def answer(rules: Rules, pending: dict[str, Any], inbound: Inbound, style: PromptStyle,
           now: float) -> Answered:
    """What the customer's message does to their waiting survey."""
    kind, value = inbound.identity, inbound.address
    done = (("DEL", survey_key(kind, value, inbound.channel)),)
    text = "" if inbound.kind == "no_input" else inbound.text.strip()
    found = parse_answer(text, pending["kind"])
    if found is not None:
        late = now > pending["due_at"]
        event = _event("survey_late" if late else "survey_answered", pending, now,
                       kind=pending["kind"], score=found.score, comment=found.comment,
                       input=inbound.kind)
        said = (prompts.SURVEY_LATE if late else prompts.SURVEY_THANKS)[style]
        return Answered(_closing(pending, said), (event,), done)
    if inbound.kind == "no_input":  # silence on the phone: let the caller go
        return Answered(_closing(pending, prompts.SURVEY_LET_GO[style]),
                        (_event("survey_closed", pending, now, reason="no_input"),), done)
    if now > pending["due_at"] or _starts_contact(rules, inbound, text):
        reason = "expired" if now > pending["due_at"] else "new_contact"
        return Answered(None, (_event("survey_closed", pending, now, reason=reason),), done)
    rejected = _event("survey_answer_rejected", pending, now, text=text[:MAX_COMMENT_CHARS],
                      reprompted=not pending["reprompted"])
    if pending["reprompted"]:
        closed = _event("survey_closed", pending, now, reason="invalid")
        return Answered(_closing(pending, prompts.SURVEY_LET_GO[style]), (rejected, closed),
                        done)
    again = {**pending, "reprompted": True, "turn": pending["turn"] + 1}
    reply = Reply(messages=(prompts.survey_again(pending["kind"], style, pending["question"]),),
                  choices=choices_for(pending["kind"], style), state="closed",
                  contact_id=pending["contact_id"], expects_input=True, turn=again["turn"],
                  survey=True)
    return Answered(reply, (rejected,), (_keep(kind, value, again),))


def closed_by(pending: dict[str, Any], inbound: Inbound, now: float,
              reason: str) -> tuple[Event, Command]:
    """A waiting survey given up because a contact opened or the customer opted out."""
    return (_event("survey_closed", pending, now, reason=reason),
            ("DEL", survey_key(inbound.identity, inbound.address, inbound.channel)))


class HandoffSide(Protocol):
    """What a wrap-up survey uses of the hand-off (handoff.Handoff)."""
    context: Any
    events: Any
    channels: Any

    def rules(self) -> Rules: ...

    async def outbound(self, conv: Conversation, action: str, call) -> Any: ...

    def record_conv(self, kind: str, conv: Conversation, reason: str | None = None,
                    **data: Any) -> None: ...


async def after_wrap_up(handoff: HandoffSide, conv: Conversation) -> None:
    """Survey a contact an agent just wrapped up, through the channel's outbound side: the
    text channels' `send_text`, a survey frame where the customer has buttons."""
    traits: ChannelTraits = handoff.channels[conv["channel"]].traits
    if conv.get("after_agent") or (traits.live_call and conv.get("customer_left")):
        return  # asked (or let go) when the agent left the call, or the caller hung up
    opted_out, surveyed_at = await handoff.context.survey_state(conv)
    asked = offer(handoff.rules(), conv, traits.prompt_style, "agent", conv["ended_at"],
                  surveyed_at, opted_out, turn=conv.get("turns", 0) + 1)
    if asked is None:
        return
    try:
        outcome = await handoff.outbound(conv, "ask", {
            "text": asked.text, "choices": [asdict(choice) for choice in asked.choices]})
    except Exception as exc:  # recorded as delivery_failed; the wrap-up stands
        log.info("survey.not_sent", contact_id=conv["contact_id"], error=str(exc))
        return
    if outcome is not None and outcome.state == "failed":  # e.g. the caller hung up
        log.info("survey.not_sent", contact_id=conv["contact_id"], reason=outcome.failure
                 and outcome.failure.reason)
        return
    await handoff.context.execute(asked.commands)
    handoff.events.emit(asked.event)
    handoff.record_conv("replied", conv, messages=[asked.text],  # the bot's words, as in a turn
                        choices=[asdict(choice) for choice in asked.choices])


def waiting_question(pending: dict[str, Any] | None, conv: Conversation | None,
                     inbound: Inbound, style: PromptStyle) -> Reply | None:
    """The question of the survey waiting for this very contact (the open one, or the call's
    wrapped-up one), as a reply that asks it; None when none waits."""
    if not pending:
        return None
    ours = pending["contact_id"] == conv.get("contact_id") if conv else \
        inbound.thread is not None and pending.get("thread") == inbound.thread
    if not ours:
        return None
    return Reply(messages=(prompts.survey_question(pending["kind"], style,
                                                   pending["question"]),),
                 choices=choices_for(pending["kind"], style),
                 state=contact_state(conv["status"]) if conv else "closed",
                 contact_id=pending["contact_id"], expects_input=True, turn=pending["turn"],
                 survey=True)


def _starts_contact(rules: Rules, inbound: Inbound, text: str) -> bool:
    """Clearly not an answer: a request for an agent or a message the classifier places."""
    understood = understand(rules, inbound.kind, text, inbound.input_confidence,
                            menu_offered=False)
    return understood.outcome in ("agent", "classified")


def _closing(pending: dict[str, Any], text: str) -> Reply:
    return Reply(messages=(text,), state="closed", contact_id=pending["contact_id"],
                 turn=pending["turn"] + 1)


def _keep(kind: str, value: str, pending: dict[str, Any]) -> Command:
    ttl = max(1, int(pending["due_at"] - pending["sent_at"])) + LATE_KEPT_S
    return ("SET", survey_key(kind, value, pending["channel"]), json_value(pending), "EX", ttl)


def _event(kind: str, pending: dict[str, Any], now: float, /, **data: Any) -> Event:
    return Event(kind, pending["contact_id"], pending["customer_id"], pending["channel"],
                 pending["contact_type"], pending["route_path"], data=data, occurred_at=now)
