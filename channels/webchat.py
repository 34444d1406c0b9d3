"""Web chat: WebSocket frames <-> Inbound / Reply (frames in docs/interfaces.md).

A session token names the conversation; reconnecting with it resumes the same contact and
replays its transcript. A visitor is linked to a known customer only when the host site
vouches for them: `customer: {"id": ..., "signature": hex HMAC-SHA256(secret, id)}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import weakref
from typing import Any, ClassVar, Mapping
from urllib.parse import urlsplit

import structlog
from aiohttp import WSCloseCode, web

from channels.base import ChannelConfig, HandleInbound
from service.model import (
    AgentLine,
    Attachment,
    AttachmentBody,
    AttachmentUnavailable,
    ChannelTraits,
    Choice,
    DeliveryFailed,
    Destination,
    Inbound,
    InboundKind,
    Reply,
)
from service.websocket import (
    RateLimit,
    open_socket,
    parse_frame,
    relay,
    send_error,
    tell_to_reconnect,
)

log = structlog.get_logger(__name__)

MAX_FRAME_BYTES = 8 * 1024
MAX_TEXT_CHARS = 1000
SESSION = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
RATE_PER_S, BURST = 2.0, 6
FALLBACK = ("Sorry, something went wrong on our side. Please try again in a moment, "
            "or type AGENT to reach a person.")


class WebChat:
    traits: ClassVar[ChannelTraits] = ChannelTraits(
        name="chat", identity="web", prompt_style="buttons", default_capacity=3, idles_out=False,
        carrier_keywords=False, agent_can_type=True, route_prefix="/chat",
        customer_paced=True)

    def __init__(self, config: ChannelConfig, handle: HandleInbound):
        self._handle = handle
        self._subscribe = config.subscribe
        self._publish = config.publish
        self._secret = config.chat_identity_secret.encode()
        own = urlsplit(config.public_url)
        self._origins = frozenset(config.chat_origins) | {f"{own.scheme}://{own.netloc}".lower()}
        self._any_origin = not config.chat_origins
        self._sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/chat/ws", self.websocket)]

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        origin = request.headers.get("Origin")
        # Browsers always send Origin; other clients cannot ride on a visitor's page.
        if origin is not None and not self._any_origin and origin.lower() not in self._origins:
            log.warning("chat.origin_refused", origin=origin)
            raise web.HTTPForbidden(text="this site may not open the chat")
        ws = await open_socket(request, self._sockets, MAX_FRAME_BYTES)
        start = await self._first_frame(ws)
        if start is None:
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"expected start")
            return ws
        session, address = start
        structlog.contextvars.bind_contextvars(chat_session=session[:8])
        if self._subscribe is None:  # built without the bus (the contract test): no sessions
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"no bus")
            return ws
        async with relay(self._subscribe(f"chat:{session}"), ws):
            reply = await self._turn(ws, session, address, "start", "")
            if reply is not None:
                await ws.send_json({"type": "session", "session": session,
                                    "contact_id": reply.contact_id})
                await _send_reply(ws, reply)
                await self._serve(ws, session, address)
        return ws

    async def send_text(self, to: Destination, text: str,
                        message_id: str | None = None) -> str | None:
        await self._publish(f"chat:{to.thread}", {"type": "message", "from": "agent",
                                                  "text": text})
        return None

    async def connect_agent(self, to: Destination, agent: AgentLine, hello: str,
                            message_id: str | None = None) -> str | None:
        await self._publish(f"chat:{to.thread}", {"type": "status", "state": "with_agent"})
        return await self.send_text(to, hello)

    async def find_sent(self, to: Destination, text: str, since: float) -> str | None:
        return None  # a frame on the bus leaves no trace to look up: a lost one is re-sent

    async def join_agent(self, to: Destination, agent: AgentLine, hello: str) -> None:
        await self.connect_agent(to, agent, hello)

    async def release_agent(self, to: Destination, agent: AgentLine) -> None:
        await self._publish(f"chat:{to.thread}", {"type": "status", "state": "queued"})

    async def drop_agent(self, to: Destination, agent: AgentLine) -> None:
        return None  # the next agent's hello already told the visitor

    async def call_back(self, to: Destination, attempt: int) -> str | None:
        raise DeliveryFailed("not_call", "a chat visitor cannot be called back")

    async def send_template(self, to: Destination, ref: str, variables: Mapping[str, str],
                            message_id: str | None = None) -> str | None:
        raise DeliveryFailed("not_template", f"{self.traits.name} sends no message templates")

    async def close(self, to: Destination) -> None:
        await self._publish(f"chat:{to.thread}", {"type": "status", "state": "closed"})

    async def fetch_attachment(self, attachment: Attachment) -> AttachmentBody:
        raise AttachmentUnavailable("unsupported", "the chat takes no file uploads")

    async def delete_attachment(self, attachment: Attachment) -> None:
        raise DeliveryFailed("unsupported", "the chat takes no file uploads")

    async def ask(self, to: Destination, text: str, choices: tuple[Choice, ...]) -> str | None:
        await self._publish(f"chat:{to.thread}", _survey_frame(text, choices))
        return None

    async def shutdown(self) -> None:
        await tell_to_reconnect(self._sockets)

    async def _first_frame(self, ws: web.WebSocketResponse) -> tuple[str, str] | None:
        try:
            msg = await ws.receive(timeout=30)
        except asyncio.TimeoutError:
            return None
        frame = parse_frame(msg)
        if not isinstance(frame, dict) or frame.get("type") != "start":
            await send_error(ws, "bad_frame", "the first frame must be {type: start}")
            return None
        session = frame.get("session")
        if not (isinstance(session, str) and SESSION.match(session)):
            session = secrets.token_urlsafe(18)
        return session, self._address(frame.get("customer"), session)

    def _address(self, customer: Any, session: str) -> str:
        """A verified customer id from the host site, or this anonymous session."""
        if isinstance(customer, dict) and self._secret:
            cid, signature = customer.get("id"), customer.get("signature")
            if isinstance(cid, str) and isinstance(signature, str):
                expected = hmac.new(self._secret, cid.encode(), hashlib.sha256).hexdigest()
                if hmac.compare_digest(expected, signature):
                    return f"id:{cid}"
        return f"session:{session}"

    async def _serve(self, ws: web.WebSocketResponse, session: str, address: str) -> None:
        limit = RateLimit(RATE_PER_S, BURST)
        async for msg in ws:
            frame = parse_frame(msg)
            kind = frame.get("type") if isinstance(frame, dict) else None
            if kind == "end":
                await self._turn(ws, session, address, "end", "")
                await ws.close()
                return
            if kind != "message" or not isinstance(frame.get("text"), str):
                await send_error(ws, "bad_frame", "send {type: message, text} or {type: end}")
                continue
            text = frame["text"].strip()
            if not text or len(text) > MAX_TEXT_CHARS:
                await send_error(ws, "bad_frame", f"text is 1 to {MAX_TEXT_CHARS} characters")
                continue
            if not limit.allow():
                await send_error(ws, "rate_limited", "too many messages; please slow down")
                continue
            reply = await self._turn(ws, session, address, "message", text)
            if reply is not None:
                await _send_reply(ws, reply)

    async def _turn(self, ws, session: str, address: str, kind: InboundKind,
                    text: str) -> Reply | None:
        inbound = Inbound(channel="chat", address=address, service_address="web", text=text,
                          kind=kind, thread=session, identity=self.traits.identity)
        try:
            return await self._handle(inbound)
        except Exception:  # answered like SMS: the apology, and the socket stays open
            log.exception("chat.turn_failed")
            return Reply(messages=(FALLBACK,))


async def _send_reply(ws: web.WebSocketResponse, reply: Reply) -> None:
    for line in reply.history:
        await ws.send_json({"type": "message", "from": line["from"], "text": line["text"]})
    for index, text in enumerate(reply.messages):
        last = index == len(reply.messages) - 1
        if reply.survey and last:
            await ws.send_json(_survey_frame(text, reply.choices))
            continue
        frame: dict[str, Any] = {"type": "message", "from": "bot", "text": text}
        if reply.choices and last:
            frame["choices"] = _choices(reply.choices)
        await ws.send_json(frame)
    status: dict[str, Any] = {"type": "status", "state": reply.state}
    if reply.position is not None:
        status |= {"position": reply.position, "estimated_wait_s": reply.estimated_wait_s}
    await ws.send_json(status)


def _choices(choices: tuple[Choice, ...]) -> list[dict[str, str]]:
    return [{"label": c.label, "value": c.value} for c in choices]


def _survey_frame(text: str, choices: tuple[Choice, ...]) -> dict[str, Any]:
    """A rating question: the widget shows its choices as a row of buttons."""
    return {"type": "survey", "from": "bot", "text": text, "choices": _choices(choices)}
