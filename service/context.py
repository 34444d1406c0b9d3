"""The unified customer context in Redis.

Key names are built for Redis Cluster: everything about one customer address (identity link,
open conversations, idempotency keys, opt-out) shares the hash tag of that address, and
everything about one customer shares `{cust:<id>}`, so each pipeline below touches one slot.

    sb:{phone:+15551234567}:ident            JSON customer link (id, attributes)  30 days
    sb:{phone:+15551234567}:conv:sms:<to>    JSON open conversation state         idle timeout + 1 day
    sb:{phone:+15551234567}:conv:voice:<CallSid>   the same for a call
    sb:{phone:+15551234567}:seen:<sid>       reply already given for a delivery   1 day
    sb:{phone:+15551234567}:optout:sms       present after STOP
    sb:{cust:<id>}:contacts                  HASH contact id -> summary          30 days
    sb:sms:idle                              ZSET conversation key -> last message time
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis

from service.model import Inbound, Reply

IDENTITY_TTL_S = 30 * 86400
SEEN_TTL_S = 86400
CONTACTS_TTL_S = 30 * 86400
PENDING = "pending"
IDLE_INDEX = "sb:sms:idle"


def identity_of(inbound: Inbound) -> tuple[str, str]:
    """(kind, value) that identifies the customer behind an inbound message."""
    if inbound.channel in ("sms", "voice"):
        return "phone", inbound.address
    return "web", inbound.address


def _tag(inbound: Inbound) -> str:
    kind, value = identity_of(inbound)
    return f"sb:{{{kind}:{value}}}"


def conversation_key(inbound: Inbound) -> str:
    thread = inbound.thread or inbound.service_address
    return f"{_tag(inbound)}:conv:{inbound.channel}:{thread}"


def contact_index_key(contact_id: str) -> str:
    return f"sb:{{contact:{contact_id}}}:conv"


def contacts_key(customer_id: str) -> str:
    return f"sb:{{cust:{customer_id}}}:contacts"


def identity_key(kind: str, value: str) -> str:
    return f"sb:{{{kind}:{value}}}:ident"


@dataclass
class TurnStart:
    duplicate_of: Reply | None  # a reply already given for this delivery
    in_flight: bool  # the same delivery is being processed right now
    conversation: dict[str, Any] | None
    customer: dict[str, Any] | None
    opted_out: bool


class ContextStore:
    def __init__(self, client: redis.Redis, idle_timeout_s: int):
        self.redis = client
        self.idle_timeout_s = idle_timeout_s

    async def begin_turn(self, inbound: Inbound) -> TurnStart:
        """Round trip 1: claim the delivery, read conversation, identity and opt-out."""
        tag = _tag(inbound)
        seen = f"{tag}:seen:{inbound.dedupe_key}"
        pipe = self.redis.pipeline(transaction=False)
        if inbound.dedupe_key:
            pipe.set(seen, PENDING, nx=True, ex=SEEN_TTL_S)
            pipe.get(seen)
        pipe.get(conversation_key(inbound))
        pipe.get(f"{tag}:ident")
        pipe.exists(f"{tag}:optout:{inbound.channel}")
        results = await pipe.execute()
        if inbound.dedupe_key:
            claimed, previous, *results = results
            if not claimed:
                done = previous not in (None, PENDING.encode())
                return TurnStart(Reply.from_json(json.loads(previous)) if done else None,
                                 not done, None, None, False)
        conversation, customer, opted_out = results
        return TurnStart(None, False, _json(conversation), _json(customer), bool(opted_out))

    async def conversation(self, inbound: Inbound) -> dict[str, Any] | None:
        return _json(await self.redis.get(conversation_key(inbound)))

    async def recent_contacts(self, customer_id: str) -> list[dict[str, Any]]:
        """Earlier contacts of this customer on every channel, newest first."""
        raw = await self.redis.hgetall(contacts_key(customer_id))
        contacts = [json.loads(v) for v in raw.values()]
        return sorted(contacts, key=lambda c: c["started_at"], reverse=True)

    async def commit_turn(self, inbound: Inbound, conversation: dict[str, Any], reply: Reply,
                          *, customer: dict[str, Any] | None = None,
                          summary: dict[str, Any] | None = None,
                          opt_out: bool | None = None) -> None:
        """Round trip 2: save the conversation and the reply, and what changed about the customer."""
        tag = _tag(inbound)
        key = conversation_key(inbound)
        pipe = self.redis.pipeline(transaction=False)
        self._save(pipe, key, conversation)
        if inbound.dedupe_key:
            pipe.set(f"{tag}:seen:{inbound.dedupe_key}", json.dumps(reply.to_json()),
                     ex=SEEN_TTL_S)
        if customer is not None:
            pipe.set(f"{tag}:ident", json.dumps(customer), ex=IDENTITY_TTL_S)
        if opt_out is True:
            pipe.set(f"{tag}:optout:{inbound.channel}", 1)
        elif opt_out is False:
            pipe.delete(f"{tag}:optout:{inbound.channel}")
        if summary is not None:
            self._summary(pipe, conversation["customer_id"], summary)
        await pipe.execute()

    def _save(self, pipe, key: str, conversation: dict[str, Any]) -> None:
        index = contact_index_key(conversation["contact_id"]) if "contact_id" in conversation \
            else None
        if conversation["status"] == "closed":
            pipe.delete(key)
            pipe.zrem(IDLE_INDEX, key)
            if index:
                pipe.delete(index)
            return
        ttl = self.idle_timeout_s + 86400
        pipe.set(key, json.dumps(conversation), ex=ttl)
        pipe.set(index, key, ex=ttl)
        if conversation["channel"] == "sms" and conversation["status"] not in ("queued",
                                                                                "with_agent"):
            pipe.zadd(IDLE_INDEX, {key: conversation["last_at"]})
        else:
            pipe.zrem(IDLE_INDEX, key)

    async def by_contact(self, contact_id: str) -> tuple[str, dict[str, Any]] | None:
        """The open conversation of a contact, found from its id (agents know only that)."""
        key = await self.redis.get(contact_index_key(contact_id))
        if key is None:
            return None
        conversation = _json(await self.redis.get(key))
        return (key.decode(), conversation) if conversation else None

    async def save(self, key: str, conversation: dict[str, Any],
                   summary: bool = True) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self._save(pipe, key, conversation)
        if summary:
            self._summary(pipe, conversation["customer_id"], summarise(conversation))
        await pipe.execute()

    def _summary(self, pipe, customer_id: str, summary: dict[str, Any]) -> None:
        key = contacts_key(customer_id)
        pipe.hset(key, summary["contact_id"], json.dumps(summary))
        pipe.expire(key, CONTACTS_TTL_S)

    async def save_summary(self, customer_id: str, summary: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self._summary(pipe, customer_id, summary)
        await pipe.execute()

    async def release(self, inbound: Inbound) -> None:
        """Forget a claimed delivery whose processing failed, so Twilio's retry is processed."""
        if inbound.dedupe_key:
            await self.redis.delete(f"{_tag(inbound)}:seen:{inbound.dedupe_key}")

    async def wait_for_reply(self, inbound: Inbound, timeout_s: float = 5.0) -> Reply | None:
        """A duplicate arrived while the first delivery is still in flight: wait for its reply."""
        import asyncio

        seen = f"{_tag(inbound)}:seen:{inbound.dedupe_key}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            value = await self.redis.get(seen)
            if value is None:
                return None
            if value != PENDING.encode():
                return Reply.from_json(json.loads(value))
        return None

    async def idle_conversations(self, now: float) -> list[str]:
        """Claim SMS conversations idle past the timeout (ZREM decides which instance wins)."""
        keys = await self.redis.zrangebyscore(IDLE_INDEX, 0, now - self.idle_timeout_s,
                                              start=0, num=100)
        claimed = []
        for key in keys:
            if await self.redis.zrem(IDLE_INDEX, key):
                claimed.append(key.decode())
        return claimed

    async def take_conversation(self, key: str) -> dict[str, Any] | None:
        return _json(await self.redis.getdel(key))


def _json(raw: bytes | None) -> dict[str, Any] | None:
    return json.loads(raw) if raw else None


def summarise(conv: dict[str, Any]) -> dict[str, Any]:
    """What other contacts of the customer need to know about this one."""
    return {k: conv.get(k) for k in ("contact_id", "channel", "contact_type", "started_at",
                                     "ended_at", "status", "outcome", "queue", "reason")}
