"""One turn of one contact: the only module that touches every store.

identity + context (Redis) -> contact type (classifier) -> decision (routing tree)
-> self-service step or escalation (queue) -> events (PostgreSQL, via the spool).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Mapping

import structlog

from service.conversations import attachments, pacing, prompts, surveys
from service.conversations import context as context_module
from service.conversations.callbacks import CALLBACK_CHOICE, CALLBACK_DIGIT
from service.conversations.context import (
    KEPT_CONTACTS,
    ContextStore,
    TurnStart,
    identity_of,
    lease_key,
    newest_first,
)
from service.conversations.fallback import call_contact_id
from service.conversations.handoff import Handoff, queue_entry
from service.conversations.record import (
    Conversation,
    contact_state,
    customer_lines,
    new_conversation,
    not_open,
)
from service.infra.ids import new_uuid
from service.model import ChannelTraits, Choice, Inbound, PromptStyle, Reply
from service.reporting.events import Event, EventWriter
from service.rules.canary import RunningCanary
from service.rules.experiments import Arm
from service.rules.flows import (
    HttpLookups,
    LookupFailed,
    Step,
    accepted,
)
from service.rules.loader import Rules
from service.rules.routing import Decision
from service.rules.templates import MissingValue, personal_values, render, when
from service.understanding.understand import (
    asks_for_agent,
    escalation_reason,
    understand_off_loop,
)

log = structlog.get_logger(__name__)

STOP_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
START_WORDS = {"START", "UNSTOP", "YES START", "OPTIN"}
CARRIER_WORDS = frozenset(STOP_WORDS | START_WORDS)  # once, not a new set every turn
HELP_WORDS = {"HELP", "INFO"}
YES = {"yes", "y", "yeah", "yep", "yes it did", "it did", "thanks", "thank you", "1"}
NO = {"no", "n", "nope", "not really", "no it didn't", "it didn't", "2"}
YES_OR_NO = frozenset(YES | NO)
MAX_TRANSCRIPT = 60
LEASE_RETRY_S = 0.01  # first pause when another instance has the conversation's turn
MISSES_BEFORE_ESCALATION = 2
OPEN_IN_IVR = ("new", "menu", "clarifying", "confirming", "confirming_repeat")
AGENT_TOOK_IT = ("bridged", "redirected")  # Twilio QueueResult values
YES_NO = (Choice("Yes", "yes", "1"), Choice("No", "no", "2"))


class TurnLock(asyncio.Lock):
    """A conversation's turn on this instance, with how many turns wait for it."""
    users = 0


class InOrder:
    """Holds a conversation's TurnLock, dropped from `locks` when no turn uses it. A class,
    not an asynccontextmanager: that costs ~6 us more on every turn."""
    __slots__ = ("_locks", "_key", "_lock")

    def __init__(self, locks: dict[str, TurnLock], key: str):
        self._locks, self._key = locks, key

    async def __aenter__(self) -> None:
        self._lock = self._locks.setdefault(self._key, TurnLock())
        self._lock.users += 1
        try:
            await self._lock.acquire()
        except BaseException:  # cancelled while waiting for the turn before it
            self._leave()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()
        self._leave()

    def _leave(self) -> None:
        self._lock.users -= 1
        if not self._lock.users:
            del self._locks[self._key]

FindCustomer = Callable[[str, str], Awaitable[dict[str, Any] | None]]


@dataclass
class Turn:
    inbound: Inbound
    rules: Rules
    now: float
    conversation: Conversation  # empty until the contact opens
    customer: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    summary_changed: bool = False
    history: Any = None  # the address's recent contacts, as read in round trip 1
    ended: list[Conversation] = field(default_factory=list)  # closed before this one opened
    seed: list[dict[str, Any]] | None = None  # when relinked: history to copy to the address
    forget: list[str] = field(default_factory=list)  # contacts too old to keep a summary of
    unmasked: dict[str, str] = field(default_factory=dict)  # flow values as typed: this turn only
    survey: dict[str, Any] | None = None  # a survey of the address awaiting its answer
    surveyed_at: float | None = None  # when the customer was last surveyed
    extra: list = field(default_factory=list)  # Redis commands for round trip 2 (surveys)

    def summaries(self) -> list[Conversation]:
        return self.ended + ([self.conversation] if self.summary_changed else [])

    @property
    def channel(self) -> str:
        return self.inbound.channel

    def record(self, kind: str, *, reason: str | None = None, **data: Any) -> None:
        self.add(Event(kind=kind, contact_id=self.conversation.get("contact_id"),
                       customer_id=self.conversation.get("customer_id"),
                       channel=self.inbound.channel,
                       contact_type=self.conversation.get("contact_type"),
                       route_path=self.conversation.get("route_path"), reason=reason, data=data,
                       occurred_at=self.now))

    def add(self, event: Event) -> None:
        self.events.append(event)

    def say(self, sender: str, text: str, **extra: Any) -> None:
        transcript = self.conversation["transcript"]
        transcript.append({"from": sender, "text": text, "at": self.now, **extra})
        del transcript[:-MAX_TRANSCRIPT]

    def reply(self, *messages: str, **fields: Any) -> Reply:
        return Reply(messages=messages, contact_id=self.conversation.get("contact_id"),
                     turn=self.conversation.get("turns", 0), **fields)


