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
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
FILES = ("clinc150_background.csv", "fragments.csv")


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
