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

from service.context import identity_key


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


async def upsert_customer(conn: asyncpg.Connection, client: redis.Redis, *,
                          identities: list[tuple[str, str]], display_name: str | None,
                          attributes: dict[str, str]) -> str:
    """Create or update the customer owning these identities; return its id."""
    async with conn.transaction():
        existing = await conn.fetchval(
            "SELECT customer_id FROM customer_identities WHERE (kind, value) IN "
            "(SELECT * FROM unnest($1::text[], $2::text[])) LIMIT 1",
            [k for k, _ in identities], [v for _, v in identities])
        customer_id = existing or uuid.uuid4()
        await conn.execute(
            """INSERT INTO customers (id, display_name, attributes) VALUES ($1, $2, $3::jsonb)
               ON CONFLICT (id) DO UPDATE SET
                 display_name = coalesce(EXCLUDED.display_name, customers.display_name),
                 attributes = customers.attributes || EXCLUDED.attributes""",
            customer_id, display_name, json.dumps(attributes))
        for kind, value in identities:
            await conn.execute(
                """INSERT INTO customer_identities (kind, value, customer_id, verified)
                   VALUES ($1, $2, $3, true) ON CONFLICT (kind, value)
                   DO UPDATE SET customer_id = EXCLUDED.customer_id, verified = true""",
                kind, value, customer_id)
        linked = await conn.fetch(
            "SELECT kind, value FROM customer_identities WHERE customer_id = $1", customer_id)
    # Every address's cached link lists all the others: drop them all, not just the new ones.
    await client.delete(*(identity_key(r["kind"], r["value"]) for r in linked))
    return str(customer_id)
