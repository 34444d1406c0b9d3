"""The unified customer context in Redis.

Key names are built for Redis Cluster: everything about one customer address (identity link,
open conversations, idempotency keys, opt-out) shares the hash tag of that address, and
everything about one customer shares `{cust:<id>}`.

    sb:{phone:+15551234567}:ident                  JSON customer link (id, attributes)  30 days
    sb:{phone:+15551234567}:conv:<channel>:<to>    JSON open conversation   idle timeout + 1 day
    sb:{phone:+15551234567}:conv:<channel>:<thread>  the same for a call or chat session
    sb:{phone:+15551234567}:seen:<delivery id>     reply already given for a delivery   1 day
    sb:{phone:+15551234567}:optout:<channel>       present after STOP
    sb:{phone:+15551234567}:muted:<channel>        present while a bot loop is muted   1 hour
    sb:{phone:+15551234567}:conv:...:lease         a turn of that conversation runs      11 s
    sb:{phone:+15551234567}:survey:<channel>       JSON survey waiting for its answer
                                                   (answer window + 1 day: a late answer is
                                                   recognised and thanked, not counted)
    sb:{phone:+15551234567}:surveyed               when the customer was last surveyed
                                                   (under each of the customer's addresses)
    sb:{phone:+15551234567}:contacts               HASH contact id -> summary           30 days
    sb:{contact:<id>}:conv                         contact id -> conversation key
    sb:{cust:<id>}:contacts                        HASH contact id -> summary           30 days
    sb:idle                                        ZSET conversation key -> last message time
                                                   (every channel that idles out; the name
                                                   predates the others and running
                                                   deployments hold it)

A turn costs two round trips on the normal path, sent through the CommandBatcher so that
concurrent turns share writes to Redis. That is why a contact's summary is written to the
customer's hash and to every address the customer is known by: the first round trip of a new
contact reads the summaries from its own address's hash tag, before it knows the customer.
The customer's hash is the whole history, read only when an address was (re)linked from
PostgreSQL and its own copy may lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Collection, Sequence, cast

import orjson
import structlog

from service.conversations.record import Conversation, latest_notes
from service.infra.redis_batch import Command, CommandBatcher, json_value
from service.model import Inbound, Reply

log = structlog.get_logger(__name__)

IDENTITY_TTL_S = 30 * 86400
SEEN_TTL_S = 86400
# A turn holds its conversation's lease from round trip 1 to round trip 2, so concurrent
# webhooks of one conversation are applied one after another on any instance. Longer than a
# turn may run (app.TURN_TIMEOUT_S), so it only expires when its holder died.
TURN_LEASE_MS = 11_000
# A turn takes milliseconds (a flow's look-up, a few seconds): a lease held longer than this
# was left by a turn whose Redis went away before it could give it back.
LEASE_WAIT_S = 6.0
CONTACTS_TTL_S = 30 * 86400
KEPT_CONTACTS = 50  # summaries per hash: every turn reads its address's whole hash
PENDING = b"pending"
IDLE_INDEX = "sb:idle"
LEGACY_IDLE_INDEX = "sb:sms:idle"  # its name before channels were neutral: still drained
SUMMARY_FIELDS = ("contact_id", "customer_id", "channel", "contact_type", "started_at",
                  "ended_at", "status", "outcome", "queue", "reason")

def identity_of(inbound: Inbound) -> tuple[str, str]:
    """(kind, value) that identifies the customer behind an inbound message."""
    return inbound.identity, inbound.address


def identities_of(conv: Conversation) -> list[tuple[str, str]]:
    """Every address of the conversation's customer (just its own for older states, which
    kept no kind: an E.164 number is a phone)."""
    known = conv.get("identities")
    if known:
        return [(kind, value) for kind, value in known]
    address = conv["address"]
    return [("phone" if address.startswith("+") else "web", address)]


def address_of(conv: Conversation) -> tuple[str, str]:
    """(kind, value) of the address the conversation is on, among its customer's."""
    return next(((kind, value) for kind, value in identities_of(conv)
                 if value == conv["address"]),
                ("phone" if conv["address"].startswith("+") else "web", conv["address"]))


