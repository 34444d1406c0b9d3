"""Agent transfers: an agent hands a contact they hold to a queue or to a named colleague.

Cold: the contact leaves the agent at once and waits again. Warm: the agent keeps it (and its
customer's messages) until the next agent accepts. A transferred contact waits with its first
priority and first enqueue time, so it goes ahead of every contact that came after it; one sent
to a named colleague waits in its own queue offered to that colleague only, and goes back to
that queue for anyone (cold) or stays with the sender (warm) if they decline or let it expire.
The new agent's offer carries the whole context and `transfer: {from_agent, note, mode}`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from service.conversations.handoff import Handoff, HandoffError, agent_line, queue_entry
from service.conversations.record import Conversation
from service.model import AgentLine

log = structlog.get_logger(__name__)

MAX_NOTE_CHARS = 500
MODES = ("cold", "warm")
# What the customer is told, by mode, on channels where agents type.
PASSING_ON = {"cold": "I'm passing you to a colleague who can help. Please hold on.",
              "warm": "I'm bringing in a colleague who can help; I'll stay with you until "
                      "they join."}


@dataclass(frozen=True)
class TransferRequest:
    """A `transfer` frame, checked: exactly one of `queue` and `agent`."""
    contact_id: str
    mode: str
    note: str
    queue: str | None = None
    agent: str | None = None

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> "TransferRequest":
        """The request a frame asks for; HandoffError('bad_frame') saying what is wrong."""
        queue, agent = frame.get("queue") or None, frame.get("agent") or None
        if (queue is None) == (agent is None):
            raise HandoffError("bad_frame", "transfer needs either a queue or an agent")
        if not all(isinstance(v, str) for v in (queue or "", agent or "")):
            raise HandoffError("bad_frame", "queue and agent are strings")
        mode = frame.get("mode", "cold")
        if mode not in MODES:
            raise HandoffError("bad_frame", "mode is cold or warm")
        note = frame.get("note") or ""
        if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
            raise HandoffError("bad_frame", f"note is text of at most {MAX_NOTE_CHARS} "
                                            "characters")
        return cls(frame["contact_id"], mode, note.strip(), queue, agent)


def result_frame(contact_id: str, status: str, transfer: dict[str, Any],
                 reason: str | None = None) -> dict[str, Any]:
    """`transfer_result` for the sending agent: what became of their transfer."""
    return {"type": "transfer_result", "contact_id": contact_id, "status": status,
            "mode": transfer["mode"], "queue": transfer.get("to_queue"),
            "agent": transfer.get("to_agent"), "agent_name": transfer.get("to_agent_name"),
            "reason": reason}


class Transfers:
    """The transfer half of the hand-off; outbound calls go through the hand-off's own."""

    def __init__(self, handoff: Handoff):
        self._handoff = handoff
        self._router = handoff.router

    # ---- the sender asks ---------------------------------------------------------------

    async def request(self, agent: dict[str, Any], request: TransferRequest) -> dict[str, Any]:
        """Hand the contact on; the `transfer_result` frame for the sender."""
        handoff = self._handoff
        key, conv = await handoff.assigned(agent, request.contact_id)
        transfer, reason = await self._target(agent, conv, request)
        if conv.get("transfer", {}).get("pending"):
            raise HandoffError("transfer_pending", "a transfer of this contact already waits")
        before = copy.deepcopy(conv)
        conv["transfer"] = transfer
        if handoff.channels[conv["channel"]].traits.agent_can_type:
            conv["transcript"].append({"from": "agent", "text": PASSING_ON[request.mode],
                                       "at": transfer["requested_at"]})
        entry = self._entry(conv, transfer)
        if request.mode == "cold":
            self._leave(conv, transfer["to_queue"])
        await handoff.context.save(key, conv)
        queued = await self._router.requeue(entry, agent["id"], request.mode)
        if queued != "queued":
            await handoff.context.save(key, before)
            raise HandoffError("transfer_pending" if queued == "pending" else "not_assigned",
                               "a transfer of this contact already waits" if queued == "pending"
                               else "this contact is not assigned to you")
        self._record("transfer_requested", conv, transfer, reason)
        if request.mode == "cold":
            await self._router.release_slot(agent["id"], conv["channel"])
            self._record("transferred", conv, transfer, reason)
        not_told = await self._tell_customer(conv, agent, request.mode)
        await handoff.dispatch()
        status = "transferred" if request.mode == "cold" else "pending"
        told = conv["transcript"][-1] if conv["transcript"][-1]["from"] == "agent" else None
        return {**result_frame(conv["contact_id"], status, transfer, reason),
                "told_customer": told["text"] if told and not not_told else None,
                "delivery_failed": not_told}

    async def _target(self, agent: dict[str, Any], conv: Conversation,
                      request: TransferRequest) -> tuple[dict[str, Any], str]:
        """Where the contact goes, checked; a colleague who cannot take it now sends a cold
        transfer to the contact's queue instead (reason agent_unavailable)."""
        queues = self._handoff.rules().tree.queues
        transfer = {"from_agent": agent["id"], "from_agent_name": agent["name"],
                    "note": request.note, "mode": request.mode, "requested_at": time.time(),
                    "pending": True, "to_queue": request.queue, "to_agent": None}
        if request.queue is not None:
            if request.queue not in queues:
                raise HandoffError("unknown_queue", f"there is no queue '{request.queue}'")
            return transfer, "agent_transfer"
        assert request.agent is not None  # from_frame: exactly one of queue and agent
        if request.agent == agent["id"]:
            raise HandoffError("self_transfer", "you cannot transfer a contact to yourself")
        state = await self._router.agent_state(request.agent)
        if not state:
            raise HandoffError("unknown_agent", "that colleague has never signed in, so cannot "
                                                "take contacts; the contact stays with you")
        home = conv.get("queue") if conv.get("queue") in queues else next(iter(queues))
        transfer["to_queue"] = home
        if await self._router.has_room(request.agent, conv["channel"]):
            transfer.update(to_agent=request.agent, to_agent_name=state.get("name"))
            return transfer, "agent_transfer"
        if request.mode == "warm":
            raise HandoffError("agent_unavailable", f"{state.get('name')} is away or has no "
                                                    "free slot; the contact stays with you")
        return transfer, "agent_unavailable"

    def _entry(self, conv: Conversation, transfer: dict[str, Any]) -> dict[str, Any]:
        """The queue entry of a transferred contact: the new agent's whole context package."""
        entry = queue_entry(self._handoff.rules(), conv, transfer["to_queue"], "transferred",
                            transfer=transfer)
        if transfer["to_agent"]:
            entry["only_agent"] = transfer["to_agent"]
        return entry

    @staticmethod
    def _leave(conv: Conversation, queue: str) -> None:
        """The contact leaves its agent and waits again."""
        conv.update({"status": "queued", "queue": queue})
        conv.pop("agent_id", None)
        conv.pop("agent_name", None)

    async def _tell_customer(self, conv: Conversation, agent: dict[str, Any], mode: str
                             ) -> str | None:
        """Say so on the customer's channel and let a cold sender's leg go; what failed (the
        transfer stands all the same: it is recorded as delivery_failed), or None."""
        handoff = self._handoff
        try:
            if handoff.channels[conv["channel"]].traits.agent_can_type:
                await handoff.outbound(conv, "send", {"text": PASSING_ON[mode]})
                handoff.record_conv("replied", conv, messages=[PASSING_ON[mode]])
            if mode == "cold":
                await handoff.outbound(conv, "release", {"agent": asdict(agent_line(agent))})
        except HandoffError as exc:
            return str(exc)
        return None

    # ---- the next agent answers --------------------------------------------------------

    async def taken_over(self, key: str, conv: Conversation, entry: dict[str, Any]) -> None:
        """The next agent accepted: a warm sender lets go now; the sender is told."""
        transfer = conv.get("transfer") or entry["transfer"]
        transfer["pending"] = False
        conv["transfer"] = transfer
        await self._handoff.context.save(key, conv, summary=False)
        if transfer["mode"] == "warm":
            await self._router.release_slot(transfer["from_agent"], conv["channel"])
            self._record("transferred", conv, transfer, "agent_transfer")
            # queued after the next agent's join, so a caller is never left alone
            first = AgentLine(transfer["from_agent"], transfer["from_agent_name"])
            await self._handoff.outbound(conv, "drop", {"agent": asdict(first)})
        await self._tell_sender(conv, transfer, "accepted")

    async def refused(self, entry: dict[str, Any], agent_id: str, why: str) -> None:
        """The named colleague declined or let the offer expire: cold goes back to its queue
        for anyone, warm stays with the sender."""
        transfer = entry.get("transfer")
        if not transfer or entry.get("only_agent") != agent_id:
            return
        found = await self._handoff.context.by_contact(entry["contact_id"])
        if found is None:
            return
        key, conv = found
        if transfer["mode"] == "cold":
            await self._router.edit_entry(entry["contact_id"],
                                          lambda waiting: waiting.pop("only_agent", None))
            self._record("transfer_returned", conv, transfer, why)
            await self._tell_sender(conv, transfer, "returned_to_queue", why)
            await self._handoff.dispatch()
            return
        await self._router.remove(entry["contact_id"])
        conv.pop("transfer", None)
        await self._handoff.context.save(key, conv, summary=False)
        self._record("transfer_failed", conv, transfer, why)
        await self._tell_sender(conv, transfer, why, why)

    async def sweep(self) -> None:
        """Transfers to a colleague who went away or filled up before being offered the
        contact are given up like a declined offer (reason agent_unavailable)."""
        for entry in await self._router.unanswered_named():
            await self.refused(entry, entry["only_agent"], "agent_unavailable")

    async def cancel(self, conv: Conversation, why: str) -> None:
        """The sender of a warm transfer wrapped up before anyone accepted: it waits no more."""
        transfer = conv.get("transfer")
        if not transfer or not transfer.get("pending"):
            return
        withdrawn_from = await self._router.remove(conv["contact_id"])
        if withdrawn_from:
            await self._handoff.withdraw(withdrawn_from, conv["contact_id"], why)
        transfer["pending"] = False
        self._record("transfer_failed", conv, transfer, why)

    async def _tell_sender(self, conv: Conversation, transfer: dict[str, Any], status: str,
                           reason: str | None = None) -> None:
        frame = result_frame(conv["contact_id"], status, transfer, reason)
        if status == "accepted":
            frame.update(agent=conv.get("agent_id"), agent_name=conv.get("agent_name"))
        await self._handoff.bus.publish(f"agent:{transfer['from_agent']}", frame)

    def _record(self, kind: str, conv: Conversation, transfer: dict[str, Any],
                reason: str) -> None:
        self._handoff.record_conv(kind, conv, reason=reason, from_agent=transfer["from_agent"],
                                   to_queue=transfer["to_queue"], to_agent=transfer["to_agent"],
                                   mode=transfer["mode"], note=transfer["note"])
