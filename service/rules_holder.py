"""The rules in force, swapped all at once on reload; a failed reload keeps the old ones."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import structlog

from service import metrics
from service.rules import Rules, load_rules
from service.yamlfile import ConfigError

log = structlog.get_logger(__name__)


class RulesHolder:
    def __init__(self, rules: Rules):
        self.current = rules

    @classmethod
    async def load(cls, directory: Path) -> "RulesHolder":
        rules = await asyncio.get_running_loop().run_in_executor(None, load_rules, directory)
        metrics.RULES_RELOAD_OK.set(1)
        metrics.RULES_RELOAD_TIME.set_to_current_time()
        log.info("rules.loaded", digest=rules.digest, contact_types=len(rules.catalog.types))
        return cls(rules)

    async def reload(self) -> bool:
        """Load and validate everything off the event loop, then swap in one assignment."""
        loop = asyncio.get_running_loop()
        try:
            rules = await loop.run_in_executor(None, load_rules, self.current.directory)
        except ConfigError as exc:
            metrics.RULES_RELOAD_OK.set(0)
            log.error("rules.reload_failed", errors=[str(i) for i in exc.issues])
            return False
        self.current = rules
        metrics.RULES_RELOAD_OK.set(1)
        metrics.RULES_RELOAD_TIME.set_to_current_time()
        log.info("rules.reloaded", digest=rules.digest)
        return True

    async def record_version(self, pool: asyncpg.Pool) -> None:
        rules = self.current
        files = {name: (rules.directory / name).read_text() for name in ("catalog.yaml",
                                                                          "routes.yaml")}
        await pool.execute("INSERT INTO rule_versions (digest, files) VALUES ($1, $2::jsonb) "
                           "ON CONFLICT (digest) DO NOTHING", rules.digest, json.dumps(files))
