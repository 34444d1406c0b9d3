"""The out-of-scope background corpus every catalog trains against unless it opts out.

Shipped with the package (service/understanding/data/, credits and licences in its README):
1,720 CLINC150 requests of domains no retailer or bank handles (small talk, travel, kitchen,
utilities...), and short chit-chat, fragments and bare numbers written for Switchboard. They
train the classifier's out-of-scope class, so "hi", "what's the weather" or "12345" get a low
confidence and a clarifying question rather than a guessed contact type.
"""

from __future__ import annotations

import csv
import functools
import hashlib
from pathlib import Path

import numpy as np

from service.understanding.encodings_file import read_encodings, text_keys, write_encodings

DATA_DIR = Path(__file__).parent / "data"
FILES = ("clinc150_background.csv", "fragments.csv")
# The corpus's transformer encodings, float16, computed once (`python -m
# service.understanding.background`) so no rules load has to encode the corpus
ENCODINGS = DATA_DIR / "background_encodings.npz"


@functools.cache
def background_texts() -> tuple[str, ...]:
    """The corpus's texts, in file order."""
    texts: list[str] = []
    for name in FILES:
        with (DATA_DIR / name).open(newline="", encoding="utf-8") as handle:
            texts += [row["text"] for row in csv.DictReader(handle) if row["text"].strip()]
    return tuple(texts)


def without_examples(texts: tuple[str, ...], examples: tuple[tuple[str, str], ...]
                     ) -> tuple[str, ...]:
    """The texts that are not, case and spacing aside, one of the catalog's own examples:
    a catalog that does handle "book a flight" keeps it its own."""
    own = {_normal(text) for text, _ in examples}
    return tuple(t for t in texts if _normal(t) not in own)


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def corpus_digest(texts: tuple[str, ...]) -> str:
    return hashlib.sha256(text_keys(texts).tobytes()).hexdigest()


@functools.cache
def shipped_encodings(weights_sha256: str) -> dict[bytes, np.ndarray]:
    """Text key -> float32 vector of the shipped encodings, when they were made by these
    weights from this corpus (else none: the texts are encoded as any others)."""
    return read_encodings(ENCODINGS, weights_sha256,
                          corpus_sha256=corpus_digest(background_texts()))


def write_shipped_encodings() -> Path:
    """Encode the corpus with the installed encoder and write ENCODINGS (a maintainer's step
    after the corpus or the pinned weights change; a test checks the file is current)."""
    from service.understanding.encoder import encoder

    model, texts = encoder(), background_texts()
    return write_encodings(ENCODINGS, text_keys(texts), model.embed(texts),
                           model.weights_sha256, corpus_sha256=corpus_digest(texts))


if __name__ == "__main__":
    print(f"wrote {write_shipped_encodings()}")
