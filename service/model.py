"""The channel-neutral model: what channels hand in (Inbound) and get back (Reply), the traits a
channel declares to the core, and the outbound calls the core makes through a channel.

Channels import only this module. Provider fields are mapped into these at the edge.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Protocol

# A channel's value in routing's `channel = x`, events and reports: each channel module
# declares its own (ChannelTraits.name); service/channel_list.py lists the channels.
ChannelName = str
IdentityKind = Literal["phone", "web"]  # which customer key an address is
# text: typed replies ("Reply YES or NO", numbered lists); buttons: choices in a widget;
# keys: a phone menu (press 1, say yes).
PromptStyle = Literal["text", "buttons", "keys"]
ContactState = Literal["self_service", "queued", "with_agent", "closed"]
# message: words typed or spoken; digits: keypad; start: a call or chat begins;
# no_input: the customer said nothing; wait: a queued caller's hold loop asks for news;
# left_queue: the caller left the queue (hung up, bridged); end: the call or chat ended;
# callback: a key pressed by a queued caller in the hold loop (text: the key) to be called back.
# agent_left: the contact's agent left a live call the caller is still on (text: the agent's
# id); after_agent: such a caller asks what comes next (the survey's question, or goodbye).
InboundKind = Literal["message", "digits", "start", "no_input", "wait", "left_queue", "end",
                      "callback", "agent_left", "after_agent"]


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file the customer sent with a message (a photo, a PDF): its type and where the
    channel can fetch it again. `ref` is the channel's own (a media URL): opaque to the core."""
    content_type: str  # "image/jpeg"; application/octet-stream when the channel did not say
    ref: str


@dataclass(frozen=True, slots=True)
class AttachmentBody:
    """An attachment's bytes as the channel fetched them."""
    content_type: str
    data: bytes


class AttachmentUnavailable(Exception):
    """The channel could not fetch an attachment. reason: gone (the provider no longer has
    it), unavailable (the provider failed or did not answer), too_large, unsupported."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


MAX_FILE_BYTES = 5 * 1024 * 1024  # an uploaded file, as Twilio's MMS media


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file kept in the service's own store (an upload): its id, checked type and size."""
    id: str
    content_type: str
    size: int


