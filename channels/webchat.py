"""Web chat: WebSocket frames <-> Inbound / Reply (frames in docs/interfaces.md).

A session token names the conversation; reconnecting with it resumes the same contact and
replays its transcript. A visitor is linked to a known customer only when the host site
vouches for them: `customer: {"id": ..., "signature": hex HMAC-SHA256(secret, id)}`.

Files: the `session` frame carries `files`, the session's upload credential (its session and
address, signed with the file store's key). `POST /chat/files` with it as a bearer token and
the file as the body (at most 5 MB; images and PDFs recognised from their bytes) keeps the
file in the service's store and hands the core an ordinary message with the file as its
`Attachment` (`ref`: the stored file); the reply's frames go to the session's sockets. Files
reach the widget (the customer's own, an agent's) as signed links under `/chat/files/`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
import secrets
import weakref
from collections import OrderedDict
from typing import Any, ClassVar, Mapping
from urllib.parse import urlsplit

import structlog
from aiohttp import WSCloseCode, web

from channels.base import (
    ChannelConfig,
    HandleInbound,
    delete_stored,
    fetch_stored,
    serve_signed_file,
    signed_file_url,
)
from service.model import (
    MAX_FILE_BYTES,
    AgentLine,
    Attachment,
    AttachmentBody,
    ChannelTraits,
    Choice,
    DeliveryFailed,
    Destination,
    FileRefused,
    FilesUnavailable,
    Inbound,
    InboundKind,
    Reply,
    stored_id,
    stored_ref,
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
FILE_LINK_TTL_S = 24 * 3600  # a file link in the widget; a reconnect's replay signs anew
UPLOAD_RATE = (0.5, 5)  # per second and burst, per session: a few photos at once, not a flood
MAX_UPLOAD_LIMITS = 10_000  # sessions whose upload rate this instance remembers
NOT_SENT = "the file could not be sent right now; try again in a moment"
REFUSED_STATUS = {"empty": 400, "too_large": 413, "not_image": 415, "not_pdf": 415}


class WebChat:
    traits: ClassVar[ChannelTraits] = ChannelTraits(
        name="chat", identity="web", prompt_style="buttons", default_capacity=3, idles_out=False,
        carrier_keywords=False, agent_can_type=True, route_prefix="/chat",
        customer_paced=True, sends_files=True)

    def __init__(self, config: ChannelConfig, handle: HandleInbound):
        self._handle = handle
        self._subscribe = config.subscribe
        self._publish = config.publish
        self._secret = config.chat_identity_secret.encode()
        own = urlsplit(config.public_url)
        self._origins = frozenset(config.chat_origins) | {f"{own.scheme}://{own.netloc}".lower()}
        self._any_origin = not config.chat_origins
        self._sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
        self._files = config.files
        # Uploads per session on this instance (a flood of 5 MB files is refused early).
        self._upload_limits: OrderedDict[str, RateLimit] = OrderedDict()

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/chat/ws", self.websocket), web.post("/chat/files", self.upload),
                web.options("/chat/files", self.upload_preflight),
                web.get("/chat/files/{file_id}", self.download)]

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        origin = request.headers.get("Origin")
        if not self._origin_allowed(origin):
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
                                    "contact_id": reply.contact_id,
                                    **self._upload_credential(session, address)})
                await _send_reply(ws, reply, self._files_of)
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
        return await fetch_stored(self._files, attachment)

    async def delete_attachment(self, attachment: Attachment) -> None:
        await delete_stored(self._files, attachment)

    async def send_file(self, to: Destination, attachment: Attachment,
                        message_id: str | None = None) -> str | None:
        await self._publish(f"chat:{to.thread}", {"type": "message", "from": "agent",
                                                  "text": "", **self._files_of([attachment])})
        return None

    # ---- files ---------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        """A file from the chat session the bearer credential names: kept, then handed to
        the core as a message with the file attached. Errors are JSON naming why."""
        origin = request.headers.get("Origin")
        cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin else {}
        try:
            if not self._origin_allowed(origin):
                log.warning("chat.origin_refused", origin=origin)
                raise _UploadRefused(403, "this site may not send files to the chat")
            return await self._take_upload(request, cors)
        except _UploadRefused as refused:
            return web.json_response({"error": str(refused)}, status=refused.status,
                                     headers=cors if self._origin_allowed(origin) else {})

    async def _take_upload(self, request: web.Request, cors: dict[str, str]) -> web.Response:
        session, address = self._credential_of(request)
        if self._files is None:
            raise _UploadRefused(404, "this chat takes no files")
        if not self._upload_limit(session).allow():
            raise _UploadRefused(429, "too many files at once; wait a moment and send again")
        try:  # the app's body cap is for forms and JSON; a file may be larger
            data = await request.clone(client_max_size=MAX_FILE_BYTES).read()
        except web.HTTPRequestEntityTooLarge:
            raise _UploadRefused(413, "the file is over 5 MB: send a smaller one") from None
        try:
            stored = await self._files.put(data, request.headers.get("Content-Type", ""))
        except FileRefused as exc:
            raise _UploadRefused(REFUSED_STATUS.get(exc.reason, 400), str(exc)) from None
        except FilesUnavailable:
            raise _UploadRefused(503, NOT_SENT) from None
        attachment = Attachment(stored.content_type, stored_ref(stored.id))
        # No words: a file's name is not something the customer said (the classifier would
        # read "refund.pdf" as a request); in self-service the core asks what they need.
        inbound = Inbound(channel="chat", address=address, service_address="web",
                          text="", kind="message", thread=session,
                          identity=self.traits.identity, attachments=(attachment,))
        try:
            reply = await self._handle(inbound)
        except Exception:  # the file is kept with the failed turn's record; the widget retries
            log.exception("chat.upload_turn_failed")
            raise _UploadRefused(503, NOT_SENT) from None
        log.info("chat.file_received", content_type=stored.content_type, size=stored.size)
        for frame in _reply_frames(reply, self._files_of):
            await self._publish(f"chat:{session}", frame)
        return web.json_response({"file": {"content_type": stored.content_type,
                                           "size": stored.size,
                                           **self._files_of([attachment])["files"][0]}},
                                 headers=cors)

    async def upload_preflight(self, request: web.Request) -> web.Response:
        """The browser's CORS preflight of an upload from the host site's page."""
        origin = request.headers.get("Origin")
        if not self._origin_allowed(origin):
            raise web.HTTPForbidden(text="this site may not send files to the chat")
        cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin else {}
        return web.Response(status=204, headers={
            **cors, "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": "600"})

    async def download(self, request: web.Request) -> web.Response:
        """A file at the signed link the session was given (`files` of a message frame)."""
        return await serve_signed_file(self._files, request)

    def _files_of(self, attachments: list[Attachment]) -> dict[str, Any]:
        """A message frame's `files`: type and a signed link of each stored file."""
        if self._files is None:
            return {}
        shown = []
        for attachment in attachments:
            file_id = stored_id(attachment.ref)
            if file_id is not None:
                shown.append({"content_type": attachment.content_type,
                              "url": signed_file_url(self._files, "", self.traits.route_prefix,
                                                     file_id, FILE_LINK_TTL_S)})
        return {"files": shown} if shown else {}

    def _upload_credential(self, session: str, address: str) -> dict[str, str]:
        """The session frame's `files`: the credential `POST /chat/files` takes."""
        if self._files is None:
            return {}
        named = base64.urlsafe_b64encode(f"{session}\n{address}".encode()).decode().rstrip("=")
        return {"files": f"{named}.{self._files.mac(_credential_text(session, address))}"}

    def _credential_of(self, request: web.Request) -> tuple[str, str]:
        """The session and address an upload's bearer credential names; 401 otherwise."""
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        named, _, mac = credential.strip().partition(".")
        try:
            session, _, address = base64.urlsafe_b64decode(
                named + "=" * (-len(named) % 4)).decode().partition("\n")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            session = address = ""
        if scheme.lower() != "bearer" or not SESSION.match(session) or not address or \
                self._files is None or len(mac) != 64 or not hmac.compare_digest(
                    self._files.mac(_credential_text(session, address)), mac):
            log.warning("chat.upload_refused", why="credential")
            raise _UploadRefused(401, "this chat session may not send files here: reconnect "
                                 "the chat and try again")
        return session, address

    def _upload_limit(self, session: str) -> RateLimit:
        limit = self._upload_limits.pop(session, None) or RateLimit(*UPLOAD_RATE)
        self._upload_limits[session] = limit  # most recent last; the oldest let go
        while len(self._upload_limits) > MAX_UPLOAD_LIMITS:
            self._upload_limits.popitem(last=False)
        return limit

    def _origin_allowed(self, origin: str | None) -> bool:
        # Browsers always send Origin; other clients cannot ride on a visitor's page.
        return origin is None or self._any_origin or origin.lower() in self._origins

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
                await _send_reply(ws, reply, self._files_of)

    async def _turn(self, ws, session: str, address: str, kind: InboundKind,
                    text: str) -> Reply | None:
        inbound = Inbound(channel="chat", address=address, service_address="web", text=text,
                          kind=kind, thread=session, identity=self.traits.identity)
        try:
            return await self._handle(inbound)
        except Exception:  # answered like SMS: the apology, and the socket stays open
            log.exception("chat.turn_failed")
            return Reply(messages=(FALLBACK,))