class Conversations:
    def __init__(self, rules: Callable[[], Rules], context: ContextStore, handoff: Handoff,
                 events: EventWriter, find_customer: FindCustomer, lookups: HttpLookups,
                 channels: Mapping[str, ChannelTraits],
                 queue_load: Callable[[], Mapping[str, int]] = dict,
                 canary: Callable[[], RunningCanary | None] = lambda: None,
                 rules_for: Callable[[dict | None], Rules] | None = None):
        self._channels = channels
        self._rules = rules
        self._canary = canary  # a canary running: new contacts in its share get its rules
        self._rules_for = rules_for or (lambda _held: rules())
        self._lookups = lookups
        self._queue_load = queue_load
        self._context = context
        self._handoff = handoff
        self._router = handoff.router
        self._events = events
        self._find_customer = find_customer
        self._turn_locks: dict[str, TurnLock] = {}

    async def handle(self, inbound: Inbound) -> Reply:
        if inbound.kind == "callback" and inbound.text != CALLBACK_DIGIT:
            return await self._still_holding(inbound)  # any other key: the hold loop again
        if inbound.kind == "wait":
            held = await self._hold(inbound)
            if held is not None:
                return held
            # Held by the fallback while a turn failed: queue the caller for an agent, once.
            inbound = replace(inbound, dedupe_key=f"{inbound.thread}:adopted")
        async with self._in_order(lease_key(inbound)):
            start = await self._leased_start(inbound)
            try:
                if start.duplicate_of is not None:
                    log.info("turn.duplicate", dedupe_key=inbound.dedupe_key)
                    return start.duplicate_of
                if start.in_flight:
                    return await self._context.wait_for_reply(inbound) or Reply()
                try:
                    return await self._turn(inbound, start)
                except BaseException:
                    await self._context.release(inbound)
                    raise
            finally:
                await self._context.end_turn(inbound)

    def _in_order(self, key: str) -> "InOrder":
        """This instance's turns of one conversation, one at a time in arrival order."""
        return InOrder(self._turn_locks, key)

    async def _leased_start(self, inbound: Inbound) -> TurnStart:
        """Round trip 1 once the conversation's lease is ours (another instance may hold it)."""
        pause, give_up = LEASE_RETRY_S, time.monotonic() + context_module.LEASE_WAIT_S
        while not (start := await self._context.begin_turn(inbound)).leased:
            if time.monotonic() > give_up:  # its holder failed before giving it back
                log.warning("turn.lease_taken_over", channel=inbound.channel)
                return await self._context.begin_turn(inbound, take_over=True)
            await asyncio.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, 0.2)
        return start

    def record_failure(self, inbound: Inbound, error: BaseException) -> None:
        """Keep the customer's words when a turn fails: the event log is on local disk first."""
        self._events.emit(Event(kind="turn_failed", contact_id=None, customer_id=None,
                                channel=inbound.channel, reason=type(error).__name__,
                                data={"address": inbound.address, "text": inbound.text,
                                      "kind": inbound.kind, "thread": inbound.thread,
                                      "service_address": inbound.service_address,
                                      "dedupe_key": inbound.dedupe_key, "error": str(error),
                                      **_attachment_refs(inbound)}))

    async def _turn(self, inbound: Inbound, start: TurnStart) -> Reply:
        now = time.time()
        conversation, customer, opted_out = start.conversation, start.customer, start.opted_out
        keyword = " ".join(inbound.text.upper().split())
        if self._channels[inbound.channel].carrier_keywords and \
                (keyword in CARRIER_WORDS or opted_out):
            return await self._opt_in_out(inbound, keyword, conversation, customer, opted_out,
                                          now, start.survey)
        if inbound.kind in ("end", "left_queue"):
            return await self._ended_by_customer(inbound, conversation, now)
        if inbound.kind == "callback":
            return await self._callback_requested(inbound, conversation, now)
        if inbound.kind in ("agent_left", "after_agent"):
            return await self._after_agent(inbound, start, now)
        if start.muted and inbound.kind == "message" and keyword not in HELP_WORDS:
            return await self._muted(inbound, customer, now)
        survey, let_go = start.survey, None
        if survey and inbound.kind in surveys.ANSWER_INPUT and keyword not in HELP_WORDS and \
                (conversation is None or conversation["status"] == "closed"
                 or survey["contact_id"] == conversation["contact_id"]):  # after its agent
            answered = surveys.answer(self._rules(), survey, inbound,
                                      self._channels[inbound.channel].prompt_style, now)
            if answered.reply is not None:  # an answer, late or not, or its reprompt
                await self._context.commit_reply(inbound, answered.reply, answered.commands)
                self._events.emit(*answered.events, *_replied_after(answered.events,
                                                                     answered.reply))
                return answered.reply
            survey, let_go = None, answered  # not an answer: the message opens a contact
        linked = customer is not None and "identities" in customer  # older links lack them
        new_customer = False
        if customer is None or not linked:
            customer = await self._resolve_customer(inbound)
            new_customer = customer.pop("new", False)
        turn = Turn(inbound, self._rules(), now, conversation or not_open(), customer,
                    history=start.history if linked else () if new_customer else None,
                    survey=survey, surveyed_at=start.surveyed_at)
        if let_go is not None:
            turn.events.extend(let_go.events)
            turn.extra.extend(let_go.commands)
        if new_customer:
            kind, value = identity_of(inbound)
            turn.add(Event("customer_created", None, customer["customer_id"], inbound.channel,
                           data={"identity_kind": kind, "identity_value": value},
                           occurred_at=now))
        await self._open_contact(turn)
        turn.rules = self._rules_for(turn.conversation.get("canary"))
        turn.conversation["turns"] += 1
        verdict = self._pace(turn)
        self._hear(turn)
        reply = await self._respond(turn, keyword) if verdict == "answer" else \
            self._held_back(turn, verdict)
        for text in reply.messages:
            turn.say("bot", text)
        if reply.messages:
            turn.record("replied", **said(reply))
        turn.conversation["last_at"] = now
        await self._context.commit_turn(inbound, turn.conversation, reply,
                                        customer=None if linked else customer,
                                        summaries=turn.summaries(), seed=turn.seed,
                                        forget=turn.forget, extra=turn.extra,
                                        mute_s=pacing.MUTE_S if verdict == "loop" else 0)
        self._events.emit(*turn.events)
        # Offer only once the queued state is saved, or an accept could race it.
        if reply.queue or reply.callback:
            await self._handoff.dispatch()
        return reply

    def _pace(self, turn: Turn) -> pacing.Verdict:
        conv, inbound = turn.conversation, turn.inbound
        if not self._channels[turn.channel].customer_paced or inbound.kind != "message" or \
                conv["status"] in ("queued", "with_agent"):  # agents read at their own pace
            return "answer"
        return pacing.pace(conv, inbound.text, turn.now)

    def _held_back(self, turn: Turn, verdict: pacing.Verdict) -> Reply:
        """A text not answered as usual: too fast, or another bot talking to ours."""
        if verdict == "loop":
            turn.record("bot_loop_detected", muted_s=pacing.MUTE_S)
            self._end(turn, "bot_loop")
            return turn.reply(state="closed")
        turn.record("rate_limited", told=verdict == "slow_down")
        return turn.reply(prompts.SLOW_DOWN) if verdict == "slow_down" else turn.reply()

    async def _muted(self, inbound: Inbound, customer: dict | None, now: float) -> Reply:
        """A text to an address muted after a bot loop: recorded, not answered."""
        self._events.emit(Event("received_while_muted", None,
                                (customer or {}).get("customer_id"), inbound.channel,
                                data={"address": inbound.address, "text": inbound.text,
                                      **_provider_ids(inbound), **_attachment_refs(inbound)},
                                occurred_at=now))
        reply = Reply(state="closed")
        await self._context.remember_reply(inbound, reply)
        return reply

    def _hear(self, turn: Turn) -> None:
        inbound = turn.inbound
        if inbound.kind == "message" or inbound.kind == "digits":
            heard = inbound.text if inbound.kind == "message" else f"[pressed {inbound.text}]"
            kept = attachments.keep(turn.conversation, inbound.attachments, turn.now) \
                if inbound.attachments else []
            shown: dict[str, Any] = {"attachments": attachments.shown(kept)} if kept else {}
            kept_refs: dict[str, Any] = {"attachments": attachments.recorded(kept)} if kept \
                else {}
            turn.say("customer", heard, **shown)
            turn.record("received", text=inbound.text, input=inbound.kind,
                        input_confidence=inbound.input_confidence, **_provider_ids(inbound),
                        **kept_refs)
        elif inbound.kind == "no_input":
            turn.record("no_input")

    async def _resolve_customer(self, inbound: Inbound) -> dict[str, Any]:
        kind, value = identity_of(inbound)
        try:
            found = await self._find_customer(kind, value)
        except Exception as exc:  # PostgreSQL down: serve the customer as new, say so in logs
            log.warning("customer.lookup_failed", error=str(exc))
            found = None
        return found or {"customer_id": new_uuid(), "attributes": {}, "identities": [[kind, value]],
                         "new": True}

    async def _open_contact(self, turn: Turn) -> None:
        conv = turn.conversation
        if conv and self._channels[turn.channel].idles_out and conv["status"] != "queued" and \
                turn.now - conv["last_at"] > self._context.idle_timeout_s:
            self._end(turn, "idle_timeout")
            turn.ended.append(conv)
            conv = turn.conversation = not_open()
        if conv:
            conv["identities"] = turn.customer["identities"]  # ops may have moved one since
            return
        earlier = await self._earlier_contacts(turn)
        adopted = turn.inbound.kind == "wait" and turn.inbound.thread  # held by the fallback
        conv.update(new_conversation(
            contact_id=call_contact_id(turn.inbound.thread) if adopted else new_uuid(),
            customer=turn.customer, channel=turn.channel,
            address=turn.inbound.address, service_address=turn.inbound.service_address,
            thread=turn.inbound.thread, now=turn.now, earlier=earlier[:10]))
        turn.summary_changed = True
        if turn.survey:  # the customer moved on: the waiting survey is over
            event, command = surveys.closed_by(turn.survey, turn.inbound, turn.now, "new_contact")
            turn.add(event)
            turn.extra.append(command)
            turn.survey = None
        if adopted:  # counted when its first turn failed (fallback.py)
            return
        turn.record("contact_started", address=turn.inbound.address,
                    service_address=turn.inbound.service_address, thread=turn.inbound.thread)
        canary = self._canary()
        if canary is not None:  # a hash of the contact id: which rules decide it
            arm = canary.arm_of(conv["contact_id"])
            conv["canary"] = {"id": canary.id, "arm": arm}
            turn.record("canary_assigned", canary=canary.id, arm=arm)

    async def _earlier_contacts(self, turn: Turn) -> list[dict[str, Any]]:
        """From round trip 1 when the address's link was in Redis; otherwise the address was
        (re)linked from PostgreSQL, so read the customer's own hash and copy it over."""
        if turn.history is not None:
            earlier = newest_first(turn.history, turn.customer["customer_id"])
        else:
            earlier = turn.seed = await self._context.recent_contacts(turn.customer["customer_id"])
        if len(earlier) > KEPT_CONTACTS:
            turn.forget = [c["contact_id"] for c in earlier[KEPT_CONTACTS:]]
            del earlier[KEPT_CONTACTS:]  # the seed too: it is the same list
        return earlier

    async def _respond(self, turn: Turn, keyword: str) -> Reply:
        conv, inbound = turn.conversation, turn.inbound
        if inbound.kind == "start":
            return self._resume(turn) if conv["turns"] > 1 else self._greet(turn)
        if self._channels[turn.channel].carrier_keywords and keyword in HELP_WORDS:
            return turn.reply(prompts.SMS_HELP)
        if conv["status"] == "queued":
            await self._router.append_message(conv["contact_id"], conv["transcript"][-1])
            return turn.reply(state="queued")
        if conv["status"] == "with_agent":
            await self._handoff.to_agent(conv, conv["transcript"][-1])
            return turn.reply(state="with_agent")
        if inbound.attachments and not inbound.text.strip():  # kept for an agent; say so
            return turn.reply(prompts.MEDIA_ONLY, expects_input=True)
        if conv["status"] == "in_flow":
            return await self._flow_answer(turn)
        if conv["status"] == "callback_offered":
            return await self._callback_answer(turn)
        if inbound.kind == "no_input":
            return await self._missed(turn, (), "no_input")
        if inbound.kind == "wait":
            return await self._escalate(turn, self._decide(turn), "technical_fallback")
        text = inbound.text.strip()
        answer = text.lower().strip(" .!")
        if conv["status"] in ("confirming", "confirming_repeat") and answer in YES_OR_NO:
            return await self._confirmed(turn, answer in YES)
        chosen = _clarifying_choice(turn, text)
        if chosen:
            return await self._classified(turn, chosen, 1.0, "menu")
        understood = await understand_off_loop(
            turn.rules, inbound.kind, text, inbound.input_confidence,
            menu_offered=conv["status"] in ("menu", "clarifying"))
        if understood.outcome == "agent":
            return await self._escalate(turn, self._decide(turn), "requested_agent")
        if understood.outcome == "classified" and understood.contact_type:
            return await self._classified(turn, understood.contact_type, understood.confidence,
                                          understood.via)
        return await self._missed(turn, understood.ranked, understood.reason)

    def _resume(self, turn: Turn) -> Reply:
        """A session reconnects with its token: the same contact, its transcript replayed."""
        conv = turn.conversation
        state = conv["status"] if conv["status"] in ("queued", "with_agent") else "self_service"
        return turn.reply(state=state, history=customer_lines(conv["transcript"],
                                                             conv.get("attachments", [])))

    def _greet(self, turn: Turn) -> Reply:
        conv, catalog = turn.conversation, turn.rules.catalog
        earlier = _latest_in_window(turn.rules, conv)
        if earlier:
            conv.update({"status": "confirming_repeat", "repeat_of": earlier})
            return turn.reply(prompts.repeat_greeting(catalog.label(earlier["contact_type"]),
                                                      self._style(turn),
                                                      when(earlier["started_at"], turn.now)),
                              choices=YES_NO, expects_input=True)
        conv["status"] = "menu"
        menu = _digit_menu(turn) if self._style(turn) == "keys" else ()  # typed: free text
        return turn.reply(prompts.greeting(catalog, self._style(turn)), choices=menu,
                          expects_input=True)

    async def _confirmed(self, turn: Turn, yes: bool) -> Reply:
        conv = turn.conversation
        if conv["status"] == "confirming_repeat":
            if yes:
                return await self._classified(turn, conv["repeat_of"]["contact_type"], 1.0,
                                              "repeat_prompt")
            conv["status"] = "menu"
            return turn.reply(prompts.greeting(turn.rules.catalog, self._style(turn)).removeprefix(
                "Thanks for calling. "), choices=_digit_menu(turn), expects_input=True)
        if yes:
            return self._resolve(turn)
        return await self._self_service_failed(turn, "self_service_failed")

    async def _self_service_failed(self, turn: Turn, reason: str) -> Reply:
        turn.conversation.pop("flow", None)  # its looked-up data need not ride along any more
        step = turn.conversation["steps"][-1]
        turn.record("self_service_failed", step=_step_name(step), failure=reason)
        step["outcome"] = "failed"
        return await self._escalate(turn, self._decide(turn), reason)

    # ---- flows (service/flows.py): ask, look up, say; then "Did that help?" --------------

    async def _start_flow(self, turn: Turn, type_id: str, flow_id: str) -> Reply:
        conv = turn.conversation
        conv.update({"status": "in_flow",
                     "flow": {"id": flow_id, "at": 0, "values": {}, "misses": 0}})
        conv["steps"].append({"type": "flow", "contact_type": type_id, "flow": flow_id,
                              "at": turn.now, "outcome": None, "collected": {}})
        turn.record("self_service_started", step=f"flow:{flow_id}")
        return await self._run_flow(turn)

    async def _run_flow(self, turn: Turn) -> Reply:
        """Say and look up until the flow asks something or has said its answer."""
        state, said = turn.conversation["flow"], list[str]()
        steps = turn.rules.flows.flows.get(state["id"], ())
        try:
            while state["at"] < len(steps):
                step = steps[state["at"]]
                if step.kind == "ask":
                    return turn.reply(*said, _text_for(turn, step.text), expects_input=True)
                if step.kind == "say":
                    said.append(_text_for(turn, step.text))
                else:
                    lookup = turn.rules.flows.lookups[step.lookup]
                    state["values"][step.save] = await self._lookups.fetch(
                        lookup, {**state["values"], **turn.unmasked})
                state["at"] += 1
        except LookupFailed as exc:
            step = steps[state["at"]]
            if exc.reason == "lookup_not_found" and step.not_found:
                return await self._ask_again(turn, step, said)
            return await self._flow_failed(turn, exc, said)
        except MissingValue as exc:
            return await self._flow_failed(turn, exc, said)
        if not steps:  # a reload removed the flow while the customer was in it
            return await self._self_service_failed(turn, "flow_unavailable")
        turn.conversation["status"] = "confirming"
        del turn.conversation["flow"]
        return turn.reply(*said, prompts.CONFIRM[self._style(turn)], choices=YES_NO,
                          expects_input=True)

    async def _flow_failed(self, turn: Turn, error: Exception, said: list[str]) -> Reply:
        reason = getattr(error, "reason", "lookup_failed")
        log.warning("flow.failed", flow=turn.conversation["flow"]["id"], reason=reason,
                    error=turn.rules.redactor.mask(str(error)))  # a URL may hold a value
        reply = await self._self_service_failed(turn, reason)
        return replace(reply, messages=(*said, *reply.messages))

    async def _ask_again(self, turn: Turn, lookup: Step, said: list[str]) -> Reply:
        """The look-up found nothing for the answer given: say so, and take another one."""
        state = turn.conversation["flow"]
        # Counted apart from misses, which every well-formed answer resets.
        state["not_found"] = state.get("not_found", 0) + 1
        turn.record("flow_answer_rejected", flow=state["id"], lookup=lookup.lookup,
                    misses=state["not_found"])
        if state["not_found"] >= MISSES_BEFORE_ESCALATION:
            return await self._flow_failed(turn, LookupFailed("lookup_not_found", "twice"), said)
        state["at"] = lookup.back_to
        return turn.reply(*said, _text_for(turn, lookup.not_found), expects_input=True)

    async def _flow_answer(self, turn: Turn) -> Reply:
        conv, inbound = turn.conversation, turn.inbound
        text = "" if inbound.kind == "no_input" else inbound.text.strip()
        if asks_for_agent(inbound.kind, text):
            del conv["flow"]
            return await self._escalate(turn, self._decide(turn), "requested_agent")
        state = conv["flow"]
        steps = turn.rules.flows.flows.get(state["id"], ())
        if state["at"] >= len(steps) or steps[state["at"]].kind != "ask":
            return await self._self_service_failed(turn, "flow_unavailable")
        step = steps[state["at"]]
        value = accepted(step, text)
        raw = accepted(step, inbound.unmasked) if inbound.unmasked else None
        if raw is not None:  # redacted: the look-up gets what was typed, the record the mask
            value, turn.unmasked[step.save] = turn.rules.redactor.mask(raw), raw
        if value is None:
            state["misses"] += 1
            turn.record("flow_answer_rejected", flow=state["id"], ask=step.save,
                        misses=state["misses"])
            if state["misses"] >= MISSES_BEFORE_ESCALATION:
                return await self._self_service_failed(turn, "flow_input_failed")
            return turn.reply(_text_for(turn, step.retry or step.text), expects_input=True)
        state["values"][step.save], state["misses"] = value, 0
        state["at"] += 1
        conv["steps"][-1]["collected"][step.save] = value
        return await self._run_flow(turn)

    async def _classified(self, turn: Turn, type_id: str, confidence: float, via: str) -> Reply:
        conv = turn.conversation
        conv.update({"contact_type": type_id, "confidence": round(confidence, 4), "menu": [],
                     "misses": 0})
        turn.summary_changed = True
        turn.record("classified", confidence=conv["confidence"], via=via)
        decision = self._decide(turn)
        conv.update({"route_path": decision.route_path, "queue": decision.queue})
        turn.record("routed", **decision.as_dict())
        contact_type = turn.rules.catalog.types[type_id]
        arm = _experiment_arm(turn, type_id)
        straight_to_agent = escalation_reason(turn.rules, type_id, decision, arm)
        if straight_to_agent:
            return await self._escalate(turn, decision, straight_to_agent)
        flow = contact_type.flow
        if arm is not None and (arm.answer or arm.flow):  # the arm's self-service instead
            flow = arm.flow
        if flow:
            return await self._start_flow(turn, type_id, flow)
        conv["status"] = "confirming"
        conv["steps"].append({"type": "answer", "contact_type": type_id, "at": turn.now,
                              "outcome": None})
        turn.record("self_service_started", step="answer")
        return turn.reply(_text_for(turn, arm.answer if arm and arm.answer else
                                    contact_type.answer),
                          prompts.CONFIRM[self._style(turn)], choices=YES_NO, expects_input=True)

    async def _missed(self, turn: Turn, ranked: tuple[tuple[str, float], ...],
                      reason: str) -> Reply:
        conv = turn.conversation
        conv["misses"] += 1
        turn.record("classification_missed", reason=reason, misses=conv["misses"],
                    candidates=[{"contact_type": t, "confidence": round(p, 4)} for t, p in ranked])
        if conv["misses"] >= MISSES_BEFORE_ESCALATION:  # silence, or we could not understand
            escalation = "no_input" if reason == "no_input" else "low_confidence"
            return await self._escalate(turn, self._decide(turn), escalation)
        conv["status"], conv["menu"] = "clarifying", [t for t, _ in ranked]
        catalog = turn.rules.catalog
        text = prompts.not_understood(catalog, conv["menu"], self._style(turn))
        if self._style(turn) == "keys":
            return turn.reply(text, choices=_digit_menu(turn), expects_input=True)
        return turn.reply(text, expects_input=True, choices=tuple(
            Choice(catalog.label(t), str(i), str(i)) for i, t in enumerate(conv["menu"], 1)))

    def _resolve(self, turn: Turn) -> Reply:
        conv = turn.conversation
        conv["steps"][-1]["outcome"] = "resolved"
        turn.record("self_service_resolved", step=_step_name(conv["steps"][-1]))
        self._end(turn, "self_service_resolved")
        asked = surveys.offer(turn.rules, conv, self._style(turn), "self_service", turn.now,
                              turn.surveyed_at, opted_out=False, turn=conv["turns"])
        if asked is None:
            return turn.reply(prompts.RESOLVED[self._style(turn)], state="closed")
        turn.add(asked.event)
        turn.extra.extend(asked.commands)
        return turn.reply(prompts.RESOLVED_THEN_SURVEY, asked.text, choices=asked.choices,
                          state="closed", expects_input=True, survey=True)

    def _end(self, turn: Turn, outcome: str) -> None:
        conv = turn.conversation
        conv.update({"status": "closed", "outcome": outcome, "ended_at": turn.now})
        turn.summary_changed = True
        turn.record("ended", outcome=outcome)

    def _style(self, turn: Turn) -> PromptStyle:
        return self._channels[turn.channel].prompt_style

    def _decide(self, turn: Turn) -> Decision:
        conv = turn.conversation
        return turn.rules.tree.decide(routing_attributes(turn.rules, conv, turn.channel,
                                                         turn.now, self._queue_load()))

    async def _escalate(self, turn: Turn, decision: Decision, reason: str,
                        callback_chosen: bool = False) -> Reply:
        # A route's `closed` (out of hours, say) replaces the queue; a caller already held
        # after a failure of ours is not turned away by it.
        closed = decision.closed if reason != "technical_fallback" else None
        if closed is not None and closed.waits_in is None:
            return self._closed(turn, decision, reason)
        calls_back = closed is not None and closed.callback is not None and \
            self._channels[turn.channel].calls_back
        if calls_back and not callback_chosen:
            return self._offer_callback(turn, decision, reason)
        conv, rules = turn.conversation, turn.rules
        waits_in = closed.waits_in if closed else None
        queue = rules.tree.queues[waits_in or decision.queue]
        conv.update({"status": "queued", "queue": queue.name, "reason": reason,
                     "route_path": decision.route_path, "escalated_at": turn.now,
                     "priority": decision.priority})
        turn.summary_changed = True
        turn.record("escalated", reason=reason, queue=queue.name, priority=decision.priority)
        if calls_back:  # out of hours: called back once someone is there
            conv["callback"] = self._handoff.callbacks.record(conv, queue.name, turn.now)
        entry = queue_entry(rules, conv, queue.name, reason,
                            **({"callback": conv["callback"]} if calls_back else {}))
        position = await self._router.enqueue(queue.name, decision.priority, entry)
        wait_s = position.position * queue.avg_handle_s
        turn.record("queued", queue=queue.name, position=position.position,
                    skills=entry["skills"])
        said = (closed.message,) if closed and closed.message else ()
        if calls_back:
            turn.record("callback_requested", queue=queue.name, number=conv["address"],
                        closed=True)
            return turn.reply(prompts.CALLBACK_WHEN_OPEN, state="queued", callback=True)
        return turn.reply(*said, prompts.queued(queue.label, position.position, wait_s,
                                                self._style(turn)),
                          state="queued", position=position.position, estimated_wait_s=wait_s,
                          queue=queue.name)

    def _offer_callback(self, turn: Turn, decision: Decision, reason: str) -> Reply:
        """Closed, and the route calls back: the route's message, and the caller may ask to
        be called back once someone is there (key 1); anything else ends the contact."""
        closed, conv = decision.closed, turn.conversation
        assert closed is not None and closed.callback is not None
        conv.update({"status": "callback_offered", "route_path": decision.route_path,
                     "closed_reason": reason})
        turn.record("callback_offered", reason=reason, queue=closed.callback)
        said = (closed.message,) if closed.message else ()
        return turn.reply(*said, prompts.CALLBACK_OFFER_CLOSED, choices=(CALLBACK_CHOICE,),
                          expects_input=True)

    async def _callback_answer(self, turn: Turn) -> Reply:
        """The answer to a closed route's callback offer: key 1 (or yes) queues the callback
        (decided again: if agents are back meanwhile, the caller simply waits for one)."""
        conv, inbound = turn.conversation, turn.inbound
        reason = conv.pop("closed_reason", None) or "requested_agent"
        answer = inbound.text.strip().lower().strip(" .!")
        if inbound.kind in ("digits", "message") and (answer == CALLBACK_DIGIT or answer in YES):
            return await self._escalate(turn, self._decide(turn), reason, callback_chosen=True)
        turn.record("closed_message", reason=reason)
        self._end(turn, "closed")
        return turn.reply(prompts.CLOSED_GOODBYE, state="closed")

    def _closed(self, turn: Turn, decision: Decision, reason: str) -> Reply:
        """The route says we are closed: its message, and the contact ends (not abandoned)."""
        turn.conversation["route_path"] = decision.route_path
        turn.record("closed_message", reason=reason)
        self._end(turn, "closed")
        closed = decision.closed
        return turn.reply(closed.message if closed and closed.message else prompts.CLOSED_GOODBYE,
                          state="closed")

    async def _hold(self, inbound: Inbound) -> Reply | None:
        """A caller on hold asks for news: their real position, and nothing is recorded.
        None when no agent queue knows the caller: Twilio holds them because a turn failed."""
        conv = await self._context.conversation(inbound)
        if not conv or conv["status"] not in ("queued", "with_agent"):
            return None
        if conv["status"] != "queued":
            return Reply(state="queued", messages=("Thanks for holding.",))
        found = await self._router.position(conv["contact_id"])
        if found is None:
            return Reply(state="queued", messages=("Thanks for holding.",))
        queue, position = found
        wait_s = position.position * self._rules_for(conv.get("canary")).tree.queues[
            queue].avg_handle_s
        said = prompts.hold(position.position, wait_s)
        offer = self._handoff.callbacks.offered(conv)
        return Reply(messages=(f"{said} {prompts.CALLBACK_OFFER}" if offer else said,),
                     choices=(CALLBACK_CHOICE,) if offer else (), state="queued",
                     contact_id=conv["contact_id"], position=position.position,
                     estimated_wait_s=wait_s)

    async def _still_holding(self, inbound: Inbound) -> Reply:
        """What a waiting caller hears again (the hold loop), whatever happened meanwhile."""
        return await self._hold(inbound) or Reply(state="queued",
                                                  messages=("Thanks for holding.",))

    async def _callback_requested(self, inbound: Inbound, conversation: Conversation | None,
                                  now: float) -> Reply:
        """A waiting caller asked to be called back: they leave the line and keep their place
        in the queue. Too late (an agent took the call) or not offered: the hold loop."""
        if conversation and conversation["status"] == "queued" and \
                self._handoff.callbacks.offered(conversation):
            queue = await self._handoff.callbacks.request(conversation, now)
            if queue is not None:
                turn = Turn(inbound, self._rules(), now, conversation, {})
                turn.record("callback_requested", queue=queue, number=conversation["address"])
                reply = Reply(messages=(prompts.CALLBACK_CONFIRMED,), state="queued",
                              contact_id=conversation["contact_id"], callback=True)
                turn.record("replied", **said(reply))
                await self._context.commit_turn(inbound, conversation, reply,
                                                summaries=[conversation])
                self._events.emit(*turn.events)
                return reply
        reply = await self._still_holding(inbound)
        await self._context.remember_reply(inbound, reply)
        return reply

    async def _ended_by_customer(self, inbound: Inbound, conversation: Conversation | None,
                                 now: float) -> Reply:
        """The call ended or left the queue: record how, and take it out of the queue."""
        if not conversation or conversation["status"] == "closed":
            reply = Reply(state="closed")
            await self._context.remember_reply(inbound, reply)  # a retry gets it at once
            return reply
        turn = Turn(inbound, self._rules(), now, conversation, {})
        status = conversation["status"]
        if inbound.kind == "left_queue":
            turn.record("left_queue", result=inbound.text)
        if inbound.kind == "left_queue" and inbound.text in AGENT_TOOK_IT:
            pass  # the accepting agent bridged the call: the contact goes on with them
        elif conversation.get("callback"):
            pass  # the caller left to be called back: the contact waits for its call
        elif status == "queued":  # hung up or left while waiting
            withdrawn_from = await self._router.remove(conversation["contact_id"])
            if withdrawn_from:
                await self._handoff.withdraw(withdrawn_from, conversation["contact_id"],
                                             "customer_left")
            self._end(turn, "abandoned_in_queue")
        elif status == "with_agent" and inbound.kind == "end":
            turn.record("customer_left")  # the agent still wraps the contact up
            conversation["customer_left"] = True  # so no survey is asked of them
            await self._handoff.customer_left(conversation)
        elif status in OPEN_IN_IVR and inbound.kind == "end":
            self._end(turn, self._channels[inbound.channel].end_outcome)
        elif status == "callback_offered" and inbound.kind == "end":
            self._end(turn, "closed")  # hung up rather than ask for a callback
        reply = Reply(state=contact_state(conversation["status"]),
                      contact_id=conversation["contact_id"])
        await self._context.commit_turn(inbound, conversation, reply, summaries=[conversation])
        self._events.emit(*turn.events)
        return reply

    async def _after_agent(self, inbound: Inbound, start: TurnStart, now: float) -> Reply:
        """A live call's agent left (`agent_left`: the survey decided, or a goodbye), or the
        caller, moved off the agent's call, asks what comes next (`after_agent`)."""
        conv, style = start.conversation, self._channels[inbound.channel].prompt_style
        if inbound.kind == "after_agent":
            reply = surveys.waiting_question(start.survey, conv, inbound, style) or Reply(
                messages=(prompts.AFTER_AGENT_GOODBYE,), state="closed")
            await self._context.commit_reply(inbound, reply, ())
            return reply
        if not conv or conv["status"] != "with_agent" or conv.get("after_agent") or \
                conv.get("agent_id") != inbound.text:  # a transfer, or already done
            reply = Reply(state=contact_state(conv["status"]) if conv else "closed")
            await self._context.remember_reply(inbound, reply)
            return reply
        turn = Turn(inbound, self._rules(), now, conv, {})
        conv["turns"] += 1
        asked = surveys.offer(turn.rules, conv, style, "agent", now, start.surveyed_at,
                              start.opted_out, turn=conv["turns"])
        conv["after_agent"] = "surveyed" if asked else "let_go"
        if asked:
            turn.add(asked.event)
            turn.extra.extend(asked.commands)
        done = Reply(state=conv["status"], contact_id=conv["contact_id"])
        # A retried notice gets `done`: the caller is moved once; what they hear comes from
        # the after_agent step.
        await self._context.commit_turn(inbound, conv, done, summaries=[conv], extra=turn.extra)
        heard = replace(done, messages=(asked.text if asked else prompts.AFTER_AGENT_GOODBYE,))
        turn.record("replied", **said(heard))
        self._events.emit(*turn.events)
        return heard

    async def _opt_in_out(self, inbound: Inbound, keyword: str, conversation: Conversation | None,
                          customer: dict | None, opted_out: bool, now: float,
                          survey: dict | None = None) -> Reply:
        if keyword in STOP_WORDS:
            opt_out, kind, reply = True, "opted_out", Reply(state="closed")
        elif keyword in START_WORDS:
            opt_out, kind = False, "opted_in"
            reply = Reply(messages=(prompts.SMS_RESUBSCRIBED,))
        else:  # opted out and not asking back in: record, never answer
            opt_out, kind, reply = None, "received_after_opt_out", Reply(state="closed")
        conv = conversation or not_open()
        if not conversation:  # a keyword with no contact open
            conv.update({"status": "closed", "last_at": now})
        customer_id = conv.get("customer_id") or (customer or {}).get("customer_id")
        events = [Event(kind, conv.get("contact_id"), customer_id, inbound.channel,
                        data={"address": inbound.address, **_provider_ids(inbound)},
                        occurred_at=now)]
        if opt_out and conversation and conversation["status"] != "queued":
            turn = Turn(inbound, self._rules(), now, conversation, {})
            self._end(turn, "opted_out")
            events += turn.events
        extra = []
        if opt_out and survey:  # never surveyed after STOP: the waiting survey is dropped
            event, command = surveys.closed_by(survey, inbound, now, "opted_out")
            events.append(event)
            extra.append(command)
        await self._context.commit_turn(inbound, conv, reply, opt_out=opt_out,
                                        summaries=[conv] if conv.get("contact_id") else [],
                                        extra=extra)
        self._events.emit(*events)
        return reply

    async def end_idle(self, key: str, now: float) -> None:
        """Close a conversation that went quiet (claimed by this instance)."""
        conv = await self._context.take_conversation(key)
        if not conv or conv["status"] in ("closed", "queued"):
            return
        inbound = Inbound(conv["channel"], conv["address"], conv["service_address"], "")
        turn = Turn(inbound, self._rules(), now, conv, {})
        self._end(turn, "idle_timeout")
        await self._context.save_summary(conv)
        self._events.emit(*turn.events)


