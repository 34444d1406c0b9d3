"""The agent half of the orchestrator: offers, acceptance, agent replies, wrap-up.

Customers' turns are in conversation.py; this module is where an escalated contact meets an
agent. Both halves share the conversation state in Redis (context.py) and the event log.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import structlog

from service.agents.bus import Bus
from service.agents.queues import Router
from service.conversations.context import ContextStore
from service.infra.twilio_rest import TwilioRest
from service.reporting.events import Event, EventWriter
from service.rules.loader import Rules

log = structlog.get_logger(__name__)


class HandoffError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _hello(agent: dict[str, Any]) -> str:
    return f"You're now talking with {agent['name']}."


def offer_frame(entry: dict[str, Any], kind: str = "offer", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "contact_id": entry["contact_id"], "channel": entry["channel"],
            "queue": entry["queue"], "reason": entry["reason"], "context": entry["context"],
            **extra}


class Handoff:
    def __init__(self, rules: Callable[[], Rules], context: ContextStore, router: Router,
                 bus: Bus, events: EventWriter, twilio: TwilioRest):
        self._rules = rules
        self._context = context
        self.router = router
        self._bus = bus
        self._events = events
        self._twilio = twilio

    async def conversation(self, contact_id: str) -> tuple[str, dict[str, Any]] | None:
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
        await self.dispatch()

    async def withdraw(self, agent_id: str, contact_id: str, reason: str) -> None:
        await self._bus.publish(f"agent:{agent_id}", {"type": "offer_withdrawn",
                                                      "contact_id": contact_id, "reason": reason})

    # ---- an agent takes the contact ------------------------------------------------------

    async def accept(self, agent: dict[str, Any], contact_id: str) -> dict[str, Any]:
        entry = await self.router.accept(contact_id, agent["id"])
        if entry is None:
            raise HandoffError("offer_gone", "this contact is no longer offered to you")
        found = await self._context.by_contact(contact_id)
        if found is None:
            raise HandoffError("contact_gone", "the customer has left")
        key, conv = found
        now = time.time()
        conv.update(status="with_agent", agent_id=agent["id"], agent_name=agent["name"])
        if conv["channel"] != "voice":
            conv["transcript"].append({"from": "agent", "text": _hello(agent), "at": now})
        await self._context.save(key, conv)
        self._record("agent_accepted", entry, agent_id=agent["id"],
                     waited_s=round(now - entry["enqueued_at"], 3))
        await self._connect_customer(agent, conv)
        entry["context"]["transcript"] = conv["transcript"]
        return offer_frame(entry, kind="assigned", agent={"id": agent["id"],
                                                          "name": agent["name"]})

    async def _connect_customer(self, agent: dict[str, Any], conv: dict[str, Any]) -> None:
        hello = _hello(agent)
        if conv["channel"] == "chat":
            await self._bus.publish(f"chat:{conv['thread']}", {"type": "status",
                                                              "state": "with_agent"})
            await self._bus.publish(f"chat:{conv['thread']}", {"type": "message",
                                                              "from": "agent", "text": hello})
        elif conv["channel"] == "sms":
            await self._deliver_sms(conv, hello)
        elif conv["channel"] == "voice":
            try:
                await self._twilio.bridge_call(conv["thread"], agent)
            except Exception as exc:  # the call stays in Twilio's queue; the agent is told
                log.warning("voice.bridge_failed", error=str(exc), contact_id=conv["contact_id"])
                raise HandoffError("bridge_failed", f"could not connect the call: {exc}") from exc

    # ---- conversation with the agent -----------------------------------------------------

    async def agent_message(self, agent: dict[str, Any], contact_id: str, text: str) -> None:
        key, conv = await self._assigned(agent, contact_id)
        conv["transcript"].append({"from": "agent", "text": text, "at": time.time()})
        await self._context.save(key, conv, summary=False)
        self._record_conv("agent_message", conv, agent_id=agent["id"], text=text)
        if conv["channel"] == "chat":
            await self._bus.publish(f"chat:{conv['thread']}",
                                    {"type": "message", "from": "agent", "text": text})
        elif conv["channel"] == "sms":
            await self._deliver_sms(conv, text)
        else:
            raise HandoffError("not_text", "this contact is a phone call")

    async def to_agent(self, conv: dict[str, Any], message: dict[str, Any]) -> None:
        """A customer's words while an agent has the contact: straight to that agent."""
        await self._bus.publish(f"agent:{conv['agent_id']}", {
            "type": "message", "contact_id": conv["contact_id"], "from": "customer",
            "text": message["text"]})

    async def customer_left(self, conv: dict[str, Any]) -> None:
        await self._bus.publish(f"agent:{conv['agent_id']}", {
            "type": "contact_ended", "contact_id": conv["contact_id"],
            "reason": "customer_left"})

    async def wrap_up(self, agent: dict[str, Any], contact_id: str, resolved: bool,
                      correction: str | None, note: str) -> None:
        if correction and correction not in self._rules().catalog.types:
            raise HandoffError("bad_contact_type", f"unknown contact type '{correction}'")
        key, conv = await self._assigned(agent, contact_id)
        await self.router.finish(contact_id, agent["id"], conv["channel"])
        outcome = "agent_resolved" if resolved else "agent_unresolved"
        now = time.time()
        self._record_conv("wrap_up", conv, agent_id=agent["id"], resolved=resolved,
                          corrected_contact_type=correction, note=note,
                          classified_as=conv.get("contact_type"))
        if correction:
            conv["contact_type"] = correction
        conv.update(status="closed", outcome=outcome, ended_at=now)
        self._record_conv("ended", conv, outcome=outcome)
        await self._context.save(key, conv)
        if conv["channel"] == "chat":
            await self._bus.publish(f"chat:{conv['thread']}", {"type": "status",
                                                              "state": "closed"})
        await self.dispatch()

    async def _assigned(self, agent: dict[str, Any], contact_id: str
                        ) -> tuple[str, dict[str, Any]]:
        if await self.router.assigned_agent(contact_id) != agent["id"]:
            raise HandoffError("not_assigned", "this contact is not assigned to you")
        found = await self._context.by_contact(contact_id)
        if found is None:
            raise HandoffError("contact_gone", "this contact has ended")
        return found

    async def _deliver_sms(self, conv: dict[str, Any], text: str) -> None:
        try:
            await self._twilio.send_sms(conv["address"], conv["service_address"], text)
        except Exception as exc:
            log.warning("sms.send_failed", error=str(exc), contact_id=conv["contact_id"])
            self._record_conv("delivery_failed", conv, error=str(exc)[:300])
            raise HandoffError("delivery_failed", f"the text was not sent: {exc}") from exc

    # ---- events --------------------------------------------------------------------------

    def _record(self, kind: str, entry: dict[str, Any], reason: str | None = None,
                **data: Any) -> None:
        context = entry["context"]
        self._events.emit(Event(kind, entry["contact_id"], entry["customer_id"],
                                entry["channel"], context.get("contact_type"),
                                reason=reason, data={"queue": entry["queue"], **data}))

    def _record_conv(self, kind: str, conv: dict[str, Any], **data: Any) -> None:
        self._events.emit(Event(kind, conv["contact_id"], conv["customer_id"], conv["channel"],
                                conv.get("contact_type"), conv.get("route_path"), data=data))

