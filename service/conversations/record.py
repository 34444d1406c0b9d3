"""The conversation record: the one place its fields and their meaning are defined.

One open contact's state, kept in Redis as JSON (context.py) and written by the customer's
turns (conversation.py) and the agent's side (handoff.py). The keys are stored as they are, so
running deployments keep their open conversations; a `TypedDict` lets type checkers hold every
reader and writer to these names.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence, TypedDict, cast

from service.model import ContactState

NOTE = "note"  # a transcript line's `from` for a private note (notes.py): never the customer's

Status = Literal["new", "menu", "clarifying", "confirming", "confirming_repeat", "in_flow",
                 "callback_offered", "queued", "with_agent", "closed"]


class _Required(TypedDict):
    contact_id: str
    customer_id: str
    channel: str  # a ChannelName
    address: str  # the customer's address on the channel (E.164 number, chat session)
    service_address: str  # ours: the number texted or called, the chat widget
    thread: str | None  # CallSid, chat session; None for texting channels
    started_at: float  # epoch seconds
    last_at: float  # the latest turn
    status: Status
    turns: int
    contact_type: str | None  # from the classifier, a menu choice, or an agent's correction
    confidence: float | None
    misses: int  # turns in a row not understood
    menu: list[str]  # contact types offered in a "did you mean" list, in order
    route_path: str | None  # the routing tree's route that decided
    queue: str | None
    reason: str | None  # why it went to an agent (reason code)
    outcome: str | None  # how it ended (self_service_resolved, idle_timeout, ...)
    # {"from": customer|bot|agent, "text", "at"}, the last 60 (a customer's line with files:
    # "attachments": [{"n", "content_type"}]); and private notes, {"from": "note", "private":
    # true, "text", "at", "author_id", "author_name", "role"}
    transcript: list[dict[str, Any]]
    steps: list[dict[str, Any]]  # self-service steps tried: answer or flow, with their outcome
    attributes: dict[str, Any]  # the customer's attributes, for routing's customer.<name>
    identities: list[list[str]]  # every [kind, value] address of the customer
    earlier: list[dict[str, Any]]  # summaries of the customer's earlier contacts, newest first


class Conversation(_Required, total=False):
    repeat_of: dict[str, Any]  # the earlier contact a "welcome back" asks about
    flow: dict[str, Any]  # a running flow: id, step index, values collected, misses
    escalated_at: float  # when it entered an agent queue (the console's "escalated N ago")
    priority: int  # the routing decision's priority when it was escalated (lower first)
    agent_id: str  # the agent who holds it
    accepted_at: float  # when that agent accepted it (the supervisor view's "for N min")
    # The latest transfer: from_agent(_name), note, mode (cold|warm), to_queue, to_agent
    # (_name), requested_at, pending (until the next agent accepts or it is given up)
    transfer: dict[str, Any]
    agent_name: str
    # A waiting customer's callback (conversations/callbacks.py): number, requested_at, queue,
    # attempts, max_attempts, retry_after_s, state, agent of the attempt under way, retry_at
    callback: dict[str, Any]
    closed_reason: str  # why a caller offered a callback while closed was going to an agent
    ended_at: float
    arrivals: list[float]  # when the customer's last few texts arrived (pacing.py)
    loop_hits: int  # texts in a row that echo ours or repeat the customer's previous one
    rate_limited: bool  # the customer was told to slow down and has not yet
    experiment: dict[str, str]  # the experiment it is in: name, arm (experiments.yaml)
    canary: dict[str, Any]  # opened while a canary ran: id, arm (canary or stable)
    customer_name: str  # the customer's name in the directory, for answers' {customer.name}
    customer_left: bool  # a live call the caller hung up while with an agent
    after_agent: str  # a live call's agent left: "surveyed" or "let_go" (no wrap-up survey)
    # Files the customer sent (conversations/attachments.py), every one of the contact, kept
    # past the transcript's 60 lines: {"n" (1, 2, ...), "content_type", "ref" (the channel's
    # own, opaque here), "at"}
    attachments: list[dict[str, Any]]


def new_conversation(*, contact_id: str, customer: dict[str, Any], channel: str, address: str,
                     service_address: str, thread: str | None, now: float,
                     earlier: list[dict[str, Any]]) -> Conversation:
    """A contact just opened, nothing understood yet."""
    conversation = Conversation(
        contact_id=contact_id, customer_id=customer["customer_id"], channel=channel,
        address=address, service_address=service_address, thread=thread, started_at=now,
        last_at=now, status="new", turns=0, contact_type=None, confidence=None, misses=0,
        menu=[], route_path=None, queue=None, reason=None, outcome=None, transcript=[],
        steps=[], attributes=customer.get("attributes", {}), identities=customer["identities"],
        earlier=earlier)
    if customer.get("display_name"):
        conversation["customer_name"] = customer["display_name"]
    return conversation


def customer_lines(transcript: list[dict[str, Any]], kept: Sequence[dict[str, Any]] = ()
                   ) -> tuple[dict[str, Any], ...]:
    """The transcript as the customer may see it again (a chat resumed): no private notes;
    a line's files (`kept`: the contact's attachments) as `files`, type and the channel's
    reference, for the channel to show again."""
    refs = {entry["n"]: entry for entry in kept}
    return tuple({**line, "files": [{"content_type": refs[a["n"]]["content_type"],
                                     "ref": refs[a["n"]]["ref"]}
                                    for a in line["attachments"] if a["n"] in refs]}
                 if line.get("attachments") else line
                 for line in transcript if line.get("from") != NOTE)


def latest_notes(transcript: list[dict[str, Any]], keep: int = 3,
                 chars: int = 280) -> list[dict[str, Any]]:
    """The contact's last few notes, cut short, for its summary (every turn of the customer
    reads their summaries, so they stay small)."""
    notes = [line for line in transcript if line.get("from") == NOTE][-keep:]
    return [{**line, "text": line["text"][:chars]} for line in notes]


def not_open() -> Conversation:
    """The record of a turn before its contact opens: empty, filled by `new_conversation`."""
    return cast(Conversation, {})


def contact_state(status: Status) -> ContactState:
    """What a channel shows of a conversation's status (its `Reply.state`)."""
    if status == "queued" or status == "with_agent" or status == "closed":
        return status
    return "self_service"