def said(reply: Reply) -> dict[str, Any]:
    """A `replied` event's data: the reply's messages as sent and the choices offered."""
    if not reply.choices:
        return {"messages": list(reply.messages)}
    return {"messages": list(reply.messages),
            "choices": [{"label": c.label, "value": c.value, "digit": c.digit}
                        for c in reply.choices]}


def _replied_after(events: list[Event] | tuple[Event, ...], reply: Reply) -> tuple[Event, ...]:
    """A reply given outside a turn (a survey's thanks): recorded on its events' contact."""
    if not reply.messages or not events:
        return ()
    last = events[-1]
    return (Event("replied", last.contact_id, last.customer_id, last.channel,
                  last.contact_type, data=said(reply), occurred_at=last.occurred_at),)


def _text_for(turn: Turn, template: str | None) -> str:
    """An answer or flow text with the customer's own data and the flow's values filled in
    (templates.py); MissingValue only for a flow value outside an optional part."""
    if template is None:  # rules check makes sure every path that says something has words
        raise ValueError("nothing to say: the rules give this step no text")
    conv = turn.conversation
    values = personal_values(conv, turn.rules.catalog.label, turn.now)
    return render(template, {**values, **conv.get("flow", {}).get("values", {})})


def routing_attributes(rules: Rules, conv: Conversation, channel: str, at: float,
                       waiting: Mapping[str, int] | None = None) -> dict[str, Any]:
    """What the routing tree matches on, for a decision made at `at` (epoch seconds) while
    `waiting` contacts wait in each queue (None: not known, as in a replay)."""
    attrs: dict[str, Any] = {"channel": channel, "contact_type": conv.get("contact_type"),
                             "confidence": conv.get("confidence"),
                             "repeat_contact": _is_repeat(rules, conv),
                             "hours": rules.tree.intervals_at(at)}
    for queue, count in (waiting or {}).items():
        attrs[f"waiting.{queue}"] = count
    for name, value in conv.get("attributes", {}).items():
        attrs[f"customer.{name}"] = value
    return attrs


