"""Contact type + confidence from a customer's words. Pure: no I/O.

A linear SVM (one-vs-rest) over two TF-IDF blocks: word unigrams and bigrams, and character
2-5-grams within word boundaries, each block with sublinear term frequency and its own L2
norm so that neither drowns the other; a catalog may add a third, a pretrained sentence
embedding (service/embeddings.py). Every digit reads as 0: the shape of a number (an
order number, an amount) tells something, its value does not.

Confidence is a softmax of the SVM margins at a fixed temperature. Fitted by cross-validation
on Banking77, HINT3 and Bitext the best temperature was 5.3-6.2 on every one of them, so
training skips that step (see docs/classifier.md).

Out of scope: the catalog may give texts that are none of its contact types (greetings,
chit-chat, other businesses' requests). They train one more class, which never becomes a
contact type; when it wins, the types share little probability, so the confidence is low. A
message with no letters at all (a bare order number) carries no reason for contact and gets
confidence 0.

The cascade (on by default, cascade.py): when the confidence falls in the catalog's band, a
transformer encoder's logistic regression (encoder.py) decides instead.

Training goes through scikit-learn; inference does not. The columns of a word (itself and
its character n-grams) are looked up once and kept, so a message costs a dict lookup per word
and bigram, a count of column ids and one small gather and dot product: tens of microseconds.
Its scores are the ones its row of the training matrix would give, to the bit.
"""

from __future__ import annotations

import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain, islice, repeat
from typing import Collection, Iterable, Sequence

import numpy as np

from service.understanding.cascade import (
    CascadeSpec,
    Encoder,
    EncoderStage,
    collapsed,
    fit_stage,
    out_of_scope_groups,
    stage_sample,
)
from service.understanding.embeddings import SentenceEmbedder

TOKEN = re.compile(r"[a-z0-9']+")
DIGIT = re.compile(r"\d")
LETTER = re.compile(r"[^\W\d_]")
CHAR_NGRAMS = (2, 3, 4, 5)
WORD_BLOCK, CHAR_BLOCK = 0, 1
TEMPERATURE = 5.5
DEFAULT_C = 1.0
OUT_OF_SCOPE = "~out of scope"  # a class name no contact type id can take (ids are snake_case)
AGENT_REQUEST = re.compile(
    r"\b(agent|human|representative|operator|real person|"
    r"(speak|talk|chat) (to|with) (a|an|some|somebody|someone|a real))\b"
)


def wants_agent(text: str) -> bool:
    """Explicit requests for a person, recognised at any step of any flow."""
    return AGENT_REQUEST.search(text.lower()) is not None


def tokens(text: str) -> list[str]:
    return TOKEN.findall(DIGIT.sub("0", text.lower()))


def char_ngrams(token: str) -> Iterable[str]:
    padded = f" {token} "
    return (padded[i:i + n] for n in CHAR_NGRAMS for i in range(len(padded) - n + 1))


def features(text: str) -> Counter[str]:
    """Counts of w: words, b: word bigrams and c: character n-grams of one message."""
    words = tokens(text)
    counts: Counter[str] = Counter()
    for token in words:
        counts["w:" + token] += 1
        for gram in char_ngrams(token):
            counts["c:" + gram] += 1
    for left, right in zip(words, words[1:]):
        counts[f"b:{left} {right}"] += 1
    return counts


def _block(feature: str) -> int:
    return CHAR_BLOCK if feature.startswith("c:") else WORD_BLOCK


class _TokenColumns(dict):
    """Token -> the columns of its word and character n-grams, in the order features() counts
    them. Words of the vocabulary are filled in up front; other tokens (typos, new words) are
    kept up to a bound, so odd traffic cannot grow it without limit."""

    def __init__(self, vocabulary: dict[str, int], limit: int = 20_000):
        super().__init__()
        self._vocabulary, self._limit, self._others = vocabulary, limit, {}
        for feature in vocabulary:
            if feature.startswith("w:"):
                self[feature[2:]] = self._columns(feature[2:])

    def __missing__(self, token: str) -> tuple[int, ...]:
        columns = self._others.get(token)
        if columns is None:
            if len(self._others) >= self._limit:
                self._others.clear()
            columns = self._others[token] = self._columns(token)
        return columns

    def _columns(self, token: str) -> tuple[int, ...]:
        grams = chain([f"w:{token}"], ("c:" + gram for gram in char_ngrams(token)))
        return tuple(i for i in map(self._vocabulary.get, grams) if i is not None)