async def _send_reply(ws: web.WebSocketResponse, reply: Reply, files: Any) -> None:
    for frame in _reply_frames(reply, files):
        await ws.send_json(frame)


def _reply_frames(reply: Reply, files: Any) -> list[dict[str, Any]]:
    """A reply as the widget's frames: the transcript when resuming (each line's files as
    signed links, by `files`), the bot's messages, the status."""
    frames: list[dict[str, Any]] = []
    for line in reply.history:
        attached = [Attachment(f["content_type"], f["ref"]) for f in line.get("files", ())]
        frames.append({"type": "message", "from": line["from"], "text": line["text"],
                       **(files(attached) if attached else {})})
    for index, text in enumerate(reply.messages):
        last = index == len(reply.messages) - 1
        if reply.survey and last:
            frames.append(_survey_frame(text, reply.choices))
            continue
        frame: dict[str, Any] = {"type": "message", "from": "bot", "text": text}
        if reply.choices and last:
            frame["choices"] = _choices(reply.choices)
        frames.append(frame)
    status: dict[str, Any] = {"type": "status", "state": reply.state}
    if reply.position is not None:
        status |= {"position": reply.position, "estimated_wait_s": reply.estimated_wait_s}
    frames.append(status)
    return frames


def _credential_text(session: str, address: str) -> str:
    return f"chat-files\n{session}\n{address}"


class _UploadRefused(Exception):
    """An upload answered with an error: its HTTP status and words."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _choices(choices: tuple[Choice, ...]) -> list[dict[str, str]]:
    return [{"label": c.label, "value": c.value} for c in choices]


def _survey_frame(text: str, choices: tuple[Choice, ...]) -> dict[str, Any]:
    """A rating question: the widget shows its choices as a row of buttons."""
    return {"type": "survey", "from": "bot", "text": text, "choices": _choices(choices)}
