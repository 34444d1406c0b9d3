"""Encodings kept in a file and shipped: text key -> vector, pinned to the encoder's weights.

Two kinds ship: the background corpus's (with the package, background.py) and a rules
directory's own (`encodings.npz` next to its catalog, written by `switchboard rules encode`),
so that a first load on a new machine reads the training set's encodings instead of running
the encoder over every text. Files hold plain arrays (read with allow_pickle=False), float16:
the vectors are unit-norm, so half precision costs under 2e-3 per dimension. A text the file
does not hold, or a file made by other weights, is simply encoded as any other.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

RULES_ENCODINGS = "encodings.npz"  # in a rules directory


def text_keys(texts: Iterable[str]) -> np.ndarray:
    """The SHA-256 of each text: how encodings of texts are looked up."""
    return np.array([hashlib.sha256(t.encode()).digest() for t in texts], dtype="S32")


def read_encodings(path: Path, weights_sha256: str,
                   **expected: str) -> dict[bytes, np.ndarray]:
    """Text key -> float32 vector from `path`, when it was made by these weights (and its
    other stamps equal `expected`); else none."""
    try:
        with np.load(path, allow_pickle=False) as data:
            stamps = {name: str(data[name]) for name in ("weights_sha256", *expected)}
            keys, vectors = data["keys"], data["vectors"]
    except (OSError, ValueError, KeyError):
        return {}
    if stamps != {"weights_sha256": weights_sha256, **expected} or \
            vectors.ndim != 2 or len(vectors) != len(keys):
        return {}
    return dict(zip(keys.tolist(), vectors.astype(np.float32)))


def write_encodings(path: Path, keys: np.ndarray, vectors: np.ndarray, weights_sha256: str,
                    **stamps: str) -> Path:
    """Write the file whole, then rename it into place (a running load may read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        np.savez_compressed(handle, keys=keys, vectors=vectors.astype(np.float16),
                            weights_sha256=np.array(weights_sha256),
                            **{name: np.array(value) for name, value in stamps.items()})
    os.chmod(handle.name, 0o644)  # shipped with the rules: readable as any rule file
    os.replace(handle.name, path)
    return path


def stored_keys(vectors: Mapping[bytes, np.ndarray], texts: Iterable[str]) -> int:
    """How many of `texts` have a vector in `vectors`."""
    return sum(key in vectors for key in text_keys(texts).tolist())
