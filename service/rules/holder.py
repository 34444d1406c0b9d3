"""The rules in force, swapped all at once on reload; a failed reload keeps the old ones.

Every load and reload is recorded (service/rules/versions.py) with its cause; a reload asked
with NOTIFY (`switchboard rules reload`, `rules rollback`) reaches every instance listening.
A canary's rules (service/rules/canary.py) are held beside them, followed the same way.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import asyncpg
import structlog

from service.infra.runtime import settle_heap
from service.reporting import metrics
from service.rules import canary, versions
from service.rules.canary import BadCanary, RunningCanary
from service.rules.loader import Rules, load_rules
from service.rules.versions import Load, LoadCause, Version
from service.rules.yamlfile import ConfigError
from service.understanding.learning import learned_examples

log = structlog.get_logger(__name__)
LISTEN_RETRY_S = 2.0
RECORD_FAILED = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError)


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    digest: str  # of the rules in force afterwards
    errors: tuple[str, ...] = ()
    load: Load | None = None  # as recorded; None when PostgreSQL could not take it


class RulesHolder:
    def __init__(self, rules: Rules, pool: asyncpg.Pool):
        self.current = rules
        self._pool = pool
        self._lock = asyncio.Lock()
        self._version: Version | None = None  # what `current` is, as recorded
        self._asked: set[asyncio.Task] = set()  # reloads NOTIFY asked for, still running
        self.canary: RunningCanary | None = None  # a canary's rules, for its share of contacts
        self._canary_lock = asyncio.Lock()
        self._canary_refused: set[int] = set()  # canaries whose rules do not load here
        self.on_reloaded: list[Callable[[], None]] = []  # told after each successful reload

    @classmethod
    async def load(cls, directory: Path, pool: asyncpg.Pool,
                   cause: LoadCause = LoadCause("start")) -> "RulesHolder":
        learned = await _learned(pool)
        log.info("rules.loading", directory=str(directory), learned_examples=len(learned),
                 note="training the contact-type classifier takes a few seconds")
        rules = await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(load_rules, directory, learned=learned))
        metrics.RULES_RELOAD_OK.set(1)
        metrics.RULES_RELOAD_TIME.set_to_current_time()
        log.info("rules.loaded", digest=rules.digest, contact_types=len(rules.catalog.types),
                 learned_examples=len(rules.learned))
        settle_heap()
        holder = cls(rules, pool)
        previous = await _or_none(versions.in_force(pool))
        await holder._record(cause, previous, ())
        await holder.sync_canary()
        return holder

    def for_contact(self, held: dict | None) -> Rules:
        """The rules deciding a contact: the canary's when it was opened in the canary's share
        of the canary running now (`held`: the conversation's `canary`), else those in force."""
        running = self.canary
        if held and held.get("arm") == "canary" and running and running.id == held.get("id"):
            return running.rules
        return self.current

    async def sync_canary(self) -> RunningCanary | None:
        """Follow the canary recorded in PostgreSQL: load the one running, drop one that ended.
        PostgreSQL away: keep what is held."""
        async with self._canary_lock:
            try:
                recorded = await canary.running(self._pool)
            except RECORD_FAILED as exc:
                log.warning("rules.canary_unknown", error=str(exc))
                return self.canary
            if recorded is None or recorded.id in self._canary_refused:
                if self.canary is not None:
                    log.info("rules.canary_dropped", canary=self.canary.id)
                self.canary = None
            elif self.canary is None or self.canary.id != recorded.id:
                self.canary = await self._load_canary(recorded)
            return self.canary

    async def _load_canary(self, recorded: canary.Canary) -> RunningCanary | None:
        try:
            files = await canary.files_of(self._pool, recorded)
            learned = await _learned(self._pool)
            rules = await asyncio.get_running_loop().run_in_executor(None, functools.partial(
                canary.load_canary_rules, self.current.directory, files, learned))
            canary.check_queues(rules, self.current)
        except (ConfigError, BadCanary, OSError, *RECORD_FAILED) as exc:
            self._canary_refused.add(recorded.id)
            log.error("rules.canary_not_loaded", canary=recorded.id, error=str(exc),
                      note="this instance decides every contact with the rules in force")
            return None
        log.info("rules.canary_loaded", canary=recorded.id, digest=rules.digest,
                 share=recorded.share)
        return RunningCanary(recorded, rules)

    async def reload(self, cause: LoadCause = LoadCause("signal", "SIGHUP")) -> ReloadResult:
        """Load and validate everything off the event loop, then swap in one assignment;
        the load is recorded either way."""
        async with self._lock:
            loop = asyncio.get_running_loop()
            learned = await _learned(self._pool)
            previous = self._version
            try:
                rules = await loop.run_in_executor(
                    None, functools.partial(load_rules, self.current.directory,
                                            learned=learned))
            except ConfigError as exc:
                metrics.RULES_RELOAD_OK.set(0)
                problems = tuple(str(i) for i in exc.issues)
                log.error("rules.reload_failed", cause=cause.kind, actor=cause.actor,
                          errors=list(problems))
                load = await self._record(cause, previous, problems, failed=True)
                return ReloadResult(False, self.current.digest, problems, load)
            self.current = rules
            settle_heap()
            metrics.RULES_RELOAD_OK.set(1)
            metrics.RULES_RELOAD_TIME.set_to_current_time()
            log.info("rules.reloaded", digest=rules.digest, cause=cause.kind, actor=cause.actor)
            for listener in self.on_reloaded:
                listener()
            load = await self._record(cause, previous, ())
            return ReloadResult(True, rules.digest, (), load)

    async def _record(self, cause: LoadCause, previous: Version | None,
                      problems: tuple[str, ...], failed: bool = False) -> Load | None:
        """The audit trail; PostgreSQL being down must not undo a load already made."""
        rules = self.current
        try:
            load = await versions.record_load(
                self._pool, cause, digest=None if failed else rules.digest,
                files=None if failed else rules.files, previous=previous, errors=problems)
        except RECORD_FAILED as exc:
            log.warning("rules.load_not_recorded", error=str(exc), digest=rules.digest)
            return None
        if not failed:
            self._version = Version(load.version_id, rules.digest, dict(rules.files))
        return load

    async def listen(self, database_url: str) -> None:
        """Reload whenever a NOTIFY asks (the CLI's reload and rollback); runs until cancelled,
        reconnecting after PostgreSQL goes away."""
        while True:
            try:
                conn = await asyncpg.connect(database_url)
            except RECORD_FAILED as exc:
                log.warning("rules.listen_failed", error=str(exc))
                await asyncio.sleep(LISTEN_RETRY_S)
                continue
            lost = asyncio.Event()
            try:
                conn.add_termination_listener(lambda _conn: lost.set())
                await conn.add_listener(versions.RELOAD_CHANNEL, self._notified)
                await conn.add_listener(canary.CANARY_CHANNEL, self._canary_notified)
                self._ask(self.sync_canary())  # what changed while nobody listened
                await lost.wait()
            except RECORD_FAILED as exc:
                log.warning("rules.listen_lost", error=str(exc))
            finally:
                if not conn.is_closed():
                    await conn.close()
            await asyncio.sleep(LISTEN_RETRY_S)

    def _notified(self, _conn, _pid: int, _channel: str, payload: str) -> None:
        self._ask(self.reload(LoadCause.from_payload(payload)))

    def _canary_notified(self, _conn, _pid: int, _channel: str, _payload: str) -> None:
        self._ask(self.sync_canary())

    def _ask(self, job) -> None:
        task = asyncio.ensure_future(job)
        self._asked.add(task)
        task.add_done_callback(self._asked.discard)


async def _or_none(query):
    try:
        return await query
    except RECORD_FAILED:
        return None


async def _learned(pool: asyncpg.Pool) -> list[tuple[str, str]]:
    """Examples from live contacts; without PostgreSQL the catalog alone still loads."""
    try:
        return [(row["text"], row["label"]) for row in await learned_examples(pool)]
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
        log.warning("rules.learned_examples_unavailable", error=str(exc))
        return []
