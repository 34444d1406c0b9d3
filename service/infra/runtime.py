"""How the `switchboard serve` process runs: its event loop, its garbage collector and its
numeric libraries' threads.

uvloop (libuv, in C) does the socket and callback work of every webhook turn with less CPU
than asyncio's selector loop. CPython's default collector thresholds (a young-generation pass
every 700 allocations) and full passes over the classifier's vocabulary cost a quarter of a
turn's CPU and most of the latency tail under load; load_tests/README.md has the figures.
"""

from __future__ import annotations

import asyncio
import gc
import os

# A turn allocates a few thousand objects that die young; collecting every 20,000 allocations
# instead of 700 keeps the passes rare, and cycles are still freed within a few turns.
GC_THRESHOLDS = (20_000, 20, 20)


class EventLoopUnavailable(RuntimeError):
    pass


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """kind: "auto" (uvloop if installed), "uvloop" or "asyncio"."""
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise EventLoopUnavailable(
                    "SWITCHBOARD_EVENT_LOOP=uvloop but uvloop is not installed "
                    "(pip install uvloop, or use auto)") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


_serving = False  # set by tune_gc(): library users and tests keep CPython's defaults


def tune_gc() -> None:
    global _serving
    _serving = True
    gc.set_threshold(*GC_THRESHOLDS)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def one_native_thread() -> None:
    """Numeric libraries (OpenBLAS under numpy) on one thread, unless THREAD_VARIABLES say
    otherwise. A serving process uses one core (`--workers N` for more); OpenBLAS starts a
    thread per core and its idle threads spin: with two workers on two cores they took more
    CPU than the turns themselves (load_tests/README.md)."""
    if any(name in os.environ for name in THREAD_VARIABLES):
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def settle_heap() -> None:
    """Hide the long-lived heap (rules, classifier vocabulary) from the garbage collector.

    A full collection walks every tracked object: with the classifier loaded that is ~60 ms
    during which no webhook is answered. Frozen objects are never walked. Called after rules
    load; the one full collection here frees the rules a reload replaced.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
