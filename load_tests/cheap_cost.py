"""What the n-gram model costs a message in each example deployment, on one core.

    OMP_NUM_THREADS=1 .venv/bin/python load_tests/cheap_cost.py
    # the code of another commit: git archive REV | tar -x -C DIR, then PYTHONPATH=DIR

Loads each deployment's rules (its model from the cache, or trained), then times
`cheap_prediction` over up to 1,500 held-out messages: the best and the median of five passes,
microseconds a message; and the share of those messages whose confidence falls in the encoder
stage's band. Results: classifier_results.md.
"""

from __future__ import annotations

import csv
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.rules.loader import load_rules  # noqa: E402

DEPLOYMENTS = (("routing_rules", "routing_rules/data/bitext_heldout.csv"),
               ("routing_rules/bank", "load_tests/data/banking77_oos/b77oos_test.csv"))


def main() -> None:
    for rules, held_out in DEPLOYMENTS:
        model = load_rules(ROOT / rules).classifier
        with (ROOT / held_out).open(newline="", encoding="utf-8") as handle:
            texts = [row["text"] for row in csv.DictReader(handle) if row["text"].strip()][:1500]
        for text in texts[:200]:  # warm the per-word column cache
            model.cheap_prediction(text)
        passes = []
        for _ in range(5):
            started = time.perf_counter()
            for text in texts:
                model.cheap_prediction(text)
            passes.append((time.perf_counter() - started) / len(texts) * 1e6)
        in_band = sum(model.decided_by_encoder(text) for text in texts) / len(texts)
        median = statistics.median(passes)
        print(f"{rules}: cheap_prediction {min(passes):.1f} us (median {median:.1f}), "
              f"{model._weights.shape[1]} columns, in the band {in_band:.1%}", flush=True)


if __name__ == "__main__":
    main()
