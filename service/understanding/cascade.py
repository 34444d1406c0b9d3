"""The encoder stage of the classifier's cascade: a second opinion for uncertain messages.

The cheap n-gram classifier decides when its confidence is outside the band [low, high); a
message inside it is encoded by the transformer encoder (encoder.py) and decided by a
logistic regression on the encodings, trained on the same rows and the same out-of-scope
class (so it also learns the background corpus). Logistic regression's probabilities are
calibrated as the cheap model's temperature softmax is, so one threshold serves both. The band
is chosen by cross-validation on the training rows (classify_eval.py), as the threshold is.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import weakref
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Collection, Protocol, Sequence

import numpy as np

ENCODER_C = 10.0  # 5-fold CV on HINT3: C = 1 underfits the 384 unit-norm dimensions
DEFAULT_BAND = (0.05, 0.90)  # see docs/classifier.md, "Transformer encoder"
BATCH_MAX_TEXTS = 32  # one run's texts: enough to share the weights' cost, short enough to wait for
# Out-of-scope rows are split into groups of like encodings, about this many rows each, at most
# MAX_OUT_OF_SCOPE_GROUPS (docs/classifier.md, "Out-of-scope groups")
OUT_OF_SCOPE_GROUP_ROWS = 60
MAX_OUT_OF_SCOPE_GROUPS = 64
Band = tuple[float, float]


class Encoder(Protocol):
    weights_sha256: str

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One unit-norm float32 row per text."""


@dataclass(frozen=True)
class EncoderStage:
    """Logistic regression on encodings; its probabilities have the cheap model's columns
    (types, then out of scope if trained). Its own classes may be more: the out-of-scope rows'
    groups, which add up to the out-of-scope column."""

    encoder: Encoder
    weights: np.ndarray  # (384, classes)
    bias: np.ndarray
    band: Band
    columns: int  # the probabilities' columns: the last one adds up every class from it on

    def in_band(self, confidence: float) -> bool:
        """Whether the cheap model is unsure enough to ask the encoder."""
        low, high = self.band
        return low <= confidence < high or (high >= 1.0 and confidence >= low)

    def probabilities(self, text: str) -> np.ndarray:
        """One probability per column for one message (runs the encoder)."""
        return self.probabilities_of(self.encoder.embed((text,))[0])

    async def probabilities_off_loop(self, text: str) -> np.ndarray:
        """probabilities(), encoded in the encoder's thread together with the other messages
        waiting for it."""
        return self.probabilities_of(await _batcher(self.encoder).embed(self.encoder, text))

    def probabilities_of(self, vector: np.ndarray) -> np.ndarray:
        scores = vector @ self.weights + self.bias
        scores = np.exp(scores - scores.max())
        return collapsed(scores / scores.sum(), self.columns)


def collapsed(probabilities: np.ndarray, columns: int) -> np.ndarray:
    """The probabilities in `columns` columns: the last adds up every class from it on (the
    groups of out-of-scope rows, out_of_scope_groups)."""
    if len(probabilities) == columns:
        return probabilities
    last = columns - 1
    return np.append(probabilities[:last], probabilities[last:].sum())


class _Batcher:
    """The texts waiting for one encoder on one event loop. A run in the encoder's thread
    takes all of them (up to BATCH_MAX_TEXTS): a pass costs about the same for one short text
    as for a dozen (the weights' cost, docs/classifier.md), so messages that arrive together
    share it instead of queueing one pass each."""

    def __init__(self) -> None:
        self._waiting: list[tuple[str, asyncio.Future[np.ndarray]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def embed(self, encoder: Encoder, text: str) -> np.ndarray:
        """The text's encoding, from the next run of the encoder's thread."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._waiting.append((text, future))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain(encoder))
        return await future

    async def _drain(self, encoder: Encoder) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch = self._waiting[:BATCH_MAX_TEXTS]
            del self._waiting[:BATCH_MAX_TEXTS]
            try:
                vectors = await loop.run_in_executor(
                    encoder_thread(), encoder.embed, [text for text, _ in batch])
            except Exception as error:  # each waiting message gets it, as a lone one would
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), vector in zip(batch, vectors):
                if not future.done():  # its request may have been cancelled meanwhile
                    future.set_result(vector)


_batchers: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, weakref.WeakKeyDictionary[Encoder, _Batcher]] = \
    weakref.WeakKeyDictionary()


def _batcher(encoder: Encoder) -> _Batcher:
    """The running loop's batcher for this encoder (a loop's futures cannot serve another)."""
    per_encoder = _batchers.setdefault(asyncio.get_running_loop(), weakref.WeakKeyDictionary())
    batcher = per_encoder.get(encoder)
    if batcher is None:
        batcher = per_encoder[encoder] = _Batcher()
    return batcher


@functools.lru_cache(maxsize=1)
def encoder_thread() -> ThreadPoolExecutor:
    """One thread per process for the encoder stage: a process serves from one core, and
    messages wait their turn here rather than oversubscribe it."""
    return ThreadPoolExecutor(1, thread_name_prefix="encoder-stage-live")


def fit_stage(encodings: np.ndarray, targets: Sequence[str], classes: Sequence[str],
              encoder: Encoder, band: Band, columns: int | None = None) -> EncoderStage:
    """Multinomial logistic regression of `targets` on `encodings`, a weight column per class
    in `classes`; its probabilities have `columns` columns (all classes by default; fewer:
    the last adds up the rest, out of scope's groups)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=ENCODER_C, max_iter=2000).fit(encodings, list(targets))
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:  # two classes: one logit for the second; softmax([0, z]) = sigmoid
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros_like(intercept), intercept])
    position = {str(label): i for i, label in enumerate(model.classes_)}
    picked = [position[label] for label in classes]
    return EncoderStage(encoder, np.ascontiguousarray(coef[picked].T, np.float32),
                        intercept[picked].astype(np.float32), band, columns or len(classes))


