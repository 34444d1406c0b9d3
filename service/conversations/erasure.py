"""Erasing one customer's personal data on request (the right to erasure, GDPR art. 17).

`erase` reads the customer's addresses and contacts from PostgreSQL and finds every Redis key
of those addresses (a SCAN scoped to the address's hash tag: one slot, ops only, never the hot
path), of the customer and of their contacts. While a contact is open (a conversation not
closed, a queue entry, a message still being sent) it refuses and changes nothing: the agent
needs the context, ops erase once it ends. Otherwise one PostgreSQL transaction blanks the
personal fields of the customer's events (`erased_event_data`, migration 019: among them
the `text` of agents' and supervisors' private notes, `note_added`, and the provider
references of the customer's files, migration 021, each first recorded as an outbox job that
asks the channel to delete the file at the provider), the words
`simulate` keeps, and the addresses and texts of settled outbox rows; deletes the customer and
their identities; and records the erasure (`erased_customers`: who, when, counts per place)
with the Redis keys still to delete. Then the keys go (the notes kept in a conversation's
transcript and in its contact summaries with them), and the record forgets their names. A
crash after the transaction is finished by running the same erasure again.

Kept on purpose: the pseudonymous customer id in events and facts, so every report figure is
unchanged (false deflection per customer, journeys); and an address's opt-out record
(`sb:{<kind>:<address>}:optout:<channel>`, the value 1) after STOP, a suppression record, so an
erased customer who opted out stays opted out. `reapply`, run by the hourly upkeep, scrubs
what lands for an erased customer afterwards (events an instance's spool flushed late).
"""

from __future__ import annotations

import json
import re
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, AsyncIterator, Iterable, Literal, Mapping

import asyncpg
import redis.asyncio as redis
import structlog
from redis.asyncio.cluster import RedisCluster

from service.agents.queues import PREFIX as ROUTING
from service.conversations.context import (
    IDLE_INDEX,
    LEGACY_IDLE_INDEX,
    contact_index_key,
    contacts_key,
)

log = structlog.get_logger(__name__)

Reason = Literal["bad_input", "not_found", "open"]
# Events of an erased customer can land late while an instance's spool waits for PostgreSQL:
# the upkeep looks for them this long after the erasure.
LATE_EVENTS_DAYS = 30
KEPT = "opt_out_records_kept"  # beside the counts in erased_customers.counts
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_HASH_TAG = re.compile(r"\{[^}]*\}")


class ErasureError(Exception):
    """The erasure was refused; nothing was changed."""

    def __init__(self, reason: Reason, message: str, open_contacts: Iterable[str] = ()):
        super().__init__(message)
        self.reason = reason
        self.open_contacts = tuple(open_contacts)


@dataclass(frozen=True)
class Erasure:
    """What an erasure removed (or, dry, would remove), counted per place."""
    customer_id: str
    dry_run: bool
    counts: Mapping[str, int]
    opt_outs_kept: int
    erased_at: datetime | None = None
    resumed: bool = False  # a crashed erasure's Redis deletes finished by this run

    def as_dict(self) -> dict[str, Any]:
        return {"customer_id": self.customer_id, "dry_run": self.dry_run,
                "erased_at": self.erased_at.isoformat() if self.erased_at else None,
                "resumed": self.resumed, "counts": dict(self.counts),
                "kept": {"opt_out_records": self.opt_outs_kept}}


@dataclass(frozen=True)
class _Customer:
    id: uuid.UUID
    identities: tuple[tuple[str, str], ...]
    secrets: tuple[str, ...]  # strings whose presence in a value makes it personal
    contact_ids: tuple[str, ...]

    @property
    def addresses(self) -> list[str]:
        return [value for _, value in self.identities]


@dataclass(frozen=True)
class _RedisState:
    keys: tuple[str, ...]  # to delete
    idle: tuple[str, ...]  # conversation keys in the idle indexes
    kept: tuple[str, ...]  # opt-out records
    open_contacts: tuple[str, ...] = ()

    @property
    def pending(self) -> list[str]:
        return sorted(set(self.keys) | set(self.idle))