def _tag(inbound: Inbound) -> str:
    kind, value = identity_of(inbound)
    return f"sb:{{{kind}:{value}}}"


def conversation_key(inbound: Inbound) -> str:
    thread = inbound.thread or inbound.service_address
    return f"{_tag(inbound)}:conv:{inbound.channel}:{thread}"


def survey_key(kind: str, value: str, channel: str) -> str:
    return f"sb:{{{kind}:{value}}}:survey:{channel}"


def surveyed_key(kind: str, value: str) -> str:
    return f"sb:{{{kind}:{value}}}:surveyed"


def contact_index_key(contact_id: str) -> str:
    return f"sb:{{contact:{contact_id}}}:conv"


def contacts_key(customer_id: str) -> str:
    return f"sb:{{cust:{customer_id}}}:contacts"


def identity_key(kind: str, value: str) -> str:
    return f"sb:{{{kind}:{value}}}:ident"


def address_contacts_key(kind: str, value: str) -> str:
    return f"sb:{{{kind}:{value}}}:contacts"


def summarise(conv: Conversation) -> dict[str, Any]:
    """What other contacts of the customer need to know about this one."""
    summary = {k: conv.get(k) for k in SUMMARY_FIELDS}
    notes = latest_notes(conv.get("transcript", []))
    if notes:  # private: agents see them in the customer's history, customers never
        summary["notes"] = notes
    if conv.get("attachments"):  # how many files the customer sent in it
        summary["attachments"] = len(conv["attachments"])
    return summary


def muted_key(inbound: Inbound) -> str:
    return f"{_tag(inbound)}:muted:{inbound.channel}"


def lease_key(inbound: Inbound) -> str:
    return conversation_key(inbound) + ":lease"


@dataclass
class TurnStart:
    duplicate_of: Reply | None  # a reply already given for this delivery
    in_flight: bool  # the same delivery is being processed right now
    conversation: Conversation | None
    customer: dict[str, Any] | None
    opted_out: bool
    history: Any = None  # raw summaries of this address's recent contacts
    survey: dict[str, Any] | None = None  # a survey of this address and channel awaiting reply
    surveyed_at: float | None = None  # when the customer behind the address was last surveyed
    leased: bool = True  # False: another turn of the conversation holds it; nothing claimed
    muted: bool = False  # the address is not answered for a while (pacing.py: a bot loop)


