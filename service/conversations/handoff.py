"""The agent half of the orchestrator: offers, acceptance, agent replies, wrap-up.

Customers' turns are in conversation.py; this module is where an escalated contact meets an
agent. Both halves share the conversation state in Redis (context.py) and the event log.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from typing import Any, AsyncIterator, Callable, Mapping

import structlog

from service.agents.bus import Bus
from service.agents.queues import Dispatcher
from service.conversations import surveys
from service.conversations.context import ContextStore
from service.conversations.outbox import NotRecorded, Outbox, Outcome, destination
from service.conversations.record import Conversation
from service.model import AgentLine, DeliveryFailed, OutboundChannel
from service.reporting.events import Event, EventWriter
from service.rules.loader import Rules
from service.rules.replies import replies_for

log = structlog.get_logger(__name__)


class HandoffError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# What the agent console is told when the channel refused, by DeliveryFailed.reason.
_ERROR_CODES = {"outside_window": "outside_window", "not_text": "not_text"}


def _failure_text(action: str, exc: DeliveryFailed) -> str:
    if exc.reason in _ERROR_CODES:
        return str(exc)
    what = "could not connect the customer" if action == "connect" else "the text was not sent"
    return f"{what}: {exc}"


def greeting(agent: Mapping[str, Any]) -> str:
    """What the customer is told when an agent takes them (`hello` of connect and join)."""
    return f"You're now talking with {agent['name']}."


def queue_entry(rules: Rules, conv: Conversation, queue_name: str, reason: str | None,
                **extra: Any) -> dict[str, Any]:
    """The queue entry of a contact that waits again (a transfer, a callback's retry): its
    first priority and enqueue time, so it keeps its place in line, and the agent's whole
    context package; `extra` adds to it."""
    queue = rules.tree.queues[queue_name]
    contact_type = rules.catalog.types.get(conv.get("contact_type") or "")
    type_skills = list(contact_type.skills if contact_type else ())
    return {"contact_id": conv["contact_id"], "customer_id": conv["customer_id"],
            "channel": conv["channel"], "queue": queue.name, "thread": conv.get("thread"),
            "priority": conv.get("priority", 0),
            "skills": sorted(set(queue.skills) | set(type_skills)),
            "reason": reason, "type_skills": type_skills,
            "enqueued_at": conv.get("escalated_at") or time.time(),
            "context": agent_context(rules, conv), **extra}


def agent_line(agent: dict[str, Any]) -> AgentLine:
    """How an agent (as the desk knows them) is reached on a call."""
    return AgentLine(agent["id"], agent["name"], agent.get("phone"), agent.get("client_identity"))


def agent_context(rules: Rules, conv: Conversation) -> dict[str, Any]:
    """Everything an agent needs so the customer never repeats themselves: the one place the
    package is built, for an offer and for a console re-synced after it reconnects."""
    return {"customer": {"id": conv["customer_id"], "address": conv["address"],
                         "attributes": conv.get("attributes", {})},
            "channel": conv["channel"],
            "contact_type": conv.get("contact_type"),
            "contact_type_label": rules.catalog.label(conv.get("contact_type")),
            "confidence": conv.get("confidence"), "reason": conv.get("reason"),
            "transcript": list(conv["transcript"]), "self_service_steps": list(conv["steps"]),
            "earlier_contacts": list(conv.get("earlier", ())),
            "escalated_at": conv.get("escalated_at"),
            **({"transfer": _transfer_context(conv["transfer"])} if conv.get("transfer") else {}),
            **({"callback": callback_context(conv["callback"])} if conv.get("callback") else {})}


def callback_context(callback: Mapping[str, Any]) -> dict[str, Any]:
    """What an offer and the agent's context show of a callback (callbacks.py)."""
    return {key: callback.get(key) for key in ("number", "requested_at", "attempts",
                                               "max_attempts", "state")}


def _transfer_context(transfer: dict[str, Any]) -> dict[str, Any]:
    """Who had a transferred contact, why it moved and how (the offer's `transfer`)."""
    return {"from_agent": transfer["from_agent"], "from_agent_name": transfer["from_agent_name"],
            "note": transfer["note"], "mode": transfer["mode"], "at": transfer["requested_at"]}


def offer_frame(entry: dict[str, Any], kind: str = "offer", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "contact_id": entry["contact_id"], "channel": entry["channel"],
            "queue": entry["queue"], "reason": entry["reason"], "context": entry["context"],
            **({"callback": callback_context(entry["callback"])} if entry.get("callback")
               else {}),
            **extra}


class Handoff:
    def __init__(self, rules: Callable[[], Rules], context: ContextStore, router: Dispatcher,
                 bus: Bus, events: EventWriter, channels: Mapping[str, OutboundChannel],
                 outbox: Outbox, rules_for: Callable[[Any], Rules] | None = None):
        self._rules = rules
        # a contact's own rules: a canary's, for a contact opened in its share (holder.py)
        self._rules_for = rules_for or (lambda held: rules())
        self._context = context
        self.router = router
        self._bus = bus
        self._events = events
        self._channels = channels
        self._outbox = outbox
        from service.conversations.attachments import Attachments
        from service.conversations.callbacks import Callbacks  # they build on this module
        from service.conversations.notes import Notes
        from service.conversations.transfer import Transfers

        self.transfers = Transfers(self)
        self.callbacks = Callbacks(self)
        self.notes = Notes(self)
        self.attachments = Attachments(self)

    def channel(self, name: str) -> OutboundChannel | None:
        """The outbound side of a listed channel, by name."""
        return self._channels.get(name)

    def queues(self) -> list[dict[str, str]]:
        """The agent queues, for the console's transfer list."""
        return [{"name": q.name, "label": q.label} for q in self._rules().tree.queues.values()]

    async def conversation(self, contact_id: str) -> tuple[str, Conversation] | None:
        return await self._context.by_contact(contact_id)

    # ---- offers --------------------------------------------------------------------------

    async def dispatch(self) -> None:
        """Offer waiting contacts to free agents; each offer reaches the agent's instance."""
        for offer in await self.router.dispatch(self._rules().tree.queues):
            entry = await self.router.entry(offer.contact_id)
            if entry is None:
                continue
            await self._bus.publish(f"agent:{offer.agent_id}", offer_frame(
                entry, expires_in_s=self.router.offer_timeout_s))
            self._record("offered", entry, agent_id=offer.agent_id)

    async def sweep(self) -> None:
        """Every second on every instance: expire offers, overflow queues, dispatch."""
        for offer in await self.router.expired_offers():
            await self._bus.publish(f"agent:{offer.agent_id}",
                                    {"type": "offer_withdrawn", "contact_id": offer.contact_id,
                                     "reason": "timeout"})
            entry = await self.router.entry(offer.contact_id)
            if entry:
                self._record("offer_expired", entry, agent_id=offer.agent_id)
                await self.transfers.refused(entry, offer.agent_id, "timeout")
        await self.transfers.sweep()
        for queue in self._rules().tree.queues.values():
            if queue.timeout_s and queue.overflow:
                target = self._rules().tree.queues[queue.overflow]
                for contact_id in await self.router.overflow(queue.name, queue.overflow,
                                                             queue.timeout_s, target.skills):
                    entry = await self.router.entry(contact_id)
                    if entry:
                        self._record("overflowed", entry, reason="queue_timeout",
                                     from_queue=queue.name)
        await self.dispatch()

    async def decline(self, agent: dict[str, Any], contact_id: str) -> None:
        if await self.router.decline(contact_id, agent["id"]):
            entry = await self.router.entry(contact_id)
            if entry:
                self._record("offer_declined", entry, agent_id=agent["id"])
                await self.transfers.refused(entry, agent["id"], "declined")
        await self.dispatch()

    async def withdraw(self, agent_id: str, contact_id: str, reason: str) -> None:
        await self._bus.publish(f"agent:{agent_id}", {"type": "offer_withdrawn",
                                                      "contact_id": contact_id, "reason": reason})

    # ---- an agent takes the contact ------------------------------------------------------

    async def accept(self, agent: dict[str, Any], contact_id: str) -> dict[str, Any]:
        entry = await self.router.accept(contact_id, agent["id"])
        if entry is None:
            raise HandoffError("offer_gone", "this contact is no longer offered to you")
        async with self._context.leased_contact(contact_id) as found:
            if found is None:
                raise HandoffError("contact_gone", "the customer has left")
            key, conv = found
            now = time.time()
            conv.update({"status": "with_agent", "agent_id": agent["id"],
                         "agent_name": agent["name"], "accepted_at": now})
            typed = self._channels[conv["channel"]].traits.agent_can_type
            if typed:
                conv["transcript"].append({"from": "agent", "text": greeting(agent), "at": now})
            calling = self.callbacks.attempting(conv, agent_line(agent))
            await self._context.save(key, conv)
        self._record("agent_accepted", entry, agent_id=agent["id"],
                     waited_s=round(now - entry["enqueued_at"], 3),
                     **({"hello": greeting(agent)} if typed else {}))  # what the customer read
        if calling:  # the customer is called first; the agent joins once they answer
            await self.callbacks.place(conv, calling)
        else:
            await self._connect_customer(agent, conv, joining="transfer" in entry)
        if "transfer" in entry:
            await self.transfers.taken_over(key, conv, entry)
        entry["context"] = agent_context(self._rules(), conv)
        return offer_frame(entry, kind="assigned", agent={"id": agent["id"],
                                                          "name": agent["name"]})

    async def _connect_customer(self, agent: dict[str, Any], conv: Conversation,
                                joining: bool = False) -> None:
        payload = {"agent": asdict(agent_line(agent)), "hello": greeting(agent)}
        # a transfer: the customer is already connected (a call's conference)
        await self._outbound(conv, "join" if joining else "connect", payload)

    def assigned_frame(self, conv: Conversation) -> dict[str, Any]:
        """What a reconnecting agent's console is sent for a contact it already has."""
        return {"type": "assigned", "contact_id": conv["contact_id"], "channel": conv["channel"],
                "queue": conv.get("queue"), "reason": conv.get("reason"),
                "context": agent_context(self._rules(), conv)}

    async def saved_replies(self, agent: dict[str, Any], contact_id: str) -> dict[str, Any]:
        """The `replies` frame: the saved replies for the agent's own contact, filled in for
        its customer and this agent (replies.py), those for its contact type first."""
        _, conv = await self._assigned(agent, contact_id)
        rules = self._rules_for(conv.get("canary"))
        filled = replies_for(rules.replies, rules.catalog, conv, agent["name"], time.time())
        return {"type": "replies", "contact_id": contact_id,
                "contact_type": conv.get("contact_type"),
                "replies": [reply.frame() for reply in filled]}

    # ---- conversation with the agent -----------------------------------------------------

    async def agent_message(self, agent: dict[str, Any], contact_id: str, text: str) -> None:
        async with self._changing(agent, contact_id) as (key, conv):
            if not self._channels[conv["channel"]].traits.agent_can_type:
                raise HandoffError("not_text", "this contact is a phone call")
            said = {"from": "agent", "text": text, "at": time.time()}
            conv["transcript"].append(said)
            await self._context.save(key, conv, summary=False)
        try:
            await self._outbound(conv, "send", {"text": text})
        except HandoffError as exc:
            if exc.code == "not_recorded":  # nothing sent: as if it had not been written
                await self._take_back(contact_id, said)
                raise
            self._record_conv("agent_message", conv, agent_id=agent["id"], text=text)
            raise
        self._record_conv("agent_message", conv, agent_id=agent["id"], text=text)

    async def _take_back(self, contact_id: str, said: dict[str, Any]) -> None:
        """An agent's line that was never sent leaves the transcript (the agent may resend)."""
        try:
            async with self._context.leased_contact(contact_id) as found:
                if found is not None and said in found[1]["transcript"]:
                    found[1]["transcript"].remove(said)
                    await self._context.save(found[0], found[1], summary=False)
        except Exception as exc:  # the agent is told it was not sent all the same
            log.warning("handoff.take_back_failed", contact_id=contact_id, error=str(exc))

    async def to_agent(self, conv: Conversation, message: dict[str, Any]) -> None:
        """A customer's words while an agent has the contact: straight to that agent."""
        await self._bus.publish(f"agent:{conv['agent_id']}", {
            "type": "message", "contact_id": conv["contact_id"], "from": "customer",
            "text": message["text"],
            **({"attachments": message["attachments"]} if message.get("attachments") else {})})

    async def customer_left(self, conv: Conversation) -> None:
        await self._bus.publish(f"agent:{conv['agent_id']}", {
            "type": "contact_ended", "contact_id": conv["contact_id"],
            "reason": "customer_left"})

    async def wrap_up(self, agent: dict[str, Any], contact_id: str, resolved: bool,
                      correction: str | None, note: str) -> None:
        if correction and correction not in self._rules().catalog.types:
            raise HandoffError("bad_contact_type", f"unknown contact type '{correction}'")
        async with self._changing(agent, contact_id) as (key, conv):
            await self.transfers.cancel(conv, "wrapped_up")
            await self.router.finish(contact_id, agent["id"], conv["channel"])
            outcome = "agent_resolved" if resolved else "agent_unresolved"
            now = time.time()
            self._record_conv("wrap_up", conv, agent_id=agent["id"], resolved=resolved,
                              corrected_contact_type=correction, note=note,
                              classified_as=conv.get("contact_type"))
            if correction:
                conv["contact_type"] = correction
            conv.update({"status": "closed", "outcome": outcome, "ended_at": now})
            self._record_conv("ended", conv, outcome=outcome)
            await self._context.save(key, conv)
        await surveys.after_wrap_up(self, conv)
        try:
            await self._channels[conv["channel"]].close(destination(conv))
        except DeliveryFailed as exc:  # the contact is wrapped up all the same
            log.warning("handoff.close_failed", error=str(exc), contact_id=contact_id)
        await self.dispatch()

    @contextlib.asynccontextmanager
    async def _changing(self, agent: dict[str, Any], contact_id: str
                        ) -> AsyncIterator[tuple[str, Conversation]]:
        """The agent's own contact, to change while no customer turn can overwrite it."""
        if await self.router.assigned_agent(contact_id) != agent["id"]:
            raise HandoffError("not_assigned", "this contact is not assigned to you")
        async with self._context.leased_contact(contact_id) as found:
            if found is None:
                raise HandoffError("contact_gone", "this contact has ended")
            yield found

    async def _assigned(self, agent: dict[str, Any], contact_id: str
                        ) -> tuple[str, Conversation]:
        if await self.router.assigned_agent(contact_id) != agent["id"]:
            raise HandoffError("not_assigned", "this contact is not assigned to you")
        found = await self._context.by_contact(contact_id)
        if found is None:
            raise HandoffError("contact_gone", "this contact has ended")
        return found

    async def _outbound(self, conv: Conversation, action: str,
                        payload: dict[str, Any]) -> Outcome | None:
        """Record one outbound request in the outbox (`outbox.ACTIONS`), which sends it
        through the contact's channel now or retries it later. Connecting never fails the
        accept (the contact is assigned, the greeting waits in the outbox); an agent's text
        the channel refused for good, or that could not be recorded, is an error naming why."""
        try:
            outcome = await self._outbox.submit(conv, action, payload, conv.get("agent_id"))
        except NotRecorded as exc:
            log.error("handoff.outbox_unavailable", action=action, error=str(exc),
                      contact_id=conv["contact_id"])
            if action == "send":  # not sent: the agent may send it again
                raise HandoffError("not_recorded", "the text was not sent: it could not be "
                                   "recorded for sending; try again in a moment") from exc
            # Connecting the customer cannot wait: one unrecorded attempt, its outcome
            # shown to the agent under the greeting.
            return await self._outbox.attempt_unrecorded(conv, action, payload,
                                                         conv.get("agent_id"))
        failure = outcome.failure
        if action == "send" and outcome.state == "failed" and failure is not None:
            raise HandoffError(_ERROR_CODES.get(failure.reason, "delivery_failed"),
                               _failure_text(action, failure))
        return outcome

    # ---- events --------------------------------------------------------------------------

    def _record(self, kind: str, entry: dict[str, Any], reason: str | None = None,
                **data: Any) -> None:
        context = entry["context"]
        self._events.emit(Event(kind, entry["contact_id"], entry["customer_id"],
                                entry["channel"], context.get("contact_type"),
                                reason=reason, data={"queue": entry["queue"], **data}))

    def _record_conv(self, kind: str, conv: Conversation, reason: str | None = None,
                     **data: Any) -> None:
        self._events.emit(Event(kind, conv["contact_id"], conv["customer_id"], conv["channel"],
                                conv.get("contact_type"), conv.get("route_path"), reason=reason,
                                data=data))

