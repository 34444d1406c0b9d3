"""Where one message's ~12 ms in the encoder stage go: arithmetic, memory, or BLAS's set-up.

    OMP_NUM_THREADS=1 .venv/bin/python load_tests/encoder_cost.py

Prints (1) `SentenceEncoder.embed` of one text by token count, (2) the model's own 24 weight
matrix products, in the order a forward pass runs them (so each matrix comes from memory, as
in the service), for a few token counts, and (3) what reading the 42 MB of weights once costs
at this machine's memory bandwidth: the floor for any forward pass in float32.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np

from service.understanding.encoder import encoder

TEXTS = ("hi", "card not arrived", "why was my transfer to my friend declined",
         "I ordered a new card two weeks ago and it still has not arrived, what can I do?")


def median_ms(run: Callable[[], object], repeats: int = 30) -> float:
    """The median wall time of `run` in milliseconds, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    model = encoder()
    print("embed one text:")
    for text in TEXTS:
        tokens = len(model._tokenizer.encode(text).ids)
        print(f"  {tokens:3d} tokens  {median_ms(lambda: model.embed([text])):6.2f} ms")
    matrices = [m for layer in model._layers
                for m in (layer.qkv, layer.attention_out, layer.up, layer.down)]
    weight_bytes = sum(m.nbytes for m in matrices)
    megabytes = weight_bytes / 1e6
    print(f"the {len(matrices)} weight matrices ({megabytes:.0f} MB), one pass:")
    rng = np.random.default_rng(0)
    for tokens in (1, 3, 8, 16, 32):
        rows = {m.shape[0]: rng.random((tokens, m.shape[0]), dtype=np.float32)
                for m in matrices}
        products = median_ms(lambda: [rows[m.shape[0]] @ m for m in matrices])
        print(f"  {tokens:3d} tokens  {products:6.2f} ms")
    flat = np.ones(weight_bytes // 4, np.float32)
    read = median_ms(flat.sum)
    print(f"reading {megabytes:.0f} MB once: {read:.2f} ms ({megabytes / read:.1f} GB/s)")


if __name__ == "__main__":
    main()
