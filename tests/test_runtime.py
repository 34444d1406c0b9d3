"""The serving process: its event loop and what the garbage collector is spared."""

from __future__ import annotations

import gc
import weakref

import pytest

from service.infra import runtime
from service.infra.runtime import GC_THRESHOLDS, new_event_loop, settle_heap, tune_gc


@pytest.mark.parametrize("kind, expected", [("auto", "uvloop"), ("uvloop", "uvloop"),
                                            ("asyncio", "asyncio")])
def test_the_serving_event_loop_is_the_one_asked_for(kind, expected):
    loop = new_event_loop(kind)
    try:
        assert type(loop).__module__.split(".")[0] == expected
    finally:
        loop.close()


def test_a_serving_process_freezes_its_heap_and_frees_a_replaced_one():
    class Rules:
        pass

    old = Rules()
    old.cycle = old  # only a collection frees a cycle
    replaced = weakref.ref(old)
    thresholds = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        settle_heap()
        assert gc.get_freeze_count() > 0
        del old
        settle_heap()  # the reload case: what the old rules held must not stay frozen
        assert replaced() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        runtime._serving = False
