"""The channel protocol and registry.

A channel maps one provider's wire format to the neutral model and back. It receives one
injected callable to hand the contact on and never imports storage or the orchestrator.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, AsyncContextManager, Awaitable, Callable, ClassVar, Protocol

from aiohttp import web

from service.model import Inbound, Reply

HandleInbound = Callable[[Inbound], Awaitable[Reply]]
# Frames pushed to one conversation from anywhere (an agent's reply on another instance).
Subscribe = Callable[[str], AsyncContextManager["asyncio.Queue[dict[str, Any]]"]]


@dataclass(frozen=True)
class ChannelConfig:
    public_url: str
    twilio_auth_token: str
    fallback_queue: Callable[[], str] = lambda: "general"  # where callers go when a turn fails
    subscribe: Subscribe | None = None
    chat_identity_secret: str = ""
    chat_origins: tuple[str, ...] = ()  # sites whose pages may open /chat/ws; empty: any


class Channel(Protocol):
    name: ClassVar[str]

    def __init__(self, config: ChannelConfig, handle: HandleInbound) -> None: ...

    def routes(self) -> list[web.RouteDef]: ...


REGISTRY: dict[str, type[Channel]] = {}


def register(cls: type[Channel]) -> type[Channel]:
    REGISTRY[cls.name] = cls
    return cls
