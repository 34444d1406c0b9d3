"""Twilio Messaging: inbound SMS webhook -> Inbound; Reply -> <Response><Message>; agents'
texts out through the REST API.

Media (MMS, WhatsApp) arrive as `NumMedia`, `MediaUrl{N}`, `MediaContentType{N}` and become
`Inbound.attachments`: only Media resources of our account on the configured API host are
kept (they are fetched later with the account's credentials, never any other URL).

The same webhook shape serves WhatsApp (twilio_whatsapp.py): one Messaging Service may post
both to /twilio/sms, so a `whatsapp:` sender here is handed in as a WhatsApp contact.
"""

from __future__ import annotations

import functools
import re
from typing import Callable, ClassVar, Mapping
from xml.sax.saxutils import escape  # what ElementTree does to element text: &, < and >

import structlog
from aiohttp import web
from twilio.twiml.messaging_response import MessagingResponse

from channels.base import (
    ChannelConfig,
    HandleInbound,
    delete_stored,
    fetch_stored,
    serve_signed_file,
    signed_file_url,
    twilio_of,
)
from channels.twilio_auth import TwilioSignature
from service.model import (
    AgentLine,
    Attachment,
    AttachmentBody,
    ChannelTraits,
    Choice,
    DeliveryFailed,
    Destination,
    Inbound,
    MessageStatus,
    Reply,
    stored_id,
)

log = structlog.get_logger(__name__)

TWIML = "text/xml"
REQUIRED = ("MessageSid", "From", "To")
KEPT_FIELDS = ("AccountSid", "MessagingServiceSid", "NumMedia", "FromCountry", "ProfileName")
FALLBACK = ("Sorry, something went wrong on our side. Please text us again in a few minutes, "
            "or reply AGENT to reach a person.")
# Media sent with no words, none of it usable (no URL, a foreign host): nothing reaches the core.
MEDIA_ONLY = ("Sorry, I can only read text, so I couldn't open what you sent. Please tell me "
              "in a few words what you need, or reply AGENT to talk to a person.")
MAX_MEDIA = 10  # Twilio's own limit of media on one inbound message
UNKNOWN_TYPE = "application/octet-stream"
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,127}")
MEDIA_URL_TTL_S = 3600  # how long Twilio may fetch a file an agent sent (its MediaUrl)
MAX_BODY_CHARS = 1600  # Twilio's own limit for one inbound message
# Channels whose addresses Twilio writes as "<prefix>:+1555...": the prefix names the channel.
PREFIXED_CHANNELS = ("whatsapp",)
# Twilio's MessageStatus values as the agent console's states; others (receiving, ...) are
# not about our outbound messages and are ignored.
STATES = {"accepted": "sent", "scheduled": "sent", "queued": "sent", "sending": "sent",
          "sent": "sent", "delivered": "delivered", "read": "delivered",
          "undelivered": "failed", "failed": "failed", "canceled": "failed"}


