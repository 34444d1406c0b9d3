"""The channel-neutral model: what channels hand in (Inbound) and get back (Reply).

Channels import only this module. Provider fields are mapped into these at the edge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping

ChannelName = Literal["sms", "voice", "chat"]
ContactState = Literal["self_service", "queued", "with_agent", "closed"]


@dataclass(frozen=True, slots=True)
class Inbound:
    channel: ChannelName
    address: str  # the customer on this channel: E.164 number, chat session id
    service_address: str  # our side: the Twilio number texted or called, the chat widget
    text: str
    dedupe_key: str | None = None  # provider id of this delivery (MessageSid, CallSid + step)
    provider: Mapping[str, str] = field(default_factory=dict)  # raw fields kept for the record


@dataclass(frozen=True, slots=True)
class Choice:
    label: str
    value: str


@dataclass(frozen=True, slots=True)
class Reply:
    messages: tuple[str, ...] = ()
    choices: tuple[Choice, ...] = ()
    state: ContactState = "self_service"
    contact_id: str | None = None
    position: int | None = None
    estimated_wait_s: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Reply":
        return cls(
            messages=tuple(data.get("messages", ())),
            choices=tuple(Choice(**c) for c in data.get("choices", ())),
            state=data.get("state", "self_service"),
            contact_id=data.get("contact_id"),
            position=data.get("position"),
            estimated_wait_s=data.get("estimated_wait_s"),
        )
