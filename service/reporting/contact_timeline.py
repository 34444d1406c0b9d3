"""One contact's story from its events: a timeline for ops and the conversation as bubbles.

    story = await contact_story(pool, row, names)   # row: contact_search.ContactRow
    story.timeline   # every event in order: kind, time, a short description, details
    story.bubbles    # customer, bot, agent and private-note lines, with the steps between

The event log keeps what the customer wrote (`received`, masked at entry, with the numbers
and types of their files), what the bot sent (`replied`: each turn's messages and the choices
offered; an agent's greeting on `agent_accepted`), what agents wrote (`agent_message`),
private notes (`note_added`, the wrap-up's and a transfer's note) and survey answers. A
contact logged before the bot's words were recorded has no `replied` event: its self-service
answer's bubble is the catalog's answer as the rules in force word it (`reconstructed`). The
bot's steps are system lines between. Texts an erasure blanked stay blank (`erased`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

import asyncpg

from service.infra.ids import is_uuid
from service.reporting.reports import iso

QUERY_TIMEOUT_S = 10
# Events of a contact land from its start on; a little before covers clocks of two instances.
EARLIEST_S = 3600

EVENTS_SQL = """
SELECT e.seq, e.occurred_at, e.kind, e.channel, e.contact_type, e.route_path, e.reason, e.data
FROM contact_events e
WHERE e.contact_id = $1 AND e.occurred_at >= $2
ORDER BY e.occurred_at, e.seq
"""
AGENT_KEYS = ("agent_id", "from_agent", "to_agent", "author_id")


@dataclass(frozen=True)
class Names:
    """Labels to describe events with: contact types and queues of the rules in force, and
    the agents of the directory."""
    types: Mapping[str, str]
    queues: Mapping[str, str]
    answers: Mapping[str, str]  # a contact type's catalog answer, as the rules word it now
    agents: Mapping[str, str] = field(default_factory=dict)

    def type(self, type_id: str | None) -> str:
        return self.types.get(type_id or "", type_id or "unclassified")

    def queue(self, name: str | None) -> str:
        return self.queues.get(name or "", name or "no queue")

    def agent(self, agent_id: str | None) -> str:
        return self.agents.get(agent_id or "", "an agent" if agent_id else "nobody")


@dataclass(frozen=True)
class Entry:
    """One event of the timeline."""
    at: str
    kind: str
    description: str
    details: dict[str, Any]
    private: bool = False  # holds a note only agents and supervisors see


@dataclass(frozen=True)
class Bubble:
    """One line of the conversation: `from` customer, bot, agent, note or system."""
    at: str
    sender: str
    text: str
    author: str | None = None
    private: bool = False
    reconstructed: bool = False  # the bot's words as the rules say them now, not as sent
    erased: bool = False
    choices: tuple[str, ...] = ()  # what the bot offered to pick from, by label
    attachments: tuple[File, ...] = ()  # the files sent with these words (customer's, agent's)

    def as_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["from"] = body.pop("sender")
        body["choices"] = list(self.choices)
        body["attachments"] = [asdict(f) for f in self.attachments]
        return body


@dataclass(frozen=True)
class File:
    """A customer's file as a bubble shows it: never the channel's reference, only whether
    an erasure took it (the file is then gone at the provider too)."""
    n: int
    content_type: str
    erased: bool = False


@dataclass(frozen=True)
class Story:
    timeline: tuple[Entry, ...]
    bubbles: tuple[Bubble, ...]


async def events_of(conn: asyncpg.Connection | asyncpg.Pool, contact_id: str,
                    started_at: datetime) -> list[asyncpg.Record]:
    """The contact's events in the order they happened."""
    return await conn.fetch(EVENTS_SQL, uuid.UUID(contact_id),
                            started_at - timedelta(seconds=EARLIEST_S), timeout=QUERY_TIMEOUT_S)


async def agent_names(conn: asyncpg.Connection | asyncpg.Pool,
                      events: list[asyncpg.Record]) -> dict[str, str]:
    """The names of the agents the events name."""
    ids = {str(v) for e in events for k, v in _data(e).items() if k in AGENT_KEYS and v}
    valid = [i for i in ids if is_uuid(i)]
    if not valid:
        return {}
    rows = await conn.fetch("SELECT id::text, name FROM agents WHERE id = ANY($1::uuid[])",
                            valid, timeout=QUERY_TIMEOUT_S)
    return {r["id"]: r["name"] for r in rows}


def _data(event: asyncpg.Record) -> dict[str, Any]:
    data = event["data"]
    return json.loads(data) if isinstance(data, str) else dict(data or {})


