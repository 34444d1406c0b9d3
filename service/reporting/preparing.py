"""Reports by a customer attribute answered later (`Prefer: respond-async`, RFC 7240).

The first report by an attribute that is neither warmed nor was asked before has to compute
its days' segmented roll-ups (rollups.py), which takes long on a big log. A client that prefers
an asynchronous answer gets 202 with the progress instead (days whose roll-ups are ready, of
the days to do) while this instance computes them in the background, a few days per
statement, under the warming lock; it asks again until the answer is the report. Progress is
read from the stored roll-ups, so every instance reports the same, whichever computes them.

    preparations = Preparations(pool)
    progress = await preparations.progress(rules, ("groupings", "segments"), window, "tier")
    if progress is not None: ...  # 202 with progress.as_dict(); else answer the report now
"""

from __future__ import annotations

import asyncio
import time
from datetime import date

import asyncpg
import structlog

from service.reporting import rollups
from service.reporting.reports import ReportRules, Window
from service.reporting.rollups import Progress

log = structlog.get_logger(__name__)

NEARLY_READY_DAYS = 2  # this few days left to compute: the report is answered at once
RETRY_LOCK_S = 1.0  # another session holds the warming lock: try again this often


class _Preparation:
    """One attribute's roll-ups computed in the background, for every report that asks."""

    def __init__(self, pool: asyncpg.Pool, rules: ReportRules, attribute: str):
        self._pool, self._rules, self.attribute = pool, rules, attribute
        self.names: set[str] = set()
        self.days: set[date] = set()
        self.refused = False  # the attribute takes too many values to be rolled up
        self.task: asyncio.Task | None = None

    def want(self, names: tuple[str, ...], days: list[date]) -> None:
        """Add these roll-ups and days (a running pass picks them up when it ends)."""
        idle = self.task is None or self.task.done()
        if idle:
            self.names, self.days = set(), set()
        self.names.update(names)
        self.days.update(days)
        if idle:
            self.task = asyncio.create_task(self._run(), name=f"reports.prepare:{self.attribute}")

    async def _run(self) -> None:
        started = time.perf_counter()
        computed = 0
        while True:
            names, days = tuple(sorted(self.names)), sorted(self.days)
            try:
                done = await rollups.prepare(self._pool, self._rules, names, days,
                                             self.attribute)
            except rollups.TooManyValues:
                self.refused = True
                log.info("reports.prepare_skipped", attribute=self.attribute,
                         reason=f"more than {rollups.MAX_ROLLED_UP_VALUES} values")
                return
            except rollups.WARM_FAILED as exc:  # the next request starts again
                log.warning("reports.prepare_failed", attribute=self.attribute,
                            error=str(exc) or type(exc).__name__)
                return
            if done is None:
                await asyncio.sleep(RETRY_LOCK_S)
                continue
            computed += done
            if (names, days) == (tuple(sorted(self.names)), sorted(self.days)):
                log.info("reports.prepared", attribute=self.attribute, computed=computed,
                         seconds=round(time.perf_counter() - started, 2))
                return


class Preparations:
    """This instance's background preparations, one per attribute and set of rules."""

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool
        self._running: dict[tuple[str, str], _Preparation] = {}

    async def progress(self, rules: ReportRules, names: tuple[str, ...], window: Window,
                       attribute: str) -> Progress | None:
        """None when the report can be answered now (its roll-ups ready or nearly, or the
        attribute not rolled up); else its progress, its roll-ups being computed."""
        key = (attribute, rollups.fingerprint(rollups.SEGMENTS, rules, attribute))
        running = self._running.get(key)
        if running is not None and running.refused:  # its reports read the facts
            del self._running[key]
            return None
        progress = await rollups.progress(self._pool, rules, names, window, attribute)
        if progress.days_to_do - progress.days_done <= NEARLY_READY_DAYS:
            return None
        if running is None:
            running = self._running[key] = _Preparation(self._pool, rules, attribute)
        running.want(names, rollups.kept_days(window))
        return progress

    async def close(self) -> None:
        """Stop the preparations under way (what they computed is kept)."""
        tasks = [p.task for p in self._running.values() if p.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._running.clear()
