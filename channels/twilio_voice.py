"""Twilio Voice: call webhooks -> Inbound; Reply -> Say / Gather / Enqueue TwiML.

Every URL the service puts into its TwiML lives under /twilio/voice/ and carries the turn
number, so Twilio's retries of one step are recognised (CallSid + turn) and answered the same.

After an agent: when the contact's agent leaves the conference (their leg ends) while the
caller is still in it, or the agent wraps up while both are on the line, the caller's call is
moved to /twilio/voice/after-agent, which plays the survey's keypad question (or a goodbye)
before the hang-up; the answer comes back through /gather like any other key press.
"""

from __future__ import annotations

import functools
from typing import Callable, ClassVar, Mapping
from urllib.parse import urlencode

import structlog
from aiohttp import web
from twilio.twiml.voice_response import VoiceResponse

from channels.base import ChannelConfig, HandleInbound, twilio_of
from channels.twilio_auth import TwilioSignature
from channels.twilio_rest import agent_label, conference_twiml
from service.model import (
    AgentLine,
    Attachment,
    AttachmentBody,
    AttachmentUnavailable,
    CallOutcome,
    CallState,
    ChannelTraits,
    Choice,
    DeliveryFailed,
    Destination,
    Inbound,
    InboundKind,
    Reply,
)

log = structlog.get_logger(__name__)

TWIML = "text/xml"
BASE = "/twilio/voice"
GATHER_TIMEOUT_S = 6
HOLD_PAUSE_S = 20
HOLD_MUSIC_PAUSE_S = 4  # short: the spoken loop comes back before the caller wonders
ALWAYS_HINTS = ("agent", "representative", "yes", "no")
FALLBACK = "Sorry, we're having technical trouble. Please hold for the next available agent."
CONNECTING = "Thanks for holding. Connecting you now."
PASSING_ON = "I'm passing you to a colleague. Please stay on the line."
WAIT_FOR_JOIN_S = 2.0  # how often a warm transfer's drop looks again for the next agent
NOT_FOUND = "20404"  # Twilio: no such resource (a participant who already left)
# A placed call's CallStatus -> what became of it (status callbacks of `call_back`).
CALL_STATES: dict[str, CallState] = {"in-progress": "answered", "completed": "ended",
                                     "no-answer": "no_answer", "busy": "busy",
                                     "failed": "failed", "canceled": "failed"}