@dataclass(frozen=True, slots=True)
class Prediction:
    contact_type: str
    confidence: float
    ranked: tuple[tuple[str, float], ...]  # best first, for "did you mean" menus
    out_of_scope: bool = False  # looks like none of the contact types (already in confidence)


class Classifier:
    def __init__(self, labels: Sequence[str], vocabulary: dict[str, int], idf: np.ndarray,
                 weights: np.ndarray, bias: np.ndarray, out_of_scope: bool = False,
                 embedder: SentenceEmbedder | None = None,
                 dense_weights: np.ndarray | None = None,
                 encoder_stage: EncoderStage | None = None):
        """`weights` has a column per label, then out of scope's if trained (one, or one per
        group of out-of-scope rows: cascade.out_of_scope_groups); `dense_weights` the same
        columns for the embedder's dimensions, if there is one; `encoder_stage` decides the
        messages whose confidence falls in its band."""
        self.labels = tuple(labels)  # contact types only
        self._vocabulary = vocabulary
        self._idf = idf
        self._blocks = _blocks(vocabulary)
        self._weights = weights  # (features, classes), rows gathered per message
        self._bias = bias
        self._has_out_of_scope = out_of_scope
        self._embedder = embedder
        self._dense_weights = dense_weights
        self.encoder_stage = encoder_stage
        self._token_columns = _TokenColumns(vocabulary)
        self._bigram_columns = {tuple(f[2:].split(" ")): i for f, i in vocabulary.items()
                                if f.startswith("b:")}

    def parts(self) -> dict[str, np.ndarray] | None:
        """The trained model as plain arrays (model_cache.py keeps them on disk); None with an
        embedder, whose dense block is not kept."""
        if self._embedder is not None:
            return None
        parts = {"labels": np.array(self.labels), "idf": self._idf, "weights": self._weights,
                 "bias": self._bias, "out_of_scope": np.array(self._has_out_of_scope),
                 "vocabulary": np.frombuffer("\n".join(self._vocabulary).encode(), np.uint8)}
        if self.encoder_stage is not None:
            stage = self.encoder_stage
            parts |= {"stage_weights": stage.weights, "stage_bias": stage.bias,
                      "stage_band": np.array(stage.band)}
        return parts

    @classmethod
    def from_parts(cls, parts: dict[str, np.ndarray], encoder: Encoder | None) -> "Classifier":
        """The model `parts()` gave; `encoder` for its stage, if it has one."""
        words = bytes(parts["vocabulary"]).decode().split("\n")
        stage = None
        if "stage_weights" in parts and encoder is not None:
            low, high = (float(v) for v in parts["stage_band"])
            columns = len(parts["labels"]) + bool(parts["out_of_scope"])
            stage = EncoderStage(encoder, parts["stage_weights"], parts["stage_bias"],
                                 (low, high), columns)
        return cls([str(label) for label in parts["labels"]],
                   {feature: i for i, feature in enumerate(words)}, parts["idf"],
                   parts["weights"], parts["bias"], out_of_scope=bool(parts["out_of_scope"]),
                   encoder_stage=stage)

    def predict(self, text: str, top: int = 3) -> Prediction:
        """The cheap model's prediction, or the encoder stage's when the cheap model's
        confidence falls in the stage's band."""
        prediction = self.cheap_prediction(text, top)
        if self._in_band(text, prediction.confidence):
            return self.stage_prediction(text, top) or prediction
        return prediction

    async def predict_off_loop(self, text: str, top: int = 3) -> Prediction:
        """predict(), with the encoder stage in a thread of its own: its milliseconds of
        matrix products (which release the GIL) no longer hold up the event loop's other
        requests, and messages that wait for it together are encoded in one pass."""
        prediction = self.cheap_prediction(text, top)
        if self.encoder_stage is not None and self._in_band(text, prediction.confidence):
            return self._prediction(
                await self.encoder_stage.probabilities_off_loop(text), top)
        return prediction

    def decided_by_encoder(self, text: str) -> bool:
        """Whether predict(text) is the encoder stage's (the cheap model is unsure)."""
        return self._in_band(text, self.cheap_prediction(text, 1).confidence)

    def stage_prediction(self, text: str, top: int = 3) -> Prediction | None:
        """The encoder stage's prediction whatever the band; None without a stage, or for a
        message with no letters (no reason for contact at all)."""
        if self.encoder_stage is None or not LETTER.search(text):
            return None
        return self._prediction(self.encoder_stage.probabilities(text), top)

    def _in_band(self, text: str, confidence: float) -> bool:
        stage = self.encoder_stage
        return stage is not None and LETTER.search(text) is not None and \
            stage.in_band(confidence)

    def cheap_prediction(self, text: str, top: int = 3) -> Prediction:
        """The n-gram model's prediction alone, whatever the band."""
        if not LETTER.search(text):
            prediction = self._prediction(self.probabilities(text), top)
            return Prediction(prediction.contact_type, 0.0, prediction.ranked, True)
        return self._prediction(self.probabilities(text), top)

    def _prediction(self, probabilities: np.ndarray, top: int) -> Prediction:
        in_scope = probabilities[:len(self.labels)]
        order = np.argsort(-in_scope)[:top]
        ranked = tuple(zip(map(self.labels.__getitem__, order.tolist()), in_scope[order].tolist()))
        best, confidence = ranked[0]
        out_of_scope = self._has_out_of_scope and bool(probabilities[-1] > confidence)
        return Prediction(best, confidence, ranked, out_of_scope)

    def probabilities(self, text: str) -> np.ndarray:
        """One probability per label, then out of scope's if trained; they sum to 1."""
        counts = self._column_counts(text)
        if counts:
            indices = np.array(list(counts), np.intp)
            values = _tfidf(indices, list(counts.values()), self._idf, self._blocks)
            scores = values @ self._weights.take(indices, axis=0) + self._bias
        else:
            scores = self._bias.copy()
        if self._embedder is not None:
            scores += self._embedder.embed((text,))[0] @ self._dense_weights
        scores = np.exp(TEMPERATURE * (scores - scores.max()))
        return collapsed(scores / scores.sum(), len(self.labels) + self._has_out_of_scope)

    def _column_counts(self, text: str) -> Counter[int]:
        """The known columns of features(text) and their counts, in the same order, built in
        C loops (map, chain, Counter) rather than from prefixed strings."""
        words = tokens(text)
        # unknown bigrams count as -1, dropped after: filtering first would cost a Python loop
        bigrams = map(self._bigram_columns.get, zip(words, islice(words, 1, None)), repeat(-1))
        counts = Counter(chain(chain.from_iterable(map(self._token_columns.__getitem__, words)),
                               bigrams))
        counts.pop(-1, None)
        return counts


