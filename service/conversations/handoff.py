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
from service.conversations.outbox import IdTaken, NotRecorded, Outbox, Outcome, destination
from service.conversations.record import Conversation
from service.infra.ids import new_uuid
from service.model import AgentLine, Attachment, DeliveryFailed, FileStore, OutboundChannel
from service.reporting.events import Event, EventWriter
from service.rules.loader import Rules
from service.rules.replies import (
    agent_values,
    edited,
    fill_template,
    replies_for,
    templates_for,
)

log = structlog.get_logger(__name__)


class HandoffError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# What the agent console is told when the channel refused, by DeliveryFailed.reason.
_ERROR_CODES = {"outside_window": "outside_window", "not_text": "not_text",
                "not_template": "not_template", "not_file": "not_file"}
# Outbox actions an agent writes: a failure for good or not recorded is the agent's error frame.
_AGENT_WRITES = ("send", "template", "file")


def _failure_text(action: str, exc: DeliveryFailed) -> str:
    if exc.reason in _ERROR_CODES:
        return str(exc)
    what = "could not connect the customer" if action == "connect" else \
        "the file was not sent" if action == "file" else "the text was not sent"
    return f"{what}: {exc}"


def kept_line(conv: Conversation, line_id: str, sender: str) -> dict[str, Any] | None:
    """The contact's transcript line a console frame with this id kept before (a console
    resending after a dropped connection), or None; HandoffError when another kind of line
    has the id."""
    for line in reversed(conv["transcript"]):
        if line.get("id") == line_id:
            if line.get("from") != sender:
                raise HandoffError("bad_frame", f"id {line_id} is already used by another "
                                   "line of this contact")
            return line
    return None


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
    """The agent half of a contact: offers, accept, agents' texts, wrap-up. What its companions
    (transfers, callbacks, notes, attachments, the wrap-up survey) share of it is public:
    `rules`, `context`, `router`, `bus`, `events`, `channels`, `files`, `outbound`,
    `record_conv`."""

    def __init__(self, rules: Callable[[], Rules], context: ContextStore, router: Dispatcher,
                 bus: Bus, events: EventWriter, channels: Mapping[str, OutboundChannel],
                 outbox: Outbox, rules_for: Callable[[Any], Rules] | None = None,
                 files: FileStore | None = None):
        self.rules = rules
        # a contact's own rules: a canary's, for a contact opened in its share (holder.py)
        self._rules_for = rules_for or (lambda held: rules())
        self.context = context
        self.router = router
        self.bus = bus
        self.events = events
        self.channels = channels
        self._outbox = outbox
        self.files = files  # the service's own file store: files agents send
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
        return self.channels.get(name)

    def queues(self) -> list[dict[str, str]]:
        """The agent queues, for the console's transfer list."""
        return [{"name": q.name, "label": q.label} for q in self.rules().tree.queues.values()]

    async def conversation(self, contact_id: str) -> tuple[str, Conversation] | None:
        return await self.context.by_contact(contact_id)

    # ---- offers --------------------------------------------------------------------------

    async def dispatch(self) -> None:
        """Offer waiting contacts to free agents; each offer reaches the agent's instance."""
        for offer in await self.router.dispatch(self.rules().tree.queues):
            entry = await self.router.entry(offer.contact_id)
            if entry is None:
                continue
            await self.bus.publish(f"agent:{offer.agent_id}", offer_frame(
                entry, expires_in_s=self.router.offer_timeout_s))
            self.record("offered", entry, agent_id=offer.agent_id)

    async def sweep(self) -> None:
        """Every second on every instance: expire offers, overflow queues, dispatch."""
        for offer in await self.router.expired_offers():
            await self.bus.publish(f"agent:{offer.agent_id}",
                                    {"type": "offer_withdrawn", "contact_id": offer.contact_id,
                                     "reason": "timeout"})
            entry = await self.router.entry(offer.contact_id)
            if entry:
                self.record("offer_expired", entry, agent_id=offer.agent_id)
                await self.transfers.refused(entry, offer.agent_id, "timeout")
        await self.transfers.sweep()
        for queue in self.rules().tree.queues.values():
            if queue.timeout_s and queue.overflow:
                target = self.rules().tree.queues[queue.overflow]
                for contact_id in await self.router.overflow(queue.name, queue.overflow,
                                                             queue.timeout_s, target.skills):
                    entry = await self.router.entry(contact_id)
                    if entry:
                        self.record("overflowed", entry, reason="queue_timeout",
                                     from_queue=queue.name)
        await self.dispatch()

    async def decline(self, agent: dict[str, Any], contact_id: str) -> None:
        if await self.router.decline(contact_id, agent["id"]):
            entry = await self.router.entry(contact_id)
            if entry:
                self.record("offer_declined", entry, agent_id=agent["id"])
                await self.transfers.refused(entry, agent["id"], "declined")
        await self.dispatch()

    async def withdraw(self, agent_id: str, contact_id: str, reason: str) -> None:
        await self.bus.publish(f"agent:{agent_id}", {"type": "offer_withdrawn",
                                                      "contact_id": contact_id, "reason": reason})

    # ---- an agent takes the contact ------------------------------------------------------

    async def accept(self, agent: dict[str, Any], contact_id: str) -> dict[str, Any]:
        entry = await self.router.accept(contact_id, agent["id"])
        if entry is None:
            raise HandoffError("offer_gone", "this contact is no longer offered to you")
        async with self.context.leased_contact(contact_id) as found:
            if found is None:
                raise HandoffError("contact_gone", "the customer has left")
            key, conv = found
            now = time.time()
            conv.update({"status": "with_agent", "agent_id": agent["id"],
                         "agent_name": agent["name"], "accepted_at": now})
            typed = self.channels[conv["channel"]].traits.agent_can_type
            if typed:
                conv["transcript"].append({"from": "agent", "text": greeting(agent), "at": now})
            calling = self.callbacks.attempting(conv, agent_line(agent))
            await self.context.save(key, conv)
        self.record("agent_accepted", entry, agent_id=agent["id"],
                    waited_s=round(now - entry["enqueued_at"], 3),
                    **({"hello": greeting(agent)} if typed else {}))  # what the customer read
        if calling:  # the customer is called first; the agent joins once they answer
            await self.callbacks.place(conv, calling)
        else:
            await self._connect_customer(agent, conv, joining="transfer" in entry)
        if "transfer" in entry:
            await self.transfers.taken_over(key, conv, entry)
        entry["context"] = agent_context(self.rules(), conv)
        return offer_frame(entry, kind="assigned", agent={"id": agent["id"],
                                                          "name": agent["name"]},
                           **self.reply_window(conv), **self.sends_files(conv))

    async def _connect_customer(self, agent: dict[str, Any], conv: Conversation,
                                joining: bool = False) -> None:
        payload = {"agent": asdict(agent_line(agent)), "hello": greeting(agent)}
        # a transfer: the customer is already connected (a call's conference)
        await self.outbound(conv, "join" if joining else "connect", payload)

    def assigned_frame(self, conv: Conversation) -> dict[str, Any]:
        """What a reconnecting agent's console is sent for a contact it already has."""
        return {"type": "assigned", "contact_id": conv["contact_id"], "channel": conv["channel"],
                "queue": conv.get("queue"), "reason": conv.get("reason"),
                "context": agent_context(self.rules(), conv), **self.reply_window(conv),
                **self.sends_files(conv)}

    def sends_files(self, conv: Conversation) -> dict[str, Any]:
        """`sends_files` of an assigned frame: whether the console offers to attach a file."""
        traits = self.channels[conv["channel"]].traits
        return {"sends_files": traits.sends_files and self.files is not None}

    def reply_window(self, conv: Conversation) -> dict[str, Any]:
        """`reply_window` of an assigned frame, on channels that have one: how long after the
        customer's last message an agent may write, when that was, and whether a message
        template can reach them after it (the console counts down from these)."""
        traits = self.channels[conv["channel"]].traits
        if traits.reply_window_s is None:
            return {}
        return {"reply_window": {"seconds": traits.reply_window_s,
                                 "customer_last_at": destination(conv).customer_last_at,
                                 "templates": traits.templates_after_window,
                                 "now": time.time()}}

    async def saved_replies(self, agent: dict[str, Any], contact_id: str) -> dict[str, Any]:
        """The `replies` frame: the saved replies for the agent's own contact, filled in for
        its customer and this agent (replies.py), those for its contact type first."""
        _, conv = await self.assigned(agent, contact_id)
        rules = self._rules_for(conv.get("canary"))
        filled = replies_for(rules.replies, rules.catalog, conv, agent["name"], time.time())
        return {"type": "replies", "contact_id": contact_id,
                "contact_type": conv.get("contact_type"),
                "replies": [reply.frame() for reply in filled]}

    async def message_templates(self, agent: dict[str, Any], contact_id: str
                                ) -> dict[str, Any]:
        """The `templates` frame: the message templates for the agent's own contact's
        channel, filled in for its customer and this agent (replies.py)."""
        _, conv = await self.assigned(agent, contact_id)
        rules = self._rules_for(conv.get("canary"))
        traits = self.channels[conv["channel"]].traits
        filled = templates_for(rules.replies, rules.catalog, conv, agent["name"], time.time(),
                               lambda trait: bool(getattr(traits, trait, False)))
        return {"type": "templates", "contact_id": contact_id,
                "templates": [template.frame() for template in filled]}

    async def send_template(self, agent: dict[str, Any], contact_id: str, template_id: str,
                            message_id: str | None = None) -> dict[str, Any] | None:
        """An approved message template to the agent's own contact, filled from the contact,
        through the outbox; reaches a customer whose reply window has closed. A repeat of a
        `message_id` already kept changes nothing: its `message_status` frame is returned."""
        message_id = message_id or new_uuid()
        async with self._changing(agent, contact_id) as (key, conv):
            rules = self._rules_for(conv.get("canary"))
            template = rules.replies.template(template_id)
            traits = self.channels[conv["channel"]].traits
            if template is None:
                raise HandoffError("unknown_template", f"no message template '{template_id}' "
                                   "in replies.yaml")
            if not getattr(traits, template.channel_trait, False):
                raise HandoffError("not_template", f"this contact's channel sends no message "
                                   f"templates (it lacks {template.channel_trait})")
            filled = fill_template(template, agent_values(rules.catalog, conv, agent["name"],
                                                          time.time()))
            if filled.gaps:
                raise HandoffError("template_gaps", f"'{template.title}' was not sent: this "
                                   f"customer has no value for {', '.join(filled.gaps)}, and "
                                   "an approved template cannot be edited")
            said, fresh = await self._keep(key, conv, {
                "from": "agent", "text": filled.text, "at": time.time(), "id": message_id,
                "template": template.id})
        payload = {"text": said["text"], "template_id": template.id, "ref": template.ref,
                   "variables": dict(filled.variables)}
        return await self._agent_says(agent, conv, said, fresh, "template", payload,
                                      template=template.id)

    # ---- conversation with the agent -----------------------------------------------------

    async def agent_message(self, agent: dict[str, Any], contact_id: str, text: str,
                            message_id: str | None = None,
                            saved_reply: str | None = None) -> dict[str, Any] | None:
        """An agent's text to their own contact, through the outbox, its line kept with the
        outbox job's id. A repeat of a `message_id` already kept (a console resending after a
        dropped connection) changes nothing: its `message_status` frame is returned.
        `saved_reply`: the id of the saved reply the text came from, recorded on the event
        with whether the agent edited it (an id the contact is not offered is ignored)."""
        message_id = message_id or new_uuid()
        async with self._changing(agent, contact_id) as (key, conv):
            if not self.channels[conv["channel"]].traits.agent_can_type:
                raise HandoffError("not_text", "this contact is a phone call")
            used = self._saved_reply_used(agent, conv, saved_reply, text) \
                if saved_reply is not None else {}
            said, fresh = await self._keep(key, conv, {"from": "agent", "text": text,
                                                       "at": time.time(), "id": message_id})
        return await self._agent_says(agent, conv, said, fresh, "send", {"text": said["text"]},
                                      **used)

    def _saved_reply_used(self, agent: dict[str, Any], conv: Conversation, reply_id: Any,
                          text: str) -> dict[str, Any]:
        """The `agent_message` event's `saved_reply` and `saved_reply_edited` (compared with
        the reply filled in for this contact now); {} for an id it is not offered."""
        rules = self._rules_for(conv.get("canary"))
        filled = next((reply for reply in replies_for(rules.replies, rules.catalog, conv,
                                                      agent["name"], time.time())
                       if reply.id == reply_id), None)
        if filled is None:
            log.info("handoff.saved_reply_unknown", contact_id=conv["contact_id"],
                     saved_reply=str(reply_id)[:80])
            return {}
        return {"saved_reply": filled.id, "saved_reply_edited": edited(text, filled.text)}

    async def agent_file(self, agent: dict[str, Any], contact_id: str, attachment: Attachment,
                         message_id: str) -> dict[str, Any] | None:
        """A file the agent sends their own contact (already in the file store), through the
        outbox: numbered among the contact's files (attachments.py), its line kept with the
        job's id, its `agent_message` event naming it. A repeat of a `message_id` already
        kept changes nothing: its `message_status` frame is returned."""
        from service.conversations import attachments

        async with self._changing(agent, contact_id) as (key, conv):
            kept = kept_line(conv, message_id, "agent")
            if kept is None:
                entries = attachments.keep(conv, [attachment], time.time())
                if not entries:
                    raise HandoffError("too_many_files", "this contact has too many files")
                said, fresh = await self._keep(key, conv, {
                    "from": "agent", "text": "", "at": time.time(), "id": message_id,
                    "attachments": attachments.shown(entries)})
            else:
                said, fresh, entries = kept, False, []
        payload = {"text": "", "content_type": attachment.content_type, "ref": attachment.ref}
        return await self._agent_says(agent, conv, said, fresh, "file", payload,
                                      attachments=attachments.recorded(entries))

    async def _keep(self, key: str, conv: Conversation, said: dict[str, Any]
                    ) -> tuple[dict[str, Any], bool]:
        """The agent's line in the transcript (under the contact's lease): the one kept
        before with its id, else this one, appended; and whether it is new."""
        kept = kept_line(conv, said["id"], "agent")
        if kept is not None:
            return kept, False
        conv["transcript"].append(said)
        await self.context.save(key, conv, summary=False)
        return said, True

    async def _agent_says(self, agent: dict[str, Any], conv: Conversation,
                          said: dict[str, Any], fresh: bool, action: str,
                          payload: dict[str, Any], **event: Any) -> dict[str, Any] | None:
        """Send a line the agent wrote (already in the transcript) through the outbox under
        its id; its `agent_message` event is recorded unless it could not even be recorded.
        A line whose job was recorded before records nothing: its status frame is returned."""
        try:
            outcome = await self.outbound(conv, action, payload, job_id=said["id"])
        except HandoffError as exc:
            if exc.code in ("not_recorded", "bad_frame"):  # nothing sent: as if never written
                if fresh:
                    await self._take_back(conv["contact_id"], said)
                raise
            self.record_conv("agent_message", conv, agent_id=agent["id"], text=said["text"],
                              message_id=said["id"], **event)
            raise
        if outcome is not None and outcome.repeat:
            log.info("handoff.repeat_ignored", contact_id=conv["contact_id"],
                     message_id=said["id"])
            return await self._outbox.status(said["id"])
        self.record_conv("agent_message", conv, agent_id=agent["id"], text=said["text"],
                          message_id=said["id"], **event)
        return None

    async def _take_back(self, contact_id: str, said: dict[str, Any]) -> None:
        """An agent's line that was never sent leaves the transcript (the agent may resend)."""
        try:
            async with self.context.leased_contact(contact_id) as found:
                if found is not None and said in found[1]["transcript"]:
                    found[1]["transcript"].remove(said)
                    await self.context.save(found[0], found[1], summary=False)
        except Exception as exc:  # the agent is told it was not sent all the same
            log.warning("handoff.take_back_failed", contact_id=contact_id, error=str(exc))

    async def to_agent(self, conv: Conversation, message: dict[str, Any]) -> None:
        """A customer's words while an agent has the contact: straight to that agent."""
        await self.bus.publish(f"agent:{conv['agent_id']}", {
            "type": "message", "contact_id": conv["contact_id"], "from": "customer",
            "text": message["text"], "at": message.get("at"),
            **({"attachments": message["attachments"]} if message.get("attachments") else {})})

    async def customer_left(self, conv: Conversation) -> None:
        await self.bus.publish(f"agent:{conv['agent_id']}", {
            "type": "contact_ended", "contact_id": conv["contact_id"],
            "reason": "customer_left"})

    async def wrap_up(self, agent: dict[str, Any], contact_id: str, resolved: bool,
                      correction: str | None, note: str) -> None:
        if correction and correction not in self.rules().catalog.types:
            raise HandoffError("bad_contact_type", f"unknown contact type '{correction}'")
        async with self._changing(agent, contact_id) as (key, conv):
            await self.transfers.cancel(conv, "wrapped_up")
            await self.router.finish(contact_id, agent["id"], conv["channel"])
            outcome = "agent_resolved" if resolved else "agent_unresolved"
            now = time.time()
            self.record_conv("wrap_up", conv, agent_id=agent["id"], resolved=resolved,
                              corrected_contact_type=correction, note=note,
                              classified_as=conv.get("contact_type"))
            if correction:
                conv["contact_type"] = correction
            conv.update({"status": "closed", "outcome": outcome, "ended_at": now})
            self.record_conv("ended", conv, outcome=outcome)
            await self.context.save(key, conv)
        await surveys.after_wrap_up(self, conv)
        try:
            await self.channels[conv["channel"]].close(destination(conv))
        except DeliveryFailed as exc:  # the contact is wrapped up all the same
            log.warning("handoff.close_failed", error=str(exc), contact_id=contact_id)
        await self.dispatch()

    @contextlib.asynccontextmanager
    async def _changing(self, agent: dict[str, Any], contact_id: str
                        ) -> AsyncIterator[tuple[str, Conversation]]:
        """The agent's own contact, to change while no customer turn can overwrite it."""
        if await self.router.assigned_agent(contact_id) != agent["id"]:
            raise HandoffError("not_assigned", "this contact is not assigned to you")
        async with self.context.leased_contact(contact_id) as found:
            if found is None:
                raise HandoffError("contact_gone", "this contact has ended")
            yield found

    async def assigned(self, agent: dict[str, Any], contact_id: str
                        ) -> tuple[str, Conversation]:
        if await self.router.assigned_agent(contact_id) != agent["id"]:
            raise HandoffError("not_assigned", "this contact is not assigned to you")
        found = await self.context.by_contact(contact_id)
        if found is None:
            raise HandoffError("contact_gone", "this contact has ended")
        return found

    async def outbound(self, conv: Conversation, action: str, payload: dict[str, Any],
                       job_id: str | None = None) -> Outcome | None:
        """Record one outbound request in the outbox (`outbox.ACTIONS`), which sends it
        through the contact's channel now or retries it later. Connecting never fails the
        accept (the contact is assigned, the greeting waits in the outbox); an agent's text
        the channel refused for good, or that could not be recorded, is an error naming why."""
        try:
            outcome = await self._outbox.submit(conv, action, payload, conv.get("agent_id"),
                                                job_id)
        except IdTaken as exc:
            raise HandoffError("bad_frame", str(exc)) from exc
        except NotRecorded as exc:
            log.error("handoff.outbox_unavailable", action=action, error=str(exc),
                      contact_id=conv["contact_id"])
            if action in _AGENT_WRITES:  # not sent: the agent may send it again
                raise HandoffError("not_recorded", "the text was not sent: it could not be "
                                   "recorded for sending; try again in a moment") from exc
            # Connecting the customer cannot wait: one unrecorded attempt, its outcome
            # shown to the agent under the greeting.
            return await self._outbox.attempt_unrecorded(conv, action, payload,
                                                         conv.get("agent_id"))
        failure = outcome.failure
        if action in _AGENT_WRITES and outcome.state == "failed" and failure is not None:
            raise HandoffError(_ERROR_CODES.get(failure.reason, "delivery_failed"),
                               _failure_text(action, failure))
        return outcome

    # ---- events --------------------------------------------------------------------------

    def record(self, kind: str, entry: dict[str, Any], reason: str | None = None,
                **data: Any) -> None:
        context = entry["context"]
        self.events.emit(Event(kind, entry["contact_id"], entry["customer_id"],
                                entry["channel"], context.get("contact_type"),
                                reason=reason, data={"queue": entry["queue"], **data}))

    def record_conv(self, kind: str, conv: Conversation, reason: str | None = None,
                     **data: Any) -> None:
        self.events.emit(Event(kind, conv["contact_id"], conv["customer_id"], conv["channel"],
                                conv.get("contact_type"), conv.get("route_path"), reason=reason,
                                data=data))

