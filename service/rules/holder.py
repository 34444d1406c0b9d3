"""The rules in force, swapped all at once on reload; a failed reload keeps the old ones."""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path

import asyncpg
import structlog

from service.infra.runtime import settle_heap
from service.reporting import metrics
from service.rules.loader import RULE_FILES, Rules, load_rules
from service.rules.yamlfile import ConfigError
from service.understanding.learning import learned_examples

log = structlog.get_logger(__name__)


class RulesHolder:
    def __init__(self, rules: Rules, pool: asyncpg.Pool):
        self.current = rules
        self._pool = pool

    @classmethod
    async def load(cls, directory: Path, pool: asyncpg.Pool) -> "RulesHolder":
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
        return cls(rules, pool)

    async def reload(self) -> bool:
        """Load and validate everything off the event loop, then swap in one assignment."""
        loop = asyncio.get_running_loop()
        learned = await _learned(self._pool)
        try:
            rules = await loop.run_in_executor(
                None, functools.partial(load_rules, self.current.directory, learned=learned))
        except ConfigError as exc:
            metrics.RULES_RELOAD_OK.set(0)
            log.error("rules.reload_failed", errors=[str(i) for i in exc.issues])
            return False
        self.current = rules
        settle_heap()
        metrics.RULES_RELOAD_OK.set(1)
        metrics.RULES_RELOAD_TIME.set_to_current_time()
        log.info("rules.reloaded", digest=rules.digest)
        return True

    async def record_version(self) -> None:
        pool = self._pool
        rules = self.current
        files = {name: (rules.directory / name).read_text() for name in RULE_FILES
                 if (rules.directory / name).exists()}
        await pool.execute("INSERT INTO rule_versions (digest, files) VALUES ($1, $2::jsonb) "
                           "ON CONFLICT (digest) DO NOTHING", rules.digest, json.dumps(files))


async def _learned(pool: asyncpg.Pool) -> list[tuple[str, str]]:
    """Examples from live contacts; without PostgreSQL the catalog alone still loads."""
    try:
        return [(row["text"], row["label"]) for row in await learned_examples(pool)]
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
        log.warning("rules.learned_examples_unavailable", error=str(exc))
        return []