def train(examples: Iterable[tuple[str, str]], out_of_scope: Iterable[str] = (),
          c: float = DEFAULT_C, embedder: SentenceEmbedder | None = None,
          cascade: CascadeSpec | None = None) -> Classifier:
    """Fit on (text, contact type) pairs, and texts that are none of them. A second or two per
    five thousand examples. With an embedder, its unit-norm sentence vector is a third block
    of features, weighted as each n-gram block is (see service/embeddings.py). With a cascade,
    an encoder stage is fitted on the same rows to decide the cheap model's uncertain band:
    the rows are encoded first (their out-of-scope groups come from the encodings, and both
    models train on them), then the stage fits in a second thread while the SVM fits
    (liblinear runs without the GIL, so with two cores that takes the longer of the two fits,
    not their sum)."""
    from sklearn.svm import LinearSVC

    texts, labels = map(list, zip(*examples))
    extra = list(out_of_scope)
    classes = sorted(set(labels))
    columns = [*classes, OUT_OF_SCOPE] if extra else classes
    rows, targets = [*texts, *extra], [*labels, *[OUT_OF_SCOPE] * len(extra)]
    stage_rows, encodings = _stage_rows(rows, targets, cascade)
    if encodings is not None and extra:  # every out-of-scope row is among the stage's rows
        grouped, groups = out_of_scope_groups(encodings, [targets[i] for i in stage_rows],
                                              OUT_OF_SCOPE)
        for row, target in zip(stage_rows, grouped):
            targets[row] = target
        columns = [*classes, *groups]
    vocabulary, idf, matrix = _training_matrix(rows, embedder)
    with ThreadPoolExecutor(1, thread_name_prefix="encoder-stage") as pool:
        stage = None if cascade is None or encodings is None else pool.submit(
            fit_stage, encodings, [targets[i] for i in stage_rows], columns, cascade.encoder,
            cascade.band, len(classes) + bool(extra))
        model = LinearSVC(C=c, max_iter=10_000).fit(matrix, targets)
    weights, bias = _columns(model, columns)
    dense_weights = None
    if embedder is not None:
        weights, dense_weights = weights[:len(vocabulary)], weights[len(vocabulary):]
    return Classifier(classes, vocabulary, idf, np.ascontiguousarray(weights), bias,
                      out_of_scope=bool(extra), embedder=embedder,
                      dense_weights=dense_weights,
                      encoder_stage=stage.result() if stage else None)