class FileRefused(Exception):
    """An upload that is not kept. reason: empty, too_large, not_image (the bytes are not the
    image the client said), not_pdf."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class FilesUnavailable(Exception):
    """The file store (PostgreSQL) could not be reached: nothing was kept."""


class FileStore(Protocol):
    """Uploaded files kept by the service (customers' chat uploads, files agents send)."""

    async def put(self, data: bytes, claimed_type: str) -> StoredFile:
        """Keep the bytes under a new random id, their type sniffed (FileRefused,
        FilesUnavailable)."""
        ...

    async def get(self, file_id: str) -> AttachmentBody | None:
        """The file's bytes and type; None when there is no such file (FilesUnavailable)."""
        ...

    async def delete(self, file_id: str) -> None:
        """Delete the file; one already gone counts as deleted (FilesUnavailable)."""
        ...

    def mac(self, text: str) -> str:
        """Hex HMAC-SHA256 of `text` under the store's key, shared by every instance."""
        ...


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
    identity: IdentityKind = "web"  # what the address is (the channel's traits say)
    # The text before redaction, set only when something was masked: for a self-service
    # look-up in this turn, never stored, logged or shown (see conversations/redaction.py).
    unmasked: str | None = field(default=None, repr=False, compare=False)
    attachments: tuple[Attachment, ...] = ()  # files sent with the message, checked at the edge


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
    survey: bool = False  # the last message asks for a rating (a widget shows a survey)
    # The customer will be called back: a queued call leaves the provider's queue and ends.
    callback: bool = False

    def to_json(self) -> dict[str, Any]:
        # Spelled out: dataclasses.asdict deep-copies every field and costs ~20 us per turn.
        return {"messages": list(self.messages),
                "choices": [{"label": c.label, "value": c.value, "digit": c.digit}
                            for c in self.choices],
                "state": self.state, "contact_id": self.contact_id, "position": self.position,
                "estimated_wait_s": self.estimated_wait_s, "queue": self.queue,
                "expects_input": self.expects_input, "turn": self.turn,
                "history": [dict(entry) for entry in self.history], "survey": self.survey,
                "callback": self.callback}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Reply":
        return cls(**{**data, "messages": tuple(data.get("messages", ())),
                      "history": tuple(data.get("history", ())),
                      "choices": tuple(Choice(**c) for c in data.get("choices", ()))})


@dataclass(frozen=True, slots=True)
class ChannelTraits:
    """What the core needs to know about a channel, declared by the channel itself."""
    name: ChannelName
    identity: IdentityKind  # "phone": an E.164 number shared with the other phone channels
    prompt_style: PromptStyle
    default_capacity: int  # contacts of this channel an agent takes at once unless configured
    idles_out: bool  # a quiet conversation ends after the idle timeout (texting channels)
    carrier_keywords: bool  # STOP / START / HELP are the carrier's opt-out keywords
    agent_can_type: bool  # an agent's typed messages reach the customer (not on a call)
    route_prefix: str  # every HTTP route of the channel is under this path
    end_outcome: str = "customer_left"  # the outcome of a contact the customer ends in self-service
    reply_window_s: int | None = None  # agents may write only this long after the customer did
    customer_paced: bool = False  # the customer writes when they like (rate limit, loop breaker)
    live_call: bool = False  # a call: its thread is the contact; the provider holds it when we fail
    calls_back: bool = False  # a queued customer may ask to be called back (`call_back`)
    # Past the reply window only a provider-approved message template reaches the customer
    # (`send_template`); templates may be sent inside the window too.
    templates_after_window: bool = False
    sends_files: bool = False  # an agent may send the customer a file (`send_file`)


# The traits a message template (replies.yaml `templates`) may name as what it applies to.
TEMPLATE_TRAITS = ("templates_after_window",)


@dataclass(frozen=True, slots=True)
class Destination:
    """One contact as an outbound call sees it: who, from which of our addresses, which thread."""
    contact_id: str
    address: str
    service_address: str
    thread: str | None = None
    customer_last_at: float | None = None  # when the customer last wrote (for reply windows)


@dataclass(frozen=True, slots=True)
class AgentLine:
    """How an agent is reached when a call is connected to them."""
    id: str
    name: str
    phone: str | None = None
    client_identity: str | None = None


class DeliveryFailed(Exception):
    """An outbound call the provider refused or could not take; `code` is the provider's."""

    def __init__(self, reason: str, message: str, code: str | None = None,
                 retryable: bool = False, maybe_sent: bool = False,
                 retry_after_s: float | None = None):
        super().__init__(message)
        self.reason = reason  # outside_window, not_text, refused, unreachable, no_answer
        self.code = code  # e.g. Twilio's "63016": outside WhatsApp's 24-hour window
        self.retryable = retryable
        # The request may have reached the provider (its answer was lost): look before resending.
        self.maybe_sent = maybe_sent
        self.retry_after_s = retry_after_s  # the provider asked us to wait this long (Retry-After)


# What became of a call placed back to a customer (a provider's status callback):
# answered: the customer picked up; ended: the call ended after that; no_answer, busy, failed:
# the customer was not reached.
CallState = Literal["answered", "ended", "no_answer", "busy", "failed"]


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """A provider's news about a call placed back to a customer (`Outbound.call_back`)."""
    contact_id: str
    attempt: int  # which attempt of the contact's callback the call was
    state: CallState
    provider_id: str | None = None  # e.g. Twilio's CallSid of the placed call


# What the agent console shows of one outbound message (docs/interfaces.md, message_status).
MessageState = Literal["queued", "sent", "delivered", "failed"]


@dataclass(frozen=True, slots=True)
class MessageStatus:
    """A provider's news about one outbound message (a status callback), mapped by the channel."""
    state: MessageState
    provider_id: str | None = None  # e.g. Twilio's MessageSid
    message_id: str | None = None  # our id, when the callback carries it back
    reason: str | None = None  # why it failed, in words
    code: str | None = None  # the provider's error code


class Outbound(Protocol):
    """The channel's outbound side: thin calls, no retries (the caller decides about those)."""

    async def send_text(self, to: Destination, text: str,
                        message_id: str | None = None) -> str | None:
        """Deliver an agent's text; the provider's message id when it has one. `message_id`
        is ours, for the provider's status callbacks to name."""
        ...

    async def connect_agent(self, to: Destination, agent: AgentLine, hello: str,
                            message_id: str | None = None) -> str | None:
        """The agent accepted: bridge the call, or tell the customer who they talk with (the
        provider's message id when that is a message)."""
        ...

    async def find_sent(self, to: Destination, text: str, since: float) -> str | None:
        """The provider's id of a message with this text sent to `to` since then, if any: how
        a send whose answer was lost is told apart from one that never arrived."""
        ...

    async def join_agent(self, to: Destination, agent: AgentLine, hello: str) -> None:
        """A transferred contact's next agent accepted: add them (a call's conference) or
        tell the customer who they talk with now."""
        ...

    async def release_agent(self, to: Destination, agent: AgentLine) -> None:
        """The agent leaves before the next one joins (a cold transfer): a caller is held
        with music, the agent's leg is dropped."""
        ...

    async def drop_agent(self, to: Destination, agent: AgentLine) -> None:
        """A warm transfer completed (the next agent accepted): the first agent's leg of a
        call is dropped; nothing to do where there is no leg."""
        ...

    async def call_back(self, to: Destination, attempt: int) -> str | None:
        """Place a call to a customer who asked to be called back, into the contact's
        conversation where its agent joins; its outcome comes back as `CallOutcome`s.
        Channels whose traits lack `calls_back` refuse (DeliveryFailed)."""
        ...

    async def send_template(self, to: Destination, ref: str, variables: Mapping[str, str],
                            message_id: str | None = None) -> str | None:
        """Deliver a provider-approved message template (`ref`, e.g. a Twilio ContentSid)
        with its numbered variables filled; the provider's message id. Channels whose traits
        lack `templates_after_window` refuse (DeliveryFailed, reason `not_template`)."""
        ...

    async def close(self, to: Destination) -> None:
        """The agent wrapped the contact up."""
        ...

    async def ask(self, to: Destination, text: str, choices: tuple[Choice, ...]) -> str | None:
        """Ask for a rating outside a turn (a survey after wrap-up), with its answers."""
        ...

    async def fetch_attachment(self, attachment: Attachment) -> AttachmentBody:
        """The bytes of a file the customer sent, fetched from the provider with the
        account's credentials; AttachmentUnavailable when it cannot be had."""
        ...

    async def delete_attachment(self, attachment: Attachment) -> None:
        """Ask the provider to delete a file the customer sent (an erasure); one already
        gone counts as deleted. DeliveryFailed (retryable) when the provider failed."""
        ...

    async def send_file(self, to: Destination, attachment: Attachment,
                        message_id: str | None = None) -> str | None:
        """Deliver a file an agent sends (`attachment.ref`: a stored file's reference,
        `stored_ref`); the provider's message id. Channels whose traits lack `sends_files`
        refuse (DeliveryFailed, reason `not_file`)."""
        ...


STORED_PREFIX = "stored:"  # an Attachment.ref naming a file of the service's own store


def stored_ref(file_id: str) -> str:
    """The attachment reference of a stored file (an upload)."""
    return STORED_PREFIX + file_id


def stored_id(ref: str) -> str | None:
    """The stored file an attachment reference names, if it names one."""
    return ref[len(STORED_PREFIX):] if ref.startswith(STORED_PREFIX) else None


# Shown in a page; every other type is served as a download (no HTML or SVG in our origin).
INLINE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


def file_headers(content_type: str, name: str) -> dict[str, str]:
    """A file's answer to a browser: its type, never sniffed or kept by shared caches; inline
    only for raster images, every other type a download named `name` and its extension."""
    filename = f"{name}{mimetypes.guess_extension(content_type) or ''}"
    disposition = "inline" if content_type in INLINE_TYPES else "attachment"
    return {"Content-Type": content_type,
            "Content-Disposition": f'{disposition}; filename="{filename}"',
            "Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox"}


class OutboundChannel(Outbound, Protocol):
    """A channel as the core sees it: its traits and its outbound side."""
    traits: ChannelTraits