class ContextStore:
    def __init__(self, redis: CommandBatcher, idle_timeout_s: int,
                 idles_out: Collection[str] = ()):
        self.redis = redis
        self.idle_timeout_s = idle_timeout_s
        self._idles_out = frozenset(idles_out)  # channels whose quiet conversations end
        self.leases: set[str] = set()  # conversation leases this instance's turns hold

    async def begin_turn(self, inbound: Inbound, take_over: bool = False) -> TurnStart:
        """Round trip 1: the conversation's lease (`take_over`: even if another turn holds
        it), claim the delivery, read conversation, identity, opt-out and the address's
        recent contacts (decoded only when a contact opens) and its survey state."""
        tag = _tag(inbound)
        seen = f"{tag}:seen:{inbound.dedupe_key}"
        lease = lease_key(inbound)
        commands: list[Command] = [("SET", lease, 1, "PX", TURN_LEASE_MS) if take_over else
                                   ("SET", lease, 1, "NX", "PX", TURN_LEASE_MS)]
        if inbound.dedupe_key:
            # Pending as long as the lease: a claim left by a process that died mid-turn
            # does not outlive it, so Twilio's retry of that delivery is processed.
            commands += [("SET", seen, PENDING, "NX", "PX", TURN_LEASE_MS), ("GET", seen)]
        # One MGET for the four values: every key shares the address's hash tag.
        commands += [("MGET", conversation_key(inbound), f"{tag}:ident",
                      survey_key(*identity_of(inbound), inbound.channel),
                      surveyed_key(*identity_of(inbound))),
                     ("EXISTS", f"{tag}:optout:{inbound.channel}"),
                     ("HGETALL", f"{tag}:contacts"), ("EXISTS", muted_key(inbound))]
        # Unfenced: with Sentinel replicas, no WAIT of its own. Every turn ends with a fenced
        # write (commit_turn, remember_reply, end_turn) before it is answered, and that WAIT
        # covers these writes and whatever this read saw.
        leased, *results = await self.redis.execute(*commands, fenced=False)
        if not leased:
            if inbound.dedupe_key and results[0]:  # claimed it: let the retry claim it again
                await self.redis.execute(("DEL", seen), fenced=False)
            return TurnStart(None, False, None, None, False, leased=False)
        self.leases.add(lease)
        if inbound.dedupe_key:
            claimed, previous, *results = results
            done = previous not in (None, PENDING)
            # Taking the lease over means its holder died: its pending claim is ours now.
            if not claimed and (done or not take_over):
                return TurnStart(Reply.from_json(orjson.loads(previous)) if done else None,
                                 not done, None, None, False)
        (conversation, customer, survey, surveyed_at), opted_out, history, muted = results
        return TurnStart(None, False, _conversation(conversation), _json(customer), bool(opted_out),
                         history, _json(survey), float(surveyed_at) if surveyed_at else None,
                         muted=bool(muted))

    async def commit_turn(self, inbound: Inbound, conversation: Conversation, reply: Reply,
                          *, customer: dict[str, Any] | None = None,
                          summaries: Sequence[Conversation] = (),
                          seed: Sequence[dict[str, Any]] | None = None,
                          forget: Sequence[str] = (),
                          opt_out: bool | None = None, mute_s: int = 0,
                          extra: Sequence[Command] = ()) -> None:
        """Round trip 2: save the conversation and the reply, and what changed about the
        customer: its link, `seed` (summaries read from the customer's hash) as this
        address's copy, the summaries of the `summaries` conversations; `forget` drops
        the summaries of old contacts beyond KEPT_CONTACTS; `mute_s`: answer the address
        no more for that long; `extra` (a survey's state)."""
        tag = _tag(inbound)
        commands = self._save(conversation_key(inbound), conversation) + _remember(inbound, reply)
        commands += self._unlease(inbound)
        if customer is not None:
            commands.append(("SET", f"{tag}:ident", json_value(customer), "EX", IDENTITY_TTL_S))
        if opt_out is True:
            commands.append(("SET", f"{tag}:optout:{inbound.channel}", 1))
        elif opt_out is False:
            commands.append(("DEL", f"{tag}:optout:{inbound.channel}"))
        if mute_s:
            commands.append(("SET", muted_key(inbound), 1, "EX", mute_s))
        if seed is not None:
            commands += _seed(address_contacts_key(*identity_of(inbound)), seed)
        for conv in summaries:
            commands += _summary(conv)
        if forget:
            customer_id = conversation["customer_id"]
            for key in (address_contacts_key(*identity_of(inbound)), contacts_key(customer_id)):
                commands.append(("HDEL", key, *forget))
        await self.redis.execute(*commands, *extra)

    async def commit_reply(self, inbound: Inbound, reply: Reply,
                           commands: Sequence[Command]) -> None:
        """Round trip 2 of a turn that opened no contact (a survey's answer)."""
        await self.redis.execute(*_remember(inbound, reply), *commands, *self._unlease(inbound))

    async def survey_state(self, conv: Conversation) -> tuple[bool, float | None]:
        """Whether the conversation's address opted out on its channel, and when its customer
        was last surveyed (for a survey decided outside a turn)."""
        kind, value = address_of(conv)
        opted_out, surveyed_at = await self.redis.execute(
            ("EXISTS", f"sb:{{{kind}:{value}}}:optout:{conv['channel']}"),
            ("GET", surveyed_key(kind, value)))
        return bool(opted_out), float(surveyed_at) if surveyed_at else None

    async def execute(self, commands: Sequence[Command]) -> None:
        if commands:
            await self.redis.execute(*commands)

    async def remember_reply(self, inbound: Inbound, reply: Reply) -> None:
        """The reply to a delivery that changed nothing, for Twilio's retries of it."""
        commands = _remember(inbound, reply) + self._unlease(inbound)
        if commands:
            await self.redis.execute(*commands)

    async def end_turn(self, inbound: Inbound) -> None:
        """Give the conversation's lease back if round trip 2 did not (a turn that failed or
        changed nothing)."""
        if commands := self._unlease(inbound):
            await self.redis.execute(*commands)

    def _unlease(self, inbound: Inbound) -> list[Command]:
        lease = lease_key(inbound)
        if lease not in self.leases:
            return []
        self.leases.discard(lease)
        return [("DEL", lease)]

    async def conversation(self, inbound: Inbound) -> Conversation | None:
        [raw] = await self.redis.execute(("GET", conversation_key(inbound)))
        return _conversation(raw)

    async def recent_contacts(self, customer_id: str) -> list[dict[str, Any]]:
        """Earlier contacts of this customer on every channel, newest first."""
        [raw] = await self.redis.execute(("HGETALL", contacts_key(customer_id)))
        return newest_first(raw)

    async def by_contact(self, contact_id: str) -> tuple[str, Conversation] | None:
        """The open conversation of a contact, found from its id (agents know only that)."""
        return (await conversations_of(self.redis, [contact_id])).get(contact_id)

    @contextlib.asynccontextmanager
    async def leased_contact(self, contact_id: str
                             ) -> AsyncIterator[tuple[str, Conversation] | None]:
        """The open conversation of a contact, read and changed (an agent's accept, text or
        wrap-up) while its lease is held, so a customer's turn cannot overwrite the change."""
        [key] = await self.redis.execute(("GET", contact_index_key(contact_id)))
        if key is None:
            yield None
            return
        key = key.decode()
        lease = key + ":lease"
        pause, give_up = 0.01, time.monotonic() + LEASE_WAIT_S
        while not (await self.redis.execute(("SET", lease, 1, "NX", "PX", TURN_LEASE_MS)))[0]:
            if time.monotonic() > give_up:  # its holder failed before giving it back
                log.warning("context.lease_taken_over", contact_id=contact_id)
                break
            await asyncio.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, 0.2)
        try:
            [raw] = await self.redis.execute(("GET", key))
            conversation = _conversation(raw)
            yield (key, conversation) if conversation else None
        finally:
            with contextlib.suppress(Exception):  # it expires by itself
                await self.redis.execute(("DEL", lease))

    async def save(self, key: str, conversation: Conversation, summary: bool = True) -> None:
        commands = self._save(key, conversation)
        if summary:
            commands += _summary(conversation)
        await self.redis.execute(*commands)

    async def save_summary(self, conversation: Conversation) -> None:
        await self.redis.execute(*_summary(conversation))

    async def release(self, inbound: Inbound) -> None:
        """Forget a claimed delivery whose processing failed, so Twilio's retry is processed."""
        if inbound.dedupe_key:
            await self.redis.execute(("DEL", f"{_tag(inbound)}:seen:{inbound.dedupe_key}"))

    async def wait_for_reply(self, inbound: Inbound, timeout_s: float = 5.0) -> Reply | None:
        """A duplicate arrived while the first delivery is still in flight: wait for its reply."""
        seen = f"{_tag(inbound)}:seen:{inbound.dedupe_key}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            [value] = await self.redis.execute(("GET", seen))
            if value is None:
                return None
            if value != PENDING:
                return Reply.from_json(orjson.loads(value))
        return None

    async def idle_conversations(self, now: float) -> list[str]:
        """Claim conversations idle past the timeout (ZREM decides which instance wins)."""
        indexes = (IDLE_INDEX, LEGACY_IDLE_INDEX)
        found = await self.redis.execute(*(("ZRANGEBYSCORE", index, 0, now - self.idle_timeout_s,
                                            "LIMIT", 0, 100) for index in indexes))
        claimed = []
        for index, keys in zip(indexes, found):
            for key in keys:
                [removed] = await self.redis.execute(("ZREM", index, key))
                if removed:
                    claimed.append(key.decode())
        return claimed

    async def take_conversation(self, key: str) -> Conversation | None:
        [raw] = await self.redis.execute(("GETDEL", key))
        return _conversation(raw)

    def _save(self, key: str, conversation: Conversation) -> list[Command]:
        contact_id = conversation.get("contact_id")  # none: a keyword's, with no contact open
        if conversation["status"] == "closed":
            commands: list[Command] = [("DEL", key), ("ZREM", IDLE_INDEX, key),
                                       ("ZREM", LEGACY_IDLE_INDEX, key)]
            return commands + ([("DEL", contact_index_key(contact_id))] if contact_id else [])
        ttl = self.idle_timeout_s + 86400
        commands = [("SET", key, json_value(conversation), "EX", ttl),
                    ("SET", contact_index_key(conversation["contact_id"]), key, "EX", ttl)]
        if conversation["channel"] in self._idles_out and \
                conversation["status"] not in ("queued", "with_agent"):
            commands.append(("ZADD", IDLE_INDEX, conversation["last_at"], key))
        else:
            commands.append(("ZREM", IDLE_INDEX, key))
        return commands


