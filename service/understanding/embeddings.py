"""Optional pretrained sentence embeddings for the classifier (the `embeddings` extra).

A catalog turns them on with `classifier: {embeddings: wordllama}`. WordLlama's wheel carries
its weights (256 dimensions, 16 MB), so nothing is downloaded, at install or at run time.
Appended to the n-gram features, they teach the classifier synonyms its training examples never
pair: +1.5 to +2.5 points on the HINT3 bots under cross-validation, +0.8 on Banking77, for
36-103 us a message (load_tests/classifier_results.md).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

BACKENDS = {"wordllama": "wordllama"}  # name in a catalog -> the package it needs
INSTALL_HINT = "install the embeddings extra: pip install 'switchboard[embeddings]'"


class EmbeddingsUnavailable(Exception):
    """The backend a catalog asks for is not installed here."""


class SentenceEmbedder(Protocol):
    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text, float32, unit L2 norm (zero for a text with no known token)."""


class WordLlamaEmbedder:
    name = "wordllama"

    def __init__(self) -> None:
        try:
            import wordllama
        except ImportError as exc:
            raise EmbeddingsUnavailable(f"embeddings 'wordllama' need a package that is not "
                                        f"installed; {INSTALL_HINT}") from exc
        # The wheel ships its tokenizer under "tokenizers/", where WordLlama's own lookup of the
        # package folder does not look; naming the package folder as the cache finds both files.
        self._model = wordllama.WordLlama.load(cache_dir=Path(wordllama.__file__).parent,
                                               disable_download=True)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = np.asarray(self._model.embed(list(texts), norm=False), np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def installed(name: str) -> bool:
    return importlib.util.find_spec(BACKENDS[name]) is not None


@functools.cache
def embedder(name: str) -> SentenceEmbedder:
    """The named backend, loaded once per process (a fifth of a second)."""
    if name not in BACKENDS:
        raise EmbeddingsUnavailable(f"unknown embeddings '{name}' (known: {', '.join(BACKENDS)})")
    return WordLlamaEmbedder()
