"""Group what customers said into clusters of like messages. Pure apart from the encoder.

Texts are compared by the transformer encoder's sentence embeddings when its model is
installed, by the classifier's own n-gram TF-IDF otherwise (words and character n-grams, each
block at unit norm). Clustering is leader clustering, deterministic: distinct texts (case and
spacing aside) are taken most frequent first, then alphabetically; each joins the most similar
existing cluster when its cosine similarity to the cluster's centroid (the normalised sum of
its members so far) is at least the method's threshold, else it leads a new cluster. A
cluster's id is a digest of its leader, its first text, so it stays the same while the leader
does, whatever else arrives.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

# Cosine similarity to a cluster's centroid needed to join it. all-MiniLM-L6-v2 puts
# paraphrases of one request at 0.5-0.9 and different requests of one shop under 0.4 (the
# pairs in docs/classifier.md, "Unrecognised traffic"); n-gram TF-IDF vectors of paraphrases
# share fewer features, so its bar is lower and it finds fewer of them.
ENCODER_THRESHOLD = 0.5
TFIDF_THRESHOLD = 0.3
MAX_TEXTS = 2000  # distinct texts clustered per report: the most frequent

Vectoriser = Callable[[Sequence[str]], np.ndarray]  # texts -> unit-norm rows


@dataclass(frozen=True)
class Method:
    name: str  # "encoder" or "tfidf"
    threshold: float
    vectorise: Vectoriser


@dataclass(frozen=True)
class Cluster:
    id: str
    texts: tuple[str, ...]  # distinct texts, leader first, then most frequent first
    counts: tuple[int, ...]  # how often each text was said


def normal(text: str) -> str:
    """Case and spacing aside: the key under which texts count as the same."""
    return " ".join(text.lower().split())


def cluster_id(leader: str) -> str:
    """A short, stable id of the cluster a text leads."""
    return "u" + hashlib.sha256(normal(leader).encode()).hexdigest()[:8]


def cluster(texts: Sequence[str], method: Method) -> list[Cluster]:
    """Clusters of `texts` (one entry per time said), largest first."""
    counts = Counter(normal(t) for t in texts if t.strip())
    spellings = Counter(text.strip() for text in texts if text.strip())
    spelled: dict[str, str] = {}
    # each distinct text is shown as it was spelled most often (ties: the first in sort order)
    for spelling in sorted(spellings, key=lambda s: (-spellings[s], s)):
        spelled.setdefault(normal(spelling), spelling)
    distinct = sorted(counts, key=lambda t: (-counts[t], t))[:MAX_TEXTS]
    if not distinct:
        return []
    vectors = method.vectorise([spelled[t] for t in distinct])
    members = _leaders(vectors, method.threshold)
    clusters = [Cluster(cluster_id(distinct[leader]), tuple(spelled[distinct[i]] for i in group),
                        tuple(counts[distinct[i]] for i in group))
                for leader, group in members.items()]
    clusters.sort(key=lambda c: (-sum(c.counts), normal(c.texts[0])))
    return clusters


def _leaders(vectors: np.ndarray, threshold: float) -> dict[int, list[int]]:
    """Leader index -> member indices (leader first), in input order. A text is compared with
    each cluster's centroid (the normalised sum of its members so far)."""
    members: dict[int, list[int]] = {}
    leaders: list[int] = []
    sums = np.zeros((len(vectors), vectors.shape[1]), np.float32)
    for i in range(len(vectors)):
        if leaders:
            centroids = sums[:len(leaders)]
            norms = np.linalg.norm(centroids, axis=1)
            similarity = (centroids @ vectors[i]) / np.where(norms > 0, norms, 1.0)
            best = int(np.argmax(similarity))
            if similarity[best] >= threshold:
                members[leaders[best]].append(i)
                sums[best] += vectors[i]
                continue
        sums[len(leaders)] = vectors[i]
        leaders.append(i)
        members[i] = [i]
    return members


def tfidf_vectors(texts: Sequence[str]) -> np.ndarray:
    """The classifier's two n-gram blocks of each text, fitted on these texts, unit norm."""
    from service.understanding.classifier import _matrix, _vocabulary_and_idf, features

    counted = [features(t) for t in texts]
    vocabulary, idf = _vocabulary_and_idf(counted)
    if not vocabulary:
        return np.zeros((len(texts), 1), np.float32)
    dense = _matrix(counted, vocabulary, idf).toarray().astype(np.float32)
    norms = np.linalg.norm(dense, axis=1, keepdims=True)
    return dense / np.where(norms > 0, norms, 1.0)


TFIDF = Method("tfidf", TFIDF_THRESHOLD, tfidf_vectors)


class _MemoVectoriser:
    """The encoder's vectors, each text encoded once per process (the dashboard asks again)."""

    def __init__(self, embed: Vectoriser, limit: int = 20_000):
        self._embed, self._limit, self._known = embed, limit, {}
        self._lock = threading.Lock()  # reports cluster in worker threads, maybe two at once

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._known))
            if len(self._known) + len(missing) > self._limit:
                self._known.clear()
                missing = list(dict.fromkeys(texts))
            if missing:
                self._known.update(zip(missing, self._embed(missing)))
            return np.stack([self._known[t] for t in texts])


_encoder_method: Method | None = None


def best_method() -> Method:
    """The encoder's embeddings when its model is installed and intact, else n-gram TF-IDF."""
    global _encoder_method
    from service.understanding import encoder

    if _encoder_method is None:
        if not encoder.installed():
            return TFIDF
        try:
            model = encoder.encoder()
        except encoder.EncoderUnavailable:
            return TFIDF
        _encoder_method = Method("encoder", ENCODER_THRESHOLD, _MemoVectoriser(model.embed))
    return _encoder_method
