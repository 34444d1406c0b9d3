"""Twilio Messaging: inbound SMS webhook -> Inbound; Reply -> <Response><Message>."""

from __future__ import annotations

import functools
from typing import ClassVar

import structlog
from aiohttp import web
from twilio.twiml.messaging_response import MessagingResponse

from channels.base import ChannelConfig, HandleInbound, register
from channels.twilio_auth import TwilioSignature
from service.model import Inbound, Reply

log = structlog.get_logger(__name__)

TWIML = "text/xml"
REQUIRED = ("MessageSid", "From", "To")
KEPT_FIELDS = ("AccountSid", "MessagingServiceSid", "NumMedia", "FromCountry")
FALLBACK = ("Sorry, something went wrong on our side. Please text us again in a few minutes, "
            "or reply AGENT to reach a person.")
MAX_BODY_CHARS = 1600  # Twilio's own limit for one inbound message


@register
class TwilioSms:
    name: ClassVar[str] = "sms"

    def __init__(self, config: ChannelConfig, handle: HandleInbound):
        self._signature = TwilioSignature(config.twilio_auth_token, config.public_url)
        self._handle = handle

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/twilio/sms", self.incoming), web.post("/twilio/sms/status", self.status)]

    async def incoming(self, request: web.Request) -> web.Response:
        form = await self._signature.verified_form(request)
        inbound = parse(form)
        structlog.contextvars.bind_contextvars(message_sid=inbound.dedupe_key)
        try:
            reply = await self._handle(inbound)
        except Exception:
            log.exception("sms.turn_failed")
            reply = Reply(messages=(FALLBACK,))
        return web.Response(text=render(reply), content_type=TWIML)

    async def status(self, request: web.Request) -> web.Response:
        form = await self._signature.verified_form(request)
        log.info("sms.status", message_sid=form.get("MessageSid"),
                 status=form.get("MessageStatus"), error_code=form.get("ErrorCode"))
        return web.Response(text=str(MessagingResponse()), content_type=TWIML)


def parse(form) -> Inbound:
    missing = [name for name in REQUIRED if not form.get(name)]
    if missing:
        raise web.HTTPBadRequest(text=f"missing Twilio fields: {', '.join(missing)}")
    body = form.get("Body", "")
    if len(body) > MAX_BODY_CHARS:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_CHARS, actual_size=len(body))
    return Inbound(channel="sms", address=form["From"], service_address=form["To"],
                   text=body, dedupe_key=form["MessageSid"],
                   provider={k: form[k] for k in KEPT_FIELDS if k in form})


def render(reply: Reply) -> str:
    return _twiml(reply.messages)


@functools.lru_cache(maxsize=1024)  # most replies are the same few answers and prompts
def _twiml(messages: tuple[str, ...]) -> str:
    response = MessagingResponse()
    for text in messages:
        response.message(text)
    return str(response)