def _remember(inbound: Inbound, reply: Reply) -> list[Command]:
    if not inbound.dedupe_key:
        return []
    return [("SET", f"{_tag(inbound)}:seen:{inbound.dedupe_key}", json_value(reply.to_json()),
             "EX", SEEN_TTL_S)]


def newest_first(raw: Any, customer_id: str | None = None) -> list[dict[str, Any]]:
    """Summaries as HGETALL returned them, newest contact first; only the given customer's,
    since an address ops moved to another customer may still hold its old owner's."""
    contacts = [orjson.loads(v) for v in _pairs(raw or ()).values()]
    if customer_id is not None:
        contacts = [c for c in contacts if c.get("customer_id", customer_id) == customer_id]
    return sorted(contacts, key=lambda c: c["started_at"], reverse=True)


def _summary(conv: Conversation) -> list[Command]:
    """The conversation's summary, in the customer's hash and in each of its addresses'."""
    summary = json_value(summarise(conv))
    keys = [contacts_key(conv["customer_id"])]
    keys += [address_contacts_key(kind, value) for kind, value in identities_of(conv)]
    commands: list[Command] = []
    for key in keys:
        commands += [("HSET", key, conv["contact_id"], summary), ("EXPIRE", key, CONTACTS_TTL_S)]
    return commands