def customer_uuid(value: str) -> uuid.UUID:
    """A customer id as given by ops, or ErasureError naming it."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ErasureError("bad_input", f"not a customer id: {value!r} (a UUID, as "
                           "'customers add' printed it)") from None


async def customer_id_for(conn: asyncpg.Connection | asyncpg.Pool, kind: str,
                          value: str) -> str:
    """The customer an address belongs to, or ErasureError naming it."""
    found = await conn.fetchval(
        "SELECT customer_id FROM customer_identities WHERE kind = $1 AND value = $2",
        kind, value)
    if found is None:
        raise ErasureError("not_found", f"no customer has the {kind} address {value!r}")
    return str(found)


async def erase(pool: asyncpg.Pool, client: redis.Redis | RedisCluster, customer_id: str, *,
                by: str, dry_run: bool = False) -> Erasure:
    """Erase the customer's personal data everywhere (or count it, `dry_run`)."""
    cid = customer_uuid(customer_id)
    async with pool.acquire(timeout=10) as conn:
        customer = await _customer(conn, cid)
        if customer is None:
            return await _resume(conn, client, cid, dry_run)
        state = await _redis_state(client, customer)
        await _refuse_open(conn, customer, state)
        redis_counts = {"redis_keys": len(state.keys), "idle_entries": len(state.idle)}
        if dry_run:
            counts = await _counted(conn, customer) | redis_counts
            return Erasure(str(cid), True, counts, len(state.kept))
        counts, erased_at = await _erase_stored(conn, customer, state, by, redis_counts)
        await _delete_keys(client, state.pending)
        await conn.execute("UPDATE erased_customers SET redis_keys = NULL "
                           "WHERE customer_id = $1", cid)
    log.info("customers.erased", customer_id=str(cid), by=by, **counts)
    return Erasure(str(cid), False, counts, len(state.kept), erased_at)


async def _refuse_open(conn: asyncpg.Connection, customer: _Customer, state: _RedisState
                       ) -> None:
    """ErasureError naming the customer's open contacts: a conversation not closed, a queue
    entry, a message still being sent."""
    sending = await conn.fetch(
        "SELECT DISTINCT contact_id FROM outbox WHERE contact_id = ANY($1::text[]) "
        "AND state = 'queued'", list(customer.contact_ids))
    still_open = sorted(set(state.open_contacts) | {r["contact_id"] for r in sending})
    if still_open:
        raise ErasureError("open", f"customer {customer.id} has open contacts: "
                           f"{', '.join(still_open)}; erase once they have ended", still_open)


async def _customer(conn: asyncpg.Connection, cid: uuid.UUID) -> _Customer | None:
    row = await conn.fetchrow("SELECT display_name FROM customers WHERE id = $1", cid)
    if row is None:
        return None
    identities = [(r["kind"], r["value"]) for r in await conn.fetch(
        "SELECT kind, value FROM customer_identities WHERE customer_id = $1 ORDER BY kind, value",
        cid)]
    contacts = await conn.fetch(
        """SELECT contact_id FROM contact_facts WHERE customer_id = $1
           UNION SELECT contact_id FROM contact_events
                 WHERE customer_id = $1 AND contact_id IS NOT NULL""", cid)
    # Too short a string would blank values that merely contain it (a position, a count).
    secrets = {value for _, value in identities}
    secrets |= {value.removeprefix("id:") for kind, value in identities
                if kind == "web" and len(value) >= len("id:") + 4}
    if row["display_name"] and len(row["display_name"].strip()) >= 3:
        secrets.add(row["display_name"].strip())
    return _Customer(cid, tuple(identities), tuple(sorted(secrets)),
                     tuple(sorted(str(r["contact_id"]) for r in contacts)))


