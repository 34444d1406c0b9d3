"""A canary of a new rules version: it decides a share of new contacts next to the rules in
force (stable), until it is promoted, aborted, or rolled back when a guardrail trips.

The canary lives in PostgreSQL (`rule_canaries`, its files in `rule_versions`), so every
instance runs the same one: each follows it on a NOTIFY on CANARY_CHANNEL and every few seconds
(`RulesHolder.sync_canary`). A new contact is the canary's when the stable hash of its id
falls under the share (`Canary.arm_of`: no round trip). Starting, ending and rolling back are
recorded in the rules audit (`rule_loads`, cause `canary`, with the canary's number).

The canary carries the rule files (loader.RULE_FILES); training data and other files come from
each instance's own rules directory, as for `rules rollback`. It may not name queues the rules
in force do not have: agents' queues are shared by both.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping

import asyncpg

from service.infra.ids import stable_point
from service.rules import versions
from service.rules.loader import RULE_FILES, Rules, load_rules
from service.rules.restore import RestoreFailed, restore
from service.rules.versions import LoadCause

CANARY_CHANNEL = "switchboard_rules_canary"
METRICS = ("true_deflection", "csat")
STATES = ("running", "rolled_back", "promoted", "aborted")
GUARDRAIL = re.compile(r"^\s*([a-z_]+)\s*:\s*-\s*([0-9]*\.?[0-9]+)\s*$")


class BadCanary(ValueError):
    """The canary cannot start or end as asked; the message says why. Nothing changed."""


@dataclass(frozen=True)
class Guardrail:
    metric: str  # one of METRICS
    max_drop: float  # how far below stable the canary may fall (rate, or CSAT points)

    @classmethod
    def parse(cls, raw: str) -> "Guardrail":
        """`true_deflection:-0.05` or `csat:-0.3`: the metric and the largest drop allowed."""
        found = GUARDRAIL.match(raw or "")
        if not found or found[1] not in METRICS:
            raise BadCanary(f"guardrail {raw!r}: expected METRIC:-DROP with METRIC one of "
                            f"{', '.join(METRICS)}, e.g. true_deflection:-0.05 or csat:-0.3")
        drop = float(found[2])
        if found[1] == "true_deflection" and drop >= 1:
            raise BadCanary(f"guardrail {raw!r}: a drop in true deflection is a rate below 1")
        return cls(found[1], drop)

    def __str__(self) -> str:
        return f"{self.metric}:-{self.max_drop:g}"


@dataclass(frozen=True)
class Canary:
    id: int
    version_id: int
    digest: str
    stable_version_id: int | None
    share: float
    guardrails: tuple[Guardrail, ...]
    min_contacts: int
    state: str
    started_at: datetime
    started_by: str
    ended_at: datetime | None = None
    ended_by: str | None = None
    end_reason: str | None = None
    figures: Mapping[str, Any] | None = None

    @property
    def experiment(self) -> str:
        """Its name among experiments (contact_arms)."""
        return f"canary:{self.id}"

    def arm_of(self, contact_id: str) -> str:
        """`canary` or `stable`: a stable hash of the contact id, under the share or not."""
        return "canary" if stable_point(f"{contact_id}:{self.experiment}") < self.share \
            else "stable"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version_id, "digest": self.digest,
                "stable_version": self.stable_version_id, "share": self.share,
                "guardrails": [str(g) for g in self.guardrails],
                "min_contacts": self.min_contacts, "state": self.state,
                "started_at": _iso(self.started_at), "started_by": self.started_by,
                "ended_at": _iso(self.ended_at), "ended_by": self.ended_by,
                "end_reason": self.end_reason}


@dataclass(frozen=True)
class RunningCanary:
    """A canary as one instance runs it: its record and its rules, loaded."""
    canary: Canary
    rules: Rules

    @property
    def id(self) -> int:
        return self.canary.id

    def arm_of(self, contact_id: str) -> str:
        return self.canary.arm_of(contact_id)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


# ---- PostgreSQL ---------------------------------------------------------------------------

SELECT = ("SELECT c.*, v.digest FROM rule_canaries c JOIN rule_versions v "
          "ON v.id = c.version_id")


def _canary(row: Mapping[str, Any]) -> Canary:
    return Canary(row["id"], row["version_id"], row["digest"], row["stable_version_id"],
                  row["share"], tuple(Guardrail(g["metric"], g["max_drop"])
                                      for g in json.loads(row["guardrails"])),
                  row["min_contacts"], row["state"], row["started_at"], row["started_by"],
                  row["ended_at"], row["ended_by"], row["end_reason"],
                  json.loads(row["figures"]) if row["figures"] else None)


async def running(conn: asyncpg.Connection | asyncpg.Pool) -> Canary | None:
    """The canary running now, if any."""
    row = await conn.fetchrow(f"{SELECT} WHERE c.state = 'running'")
    return _canary(row) if row else None


async def latest(conn: asyncpg.Connection | asyncpg.Pool) -> Canary | None:
    """The running canary, else the newest that ended."""
    row = await conn.fetchrow(f"{SELECT} ORDER BY c.state = 'running' DESC, c.id DESC LIMIT 1")
    return _canary(row) if row else None


async def files_of(conn: asyncpg.Connection | asyncpg.Pool, canary: Canary) -> dict[str, str]:
    return (await versions.version(conn, str(canary.version_id))).files


def check_queues(canary_rules: Rules, stable: Rules) -> None:
    """Agents' queues are shared: the canary may name only queues stable has."""
    extra = sorted(set(canary_rules.tree.queues) - set(stable.tree.queues))
    if extra:
        raise BadCanary(f"the canary names queues the rules in force do not have: "
                        f"{', '.join(extra)} (add them to the rules in force first)")