def story(events: list[asyncpg.Record], names: Names) -> Story:
    """The timeline and the bubbles of a contact's events."""
    timeline: list[Entry] = []
    bubbles: list[Bubble] = []
    recorded = any(event["kind"] == "replied" for event in events)
    for event in events:
        data, at = _data(event), iso(event["occurred_at"])
        describe = DESCRIBERS.get(event["kind"], _generic)
        description, private = describe(event, data, names)
        timeline.append(Entry(at, event["kind"], description, _details(event, data, names),
                              private))
        bubbles.extend(_bubbles(event, data, names, at, recorded))
    return Story(tuple(timeline), tuple(bubbles))


def _details(event: asyncpg.Record, data: dict[str, Any], names: Names) -> dict[str, Any]:
    """What the event says, agent ids given their names beside them."""
    details = {k: v for k, v in data.items() if v is not None}
    if isinstance(details.get("attachments"), list):  # the channel's references stay inside
        details["attachments"] = [asdict(f) for f in _files(details["attachments"])]
    for column in ("contact_type", "route_path", "reason"):
        if event[column] is not None and column not in details:
            details[column] = event[column]
    for key in AGENT_KEYS:
        if details.get(key):
            name_key = key[:-3] + "_name" if key.endswith("_id") else key + "_name"
            details.setdefault(name_key, names.agent(details[key]))
    return details


def _text(value: Any) -> tuple[str, bool]:
    """A recorded text and whether an erasure blanked it."""
    text = value if isinstance(value, str) else ""
    return text, text == ""


def _files(recorded: list[Any]) -> tuple[File, ...]:
    """A `received` event's files; one whose reference an erasure dropped is `erased`."""
    return tuple(File(int(f.get("n") or 0), str(f.get("content_type") or ""), not f.get("ref"))
                 for f in recorded if isinstance(f, dict))


def _replied(data: dict[str, Any], at: str) -> list[Bubble]:
    """The bot's messages as sent, the choices offered under the last."""
    messages = [_text(m) for m in data.get("messages") or ()]
    choices = tuple(str(c.get("label") or "") for c in data.get("choices") or ()
                    if isinstance(c, dict))
    return [Bubble(at, "bot", text, erased=erased,
                   choices=choices if i == len(messages) - 1 else ())
            for i, (text, erased) in enumerate(messages)]


def _bubbles(event: asyncpg.Record, data: dict[str, Any], names: Names,
             at: str, recorded: bool = False) -> list[Bubble]:
    kind = event["kind"]
    if kind == "received":
        files = _files(data.get("attachments") or [])
        text, erased = _text(data.get("text"))
        if data.get("input") == "digits":
            text = f"[pressed {text}]" if text else text
        erased = erased and all(f.erased for f in files)  # a photo alone has no words
        return [Bubble(at, "customer", text, erased=erased, attachments=files)]
    if kind == "replied":
        return _replied(data, at)
    if kind == "agent_accepted" and data.get("hello"):
        agent = names.agent(data.get("agent_id"))
        return [Bubble(at, "system", f"{agent} joined"), Bubble(at, "agent", data["hello"], agent)]
    if kind in ("survey_answered", "survey_late"):
        comment = f" {data['comment']}" if data.get("comment") else ""
        return [Bubble(at, "customer", f"{data.get('score')}{comment}")]
    if kind == "survey_answer_rejected":
        text, erased = _text(data.get("text"))
        return [Bubble(at, "customer", text, erased=erased)]
    if kind == "agent_message":
        files = _files(data.get("attachments") or [])
        text, erased = _text(data.get("text"))
        erased = erased and all(f.erased for f in files)  # a file alone has no words
        return [Bubble(at, "agent", text, names.agent(data.get("agent_id")), erased=erased,
                       attachments=files)]
    if kind == "note_added":
        text, erased = _text(data.get("text"))
        author = data.get("author_name") or names.agent(data.get("author_id"))
        role = "supervisor" if data.get("role") == "supervisor" else "agent"
        return [Bubble(at, "note", text, f"{author} ({role})", private=True, erased=erased)]
    if kind in ("wrap_up", "transfer_requested") and data.get("note"):
        who = data.get("agent_id") or data.get("from_agent")
        label = "wrap-up note" if kind == "wrap_up" else "transfer note"
        return [Bubble(at, "note", data["note"], f"{names.agent(who)} ({label})", private=True)]
    if kind == "self_service_started" and data.get("step") == "answer" and not recorded:
        answer = names.answers.get(event["contact_type"] or "")
        if answer:
            return [Bubble(at, "bot", answer, reconstructed=True)]
    line = SYSTEM_LINES.get(kind)
    return [Bubble(at, "system", line(event, data, names))] if line else []


# ---- descriptions --------------------------------------------------------------------------

Describer = Callable[[asyncpg.Record, dict[str, Any], Names], tuple[str, bool]]


