"""The channel protocol and what the composition root hands each channel.

A channel maps one provider's wire format to the neutral model and back, declares its traits,
and owns its outbound side. It receives one injected callable to hand the contact on and never
imports storage or the orchestrator. The composition root lists the channels explicitly.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
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
    AttachmentUnavailable,
    CallOutcome,
    ChannelTraits,
    Choice,
    DeliveryFailed,
    Destination,
    FileStore,
    FilesUnavailable,
    Inbound,
    MessageStatus,
    Reply,
    file_headers,
    stored_id,
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
    files: FileStore | None = None  # uploads kept by the service (chat uploads, agents' files)


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

    async def send_file(self, to: Destination, attachment: Attachment,
                        message_id: str | None = None) -> str | None: ...


def twilio_of(config: ChannelConfig) -> TwilioRest:
    """The shared REST client, or one of the channel's own when none was given (tests)."""
    return config.twilio or TwilioRest("", config.twilio_auth_token)


# ---- the service's own files (uploads), for the channels that hand them out ---------------

def signed_file_url(files: FileStore, base: str, route_prefix: str, file_id: str,
                    ttl_s: float, now: float | None = None) -> str:
    """`base` + `route_prefix`/files/<id> with an expiry and an HMAC of both: anyone holding
    the URL may fetch the file until then; nobody can make one for another file or time."""
    expires = int((now or time.time()) + ttl_s)
    path = f"{route_prefix}/files/{file_id}"
    return f"{base}{path}?expires={expires}&sig={files.mac(_signed(path, expires))}"


def _signed(path: str, expires: int | str) -> str:
    return f"{path}\n{expires}"


async def serve_signed_file(files: FileStore | None, request: web.Request) -> web.Response:
    """A stored file at its signed URL (`signed_file_url`): 403 JSON for a forged or expired
    signature, 404 for a file that is gone, 503 when the store cannot be read."""
    expires, sig = request.query.get("expires", ""), request.query.get("sig", "")
    if files is None:
        raise _json(web.HTTPNotFound, "no files here")
    if not (expires.isdigit() and len(sig) == 64 and int(expires) >= time.time()
            and hmac.compare_digest(files.mac(_signed(request.path, expires)), sig)):
        raise _json(web.HTTPForbidden, "this file link is not valid or has expired")
    try:
        body = await files.get(request.match_info["file_id"])
    except FilesUnavailable:
        raise _json(web.HTTPServiceUnavailable, "the file cannot be read right now; "
                    "try again in a moment") from None
    if body is None:
        raise _json(web.HTTPNotFound, "this file no longer exists")
    return web.Response(body=body.data, headers=file_headers(body.content_type, "file"))


async def fetch_stored(files: FileStore | None, attachment: Attachment) -> AttachmentBody:
    """A stored file's bytes for `fetch_attachment` (AttachmentUnavailable)."""
    file_id = stored_id(attachment.ref)
    if files is None or file_id is None:
        raise AttachmentUnavailable("unsupported", "not a file kept by this service")
    try:
        body = await files.get(file_id)
    except FilesUnavailable as exc:
        raise AttachmentUnavailable("unavailable", f"the file store failed: {exc}") from exc
    if body is None:
        raise AttachmentUnavailable("gone", "the file was deleted")
    return body


async def delete_stored(files: FileStore | None, attachment: Attachment) -> None:
    """Delete a stored file for `delete_attachment` (DeliveryFailed, retryable, when the
    store cannot be reached)."""
    file_id = stored_id(attachment.ref)
    if files is None or file_id is None:
        raise DeliveryFailed("unsupported", "not a file kept by this service")
    try:
        await files.delete(file_id)
    except FilesUnavailable as exc:
        raise DeliveryFailed("unavailable", f"the file store failed: {exc}",
                             retryable=True) from exc


def _json(kind: type[web.HTTPException], message: str) -> web.HTTPException:
    return kind(text=json.dumps({"error": message}), content_type="application/json")