def _in_window(rules: Rules, conv: Conversation, earlier: dict[str, Any]) -> bool:
    contact_type = rules.catalog.types.get(earlier.get("contact_type") or "")
    return (contact_type is not None and earlier["contact_id"] != conv["contact_id"]
            and earlier["started_at"] >= conv["started_at"] - contact_type.repeat_window_h * 3600)


def _is_repeat(rules: Rules, conv: Conversation) -> bool:
    return any(e["contact_type"] == conv.get("contact_type") and _in_window(rules, conv, e)
               for e in conv.get("earlier", ()))


def _latest_in_window(rules: Rules, conv: Conversation) -> dict[str, Any] | None:
    """The customer's most recent contact (any channel) still inside its repeat window."""
    return next((e for e in conv.get("earlier", ()) if _in_window(rules, conv, e)), None)


def _experiment_arm(turn: Turn, type_id: str) -> Arm | None:
    """The arm of the type's experiment the customer is in (experiments.yaml), recorded on
    the contact once; a hash of ids in process, no round trip."""
    experiment = turn.rules.experiments.for_type(type_id)
    if experiment is None:
        return None
    conv = turn.conversation
    held = conv.get("experiment")
    if held is not None:  # the contact is in one experiment at most
        arms = {arm.name: arm for arm in experiment.arms}
        return arms.get(held["arm"]) if held["name"] == experiment.name else None
    arm = experiment.arm_of(conv["customer_id"])
    conv["experiment"] = {"name": experiment.name, "arm": arm.name}
    turn.record("experiment_assigned", experiment=experiment.name, arm=arm.name,
                treatment=arm.treatment, control=arm.name == experiment.control)
    return arm


