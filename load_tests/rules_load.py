"""Cold and warm rules load, in fresh processes, with where the time goes.

    .venv/bin/python load_tests/rules_load.py routing_rules routing_rules/bank

For each rules directory: a new process loads the rules with an empty cache (HOME pointed at
a new temporary directory, so nothing of an earlier run is reused: "cold", a first start on a
new machine), then another new process loads them again with the cache the first one left
("warm", a restart or another instance on the same machine). Each child reports the time of
`load_rules` alone (imports excluded, shown apart), wall clock and the CPU time of the process
(user + system: what the machine's other work does not inflate, unlike the wall clock), and,
inside it, the time spent encoding texts with the transformer encoder, fitting the n-gram SVM
and fitting the encoder stage's logistic regression. Threads: as the environment says
(OMP_NUM_THREADS etc.), printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
started = time.perf_counter()
from pathlib import Path
import numpy  # noqa: F401
from service.rules import loader
from service.understanding import encoder, classifier
imported = time.perf_counter() - started
spent = {"encode_s": 0.0, "encoded_texts": 0, "svm_fit_s": 0.0, "stage_fit_s": 0.0}

def timed(key, function, count=None):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - t
            if count:
                spent[count] += len(args[1])
    return wrapper

encoder.SentenceEncoder.embed = timed("encode_s", encoder.SentenceEncoder.embed, "encoded_texts")
from sklearn.svm import LinearSVC
from sklearn.linear_model import LogisticRegression
LinearSVC.fit = timed("svm_fit_s", LinearSVC.fit)
LogisticRegression.fit = timed("stage_fit_s", LogisticRegression.fit)
import resource
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
t, c = time.perf_counter(), cpu()
rules = loader.load_rules(Path(sys.argv[1]))
load_s, cpu_s = time.perf_counter() - t, cpu() - c
print(json.dumps({"import_s": imported, "load_s": load_s, "cpu_s": cpu_s, **spent,
                  "training_rows": len(rules.catalog.training) + len(rules.catalog.background)
                  + len(rules.catalog.out_of_scope)}))
"""


def child(directory: str, home: Path) -> dict:
    env = {**os.environ, "HOME": str(home)}
    done = subprocess.run([sys.executable, "-c", CHILD, directory], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="+")
    parser.add_argument("--warm-runs", type=int, default=2)
    args = parser.parse_args()
    threads = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    print(f"threads: {threads}, load average {os.getloadavg()[0]:.1f}")
    head = ("rules", "run", "load s", "CPU s", "import s", "encode s", "texts encoded", "svm fit s",
            "stage fit s", "rows")
    print(" | ".join(head))
    for directory in args.directories:
        with tempfile.TemporaryDirectory(prefix="rules-load-") as home:
            runs = [("cold", child(directory, Path(home)))]
            runs += [(f"warm {n + 1}", child(directory, Path(home)))
                     for n in range(args.warm_runs)]
        for name, r in runs:
            print(f"{directory} | {name} | {r['load_s']:.2f} | {r['cpu_s']:.2f} | "
                  f"{r['import_s']:.2f} | "
                  f"{r['encode_s']:.2f} | {r['encoded_texts']} | {r['svm_fit_s']:.2f} | "
                  f"{r['stage_fit_s']:.2f} | {r['training_rows']}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
