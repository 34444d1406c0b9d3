"""What an experiment's arm and a canary's share cost a turn: hashes of ids in process.

    .venv/bin/python load_tests/bench_arms.py [--n 200000]

Prints microseconds per call of `Experiment.arm_of` (customer id + experiment name, three
arms) and `Canary.arm_of` (contact id + canary), and the share of customers per arm as a
check of the hash's spread. No Redis or PostgreSQL: the point is that there is none.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections import Counter
from datetime import datetime, timezone

from service.rules.canary import Canary
from service.rules.experiments import Arm, Experiment


def per_call_us(call, ids: list[str]) -> float:
    started = time.perf_counter()
    for key in ids:
        call(key)
    return (time.perf_counter() - started) / len(ids) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    n = parser.parse_args().n
    ids = [str(uuid.uuid4()) for _ in range(n)]
    experiment = Experiment("wording", "track_order", (Arm("a"), Arm("b"), Arm("c", weight=2)),
                            "a")
    canary = Canary(1, 1, "digest", None, 0.1, (), 100, "running",
                    datetime.now(timezone.utc), "bench")
    arm_us = per_call_us(experiment.arm_of, ids)
    canary_us = per_call_us(canary.arm_of, ids)
    spread = Counter(experiment.arm_of(key).name for key in ids)
    share = sum(canary.arm_of(key) == "canary" for key in ids) / n
    print(f"experiment arm: {arm_us:.2f} us per call; spread a/b/c (weights 1/1/2): "
          + " / ".join(f"{spread[name] / n:.3f}" for name in "abc"))
    print(f"canary share:   {canary_us:.2f} us per call; canary share {share:.3f} (asked 0.1)")


if __name__ == "__main__":
    main()