def out_of_scope_groups(encodings: np.ndarray, targets: list[str], out_of_scope: str
                        ) -> tuple[list[str], list[str]]:
    """(targets with each out-of-scope row relabelled by its group, the groups' labels).

    Out of scope is greetings, other businesses' requests and the neighbouring requests a
    catalog does not handle at once: as one class a linear model must draw one region around
    all of them, and takes in-scope messages near any of them along. Split by k-means on
    their encodings (about OUT_OF_SCOPE_GROUP_ROWS rows a group), each group is a class and
    their probabilities add up to out of scope's. Deterministic: the same rows, the same
    groups."""
    from sklearn.cluster import KMeans

    rows = [i for i, target in enumerate(targets) if target == out_of_scope]
    count = min(MAX_OUT_OF_SCOPE_GROUPS, len(rows) // OUT_OF_SCOPE_GROUP_ROWS)
    if count < 2:
        return targets, [out_of_scope]
    found = KMeans(count, n_init=3, random_state=0).fit_predict(encodings[rows])
    labels = [f"{out_of_scope} {group}" for group in range(count)]
    regrouped = list(targets)
    for row, group in zip(rows, found.tolist()):
        regrouped[row] = labels[group]
    used = set(regrouped)
    return regrouped, [label for label in labels if label in used]


Encodings = Callable[[Sequence[str]], np.ndarray]  # training texts -> their encodings


@dataclass(frozen=True)
class CascadeSpec:
    """How `train` builds the encoder stage: the encoder, its band, and where the training
    set's encodings come from (the on-disk cache in the service, a memo in classify-eval)."""

    encoder: Encoder
    band: Band = DEFAULT_BAND
    encodings: Encodings | None = None  # None: encoder.embed
    per_type: int | None = None  # the stage trains on at most this many rows a type...
    keep: frozenset[str] = frozenset()  # ...and on these texts whatever the cap

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return (self.encodings or self.encoder.embed)(texts)


def stage_sample(texts: Sequence[str], targets: Sequence[str], per_type: int | None,
                 unlimited: Collection[str] = (), keep: Collection[str] = ()) -> list[int]:
    """The rows the encoder stage trains on: all of them without a cap; else every row of a
    class with at most `per_type` rows or in `unlimited`, and `per_type` rows of each larger
    class, those whose texts have the smallest SHA-256 (a sample that does not depend on the
    rows' order, and that rows added to a type change by at most as many rows), plus every
    row whose text is in `keep` (hand-picked examples)."""
    if per_type is None:
        return list(range(len(texts)))
    by_class: dict[str, list[int]] = defaultdict(list)
    kept: list[int] = []
    for i, target in enumerate(targets):
        if texts[i] in keep and target not in unlimited:
            kept.append(i)
        else:
            by_class[target].append(i)
    for target, rows in by_class.items():
        if target not in unlimited and len(rows) > per_type:
            rows = sorted(rows, key=lambda i: hashlib.sha256(texts[i].encode()).digest())
            rows = rows[:per_type]
        kept += rows
    return sorted(kept)


class MemoEncoder:
    """An encoder that encodes each distinct text once: cross-validation trains dozens of
    models on overlapping rows, and scores each held-out row under several of them."""

    def __init__(self, encoder: Encoder):
        self._encoder = encoder
        self.weights_sha256 = encoder.weights_sha256
        self._vectors: dict[str, np.ndarray] = {}

    def remember(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Encodings already at hand (a cached training set)."""
        self._vectors.update(zip(texts, vectors))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if missing:
            self._vectors.update(zip(missing, self._encoder.embed(missing)))
        return np.stack([self._vectors[t] for t in texts]) if texts else \
            np.zeros((0, 384), np.float32)
