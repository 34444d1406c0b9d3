"""The channel-neutral model: what channels hand in (Inbound) and get back (Reply).

Channels import only this module. Provider fields are mapped into these at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

ChannelName = Literal["sms", "voice", "chat"]
ContactState = Literal["self_service", "queued", "with_agent", "closed"]
# message: words typed or spoken; digits: keypad; start: a call or chat begins;
# no_input: the customer said nothing; wait: a queued caller's hold loop asks for news;
# left_queue: the caller left the queue (hung up, bridged); end: the call or chat ended.
InboundKind = Literal["message", "digits", "start", "no_input", "wait", "left_queue", "end"]


@dataclass(frozen=True, slots=True)
class Inbound:
    channel: ChannelName
    address: str  # the customer on this channel: E.164 number, chat session id
    service_address: str  # our side: the Twilio number texted or called, the chat widget
    text: str
    dedupe_key: str | None = None  # provider id of this delivery (MessageSid, CallSid + step)
    kind: InboundKind = "message"
    thread: str | None = None  # tells apart concurrent conversations of one address (CallSid)
    input_confidence: float | None = None  # the speech recogniser's own confidence
    provider: Mapping[str, str] = field(default_factory=dict)  # raw fields kept for the record
    # The text before redaction, set only when something was masked: for a self-service
    # look-up in this turn, never stored, logged or shown (see conversations/redaction.py).
    unmasked: str | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Choice:
    label: str
    value: str  # what the customer types or says to choose it
    digit: str | None = None  # the key to press on a phone


@dataclass(frozen=True, slots=True)
class Reply:
    messages: tuple[str, ...] = ()
    choices: tuple[Choice, ...] = ()
    state: ContactState = "self_service"
    contact_id: str | None = None
    position: int | None = None
    estimated_wait_s: int | None = None
    queue: str | None = None  # set when the contact has just been queued
    expects_input: bool = False  # the customer is asked something (voice gathers input)
    turn: int = 0  # how many turns the contact has had; voice puts it in its action URLs
    history: tuple[dict[str, Any], ...] = ()  # the transcript so far, when a chat resumes

    def to_json(self) -> dict[str, Any]:
        # Spelled out: dataclasses.asdict deep-copies every field and costs ~20 us per turn.
        return {"messages": list(self.messages),
                "choices": [{"label": c.label, "value": c.value, "digit": c.digit}
                            for c in self.choices],
                "state": self.state, "contact_id": self.contact_id, "position": self.position,
                "estimated_wait_s": self.estimated_wait_s, "queue": self.queue,
                "expects_input": self.expects_input, "turn": self.turn,
                "history": [dict(entry) for entry in self.history]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Reply":
        return cls(**{**data, "messages": tuple(data.get("messages", ())),
                      "history": tuple(data.get("history", ())),
                      "choices": tuple(Choice(**c) for c in data.get("choices", ()))})
