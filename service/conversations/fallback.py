"""Contacts answered by the fallback when a turn fails (Redis or PostgreSQL down) still count.

The channel answers with its apology (texts, chat) or holds the caller in the provider's queue
(channels whose traits say `live_call`); this records the contact through the event spool,
which needs neither server: `contact_started` once per address (per call) and per outage on
this instance, then what was heard,
and how the contact ended. A held call adopted later keeps the same contact id, so it is
counted once (see `call_contact_id`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Mapping

import structlog

from service.conversations.context import identity_of
from service.model import ChannelTraits, Inbound
from service.reporting.events import Event, EventWriter

log = structlog.get_logger(__name__)

_CALLS = uuid.UUID("5b1f4d1e-8c55-4a51-9d0f-6f1f1d3c2a10")
KEPT_ADDRESSES = 10_000  # the outage's contacts this instance remembers, newest kept
LOOKUP_TIMEOUT_S = 1.0


def call_contact_id(call_sid: str) -> str:
    """The contact id of a call whose first turn failed; its later adoption uses it too."""
    return str(uuid.uuid5(_CALLS, call_sid))


class FallbackContacts:
    def __init__(self, events: EventWriter,
                 find_customer: Callable[[str, str], Awaitable[dict[str, Any] | None]],
                 fallback_queue: Callable[[], str], channels: Mapping[str, ChannelTraits],
                 group_s: float = 1800):
        self._events = events
        self._calls = frozenset(name for name, t in channels.items() if t.live_call)
        self._find_customer = find_customer
        self._fallback_queue = fallback_queue
        self._group_s = group_s
        self._open: OrderedDict[str, tuple[str, str, float]] = OrderedDict()

    async def record(self, inbound: Inbound) -> None:
        """Count the contact a failed turn was answered for by the channel's fallback."""
        try:
            await self._record(inbound)
        except Exception:  # never let counting break the answer
            log.exception("fallback.not_recorded")

    async def _record(self, inbound: Inbound) -> None:
        if inbound.kind == "wait":
            return  # a held caller's poll: counted when the call started
        now = time.time()
        call = inbound.channel in self._calls
        where = inbound.thread if call else inbound.address
        key = f"{inbound.channel}:{where}"
        known = self._open.get(key)
        events: list[Event] = []
        started = False
        if known and now - known[2] < self._group_s:
            contact_id, customer_id, _ = known
        elif inbound.kind in ("end", "left_queue", "no_input") or \
                (call and inbound.kind != "start"):
            return  # a contact that began before the failure is counted already
        else:
            contact_id, customer_id = await self._start(inbound, events, now)
            started = True
        self._open[key] = (contact_id, customer_id, now)
        self._open.move_to_end(key)
        while len(self._open) > KEPT_ADDRESSES:
            self._open.popitem(last=False)

        def add(kind: str, reason: str | None = None, **data: Any) -> None:
            events.append(Event(kind, contact_id, customer_id, inbound.channel, reason=reason,
                                data=data, occurred_at=now))

        if inbound.kind in ("message", "digits"):
            add("received", text=inbound.text, input=inbound.kind, fallback=True)
        if call:
            # Held in Twilio's queue: the hold poll that reaches Redis queues it for an agent
            # (escalated then); a caller who hangs up before that ends here.
            if inbound.kind in ("end", "left_queue"):
                add("escalated", reason="technical_fallback", queue=self._fallback_queue(),
                    priority=0)
                add("ended", outcome="abandoned_in_queue")
        elif started:  # texts and chats: told to try again; later turns heard, not recounted
            add("ended", outcome="technical_fallback")
        self._events.emit(*events)

    async def _start(self, inbound: Inbound, events: list[Event], now: float
                     ) -> tuple[str, str]:
        kind, value = identity_of(inbound)
        try:
            found = await asyncio.wait_for(self._find_customer(kind, value), LOOKUP_TIMEOUT_S)
        except Exception:  # PostgreSQL down too: a new customer, as a live turn would
            found = None
        if found:
            customer_id = found["customer_id"]
        else:
            customer_id = str(uuid.uuid4())
            events.append(Event("customer_created", None, customer_id, inbound.channel,
                                data={"identity_kind": kind, "identity_value": value},
                                occurred_at=now))
        contact_id = call_contact_id(inbound.thread) if inbound.channel in self._calls and \
            inbound.thread else str(uuid.uuid4())
        events.append(Event("contact_started", contact_id, customer_id, inbound.channel,
                            data={"address": inbound.address,
                                  "service_address": inbound.service_address,
                                  "thread": inbound.thread, "fallback": True},
                            occurred_at=now))
        return contact_id, customer_id