def check_settings(share: float, min_contacts: int) -> None:
    if not 0 < share < 1:
        raise BadCanary(f"--share must be above 0 and below 1, not {share!r}")
    if min_contacts < 1:
        raise BadCanary(f"--min-contacts must be at least 1, not {min_contacts!r}")


async def start(conn: asyncpg.Connection, canary_rules: Rules, stable: Rules, *, share: float,
                guardrails: Iterable[Guardrail], min_contacts: int, actor: str) -> Canary:
    """Record a canary of `canary_rules` (validated) and tell every instance; one at a time."""
    check_settings(share, min_contacts)
    check_queues(canary_rules, stable)
    guardrails = tuple(guardrails)
    async with conn.transaction():
        await conn.execute("LOCK TABLE rule_canaries IN SHARE ROW EXCLUSIVE MODE")
        busy = await running(conn)
        if busy is not None:
            raise BadCanary(f"canary {busy.id} is running: promote or abort it first")
        version_id = await versions.save_version(conn, canary_rules.digest, canary_rules.files)
        stable_version = await versions.in_force(conn)
        row = await conn.fetchrow(
            "INSERT INTO rule_canaries (version_id, stable_version_id, share, guardrails, "
            "min_contacts, started_by) VALUES ($1, $2, $3, $4::jsonb, $5, $6) RETURNING id",
            version_id, stable_version.id if stable_version else None, share,
            json.dumps([{"metric": g.metric, "max_drop": g.max_drop} for g in guardrails]),
            min_contacts, actor)
        said = ", ".join(str(g) for g in guardrails) or "no guardrails"
        await versions.insert_load(
            conn, LoadCause("canary", f"{actor}: canary {row['id']} started on "
                            f"{share:.0%} of new contacts ({said}; after {min_contacts})"),
            digest=canary_rules.digest, files=canary_rules.files, previous=stable_version,
            canary_id=row["id"])
        await conn.execute("SELECT pg_notify($1, $2)", CANARY_CHANNEL, str(row["id"]))
    return (await latest(conn))


async def end(conn: asyncpg.Connection, canary_id: int | None, state: str, actor: str,
              reason: str = "", figures: Mapping[str, Any] | None = None) -> Canary | None:
    """End the running canary (the one numbered, when given) as `state`, recorded in the rules
    audit, and tell every instance; None when it was not running (another instance or person
    ended it first)."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "UPDATE rule_canaries SET state = $2, ended_at = now(), ended_by = $3, "
            "end_reason = $4, figures = $5::jsonb WHERE state = 'running' "
            "AND ($1::bigint IS NULL OR id = $1) RETURNING id",
            canary_id, state, actor, reason, json.dumps(figures) if figures else None)
        if row is None:
            return None
        ended = await _by_id(conn, row["id"])
        if state != "promoted":  # a promotion is recorded by the reloads it asks for
            stable = await versions.in_force(conn)
            canary_version = await versions.version(conn, str(ended.version_id))
            await versions.insert_load(
                conn, LoadCause("canary", f"{actor}: canary {ended.id} {_words(state)}"
                                + (f": {reason}" if reason else "")),
                digest=stable.digest if stable else None, files=stable.files if stable else None,
                previous=canary_version, canary_id=ended.id)
        await conn.execute("SELECT pg_notify($1, $2)", CANARY_CHANNEL, str(ended.id))
    return ended


async def promote(conn: asyncpg.Connection, directory: Path, actor: str) -> Canary:
    """The running canary's files become the rules directory's (validated first), and every
    instance reloads them; a canary that does not validate there changes nothing."""
    current = await running(conn)
    if current is None:
        raise BadCanary("no canary is running")
    files = await files_of(conn, current)
    async with conn.transaction():  # the notices go out only if everything succeeded
        ended = await end(conn, current.id, "promoted", actor)
        if ended is None:
            raise BadCanary(f"canary {current.id} ended meanwhile; nothing changed")
        try:
            restore(directory, files)
        except RestoreFailed as exc:
            raise BadCanary(f"canary {current.id} does not validate in {directory}; nothing "
                            f"changed:\n{exc}") from None
        await versions.ask_reload(conn, LoadCause("canary",
                                                  f"{actor}: promoted canary {current.id}"))
    return ended


async def abort(conn: asyncpg.Connection, actor: str) -> Canary:
    """Stop the running canary by hand: every contact is decided by the rules in force."""
    ended = await end(conn, None, "aborted", actor)
    if ended is None:
        raise BadCanary("no canary is running")
    return ended


def _words(state: str) -> str:
    return {"rolled_back": "rolled back", "aborted": "aborted", "promoted": "promoted"}[state]


async def _by_id(conn: asyncpg.Connection, canary_id: int) -> Canary:
    return _canary(await conn.fetchrow(f"{SELECT} WHERE c.id = $1", canary_id))


# ---- an instance's copy of the canary's rules --------------------------------------------

def load_canary_rules(stable_directory: Path, files: Mapping[str, str],
                      learned: Iterable[tuple[str, str]] = (),
                      with_classifier: bool = True) -> Rules:
    """The canary's rule files beside this instance's training data, loaded (ConfigError when
    they do not validate here)."""
    directory = stable_directory.resolve()
    with tempfile.TemporaryDirectory(prefix=".canary-", dir=directory.parent) as scratch:
        trial = Path(scratch) / directory.name
        shutil.copytree(directory, trial, ignore=shutil.ignore_patterns(*RULE_FILES))
        for name, text in files.items():
            if name in RULE_FILES:
                (trial / name).write_text(text, encoding="utf-8")
        return load_rules(trial, learned=learned, with_classifier=with_classifier)