def _percent(value: Any) -> str:
    try:
        return f"{round(float(value) * 100)}%"
    except (TypeError, ValueError):
        return "?"


def _seconds(value: Any) -> str:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return "?"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _words(value: Any) -> str:
    return str(value).replace("_", " ") if value else ""


def _generic(event, data, names) -> tuple[str, bool]:
    reason = event["reason"] or data.get("reason")
    return _words(event["kind"]).capitalize() + (f" ({_words(reason)})" if reason else ""), False


def _received(event, data, names) -> tuple[str, bool]:
    how = {"digits": "pressed keys", "message": "wrote"}.get(data.get("input"), "said")
    if data.get("input_confidence") is not None:
        how = f"said (speech {_percent(data['input_confidence'])})"
    return f"Customer {how}", False


def _classified(event, data, names) -> tuple[str, bool]:
    via = f", {_words(data['via'])}" if data.get("via") else ""
    return (f"Classified as {names.type(event['contact_type'])} "
            f"({_percent(data.get('confidence'))}{via})", False)


def _missed(event, data, names) -> tuple[str, bool]:
    candidates = ", ".join(f"{names.type(c.get('contact_type'))} {_percent(c.get('confidence'))}"
                           for c in data.get("candidates") or [] if isinstance(c, dict))
    return (f"Not understood ({_words(data.get('reason'))})"
            + (f"; closest: {candidates}" if candidates else ""), False)


def _routed(event, data, names) -> tuple[str, bool]:
    queue = names.queue(data.get("queue"))
    to = "self-service" if data.get("self_service") else f"an agent in {queue}"
    path = event["route_path"] or data.get("route_path")
    return f"Routed to {to}" + (f" by {path}" if path else ""), False


def _escalated(event, data, names) -> tuple[str, bool]:
    return (f"Escalated to {names.queue(data.get('queue'))}: "
            f"{_words(event['reason'] or data.get('reason'))}", False)


def _queued(event, data, names) -> tuple[str, bool]:
    return (f"Waiting in {names.queue(data.get('queue'))}, position {data.get('position', '?')}",
            False)


def _agent_event(verb: str) -> Describer:
    def describe(event, data, names) -> tuple[str, bool]:
        return f"{verb.format(agent=names.agent(data.get('agent_id')))}", False
    return describe


def _accepted(event, data, names) -> tuple[str, bool]:
    waited = f" after {_seconds(data['waited_s'])} waiting" if data.get("waited_s") is not None \
        else ""
    return f"{names.agent(data.get('agent_id'))} accepted{waited}", False


def _transfer(verb: str) -> Describer:
    def describe(event, data, names) -> tuple[str, bool]:
        target = names.agent(data.get("to_agent")) if data.get("to_agent") else \
            names.queue(data.get("to_queue"))
        mode = f" ({data['mode']})" if data.get("mode") else ""
        why = f": {_words(event['reason'])}" if verb != "requested" and event["reason"] else ""
        return (f"Transfer {verb} by {names.agent(data.get('from_agent'))} to {target}"
                f"{mode}{why}", bool(data.get("note")))
    return describe


def _wrap_up(event, data, names) -> tuple[str, bool]:
    resolved = "resolved" if data.get("resolved") else "not resolved"
    corrected = data.get("corrected_contact_type")
    retyped = f"; type corrected to {names.type(corrected)}" \
        if corrected and corrected != data.get("classified_as") else ""
    return (f"{names.agent(data.get('agent_id'))} wrapped up: {resolved}{retyped}",
            bool(data.get("note")))


def _note(event, data, names) -> tuple[str, bool]:
    author = data.get("author_name") or names.agent(data.get("author_id"))
    what = "Supervisor's whisper" if data.get("role") == "supervisor" else "Private note"
    return f"{what} by {author}", True


def _ended(event, data, names) -> tuple[str, bool]:
    return f"Ended: {_words(data.get('outcome'))}", False


def _survey(event, data, names) -> tuple[str, bool]:
    kind = str(data.get("kind") or "").upper() or "Survey"
    if event["kind"] == "survey_sent":
        return f"{kind} survey sent", False
    if event["kind"] in ("survey_answered", "survey_late"):
        late = " (late, not counted)" if event["kind"] == "survey_late" else ""
        scale = "/5" if data.get("kind") == "csat" else "/10" if data.get("kind") == "nps" else ""
        return f"{kind} answered {data.get('score')}{scale}{late}", False
    if event["kind"] == "survey_closed":
        return f"Survey closed ({_words(data.get('reason'))})", False
    return "Survey answer not understood", False


def _started(event, data, names) -> tuple[str, bool]:
    return f"Contact started on {event['channel'] or 'an unknown channel'}", False


