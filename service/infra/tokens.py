"""API tokens with a role: a random token shown once, only its SHA-256 stored.

    token = await create_token(conn, "ops", name="dashboard")   # print it, never store it
    role = await role_of(pool, token)                            # "ops", or None

Roles: `ops` reads reports, the ops dashboard, the supervisor view and contact search;
`supervisor` reads only the supervisor view (agents and queues now), the agent report and
contact search (`/api/contacts`), and whispers notes to agents on live contacts; `agent` is
kept for the agent console.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid

import asyncpg

ROLES = ("ops", "supervisor", "agent")
TOKEN_BYTES = 32


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(role: str) -> str:
    """`sb_<role>_` then 43 random URL-safe characters (256 bits); the prefix says what it is."""
    return f"sb_{role}_{secrets.token_urlsafe(TOKEN_BYTES)}"


async def create_token(conn: asyncpg.Connection | asyncpg.Pool, role: str,
                       name: str = "") -> str:
    """Store the hash of a new token for `role`; return the token itself (shown once)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    token = new_token(role)
    await conn.execute(
        "INSERT INTO api_tokens (id, role, name, token_hash) VALUES ($1, $2, $3, $4)",
        uuid.uuid4(), role, name, hash_token(token))
    return token


async def role_of(conn: asyncpg.Connection | asyncpg.Pool, token: str) -> str | None:
    """The role of a valid, unrevoked token; None for anything else."""
    if not token:
        return None
    return await conn.fetchval(
        "SELECT role FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
        hash_token(token), timeout=5)


async def name_of(conn: asyncpg.Connection | asyncpg.Pool, token: str) -> str | None:
    """The name a valid token was given (`tokens add --name`), for audit trails."""
    if not token:
        return None
    return await conn.fetchval(
        "SELECT name FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
        hash_token(token), timeout=5)


async def revoke_token(conn: asyncpg.Connection | asyncpg.Pool, token: str) -> bool:
    status = await conn.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE token_hash = $1 AND revoked_at IS NULL",
        hash_token(token))
    return status.endswith(" 1")
