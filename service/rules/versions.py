"""The rules' audit trail in PostgreSQL: every version loaded (`rule_versions`, its files) and
every load or reload (`rule_loads`: who or what caused it, the version, a diff against the one
before, or why it failed). `rules history`, `rules diff` and `rules rollback` read it.

A reload is asked of every running instance with PostgreSQL's NOTIFY on RELOAD_CHANNEL.
"""

from __future__ import annotations

import difflib
import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

import asyncpg

RELOAD_CHANNEL = "switchboard_rules_reload"
CAUSES = ("start", "signal", "api", "cli", "rollback", "canary")
ASKED_BY_NOTIFY = ("cli", "rollback", "canary")
INSTANCE = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class LoadCause:
    """Who or what asked for a load: `kind` is one of CAUSES, `actor` says who."""

    kind: str
    actor: str = ""

    def payload(self) -> str:
        return json.dumps({"cause": self.kind, "actor": self.actor})

    @classmethod
    def from_payload(cls, payload: str) -> "LoadCause":
        """A NOTIFY payload; anything unreadable is still a reload asked from the CLI."""
        try:
            data = json.loads(payload)
            kind = data["cause"] if data.get("cause") in ASKED_BY_NOTIFY else "cli"
            return cls(kind, str(data.get("actor", ""))[:200])
        except (ValueError, TypeError, AttributeError, KeyError):
            return cls("cli", "")


@dataclass(frozen=True)
class Version:
    id: int
    digest: str
    files: Mapping[str, str]


@dataclass(frozen=True)
class Load:
    id: int
    loaded_at: datetime
    cause: str
    actor: str
    instance: str
    version_id: int | None
    digest: str | None
    previous_id: int | None
    diff: str
    errors: tuple[str, ...]
    canary_id: int | None = None  # a canary started or ended (its rules beside those in force)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "loaded_at": self.loaded_at.isoformat(), "cause": self.cause,
                "actor": self.actor, "instance": self.instance, "version": self.version_id,
                "digest": self.digest, "previous_version": self.previous_id,
                "ok": self.version_id is not None, "diff": self.diff,
                "errors": list(self.errors), "canary": self.canary_id}


class UnknownVersion(LookupError):
    """No version has that number or digest."""


def unified_diff(old: Mapping[str, str], new: Mapping[str, str], old_label: str = "a",
                 new_label: str = "b") -> str:
    """A unified diff of two sets of rule files, file by file."""
    chunks = []
    for name in sorted(old.keys() | new.keys()):
        chunks.extend(difflib.unified_diff(
            old.get(name, "").splitlines(keepends=True), new.get(name, "").splitlines(
                keepends=True), f"{old_label}/{name}" if name in old else "/dev/null",
            f"{new_label}/{name}" if name in new else "/dev/null"))
    return "".join(line if line.endswith("\n") else line + "\n" for line in chunks)


async def save_version(conn: asyncpg.Connection | asyncpg.Pool, digest: str,
                       files: Mapping[str, str]) -> int:
    """The version's number, storing its files the first time it is seen."""
    return await conn.fetchval(
        "INSERT INTO rule_versions (digest, files) VALUES ($1, $2::jsonb) "
        "ON CONFLICT (digest) DO UPDATE SET digest = EXCLUDED.digest RETURNING id",
        digest, json.dumps(dict(files)))


async def record_load(pool: asyncpg.Pool, cause: LoadCause, *, digest: str | None,
                      files: Mapping[str, str] | None, previous: Version | None,
                      errors: Sequence[str] = ()) -> Load:
    """One load: a new version in force (digest and files), or a failure (errors)."""
    async with pool.acquire() as conn, conn.transaction():
        load_id = await insert_load(conn, cause, digest=digest, files=files, previous=previous,
                                    errors=errors)
    [load] = await history(pool, limit=1, before=load_id + 1)
    return load


async def insert_load(conn: asyncpg.Connection, cause: LoadCause, *, digest: str | None,
                      files: Mapping[str, str] | None, previous: Version | None,
                      errors: Sequence[str] = (), canary_id: int | None = None) -> int:
    """The row of one load, in the caller's transaction; its id."""
    version_id = await save_version(conn, digest, files) if digest and files else None
    diff = unified_diff(previous.files if previous else {}, files or {},
                        f"v{previous.id}" if previous else "none",
                        f"v{version_id}") if version_id is not None else ""
    row = await conn.fetchrow(
        "INSERT INTO rule_loads (cause, actor, instance, version_id, previous_id, diff, "
        "errors, canary_id) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8) RETURNING id",
        cause.kind, cause.actor, INSTANCE, version_id, previous.id if previous else None,
        diff, json.dumps(list(errors)), canary_id)
    return row["id"]


async def history(conn: asyncpg.Connection | asyncpg.Pool, limit: int = 50,
                  before: int | None = None) -> list[Load]:
    """The newest loads first."""
    rows = await conn.fetch(
        "SELECT l.*, v.digest FROM rule_loads l LEFT JOIN rule_versions v ON v.id = l.version_id"
        " WHERE $2::bigint IS NULL OR l.id < $2 ORDER BY l.id DESC LIMIT $1", limit, before)
    return [Load(r["id"], r["loaded_at"], r["cause"], r["actor"], r["instance"],
                 r["version_id"], r["digest"], r["previous_id"], r["diff"],
                 tuple(json.loads(r["errors"])), r["canary_id"]) for r in rows]


async def version(conn: asyncpg.Connection | asyncpg.Pool, ref: str) -> Version:
    """A version by its number (`3`, `v3`) or the start of its digest (at least 4 characters)."""
    ref = ref.strip().lower()
    number = ref.removeprefix("v")
    if number.isdigit():
        rows = await conn.fetch("SELECT * FROM rule_versions WHERE id = $1", int(number))
    elif len(ref) >= 4 and all(c in "0123456789abcdef" for c in ref):
        rows = await conn.fetch("SELECT * FROM rule_versions WHERE digest LIKE $1 || '%' "
                                "LIMIT 2", ref)
    else:
        rows = []
    if len(rows) != 1:
        raise UnknownVersion(f"no rules version {ref!r}" if not rows else
                             f"{ref!r} names more than one version: give more of the digest")
    return Version(rows[0]["id"], rows[0]["digest"], json.loads(rows[0]["files"]))


async def in_force(conn: asyncpg.Connection | asyncpg.Pool) -> Version | None:
    """The version the newest successful load put in force (a canary's loads aside)."""
    row = await conn.fetchrow("SELECT version_id FROM rule_loads WHERE version_id IS NOT NULL "
                              "AND canary_id IS NULL ORDER BY id DESC LIMIT 1")
    return await version(conn, str(row["version_id"])) if row else None


async def ask_reload(conn: asyncpg.Connection, cause: LoadCause) -> None:
    """Every running instance reloads its rules directory (all or nothing, each on its own)."""
    await conn.execute("SELECT pg_notify($1, $2)", RELOAD_CHANNEL, cause.payload())