class TwilioVoice:
    traits: ClassVar[ChannelTraits] = ChannelTraits(
        name="voice", identity="phone", prompt_style="keys", default_capacity=1,
        idles_out=False, carrier_keywords=False, agent_can_type=False, route_prefix=BASE,
        live_call=True, calls_back=True,
        end_outcome="hung_up_in_ivr")

    def __init__(self, config: ChannelConfig, handle: HandleInbound):
        self._signature = TwilioSignature(config.twilio_auth_token, config.public_url)
        self._handle = handle
        self._fallback_queue: Callable[[], str] = config.fallback_queue
        self._call_outcome = config.call_outcome
        self._twilio = twilio_of(config)
        self._public_url = config.public_url.rstrip("/")

    def routes(self) -> list[web.RouteDef]:
        return [web.post(BASE, self.incoming), web.post(f"{BASE}/gather", self.gathered),
                web.post(f"{BASE}/no-input", self.no_input), web.post(f"{BASE}/wait", self.wait),
                web.post(f"{BASE}/queue-result", self.left_queue),
                web.post(f"{BASE}/status", self.status),
                web.post(f"{BASE}/conference-wait", self.conference_wait),
                web.post(f"{BASE}/conference-hold", self.conference_hold),
                web.post(f"{BASE}/conference-status", self.conference_status),
                web.post(f"{BASE}/callback-key", self.callback_key),
                web.post(f"{BASE}/callback-status", self.callback_status),
                web.post(f"{BASE}/after-agent", self.after_agent)]

    async def incoming(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        return await self._answer(_inbound(form, "start", "", f"{form['CallSid']}:start"))

    async def gathered(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        key = f"{form['CallSid']}:{_turn(request)}"
        if form.get("Digits"):
            return await self._answer(_inbound(form, "digits", form["Digits"], key))
        if form.get("SpeechResult"):
            return await self._answer(_inbound(form, "message", form["SpeechResult"], key,
                                               confidence=_confidence(form)))
        return await self._answer(_inbound(form, "no_input", "", key))

    async def no_input(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        return await self._answer(
            _inbound(form, "no_input", "", f"{form['CallSid']}:{_turn(request)}"))

    async def wait(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        try:
            reply = await self._handle(_inbound(form, "wait", "", None))
        except Exception:
            log.exception("voice.hold_failed", call_sid=form["CallSid"])
            reply = Reply(messages=("Thanks for holding.",), state="queued")
        return _twiml(render_hold(reply))

    async def callback_key(self, request: web.Request) -> web.Response:
        """A key pressed in the hold loop: the core tells a callback request (its
        confirmation, then the caller leaves Twilio's queue) from any other key (the hold
        loop again). One request per call, so a replay is answered the same."""
        form = await self._form(request)
        inbound = _inbound(form, "callback", form.get("Digits", ""),
                           f"{form['CallSid']}:callback")
        try:
            reply = await self._handle(inbound)
        except Exception:
            log.exception("voice.callback_request_failed")
            reply = Reply(messages=("Thanks for holding.",), state="queued")
        return _twiml(render_leave(reply) if reply.callback else render_hold(reply))

    async def callback_status(self, request: web.Request) -> web.Response:
        """Status callbacks of a call placed back to a customer (`call_back`): its contact
        and attempt are in the URL Twilio was given."""
        form = await self._signature.verified_form(request)
        contact, attempt = request.query.get("contact", ""), request.query.get("attempt", "")
        state = CALL_STATES.get(form.get("CallStatus", ""))
        if not contact or not attempt.isdigit():
            raise web.HTTPBadRequest(text="contact and attempt are required")
        if state is not None:
            try:
                await self._call_outcome(CallOutcome(contact, int(attempt), state,
                                                     form.get("CallSid")))
            except Exception:  # Twilio does not retry status callbacks: log it loudly
                log.exception("voice.callback_outcome_failed", contact_id=contact)
        return _twiml(EMPTY)

    async def left_queue(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        result = form.get("QueueResult", "")
        await self._record(_inbound(form, "left_queue", result, f"{form['CallSid']}:left"))
        return _twiml(HANGUP)

    async def status(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        if form.get("CallStatus") in ("completed", "busy", "failed", "no-answer", "canceled"):
            await self._record(_inbound(form, "end", form["CallStatus"], f"{form['CallSid']}:end"))
        return _twiml(EMPTY)

    async def send_text(self, to: Destination, text: str,
                        message_id: str | None = None) -> str | None:
        raise DeliveryFailed("not_text", "this contact is a phone call")

    async def connect_agent(self, to: Destination, agent: AgentLine, hello: str,
                            message_id: str | None = None) -> str | None:
        """Take the call out of Twilio's queue into the contact's conference (the caller hears
        the wait message until the agent joins) and dial the agent in."""
        await self._twilio.conference_call(to.thread or "", _conference(to),
                                           f"{self._public_url}{BASE}/conference-wait")
        await self._twilio.add_participant(_conference(to), to.service_address, agent,
                                           self._status_url(to))
        return None

    async def find_sent(self, to: Destination, text: str, since: float) -> str | None:
        return None  # a call update leaves no message to look up: a lost answer is redone

    async def join_agent(self, to: Destination, agent: AgentLine, hello: str) -> None:
        """A transfer's next agent is dialled into the conference; once they join, a caller
        held by a cold transfer is taken off hold."""
        await self._twilio.add_participant(_conference(to), to.service_address, agent,
                                           self._status_url(to))

    def _status_url(self, to: Destination) -> str:
        """Where an agent's joining and leaving are reported, naming the caller's call."""
        query = urlencode({"call": to.thread or "", "from": to.address,
                           "to": to.service_address})
        return f"{self._public_url}{BASE}/conference-status?{query}"

    async def release_agent(self, to: Destination, agent: AgentLine) -> None:
        """Cold transfer: the caller hears the hold loop, then the agent's leg is dropped, so
        the caller is never left in silence."""
        sid = await self._twilio.conference_sid(_conference(to))
        await self._twilio.hold_customer(sid, f"{self._public_url}{BASE}/conference-hold")
        await self._twilio.remove_participant(sid, agent_label(agent.id))

    async def drop_agent(self, to: Destination, agent: AgentLine) -> None:
        """A warm transfer completed: the first agent's leg leaves the conference, but only
        once another agent is in it (their phone may still ring), so the caller is never
        alone; until then this is refused as retryable and the outbox tries again."""
        sid = await self._twilio.conference_sid(_conference(to))
        label = agent_label(agent.id)
        others = {lb for lb in await self._twilio.connected_labels(sid)
                  if lb.startswith("agent-") and lb != label}
        if not others:
            raise DeliveryFailed("waiting", "the next agent has not joined the call yet",
                                 retryable=True, retry_after_s=WAIT_FOR_JOIN_S)
        try:
            await self._twilio.remove_participant(sid, label)
        except DeliveryFailed as exc:
            if exc.code != NOT_FOUND:  # not found: the first agent already hung up
                raise

    async def call_back(self, to: Destination, attempt: int) -> str | None:
        """Call the customer into the contact's conference (they hear the wait message until
        the agent joins); its progress comes back to /callback-status."""
        status = f"{self._public_url}{BASE}/callback-status?contact={to.contact_id}" \
                 f"&attempt={attempt}"
        return await self._twilio.place_call(
            to.address, to.service_address,
            conference_twiml(_conference(to), f"{self._public_url}{BASE}/conference-wait"),
            status)

    async def conference_wait(self, request: web.Request) -> web.Response:
        """What the caller hears in the conference before the agent joins; Twilio loops it."""
        await self._signature.verified_form(request)
        return _twiml(_spoken_loop(CONNECTING))

    async def conference_hold(self, request: web.Request) -> web.Response:
        """What a caller held by a cold transfer hears until the next agent joins."""
        await self._signature.verified_form(request)
        return _twiml(_spoken_loop(PASSING_ON))

    async def conference_status(self, request: web.Request) -> web.Response:
        """Conference events: an agent who joined takes the caller off hold; the contact's
        agent who left, with the caller still in, moves the caller to the survey."""
        form = await self._signature.verified_form(request)
        event = form.get("StatusCallbackEvent")
        label = form.get("ParticipantLabel", "")
        if not label.startswith("agent-") or not form.get("ConferenceSid"):
            return _twiml(EMPTY)
        if event == "participant-join":
            try:
                await self._twilio.hold_customer(form["ConferenceSid"], None)
            except DeliveryFailed as exc:
                log.warning("voice.unhold_failed", error=str(exc),
                            conference_sid=form["ConferenceSid"])
        elif event == "participant-leave" and request.query.get("call"):
            await self._agent_left(request, form, label.removeprefix("agent-"))
        return _twiml(EMPTY)

    async def _agent_left(self, request: web.Request, form, agent_id: str) -> None:
        """Tell the core the agent left; when it has something for the caller still on the
        line (the survey, or a goodbye), move the call to /after-agent to hear it."""
        call = request.query["call"]
        structlog.contextvars.bind_contextvars(call_sid=call)
        try:
            if not await self._twilio.caller_in_conference(form["ConferenceSid"]):
                return  # the caller hung up first: nobody to ask
            reply = await self._handle(Inbound(
                channel="voice", address=request.query.get("from", ""), kind="agent_left",
                service_address=request.query.get("to", ""), text=agent_id, thread=call,
                dedupe_key=f"{call}:agent-left:{form.get('CallSid', agent_id)}",
                identity=TwilioVoice.traits.identity))
            if reply.messages:
                await self._twilio.redirect_call(call, f"{self._public_url}{BASE}/after-agent")
        except Exception:  # Twilio gets its 200 all the same; the caller hangs up as before
            log.exception("voice.after_agent_failed", agent_id=agent_id)

    async def after_agent(self, request: web.Request) -> web.Response:
        """What the caller hears once their agent is gone: the survey's question, else a
        goodbye; a retry of this step is answered the same."""
        form = await self._form(request)
        try:
            reply = await self._handle(_inbound(form, "after_agent", "",
                                                f"{form['CallSid']}:after-agent"))
        except Exception:  # the agent's part is done: a goodbye, never a queue again
            log.exception("voice.after_agent_failed")
            return _twiml(HANGUP)
        return _twiml(render(reply))

    async def send_template(self, to: Destination, ref: str, variables: Mapping[str, str],
                            message_id: str | None = None) -> str | None:
        raise DeliveryFailed("not_template", f"{self.traits.name} sends no message templates")

    async def close(self, to: Destination) -> None:
        return None  # the call ends when either side hangs up

    async def fetch_attachment(self, attachment: Attachment) -> AttachmentBody:
        raise AttachmentUnavailable("unsupported", "a call carries no files")

    async def delete_attachment(self, attachment: Attachment) -> None:
        raise DeliveryFailed("unsupported", "a call carries no files")

    async def send_file(self, to: Destination, attachment: Attachment,
                        message_id: str | None = None) -> str | None:
        raise DeliveryFailed("not_file", "a call carries no files")

    async def ask(self, to: Destination, text: str, choices: tuple[Choice, ...]) -> str | None:
        """The agent wrapped up with the caller still on the line: move the call to
        /after-agent, which asks the waiting survey's question."""
        sid = await self._twilio.conference_sid(_conference(to))  # refused once it ended
        if not await self._twilio.caller_in_conference(sid):
            raise DeliveryFailed("gone", "the caller has hung up")
        await self._twilio.redirect_call(to.thread or "", f"{self._public_url}{BASE}/after-agent")
        return None

    async def _form(self, request: web.Request):
        form = await self._signature.verified_form(request)
        missing = [k for k in ("CallSid", "From", "To") if not form.get(k)]
        if missing:
            raise web.HTTPBadRequest(text=f"missing Twilio fields: {', '.join(missing)}")
        structlog.contextvars.bind_contextvars(call_sid=form["CallSid"])
        return form

    async def _answer(self, inbound: Inbound) -> web.Response:
        try:
            reply = await self._handle(inbound)
        except Exception:
            log.exception("voice.turn_failed")
            return _twiml(render_fallback(self._fallback_queue()))
        return _twiml(render(reply))

    async def _record(self, inbound: Inbound) -> None:
        try:
            await self._handle(inbound)
        except Exception:
            log.exception("voice.callback_failed", kind=inbound.kind)


def _inbound(form, kind: InboundKind, text: str, dedupe_key: str | None,
             confidence: float | None = None) -> Inbound:
    return Inbound(channel="voice", address=form["From"], service_address=form["To"], text=text,
                   dedupe_key=dedupe_key, kind=kind, thread=form["CallSid"],
                   input_confidence=confidence, identity=TwilioVoice.traits.identity,
                   provider={k: form[k] for k in ("CallSid", "AccountSid") if k in form})


def _turn(request: web.Request) -> str:
    turn = request.query.get("turn", "")
    if not turn.isdigit():
        raise web.HTTPBadRequest(text="the turn query parameter must be a number")
    return turn


def _confidence(form) -> float | None:
    try:
        value = float(form.get("Confidence", ""))
    except ValueError:
        return None
    return min(max(value, 0.0), 1.0)


def _twiml(twiml: str) -> web.Response:
    return web.Response(text=twiml, content_type=TWIML)


def render(reply: Reply) -> str:
    return _render(reply.queue, reply.messages, reply.expects_input,
                   tuple(choice.label for choice in reply.choices), reply.turn)


@functools.lru_cache(maxsize=2048)  # prompts and answers repeat; only the turn number varies
def _render(queue: str | None, messages: tuple[str, ...], expects_input: bool,
            labels: tuple[str, ...], turn: int) -> str:
    response = VoiceResponse()
    if queue:  # just escalated: hold in Twilio's queue of the same name
        for text in messages:
            response.say(text)
        response.enqueue(queue, action=f"{BASE}/queue-result", method="POST",
                         wait_url=f"{BASE}/wait", wait_url_method="POST")
    elif expects_input:
        hints = ", ".join([label.lower() for label in labels] + list(ALWAYS_HINTS))
        # A menu takes one key; an open question (a flow's "what's your order number?")
        # takes keys until # or a pause.
        keys = {"num_digits": 1} if labels else {"finish_on_key": "#"}
        gather = response.gather(input="dtmf speech", action=f"{BASE}/gather?turn={turn}",
                                 method="POST", timeout=GATHER_TIMEOUT_S, speech_timeout="auto",
                                 hints=hints, language="en-US", **keys)
        for text in messages:
            gather.say(text)
        response.redirect(f"{BASE}/no-input?turn={turn}", method="POST")
    else:
        for text in messages:
            response.say(text)
        response.hangup()
    return str(response)


def render_hold(reply: Reply) -> str:
    """What a queued caller hears until an agent takes the call; Twilio loops it. With a
    choice (a callback), its key is gathered during the words and the pause after them."""
    return _render_hold(reply.messages, bool(reply.choices))


@functools.lru_cache(maxsize=1024)
def _render_hold(messages: tuple[str, ...], keys: bool) -> str:
    response = VoiceResponse()
    if keys:
        gather = response.gather(input="dtmf", num_digits=1, action=f"{BASE}/callback-key",
                                 method="POST", timeout=HOLD_PAUSE_S)
        for text in messages:
            gather.say(text)
        return str(response)
    for text in messages:
        response.say(text)
    response.pause(length=HOLD_PAUSE_S)
    return str(response)


def render_leave(reply: Reply) -> str:
    """A caller who will be called back: the confirmation, then out of Twilio's queue (its
    Enqueue action, /queue-result, hangs up)."""
    response = VoiceResponse()
    for text in reply.messages:
        response.say(text)
    response.leave()
    return str(response)


def _conference(to: Destination) -> str:
    """The conference a connected call lives in: one per contact."""
    return f"contact-{to.contact_id}"


@functools.lru_cache(maxsize=8)
def _spoken_loop(text: str) -> str:
    """Words, then a short pause; Twilio loops a wait or hold URL's TwiML."""
    response = VoiceResponse()
    response.say(text)
    response.pause(length=HOLD_MUSIC_PAUSE_S)
    return str(response)


def render_fallback(queue: str) -> str:
    return _render(queue, (FALLBACK,), False, (), 0)


EMPTY = str(VoiceResponse())
HANGUP = _render(None, (), False, (), 0)