def _stage_rows(texts: list[str], targets: list[str], cascade: CascadeSpec | None
                ) -> tuple[list[int], np.ndarray | None]:
    """The rows the encoder stage trains on and their encodings (none without a cascade): on
    every row or, with the cascade's `per_type`, a sample of each contact type's rows and the
    hand-picked ones (all out-of-scope rows: the shipped corpus costs no encoding)."""
    if cascade is None:
        return [], None
    rows = stage_sample(texts, targets, cascade.per_type, {OUT_OF_SCOPE}, cascade.keep)
    return rows, cascade.encode([texts[i] for i in rows])


def _training_matrix(texts: list[str], embedder: SentenceEmbedder | None):
    """The n-gram vocabulary, its idf and the tf-idf rows of `texts` (and the embedder's)."""
    counted = [features(t) for t in texts]
    vocabulary, idf = _vocabulary_and_idf(counted)
    matrix = _matrix(counted, vocabulary, idf)
    if embedder is not None:
        from scipy.sparse import csr_matrix, hstack

        matrix = hstack([matrix, csr_matrix(embedder.embed(texts))]).tocsr()
    return vocabulary, idf, matrix


def stage_texts(examples: Iterable[tuple[str, str]], out_of_scope: Iterable[str],
                per_type: int | None, keep: Collection[str] = ()) -> list[str]:
    """The texts `train` encodes for the encoder stage (what a rules directory's shipped
    encodings should hold)."""
    pairs = [*examples, *((text, OUT_OF_SCOPE) for text in out_of_scope)]
    texts, targets = [text for text, _ in pairs], [label for _, label in pairs]
    return [texts[i] for i in stage_sample(texts, targets, per_type, {OUT_OF_SCOPE}, keep)]


def _vocabulary_and_idf(counted: list[Counter[str]]) -> tuple[dict[str, int], np.ndarray]:
    document_frequency: Counter[str] = Counter()
    for counts in counted:
        document_frequency.update(counts.keys())
    vocabulary = {feature: index for index, feature in enumerate(document_frequency)}
    frequency = np.fromiter(document_frequency.values(), np.float64, len(vocabulary))
    idf = np.log((1 + len(counted)) / (1 + frequency)) + 1.0  # scikit-learn's smooth idf
    return vocabulary, idf.astype(np.float32)


def _blocks(vocabulary: dict[str, int]) -> np.ndarray:
    return np.fromiter((_block(f) for f in vocabulary), np.int8, len(vocabulary))


def _tfidf(indices: np.ndarray, counts: list[int], idf: np.ndarray, blocks: np.ndarray
           ) -> np.ndarray:
    """Sublinear tf times idf, each block scaled to unit L2 norm. Training and inference share
    it, float32 step for step, so a message scores exactly as it would in the training matrix."""
    values = (1.0 + np.log(np.array(counts, np.float32))) * idf[indices]
    blocks = blocks[indices]
    norms = np.sqrt(np.bincount(blocks, weights=values * values, minlength=2))
    return (values / norms[blocks]).astype(np.float32)


def _matrix(counted: list[Counter[str]], vocabulary: dict[str, int], idf: np.ndarray):
    from scipy.sparse import csr_matrix

    blocks = _blocks(vocabulary)
    rows, cols, data = [], [], []
    for row, counts in enumerate(counted):
        indices = [vocabulary[feature] for feature in counts]
        rows += [row] * len(indices)
        cols += indices
        data.append(_tfidf(np.array(indices, np.intp), list(counts.values()), idf, blocks))
    return csr_matrix((np.concatenate(data), (rows, cols)),
                      shape=(len(counted), len(vocabulary)), dtype=np.float64)


def _columns(model, order: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Weights and biases with one column per class in `order`."""
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:  # two classes: scikit-learn keeps one margin, for the second class
        coef, intercept = np.vstack([-coef, coef]), np.concatenate([-intercept, intercept])
    position = {str(label): i for i, label in enumerate(model.classes_)}
    picked = [position[label] for label in order]
    return (np.ascontiguousarray(coef[picked].T, dtype=np.float32),
            intercept[picked].astype(np.float32))