class TwilioMessaging:
    """A Twilio Messaging webhook: signature, parsing, TwiML; shared by SMS and WhatsApp."""
    traits: ClassVar[ChannelTraits]

    def __init__(self, config: ChannelConfig, handle: HandleInbound):
        self._signature = TwilioSignature(config.twilio_auth_token, config.public_url)
        self._handle = handle
        self._twilio = twilio_of(config)
        self._report_status = config.message_status
        self._public_url = config.public_url.rstrip("/")
        self._files = config.files

    def routes(self) -> list[web.RouteDef]:
        base = self.traits.route_prefix
        return [web.post(base, self.incoming), web.post(f"{base}/status", self.status),
                web.get(f"{base}/files/{{file_id}}", self.media)]

    async def media(self, request: web.Request) -> web.Response:
        """A file an agent sent, fetched by Twilio at the signed, expiring MediaUrl we gave."""
        return await serve_signed_file(self._files, request)

    async def incoming(self, request: web.Request) -> web.Response:
        form = await self._signature.verified_form(request)
        inbound = parse(form, self.traits.name, self._twilio.is_media_url)
        structlog.contextvars.bind_contextvars(message_sid=inbound.dedupe_key)
        if not inbound.text.strip() and not inbound.attachments and \
                _media_count(form) > 0:  # every file dropped: nothing for the core to keep
            log.info("messaging.media_only", channel=inbound.channel)
            return web.Response(text=render(Reply(messages=(MEDIA_ONLY,))), content_type=TWIML)
        try:
            reply = await self._handle(inbound)
        except Exception:
            log.exception("messaging.turn_failed", channel=inbound.channel)
            reply = Reply(messages=(FALLBACK,))
        return web.Response(text=render(reply), content_type=TWIML)

    async def status(self, request: web.Request) -> web.Response:
        """Twilio's news about a message we sent: its state reaches the outbox and the agent."""
        form = await self._signature.verified_form(request)
        log.info("messaging.status", channel=self.traits.name,
                 message_sid=form.get("MessageSid"), status=form.get("MessageStatus"),
                 error_code=form.get("ErrorCode"))
        status = parse_status(form, request.query.get("message"))
        if status is not None:
            try:
                await self._report_status(status)
            except Exception:  # Twilio gets its 200 all the same; the state stays as it was
                log.exception("messaging.status_failed", message_sid=status.provider_id)
        return web.Response(text=str(MessagingResponse()), content_type=TWIML)

    # ---- outbound ------------------------------------------------------------------------

    def wire_address(self, address: str) -> str:
        """An address as Twilio writes it on this channel."""
        return address

    async def send_text(self, to: Destination, text: str,
                        message_id: str | None = None) -> str | None:
        return await self._twilio.send_message(self.wire_address(to.address),
                                               self.wire_address(to.service_address), text,
                                               self.status_callback(message_id))

    async def send_template(self, to: Destination, ref: str, variables: Mapping[str, str],
                            message_id: str | None = None) -> str | None:
        if not self.traits.templates_after_window:
            raise DeliveryFailed("not_template", f"{self.traits.name} sends no message "
                                 "templates: write to the customer instead")
        return await self._twilio.send_content(self.wire_address(to.address),
                                               self.wire_address(to.service_address), ref,
                                               variables, self.status_callback(message_id))

    async def connect_agent(self, to: Destination, agent: AgentLine, hello: str,
                            message_id: str | None = None) -> str | None:
        return await self.send_text(to, hello, message_id)

    async def find_sent(self, to: Destination, text: str, since: float) -> str | None:
        return await self._twilio.find_message(self.wire_address(to.address),
                                               self.wire_address(to.service_address), text,
                                               since)

    def status_callback(self, message_id: str | None) -> str:
        """The public URL Twilio posts this message's states to; it names our message id, so
        a state arrives even for a message whose create answer was lost."""
        url = f"{self._public_url}{self.traits.route_prefix}/status"
        return f"{url}?message={message_id}" if message_id else url

    async def join_agent(self, to: Destination, agent: AgentLine, hello: str) -> None:
        await self.send_text(to, hello)

    async def release_agent(self, to: Destination, agent: AgentLine) -> None:
        return None  # the next agent's hello is the customer's next message

    async def drop_agent(self, to: Destination, agent: AgentLine) -> None:
        return None  # no line to drop: the next agent's hello already went out

    async def call_back(self, to: Destination, attempt: int) -> str | None:
        raise DeliveryFailed("not_call", f"{self.traits.name} cannot call a customer back")

    async def close(self, to: Destination) -> None:
        return None  # the conversation simply goes quiet; the next text opens a new contact

    async def ask(self, to: Destination, text: str, choices: tuple[Choice, ...]) -> str | None:
        return await self.send_text(to, text)  # the text says how to answer

    async def send_file(self, to: Destination, attachment: Attachment,
                        message_id: str | None = None) -> str | None:
        """The file as MMS media: Twilio fetches it from a signed URL that expires."""
        file_id = stored_id(attachment.ref)
        if not self.traits.sends_files or file_id is None or self._files is None:
            raise DeliveryFailed("not_file", f"{self.traits.name} cannot send this file")
        url = signed_file_url(self._files, self._public_url, self.traits.route_prefix,
                              file_id, MEDIA_URL_TTL_S)
        return await self._twilio.send_media(self.wire_address(to.address),
                                             self.wire_address(to.service_address), url,
                                             self.status_callback(message_id))

    async def fetch_attachment(self, attachment: Attachment) -> AttachmentBody:
        if stored_id(attachment.ref) is not None:  # a file an agent sent
            return await fetch_stored(self._files, attachment)
        return await self._twilio.fetch_media(attachment.ref)

    async def delete_attachment(self, attachment: Attachment) -> None:
        if stored_id(attachment.ref) is not None:
            return await delete_stored(self._files, attachment)
        await self._twilio.delete_media(attachment.ref)


