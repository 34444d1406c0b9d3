"""Queued callbacks: a customer waiting for an agent asks to be called back, leaves the line
and keeps their place in our queue; when an agent accepts, the customer is called, and the
agent joins once they answer. A call not answered is tried again after the queue's delay, up to
its attempts (routes.yaml `callback`), then given up.

Channel-neutral: a channel whose traits have `calls_back` is offered the choice in its hold
reply (`CALLBACK_CHOICE`), places the call (`Outbound.call_back`, through the outbox) and
reports what became of it as `CallOutcome`s (`Callbacks.on_outcome`).

The contact's `callback` record (in the conversation, the queue entry and the agent's
context): number, requested_at, queue, attempts so far, max_attempts, retry_after_s, state
(`waiting` in the queue, `calling`, `answered`, `ended`, `failed`), agent_id of the attempt
under way, retry_at while a retry waits.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import structlog

from service.conversations import prompts
from service.conversations.handoff import Handoff, callback_context, greeting, queue_entry
from service.conversations.record import Conversation
from service.model import AgentLine, CallOutcome, Choice

log = structlog.get_logger(__name__)

CALLBACK_DIGIT = "1"
CALLBACK_CHOICE = Choice("Call me back", "callback", CALLBACK_DIGIT)
NOT_REACHED = ("no_answer", "busy", "failed")
ASKED = f"[pressed {CALLBACK_DIGIT}: call me back]"  # the transcript's line for the request


class Callbacks:
    """The callback half of the hand-off; outbound calls go through the hand-off's own."""

    def __init__(self, handoff: Handoff):
        self._handoff = handoff
        self._router = handoff.router

    def offered(self, conv: Conversation) -> bool:
        """The waiting customer may still ask to be called back (their channel can call)."""
        channel = self._handoff.channels.get(conv["channel"])
        return channel is not None and channel.traits.calls_back and not conv.get("callback")

    def record(self, conv: Conversation, queue: str, now: float) -> dict[str, Any]:
        """A new callback of the contact, waiting in `queue`, tried as that queue says."""
        queues = self._handoff.rules().tree.queues
        policy = (queues.get(queue) or next(iter(queues.values()))).callback
        return {"number": conv["address"], "requested_at": now, "queue": queue, "attempts": 0,
                "max_attempts": policy.attempts, "retry_after_s": policy.retry_after_s,
                "state": "waiting"}

    async def request(self, conv: Conversation, now: float) -> str | None:
        """The waiting customer asks to be called back: marked in the queue entry, which keeps
        its place, and in the conversation; the queue, or None when it no longer waits."""
        said = [{"from": "customer", "text": ASKED, "at": now},
                {"from": "bot", "text": prompts.CALLBACK_CONFIRMED, "at": now}]

        def mark(entry: dict[str, Any]) -> None:
            entry["callback"] = self.record(conv, entry["queue"], now)
            entry["context"]["callback"] = callback_context(entry["callback"])
            entry["context"]["transcript"].extend(said)

        entry = await self._router.edit_entry(conv["contact_id"], mark)
        if entry is None:
            return None
        conv["callback"] = entry["callback"]
        conv["transcript"].extend(said)
        return entry["queue"]

    # ---- an agent accepted: the call ----------------------------------------------------

    @staticmethod
    def attempting(conv: Conversation, agent: AgentLine) -> int | None:
        """The accepting agent starts the next attempt (in the accept's lease); its number,
        or None for a contact that is not a callback."""
        callback = conv.get("callback")
        if not callback or callback["state"] != "waiting":  # a transfer of an answered one
            return None
        callback.update(attempts=callback["attempts"] + 1, state="calling",
                        agent_id=agent.id, agent=asdict(agent))
        callback.pop("retry_at", None)
        return callback["attempts"]

    async def place(self, conv: Conversation, attempt: int) -> None:
        """Call the customer through the outbox (retried while the provider is away)."""
        callback = conv["callback"]
        self._handoff.record_conv("callback_attempt", conv, attempt=attempt,
                                   agent_id=callback.get("agent_id"), number=callback["number"])
        await self._handoff.outbound(conv, "call_back", {"attempt": attempt})

    # ---- what became of the call -----------------------------------------------------------

    async def on_outcome(self, outcome: CallOutcome) -> None:
        """The provider's news about a placed call. Only the attempt under way moves the
        callback, and each state once, so a replayed or late callback changes nothing."""
        handoff = self._handoff
        after = None
        async with handoff.context.leased_contact(outcome.contact_id) as found:
            if found is None:
                log.info("callback.outcome_for_no_contact", contact_id=outcome.contact_id)
                return
            key, conv = found
            callback = conv.get("callback")
            if not callback or callback["attempts"] != outcome.attempt or \
                    conv["status"] == "closed":  # another attempt's, or wrapped up already
                return
            if outcome.state == "answered":
                after = self._answered(conv, outcome)
            elif outcome.state == "ended" and callback["state"] in ("calling", "answered"):
                self._answered(conv, outcome)  # its answered news was lost: it was answered
                callback["state"] = "ended"
                handoff.record_conv("customer_left", conv)
                after = "left"
            elif outcome.state in NOT_REACHED and callback["state"] == "calling":
                after = await self._not_reached(conv, outcome)
            if after is None:
                return
            await handoff.context.save(key, conv)
        await self._then(after, conv)

    def _answered(self, conv: Conversation, outcome: CallOutcome) -> str | None:
        callback = conv["callback"]
        if callback["state"] != "calling":
            return None
        callback["state"] = "answered"
        self._handoff.record_conv("callback_completed", conv, attempt=outcome.attempt,
                                   agent_id=callback.get("agent_id"),
                                   call_id=outcome.provider_id)
        return "join"

    async def _not_reached(self, conv: Conversation, outcome: CallOutcome) -> str:
        """Not answered: the agent is let go; tried again after the delay, or given up."""
        handoff, callback = self._handoff, conv["callback"]
        agent_id = callback.pop("agent_id", None) or conv.get("agent_id")
        callback.pop("agent", None)
        last = callback["attempts"] >= callback["max_attempts"]
        now = time.time()
        retry_in = None if last else callback["retry_after_s"]
        handoff.record_conv("callback_attempt_failed", conv, attempt=outcome.attempt,
                             result=outcome.state, agent_id=agent_id, retry_in_s=retry_in,
                             call_id=outcome.provider_id)
        if agent_id:
            await self._router.finish(conv["contact_id"], agent_id, conv["channel"])
            await handoff.bus.publish(f"agent:{agent_id}", {
                "type": "callback_result", "contact_id": conv["contact_id"],
                "status": outcome.state, "attempt": outcome.attempt, "retry_in_s": retry_in,
                "gave_up": last})
        conv.pop("agent_id", None)
        conv.pop("agent_name", None)
        if last:
            callback["state"] = "failed"
            handoff.record_conv("callback_failed", conv, attempts=callback["attempts"],
                                 result=outcome.state)
            conv.update({"status": "closed", "outcome": "callback_failed", "ended_at": now})
            handoff.record_conv("ended", conv, outcome="callback_failed")
            return "dispatch"
        callback.update(state="waiting", retry_at=now + callback["retry_after_s"])
        conv["status"] = "queued"
        await self._router.enqueue(callback["queue"], conv.get("priority", 0),
                                   self._entry(conv))
        return "dispatch"

    def _entry(self, conv: Conversation) -> dict[str, Any]:
        """The queue entry of a callback waiting for its retry: its place in line kept,
        offered no sooner than `retry_at`."""
        rules, callback = self._handoff.rules(), conv["callback"]
        queue = callback["queue"] if callback["queue"] in rules.tree.queues else \
            next(iter(rules.tree.queues))
        return queue_entry(rules, conv, queue, conv.get("reason"),
                           not_before=callback["retry_at"], callback=callback)

    async def _then(self, after: str, conv: Conversation) -> None:
        """What follows a changed callback, once the conversation is saved: the customer
        answered (the agent is dialled in), hung up (the agent is told), or the agent was let
        go (the queue is offered again)."""
        handoff = self._handoff
        if after == "join":
            agent = conv["callback"].get("agent")
            if conv.get("agent_id"):
                await handoff.bus.publish(f"agent:{conv['agent_id']}", {
                    "type": "callback_result", "contact_id": conv["contact_id"],
                    "status": "answered", "attempt": conv["callback"]["attempts"],
                    "retry_in_s": None, "gave_up": False})
            if agent:
                await handoff.outbound(conv, "join", {"agent": agent, "hello": greeting(agent)})
        elif after == "left":
            await handoff.customer_left(conv)
        else:
            await handoff.dispatch()
