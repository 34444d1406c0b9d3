"""Customers as ops know them: the durable directory in PostgreSQL.

The hot path reads it only when Redis has no identity link for an address (first contact,
or the link expired); ops add or update customers here and the Redis link is dropped so
the next contact picks up the change.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import redis.asyncio as redis

from service.conversations.context import address_contacts_key, identity_key


async def lookup_pool(database_url: str) -> asyncpg.Pool:
    """A pool for `find_customer` alone. Its one read-only statement leaves no session state,
    so a connection goes back without the reset the shared pool runs on every release (a
    round trip and four statements in PostgreSQL: about a fifth of a look-up's cost)."""
    return await asyncpg.create_pool(database_url, min_size=1, max_size=4, reset=_nothing)


async def _nothing(conn: asyncpg.Connection) -> None:
    """Pool reset: asyncpg still rolls back a transaction left open; nothing else to undo."""


async def find_customer(pool: asyncpg.Pool, kind: str, value: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        """SELECT c.id, c.display_name, c.attributes,
                  (SELECT array_agg(ARRAY[o.kind, o.value] ORDER BY o.kind, o.value)
                     FROM customer_identities o WHERE o.customer_id = c.id) AS identities
             FROM customer_identities i JOIN customers c ON c.id = i.customer_id
            WHERE i.kind = $1 AND i.value = $2""",
        kind, value, timeout=2)
    if row is None:
        return None
    return {"customer_id": str(row["id"]), "display_name": row["display_name"],
            "attributes": json.loads(row["attributes"]),
            "identities": [list(pair) for pair in row["identities"]]}


class CustomerError(ValueError):
    """Ops asked for something the directory cannot do; nothing was changed."""


async def upsert_customer(conn: asyncpg.Connection, client: redis.Redis, *,
                          identities: list[tuple[str, str]], display_name: str | None,
                          attributes: dict[str, str], customer_id: str | None = None) -> str:
    """Create or update the customer owning these identities, or the one named by
    `customer_id` (identities other customers own move to it); return its id."""
    async with conn.transaction():
        owners = await conn.fetch(
            "SELECT kind, value, customer_id FROM customer_identities WHERE (kind, value) IN "
            "(SELECT * FROM unnest($1::text[], $2::text[])) ORDER BY kind, value FOR UPDATE",
            [k for k, _ in identities], [v for _, v in identities])
        target = _target(owners, customer_id)
        if customer_id is not None and not await conn.fetchval(
                "SELECT true FROM customers WHERE id = $1", target):
            raise CustomerError(f"no customer {customer_id}")
        await conn.execute(
            """INSERT INTO customers (id, display_name, attributes) VALUES ($1, $2, $3::jsonb)
               ON CONFLICT (id) DO UPDATE SET
                 display_name = coalesce(EXCLUDED.display_name, customers.display_name),
                 attributes = customers.attributes || EXCLUDED.attributes""",
            target, display_name, json.dumps(attributes))
        await conn.executemany(
            """INSERT INTO customer_identities (kind, value, customer_id, verified)
               VALUES ($1, $2, $3, true) ON CONFLICT (kind, value)
               DO UPDATE SET customer_id = EXCLUDED.customer_id, verified = true""",
            [(kind, value, target) for kind, value in identities])
        touched = {target} | {r["customer_id"] for r in owners}
        linked = await conn.fetch(
            "SELECT kind, value FROM customer_identities WHERE customer_id = ANY($1::uuid[])",
            list(touched))
    # Every address's cached link lists all of its customer's others: drop them all, the
    # previous owners' too. A moved address's summaries were its old owner's: drop them.
    moved = [(r["kind"], r["value"]) for r in owners if r["customer_id"] != target]
    await client.delete(*(identity_key(r["kind"], r["value"]) for r in linked),
                        *(address_contacts_key(kind, value) for kind, value in moved))
    return str(target)


def _target(owners: list[asyncpg.Record], customer_id: str | None) -> uuid.UUID:
    if customer_id is not None:
        try:
            return uuid.UUID(customer_id)
        except ValueError:
            raise CustomerError(f"not a customer id: {customer_id!r}") from None
    found = {r["customer_id"] for r in owners}
    if len(found) > 1:
        listed = ", ".join(f"{r['kind']} {r['value']} belongs to {r['customer_id']}"
                           for r in owners)
        raise CustomerError(f"these identities belong to different customers ({listed}); "
                               "name the one that keeps them (--customer ID)")
    return found.pop() if found else uuid.uuid4()