class TwilioSms(TwilioMessaging):
    traits: ClassVar[ChannelTraits] = ChannelTraits(
        name="sms", identity="phone", prompt_style="text", default_capacity=3, idles_out=True,
        carrier_keywords=True, agent_can_type=True, route_prefix="/twilio/sms",
        customer_paced=True, sends_files=True)


def parse(form, channel: str = "sms",
          media_ok: Callable[[str], bool] = lambda url: False) -> Inbound:
    """The webhook's fields as an Inbound; a prefixed sender (whatsapp:+1...) names its channel.
    Media whose URL `media_ok` refuses is dropped with a log line."""
    missing = [name for name in REQUIRED if not form.get(name)]
    if missing:
        raise web.HTTPBadRequest(text=f"missing Twilio fields: {', '.join(missing)}")
    body = form.get("Body", "")
    if len(body) > MAX_BODY_CHARS:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_CHARS, actual_size=len(body))
    channel, sender = _unprefixed(form["From"], channel)
    _, recipient = _unprefixed(form["To"], channel)
    return Inbound(channel=channel, address=sender, service_address=recipient,
                   text=body, dedupe_key=form["MessageSid"], identity="phone",
                   provider={k: form[k] for k in KEPT_FIELDS if k in form},
                   attachments=attachments(form, media_ok))


def attachments(form, media_ok: Callable[[str], bool]) -> tuple[Attachment, ...]:
    """MediaUrl{N} / MediaContentType{N} for N below NumMedia (at most Twilio's 10): those
    on our account's API host, each with its type (unknown: application/octet-stream)."""
    kept = []
    for n in range(min(_media_count(form), MAX_MEDIA)):
        url = form.get(f"MediaUrl{n}", "")
        if not url or not media_ok(url):
            log.warning("messaging.media_dropped", index=n, url=url[:200],
                        why="missing" if not url else "not a media URL of our Twilio account")
            continue
        kept.append(Attachment(_media_type(form.get(f"MediaContentType{n}", "")), url))
    return tuple(kept)


def _media_count(form) -> int:
    raw = form.get("NumMedia", "0") or "0"
    try:
        count = int(raw)
    except ValueError:
        log.warning("messaging.bad_num_media", num_media=raw[:20])
        return 0
    if count > MAX_MEDIA:
        log.warning("messaging.too_many_media", num_media=count, kept=MAX_MEDIA)
    return max(count, 0)


def _media_type(raw: str) -> str:
    """A media type as `type/subtype`, lower case, parameters dropped; unknown when malformed."""
    kind = raw.split(";", 1)[0].strip().lower()
    return kind if _MEDIA_TYPE.fullmatch(kind) else UNKNOWN_TYPE


def parse_status(form, message_id: str | None) -> MessageStatus | None:
    """A status callback's fields as a MessageStatus; None for states that are not news."""
    state = STATES.get(form.get("MessageStatus", ""))
    sid = form.get("MessageSid") or None
    if state is None or (sid is None and not message_id):
        return None
    code = form.get("ErrorCode") or None
    reason = (f"Twilio reports it {form['MessageStatus']}"
              f"{f' (error {code})' if code else ''}") if state == "failed" else None
    return MessageStatus(state, sid, message_id, reason, code)  # type: ignore[arg-type]


def _unprefixed(address: str, channel: str) -> tuple[str, str]:
    """("whatsapp", "+1555...") for "whatsapp:+1555..."; a plain number stays on `channel`."""
    prefix, colon, rest = address.partition(":")
    if colon and prefix in PREFIXED_CHANNELS:
        return prefix, rest
    return channel, address


def render(reply: Reply) -> str:
    return _twiml(reply.messages)


XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'


@functools.lru_cache(maxsize=1024)  # most replies are the same few answers and prompts
def _twiml(messages: tuple[str, ...]) -> str:
    """The document MessagingResponse would write (tests hold them equal), without building
    an ElementTree: a reply naming the customer or a queue position is new every time."""
    if not messages:
        return XML_DECLARATION + "<Response />"
    body = "".join([f"<Message>{escape(text)}</Message>" if text else "<Message />"
                    for text in messages])
    document = f"{XML_DECLARATION}<Response>{body}</Response>"
    # ElementTree writes what UTF-8 cannot hold (a lone surrogate) as a character reference.
    return document.encode("utf-8", "xmlcharrefreplace").decode("utf-8")