async def _resume(conn: asyncpg.Connection, client: redis.Redis | RedisCluster,
                  cid: uuid.UUID, dry_run: bool) -> Erasure:
    """An erased customer: finish the Redis deletes a crash left, or say it is gone."""
    record = await conn.fetchrow(
        "SELECT erased_at, counts, redis_keys FROM erased_customers WHERE customer_id = $1", cid)
    if record is None:
        raise ErasureError("not_found", f"no customer {cid}")
    if record["redis_keys"] is None:
        raise ErasureError("not_found", f"customer {cid} was erased at "
                           f"{record['erased_at'].isoformat()}; nothing is left to erase")
    if not dry_run:
        await _delete_keys(client, record["redis_keys"])
        await conn.execute("UPDATE erased_customers SET redis_keys = NULL "
                           "WHERE customer_id = $1", cid)
        log.info("customers.erasure_resumed", customer_id=str(cid))
    counts = json.loads(record["counts"])
    kept = counts.pop(KEPT, 0)
    return Erasure(str(cid), dry_run, counts, kept, record["erased_at"], resumed=True)


# ---- Redis --------------------------------------------------------------------------------

async def _redis_state(client: redis.Redis | RedisCluster, customer: _Customer) -> _RedisState:
    """Every key of the customer's addresses, of the customer and of their contacts; which
    contacts are still open."""
    under_addresses: set[str] = set()
    idle: set[str] = set()
    for kind, value in customer.identities:
        tag = f"sb:{{{kind}:{value}}}:"
        pattern = _glob(tag) + "*"
        under_addresses |= {k async for k in _scan(client, pattern, tag)}
        for index in (IDLE_INDEX, LEGACY_IDLE_INDEX):
            idle |= {_text(m) async for m, _ in client.zscan_iter(index, match=pattern)}
    kept = {k for k in under_addresses if _after_tag(k).startswith(":optout:")}
    exact = [contacts_key(str(customer.id))]
    exact += [key for c in customer.contact_ids
              for key in (contact_index_key(c), f"{ROUTING}declined:{c}")]
    found = [key for key in exact if await client.exists(key)]
    conversations = [k for k in under_addresses
                     if _after_tag(k).startswith(":conv:") and not k.endswith(":lease")]
    still_open = {c for key in conversations if (c := await _open_contact(client, key))}
    if customer.contact_ids:
        entries = await client.hmget(f"{ROUTING}entries", list(customer.contact_ids))
        still_open |= {c for c, entry in zip(customer.contact_ids, entries) if entry}
    return _RedisState(tuple(sorted((under_addresses - kept) | set(found))), tuple(sorted(idle)),
                       tuple(sorted(kept)), tuple(sorted(still_open)))


async def _open_contact(client: redis.Redis | RedisCluster, key: str) -> str | None:
    raw = await client.get(key)
    conversation = json.loads(raw) if raw else None
    if not conversation or conversation.get("status") == "closed":
        return None
    return conversation.get("contact_id") or key


async def _scan(client: redis.Redis | RedisCluster, pattern: str,
                slot_key: str) -> AsyncIterator[str]:
    """Keys matching a pattern within one hash tag: on a cluster, only the node owning the slot
    of `slot_key`."""
    options: dict[str, Any] = {"match": pattern, "count": 1000}
    if isinstance(client, RedisCluster):
        await client.initialize()  # the slot map, read on first use
        options["target_nodes"] = client.get_node_from_key(slot_key)
    async for key in client.scan_iter(**options):
        yield _text(key)


async def _delete_keys(client: redis.Redis | RedisCluster, keys: Iterable[str]) -> None:
    """Delete keys, one DEL per hash tag (one slot), and drop them from the idle indexes."""
    by_tag: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        tag = _HASH_TAG.search(key)
        by_tag[tag.group() if tag else key].append(key)
    for group in by_tag.values():
        await client.delete(*group)
        for index in (IDLE_INDEX, LEGACY_IDLE_INDEX):
            await client.zrem(index, *group)