def _digit_menu(turn: Turn) -> tuple[Choice, ...]:
    types = sorted((t for t in turn.rules.catalog.types.values() if t.ivr_digit),
                   key=lambda t: t.ivr_digit or 0)
    return tuple(Choice(t.label, t.id, str(t.ivr_digit)) for t in types) + (
        Choice("Talk to a person", "agent", "0"),)


def _step_name(step: dict[str, Any]) -> str:
    return f"flow:{step['flow']}" if step["type"] == "flow" else step["type"]


def _clarifying_choice(turn: Turn, text: str) -> str | None:
    """A number typed to pick from the "did you mean" list (keys go by the IVR digits)."""
    menu = turn.conversation.get("menu") or []
    if turn.inbound.kind != "digits" and turn.conversation["status"] == "clarifying" and \
            text.isdigit() and 1 <= int(text) <= len(menu):
        return menu[int(text) - 1]
    return None


def _attachment_refs(inbound: Inbound) -> dict[str, Any]:
    """A failed turn's files, kept in its event as they came (nothing numbered them)."""
    if not inbound.attachments:
        return {}
    return {"attachments": [{"content_type": a.content_type, "ref": a.ref}
                            for a in inbound.attachments]}


def _provider_ids(inbound: Inbound) -> dict[str, str]:
    return {"dedupe_key": inbound.dedupe_key} if inbound.dedupe_key else {}