def _self_service(event, data, names) -> tuple[str, bool]:
    step = str(data.get("step") or "")
    what = f"flow {step[5:]}" if step.startswith("flow:") else "the catalog answer"
    verb = {"self_service_started": "Self-service started:",
            "self_service_resolved": "Self-service resolved:",
            "self_service_failed": "Self-service failed:"}[event["kind"]]
    failure = f" ({_words(data['failure'])})" if data.get("failure") else ""
    return f"{verb} {what}{failure}", False


def _experiment(event, data, names) -> tuple[str, bool]:
    if event["kind"] == "canary_assigned":
        return f"Canary {data.get('canary')}: {data.get('arm')} rules", False
    return f"Experiment {data.get('experiment')}: arm {data.get('arm')}", False


def _callback(event, data, names) -> tuple[str, bool]:
    kind = event["kind"]
    if kind == "callback_requested":
        return f"Callback requested (keeps its place in {names.queue(data.get('queue'))})", False
    if kind == "callback_attempt":
        return (f"Calling the customer back (attempt {data.get('attempt')}) for "
                f"{names.agent(data.get('agent_id'))}", False)
    if kind == "callback_completed":
        return f"Callback answered (attempt {data.get('attempt')})", False
    if kind == "callback_attempt_failed":
        return (f"Callback attempt {data.get('attempt')} not answered "
                f"({_words(data.get('result'))})", False)
    return f"Callback given up after {data.get('attempts')} attempts", False


def _bot_replied(event, data, names) -> tuple[str, bool]:
    count = len(data.get("messages") or ())
    labels = [str(c.get("label")) for c in data.get("choices") or () if isinstance(c, dict)]
    offered = f", offering {', '.join(labels)}" if labels else ""
    return f"The bot replied ({count} message{'' if count == 1 else 's'}{offered})", False


DESCRIBERS: dict[str, Describer] = {
    "contact_started": _started, "received": _received, "classified": _classified,
    "classification_missed": _missed, "routed": _routed, "escalated": _escalated,
    "queued": _queued, "offered": _agent_event("Offered to {agent}"),
    "offer_declined": _agent_event("{agent} declined the offer"),
    "offer_expired": _agent_event("The offer to {agent} expired"),
    "agent_accepted": _accepted, "agent_message": _agent_event("{agent} wrote"),
    "transfer_requested": _transfer("requested"), "transferred": _transfer("made"),
    "transfer_returned": _transfer("came back"), "transfer_failed": _transfer("failed"),
    "wrap_up": _wrap_up, "note_added": _note, "ended": _ended,
    "survey_sent": _survey, "survey_answered": _survey, "survey_late": _survey,
    "survey_closed": _survey, "survey_answer_rejected": _survey,
    "self_service_started": _self_service, "self_service_resolved": _self_service,
    "self_service_failed": _self_service, "experiment_assigned": _experiment,
    "canary_assigned": _experiment, "callback_requested": _callback,
    "callback_attempt": _callback, "callback_completed": _callback,
    "callback_attempt_failed": _callback, "callback_failed": _callback,
    "replied": _bot_replied,
    "no_input": lambda e, d, n: ("No input from the caller", False),
    "customer_left": lambda e, d, n: ("The customer left (the agent still wraps up)", False),
    "overflowed": lambda e, d, n: (f"Overflowed from {n.queue(d.get('from_queue'))} to "
                                   f"{n.queue(d.get('queue'))}", False),
    "delivery_failed": lambda e, d, n: (f"A message could not be delivered "
                                        f"({_words(e['reason'] or d.get('reason'))})", False),
}

SYSTEM_LINES: dict[str, Callable[[asyncpg.Record, dict[str, Any], Names], str]] = {
    "classified": lambda e, d, n: f"Understood: {n.type(e['contact_type'])}",
    "classification_missed": lambda e, d, n: "Not understood: asked again",
    "self_service_resolved": lambda e, d, n: "The customer said it helped",
    "self_service_failed": lambda e, d, n: "It did not help",
    "closed_message": lambda e, d, n: "Told the customer we are closed",
    "callback_requested": lambda e, d, n: "Asked to be called back",
    "customer_left": lambda e, d, n: "The customer left",
    "escalated": lambda e, d, n: f"Handed to an agent in {n.queue(d.get('queue'))}",
    "agent_accepted": lambda e, d, n: f"{n.agent(d.get('agent_id'))} joined",
    "transferred": lambda e, d, n: "Transferred to " + (
        n.agent(d.get("to_agent")) if d.get("to_agent") else n.queue(d.get("to_queue"))),
    "wrap_up": lambda e, d, n: f"{n.agent(d.get('agent_id'))} wrapped up",
    "survey_sent": lambda e, d, n: f"{str(d.get('kind') or '').upper()} survey sent",
    "ended": lambda e, d, n: f"Ended: {_words(d.get('outcome'))}",
}
