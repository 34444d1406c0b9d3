"""The serving process: its event loop and what the garbage collector is spared."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest

from service.infra import runtime
from service.infra.runtime import GC_THRESHOLDS, new_event_loop, settle_heap, tune_gc

ROOT = Path(__file__).resolve().parent.parent


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


ONE_THREAD_CHECK = """
import json, threadpoolctl
from service.infra.runtime import one_native_thread
import numpy  # noqa: F401  (loads OpenBLAS)
threadpoolctl.threadpool_limits(2)  # as on a machine with two cores, whatever this one has
one_native_thread()
print(json.dumps([i["num_threads"] for i in threadpoolctl.threadpool_info()
                  if i["user_api"] == "blas"]))
"""


def _blas_threads(env: dict[str, str]) -> list[int]:
    done = subprocess.run([sys.executable, "-c", ONE_THREAD_CHECK], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_serving_process_runs_numeric_code_on_one_thread():
    env = {k: v for k, v in os.environ.items() if k not in runtime.THREAD_VARIABLES}
    assert _blas_threads(env) == [1]


def test_an_explicit_thread_count_is_left_as_set():
    env = {k: v for k, v in os.environ.items() if k not in runtime.THREAD_VARIABLES}
    assert _blas_threads({**env, "OPENBLAS_NUM_THREADS": "3"}) == [2]  # the 2 set above
