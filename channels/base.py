"""The channel protocol and what the composition root hands each channel.

A channel maps one provider's wire format to the neutral model and back, declares its traits,
and owns its outbound side. It receives one injected callable to hand the contact on and never
imports storage or the orchestrator. The composition root lists the channels explicitly.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import (
    Any,
    AsyncContextManager,
    Awaitable,
    Callable,
    ClassVar,
    Mapping,
    Protocol,
)

from aiohttp import web

from channels.twilio_rest import TwilioRest
from service.model import (
    AgentLine,
    Attachment,
    AttachmentBody,
    CallOutcome,
    ChannelTraits,
    Choice,
    Destination,
    Inbound,
    MessageStatus,
    Reply,
)

HandleInbound = Callable[[Inbound], Awaitable[Reply]]
# A provider's status callback about one outbound message, mapped to the neutral model.
ReportStatus = Callable[[MessageStatus], Awaitable[None]]
# A provider's status callback about a call placed back to a customer.
ReportCallOutcome = Callable[[CallOutcome], Awaitable[None]]
# Frames pushed to one conversation from anywhere (an agent's reply on another instance).
Subscribe = Callable[[str], AsyncContextManager["asyncio.Queue[dict[str, Any]]"]]
Publish = Callable[[str, dict[str, Any]], Awaitable[None]]


async def _nowhere(topic: str, frame: dict[str, Any]) -> None:
    raise RuntimeError("no bus configured")


async def _unheard(status: MessageStatus) -> None:
    return None


async def _unheard_call(outcome: CallOutcome) -> None:
    return None


@dataclass(frozen=True)
class ChannelConfig:
    public_url: str
    twilio_auth_token: str
    fallback_queue: Callable[[], str] = lambda: "general"  # where callers go when a turn fails
    subscribe: Subscribe | None = None
    publish: Publish = _nowhere
    chat_identity_secret: str = ""
    chat_origins: tuple[str, ...] = ()  # sites whose pages may open /chat/ws; empty: any
    twilio: TwilioRest | None = None  # outbound REST, shared by the Twilio channels
    message_status: ReportStatus = _unheard  # where status callbacks go (the outbox)
    call_outcome: ReportCallOutcome = _unheard_call  # calls placed back (the callbacks)


class Channel(Protocol):
    traits: ClassVar[ChannelTraits]

    def __init__(self, config: ChannelConfig, handle: HandleInbound) -> None: ...

    def routes(self) -> list[web.RouteDef]: ...

    async def send_text(self, to: Destination, text: str,
                        message_id: str | None = None) -> str | None: ...

    async def connect_agent(self, to: Destination, agent: AgentLine, hello: str,
                            message_id: str | None = None) -> str | None: ...

    async def find_sent(self, to: Destination, text: str, since: float) -> str | None: ...

    async def join_agent(self, to: Destination, agent: AgentLine, hello: str) -> None: ...

    async def release_agent(self, to: Destination, agent: AgentLine) -> None: ...

    async def drop_agent(self, to: Destination, agent: AgentLine) -> None: ...

    async def call_back(self, to: Destination, attempt: int) -> str | None: ...

    async def send_template(self, to: Destination, ref: str, variables: Mapping[str, str],
                            message_id: str | None = None) -> str | None: ...

    async def close(self, to: Destination) -> None: ...

    async def ask(self, to: Destination, text: str, choices: tuple[Choice, ...]
                  ) -> str | None: ...

    async def fetch_attachment(self, attachment: Attachment) -> AttachmentBody: ...

    async def delete_attachment(self, attachment: Attachment) -> None: ...


def twilio_of(config: ChannelConfig) -> TwilioRest:
    """The shared REST client, or one of the channel's own when none was given (tests)."""
    return config.twilio or TwilioRest("", config.twilio_auth_token)
