"""How long the event loop stalls while the encoder stage decides a message, run on the loop
(`Classifier.predict`) and beside it (`Classifier.predict_off_loop`, what the service does).

    OMP_NUM_THREADS=1 .venv/bin/python load_tests/encoder_loop_lag.py [RULES] [--messages 200]

Loads the rules (default: the bank deployment), takes held-out messages whose n-gram
confidence falls in the encoder band (the messages the stage decides: `--held-out`, CSV files
with a `text` column), and classifies them one after another in
one task while a second task stands in for the process's other requests: a 1 ms timer whose
lateness is the time any other request on that loop would have waited. Prints the timer's
lateness (p50, p99, max) and the time per message, for both ways.

Then `--at-once C` customers text at the same time (C tasks, each classifying its share one
after another): each message's time from arrival to answer (p50, p99) and the messages
answered a second, with a pass of the encoder for each message (as before batching) and with
the messages that wait together sharing a pass (`predict_off_loop`, what the service does).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.rules.loader import load_rules  # noqa: E402
from service.understanding.cascade import encoder_thread  # noqa: E402

TICK_S = 0.001


async def lateness_while(classify, texts: list[str]) -> tuple[list[float], float]:
    """The 1 ms timer's lateness (ms) while `classify` runs over `texts`; seconds a text."""
    late: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            due = time.perf_counter() + TICK_S
            await asyncio.sleep(TICK_S)
            late.append(max(0.0, time.perf_counter() - due) * 1000)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    for text in texts:
        await classify(text)
    spent = (time.perf_counter() - started) / len(texts)
    done.set()
    await ticking
    return late, spent


async def answer_times(classify, texts: list[str], at_once: int) -> tuple[list[float], float]:
    """Each message's time to answer (ms) with `at_once` customers texting; messages a second."""
    times: list[float] = []

    async def customer(mine: list[str]) -> None:
        for text in mine:
            started = time.perf_counter()
            await classify(text)
            times.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(customer(texts[i::at_once]) for i in range(at_once)))
    return times, len(texts) / (time.perf_counter() - started)


def in_band_texts(classifier, paths: list[Path], limit: int) -> list[str]:
    """Held-out messages the encoder stage decides."""
    texts = []
    for path in paths:
        with open(path, newline="", encoding="utf-8") as rows:
            texts += [row["text"] for row in csv.DictReader(rows)]
    return [t for t in texts if classifier.decided_by_encoder(t)][:limit]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rules", nargs="?", type=Path, default=ROOT / "routing_rules" / "bank")
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--at-once", type=int, default=16)
    parser.add_argument("--held-out", type=Path, nargs="+", default=[
        ROOT / "load_tests" / "data" / "banking77_oos" / "b77oos_test.csv",
        ROOT / "routing_rules" / "data" / "clinc150_out_of_scope_heldout.csv",
        ROOT / "routing_rules" / "data" / "bitext_heldout.csv"])
    args = parser.parse_args()
    classifier = load_rules(args.rules).classifier
    texts = in_band_texts(classifier, args.held_out, args.messages)
    print(f"{len(texts)} held-out messages in the encoder band")
    classifier.predict(texts[0])  # the encoder's weights loaded before timing

    async def on_loop(text: str) -> None:
        classifier.predict(text)
        await asyncio.sleep(0)  # the next message is the next request: the loop gets a turn

    ways = {"on the loop (predict)": on_loop,
            "beside it (predict_off_loop)": classifier.predict_off_loop}
    print(f"{'encoder stage':<30}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'ms a message':>14}")
    for name, classify in ways.items():
        late, spent = await lateness_while(classify, texts)
        cuts = statistics.quantiles(late, n=100, method="inclusive")
        print(f"{name:<30}{cuts[49]:>8.2f}{cuts[98]:>8.2f}{max(late):>8.2f}{spent * 1000:>14.2f}")

    async def pass_each(text: str) -> None:
        await asyncio.get_running_loop().run_in_executor(encoder_thread(), classifier.predict,
                                                         text)

    ways = {"a pass a message": pass_each, "waiting ones share (now)": classifier.predict_off_loop}
    print(f"\n{args.at_once} customers at once{'answer p50 ms':>18}{'p99 ms':>8}{'messages/s':>12}")
    for name, classify in ways.items():
        times, rate = await answer_times(classify, texts, args.at_once)
        cuts = statistics.quantiles(times, n=100, method="inclusive")
        print(f"{name:<30}{cuts[49]:>12.2f}{cuts[98]:>8.2f}{rate:>12.1f}")


if __name__ == "__main__":
    asyncio.run(main())
