"""Twilio Messaging: inbound SMS webhook -> Inbound; Reply -> <Response><Message>; agents'
texts out through the REST API.

The same webhook shape serves WhatsApp (twilio_whatsapp.py): one Messaging Service may post
both to /twilio/sms, so a `whatsapp:` sender here is handed in as a WhatsApp contact.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import structlog
from aiohttp import web
from twilio.twiml.messaging_response import MessagingResponse

from channels.base import ChannelConfig, HandleInbound, twilio_of
from channels.twilio_auth import TwilioSignature
from service.model import AgentLine, ChannelTraits, Choice, Destination, Inbound, Reply

log = structlog.get_logger(__name__)

TWIML = "text/xml"
REQUIRED = ("MessageSid", "From", "To")
KEPT_FIELDS = ("AccountSid", "MessagingServiceSid", "NumMedia", "FromCountry", "ProfileName")
FALLBACK = ("Sorry, something went wrong on our side. Please text us again in a few minutes, "
            "or reply AGENT to reach a person.")
MEDIA_ONLY = ("Sorry, I can only read text, so I couldn't open what you sent. Please tell me "
              "in a few words what you need, or reply AGENT to talk to a person.")
MAX_BODY_CHARS = 1600  # Twilio's own limit for one inbound message
# Channels whose addresses Twilio writes as "<prefix>:+1555...": the prefix names the channel.
PREFIXED_CHANNELS = ("whatsapp",)


class TwilioMessaging:
    """A Twilio Messaging webhook: signature, parsing, TwiML; shared by SMS and WhatsApp."""
    traits: ClassVar[ChannelTraits]

    def __init__(self, config: ChannelConfig, handle: HandleInbound):
        self._signature = TwilioSignature(config.twilio_auth_token, config.public_url)
        self._handle = handle
        self._twilio = twilio_of(config)

    def routes(self) -> list[web.RouteDef]:
        base = self.traits.route_prefix
        return [web.post(base, self.incoming), web.post(f"{base}/status", self.status)]

    async def incoming(self, request: web.Request) -> web.Response:
        form = await self._signature.verified_form(request)
        inbound = parse(form, self.traits.name)
        structlog.contextvars.bind_contextvars(message_sid=inbound.dedupe_key)
        if not inbound.text.strip() and inbound.provider.get("NumMedia", "0") != "0":
            log.info("messaging.media_only", channel=inbound.channel)
            return web.Response(text=render(Reply(messages=(MEDIA_ONLY,))), content_type=TWIML)
        try:
            reply = await self._handle(inbound)
        except Exception:
            log.exception("messaging.turn_failed", channel=inbound.channel)
            reply = Reply(messages=(FALLBACK,))
        return web.Response(text=render(reply), content_type=TWIML)

    async def status(self, request: web.Request) -> web.Response:
        form = await self._signature.verified_form(request)
        log.info("messaging.status", channel=self.traits.name,
                 message_sid=form.get("MessageSid"), status=form.get("MessageStatus"),
                 error_code=form.get("ErrorCode"))
        return web.Response(text=str(MessagingResponse()), content_type=TWIML)

    # ---- outbound ------------------------------------------------------------------------

    def wire_address(self, address: str) -> str:
        """An address as Twilio writes it on this channel."""
        return address

    async def send_text(self, to: Destination, text: str) -> str | None:
        return await self._twilio.send_message(self.wire_address(to.address),
                                               self.wire_address(to.service_address), text)

    async def connect_agent(self, to: Destination, agent: AgentLine, hello: str) -> None:
        await self.send_text(to, hello)

    async def join_agent(self, to: Destination, agent: AgentLine, hello: str) -> None:
        await self.send_text(to, hello)

    async def release_agent(self, to: Destination, agent: AgentLine) -> None:
        return None  # the next agent's hello is the customer's next message

    async def close(self, to: Destination) -> None:
        return None  # the conversation simply goes quiet; the next text opens a new contact

    async def ask(self, to: Destination, text: str, choices: tuple[Choice, ...]) -> str | None:
        return await self.send_text(to, text)  # the text says how to answer


class TwilioSms(TwilioMessaging):
    traits: ClassVar[ChannelTraits] = ChannelTraits(
        name="sms", identity="phone", prompt_style="text", default_capacity=3, idles_out=True,
        carrier_keywords=True, agent_can_type=True, route_prefix="/twilio/sms",
        customer_paced=True)


def parse(form, channel: str = "sms") -> Inbound:
    """The webhook's fields as an Inbound; a prefixed sender (whatsapp:+1...) names its channel."""
    missing = [name for name in REQUIRED if not form.get(name)]
    if missing:
        raise web.HTTPBadRequest(text=f"missing Twilio fields: {', '.join(missing)}")
    body = form.get("Body", "")
    if len(body) > MAX_BODY_CHARS:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_CHARS, actual_size=len(body))
    channel, sender = _unprefixed(form["From"], channel)
    _, recipient = _unprefixed(form["To"], channel)
    return Inbound(channel=channel, address=sender, service_address=recipient,  # type: ignore[arg-type]
                   text=body, dedupe_key=form["MessageSid"], identity="phone",
                   provider={k: form[k] for k in KEPT_FIELDS if k in form})


def _unprefixed(address: str, channel: str) -> tuple[str, str]:
    """("whatsapp", "+1555...") for "whatsapp:+1555..."; a plain number stays on `channel`."""
    prefix, colon, rest = address.partition(":")
    if colon and prefix in PREFIXED_CHANNELS:
        return prefix, rest
    return channel, address


def render(reply: Reply) -> str:
    return _twiml(reply.messages)


@functools.lru_cache(maxsize=1024)  # most replies are the same few answers and prompts
def _twiml(messages: tuple[str, ...]) -> str:
    response = MessagingResponse()
    for text in messages:
        response.message(text)
    return str(response)