def _seed(key: str, summaries: Sequence[dict[str, Any]]) -> list[Command]:
    """Rebuild an address's copy from its customer's hash, dropping whatever it held before."""
    fields = [part for s in summaries for part in (s["contact_id"], json_value(s))]
    if not fields:
        return [("DEL", key)]
    return [("DEL", key), ("HSET", key, *fields), ("EXPIRE", key, CONTACTS_TTL_S)]


def _pairs(raw: Any) -> dict[bytes, bytes]:
    if isinstance(raw, dict):
        return raw
    return dict(zip(raw[::2], raw[1::2]))


def _json(raw: bytes | None) -> dict[str, Any] | None:
    return orjson.loads(raw) if raw else None


async def conversations_of(redis: CommandBatcher, contact_ids: Sequence[str]
                           ) -> dict[str, tuple[str, Conversation]]:
    """Contact id -> (key, conversation) of those contacts that have one stored, in two
    batched round trips however many contacts there are."""
    if not contact_ids:
        return {}
    keys = await redis.execute(*(("GET", contact_index_key(c)) for c in contact_ids))
    found = [(contact, key.decode()) for contact, key in zip(contact_ids, keys) if key]
    raws = await redis.execute(*(("GET", key) for _, key in found)) if found else []
    return {contact: (key, conversation) for (contact, key), raw in zip(found, raws)
            if (conversation := _conversation(raw))}


def _conversation(raw: bytes | None) -> Conversation | None:
    """A stored conversation record (the JSON context.py wrote from a `Conversation`)."""
    return cast("Conversation | None", _json(raw))