def _glob(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def _after_tag(key: str) -> str:
    return key[key.index("}") + 1:] if "}" in key else key


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# ---- PostgreSQL ---------------------------------------------------------------------------

# The customer's events: by customer, by contact, and those of a failed or muted turn that
# carry only the address. All three by index (customer-less events are the customer index's
# NULL entries, few), so an erasure does not read the whole log (load_tests/bench_erasure.py).
EVENTS_OF = """(customer_id = $1 OR contact_id = ANY($2::uuid[])
                OR (customer_id IS NULL AND data->>'address' = ANY($3::text[])))
               AND data IS DISTINCT FROM erased_event_data(data, $4::text[])"""
# The customer's files (attachments kept by `received` events and failed turns), one outbox
# job each asking the channel to delete it at the provider (`delete_attachment`).
FILES_OF = f"""
    SELECT DISTINCT ON (a.item->>'ref') coalesce(contact_id::text, $1::uuid::text) AS contact_id,
           channel, a.item->>'content_type' AS content_type, a.item->>'ref' AS ref
    FROM contact_events, jsonb_array_elements(CASE WHEN jsonb_typeof(data->'attachments')
                                                   = 'array' THEN data->'attachments'
                                              ELSE '[]'::jsonb END) AS a(item)
    WHERE {EVENTS_OF} AND jsonb_typeof(a.item) = 'object' AND coalesce(a.item->>'ref', '') <> ''"""
DELETE_FILES = f"""
    INSERT INTO outbox (id, contact_id, channel, action, destination, payload, event_context)
    SELECT gen_random_uuid(), f.contact_id, f.channel, 'delete_attachment',
           jsonb_build_object('contact_id', f.contact_id, 'address', '', 'service_address', '',
                              'thread', NULL, 'customer_last_at', NULL),
           jsonb_build_object('content_type', coalesce(f.content_type, ''), 'ref', f.ref),
           jsonb_build_object('customer_id', $1::uuid::text)
    FROM ({FILES_OF}) f"""
# Once the provider has answered, a deletion's reference is no longer needed.
FORGET_DELETED_FILES = """
    UPDATE outbox SET payload = payload - 'ref', updated_at = now()
    WHERE action = 'delete_attachment' AND state <> 'queued' AND payload ? 'ref'"""
REPLAY_OF = "contact_id = ANY($1::uuid[]) AND (said).value <> ''"
OUTBOX_OF = """contact_id = ANY($1::text[]) AND state <> 'queued'
               AND (destination IS DISTINCT FROM erased_event_data(destination, $2::text[])
                    OR payload IS DISTINCT FROM erased_event_data(payload, $2::text[])
                    OR EXISTS (SELECT FROM unnest($2::text[]) s WHERE strpos(failure, s) > 0))"""


def _event_args(customer: _Customer) -> tuple[Any, ...]:
    return (customer.id, list(customer.contact_ids), customer.addresses, list(customer.secrets))


async def _counted(conn: asyncpg.Connection, customer: _Customer) -> dict[str, int]:
    """What an erasure of the customer would change in PostgreSQL."""
    return {
        "customers": 1,
        "identities": len(customer.identities),
        "events": await conn.fetchval(f"SELECT count(*) FROM contact_events WHERE {EVENTS_OF}",
                                      *_event_args(customer)),
        "replay": await conn.fetchval(f"SELECT count(*) FROM contact_replay WHERE {REPLAY_OF}",
                                      list(customer.contact_ids)),
        "outbox": await conn.fetchval(f"SELECT count(*) FROM outbox WHERE {OUTBOX_OF}",
                                      list(customer.contact_ids), list(customer.secrets)),
        "file_deletions": await conn.fetchval(f"SELECT count(*) FROM ({FILES_OF}) f",
                                              *_event_args(customer)),
    }


async def _erase_stored(conn: asyncpg.Connection, customer: _Customer, state: _RedisState,
                        by: str, redis_counts: dict[str, int]) -> tuple[dict[str, int], datetime]:
    """The PostgreSQL half, in one transaction, recording the Redis keys still to delete."""
    contacts, secrets = list(customer.contact_ids), list(customer.secrets)
    async with conn.transaction():
        if await conn.fetchval("SELECT id FROM customers WHERE id = $1 FOR UPDATE",
                               customer.id) is None:
            raise ErasureError("not_found", f"customer {customer.id} was erased meanwhile")
        await conn.execute("SET LOCAL switchboard.erasing = 'on'")
        files = await conn.execute(DELETE_FILES, *_event_args(customer))  # before they blank
        events = await conn.execute(
            f"UPDATE contact_events SET data = erased_event_data(data, $4::text[]) "
            f"WHERE {EVENTS_OF}", *_event_args(customer))
        replay = await conn.execute(
            "UPDATE contact_replay SET said = ROW((said).at, (said).seq, '')::fact_mark "
            f"WHERE {REPLAY_OF}", contacts)
        outbox = await conn.execute(
            "UPDATE outbox SET destination = erased_event_data(destination, $2::text[]), "
            "payload = erased_event_data(payload, $2::text[]), "
            "failure = CASE WHEN EXISTS (SELECT FROM unnest($2::text[]) s "
            "WHERE strpos(failure, s) > 0) THEN '' ELSE failure END, updated_at = now() "
            f"WHERE {OUTBOX_OF}", contacts, secrets)
        identities = await conn.execute(
            "DELETE FROM customer_identities WHERE customer_id = $1", customer.id)
        await conn.execute("DELETE FROM customers WHERE id = $1", customer.id)
        counts = {"customers": 1, "identities": _rows(identities), "events": _rows(events),
                  "replay": _rows(replay), "outbox": _rows(outbox),
                  "file_deletions": _rows(files)} | redis_counts
        erased_at = await conn.fetchval(
            """INSERT INTO erased_customers (customer_id, erased_by, counts, redis_keys)
               VALUES ($1, $2, $3::jsonb, $4)
               ON CONFLICT (customer_id) DO UPDATE SET erased_at = now(),
                 erased_by = EXCLUDED.erased_by, counts = EXCLUDED.counts,
                 redis_keys = EXCLUDED.redis_keys
               RETURNING erased_at""",
            customer.id, by, json.dumps(counts | {KEPT: len(state.kept)}), state.pending)
    return counts, erased_at


def _rows(status: str) -> int:
    return int(status.split()[-1])


REAPPLY_SQL = """
WITH erased AS (SELECT customer_id FROM erased_customers
                WHERE erased_at > now() - make_interval(days => $1)),
late AS (
    UPDATE contact_events e SET data = erased_event_data(e.data, '{}')
    FROM erased x
    WHERE e.customer_id = x.customer_id AND e.data IS DISTINCT FROM erased_event_data(e.data, '{}')
    RETURNING e.contact_id
), replay AS (
    UPDATE contact_replay r SET said = ROW((r.said).at, (r.said).seq, '')::fact_mark
    WHERE r.contact_id IN (SELECT e.contact_id FROM contact_events e JOIN erased x
                           ON e.customer_id = x.customer_id)
      AND (r.said).value <> ''
    RETURNING 1
), customers AS (
    DELETE FROM customers c USING erased_customers x WHERE c.id = x.customer_id RETURNING 1
)
SELECT (SELECT count(*) FROM late) AS events, (SELECT count(*) FROM replay) AS replay,
       (SELECT count(*) FROM customers) AS customers
"""


async def reapply(conn: asyncpg.Connection) -> dict[str, int]:
    """Scrub what landed for erased customers after their erasure: late events (their personal
    keys: the customer's addresses are no longer known), replay words, a customer row (with
    identities) a late `customer_created` event projected again, and the references of files
    the provider has been asked to delete."""
    async with conn.transaction():
        await conn.execute("SET LOCAL switchboard.erasing = 'on'")
        row = await conn.fetchrow(REAPPLY_SQL, LATE_EVENTS_DAYS)
        forgotten = await conn.execute(FORGET_DELETED_FILES)
    found = dict(row) | {"file_references": _rows(forgotten)}
    if any(found.values()):
        log.info("customers.erasure_reapplied", **found)
    return found
