"""Contact type + confidence from a customer's words. Pure: no I/O.

A linear SVM (one-vs-rest) over two TF-IDF blocks: word unigrams and bigrams, and character
2-5-grams within word boundaries, each block with sublinear term frequency and its own L2
norm so that neither drowns the other. Every digit reads as 0: the shape of a number (an
order number, an amount) tells something, its value does not.

Confidence is a softmax of the SVM margins at a fixed temperature. Fitted by cross-validation
on Banking77, HINT3 and Bitext the best temperature was 5.3-6.2 on every one of them, so
training skips that step (see docs/classifier.md).

Out of scope: the catalog may give texts that are none of its contact types (greetings,
chit-chat, other businesses' requests). They train one more class, which never becomes a
contact type; when it wins, the types share little probability, so the confidence is low. A
message with no letters at all (a bare order number) carries no reason for contact and gets
confidence 0.

Training goes through scikit-learn; inference does not: the features of one message are
looked up in a dict and the class scores are one small gather and dot product, which keeps a
message well under a millisecond.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

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


def features(text: str) -> Counter[str]:
    """Counts of w: words, b: word bigrams and c: character n-grams of one message."""
    tokens = TOKEN.findall(DIGIT.sub("0", text.lower()))
    counts: Counter[str] = Counter()
    for token in tokens:
        counts["w:" + token] += 1
        padded = f" {token} "
        for n in CHAR_NGRAMS:
            for i in range(len(padded) - n + 1):
                counts["c:" + padded[i:i + n]] += 1
    for left, right in zip(tokens, tokens[1:]):
        counts[f"b:{left} {right}"] += 1
    return counts


def _block(feature: str) -> int:
    return CHAR_BLOCK if feature.startswith("c:") else WORD_BLOCK


@dataclass(frozen=True, slots=True)
class Prediction:
    contact_type: str
    confidence: float
    ranked: tuple[tuple[str, float], ...]  # best first, for "did you mean" menus
    out_of_scope: bool = False  # looks like none of the contact types (already in confidence)


class Classifier:
    def __init__(self, labels: Sequence[str], vocabulary: dict[str, int], idf: np.ndarray,
                 weights: np.ndarray, bias: np.ndarray, out_of_scope: bool = False):
        """`weights` has a column per label, plus a last one for out of scope if trained."""
        self.labels = tuple(labels)  # contact types only
        self._vocabulary = vocabulary
        self._idf = idf
        self._blocks = np.fromiter((_block(f) for f in vocabulary), np.int8, len(vocabulary))
        self._weights = weights  # (features, classes), rows gathered per message
        self._bias = bias
        self._has_out_of_scope = out_of_scope

    def predict(self, text: str, top: int = 3) -> Prediction:
        probabilities = self.probabilities(text)
        in_scope = probabilities[:len(self.labels)]
        order = np.argsort(-in_scope)[:top]
        ranked = tuple((self.labels[i], float(in_scope[i])) for i in order)
        best, confidence = ranked[0]
        if not LETTER.search(text):
            return Prediction(best, 0.0, ranked, out_of_scope=True)
        out_of_scope = self._has_out_of_scope and bool(probabilities[-1] > confidence)
        return Prediction(best, confidence, ranked, out_of_scope)

    def probabilities(self, text: str) -> np.ndarray:
        """One probability per label, then out of scope's if trained; they sum to 1."""
        indices, values = self._vector(features(text))
        scores = values @ self._weights[indices] + self._bias if indices else self._bias.copy()
        scores = np.exp(TEMPERATURE * (scores - scores.max()))
        return scores / scores.sum()

    def _vector(self, counts: Counter[str]) -> tuple[list[int], np.ndarray]:
        known = [(i, c) for f, c in counts.items() if (i := self._vocabulary.get(f)) is not None]
        if not known:
            return [], np.zeros(0, np.float32)
        indices = [i for i, _ in known]
        values = (1.0 + np.log(np.array([c for _, c in known], np.float32))) * self._idf[indices]
        blocks = self._blocks[indices]
        norms = np.sqrt(np.bincount(blocks, weights=values * values, minlength=2))
        return indices, (values / norms[blocks]).astype(np.float32)


def train(examples: Iterable[tuple[str, str]], out_of_scope: Iterable[str] = (),
          c: float = DEFAULT_C) -> Classifier:
    """Fit on (text, contact type) pairs, and texts that are none of them. A second or two per
    five thousand examples."""
    from sklearn.svm import LinearSVC

    texts, labels = map(list, zip(*examples))
    extra = list(out_of_scope)
    classes = sorted(set(labels))
    targets = [*labels, *[OUT_OF_SCOPE] * len(extra)]
    counted = [features(t) for t in (*texts, *extra)]
    vocabulary, idf = _vocabulary_and_idf(counted)
    empty = np.zeros(0, np.float32)
    vectoriser = Classifier((), vocabulary, idf, np.zeros((0, 0), np.float32), empty)
    model = LinearSVC(C=c, max_iter=10_000).fit(_matrix(vectoriser, counted), targets)
    weights, bias = _columns(model, [*classes, OUT_OF_SCOPE] if extra else classes)
    return Classifier(classes, vocabulary, idf, weights, bias, out_of_scope=bool(extra))


def _vocabulary_and_idf(counted: list[Counter[str]]) -> tuple[dict[str, int], np.ndarray]:
    document_frequency: Counter[str] = Counter()
    for counts in counted:
        document_frequency.update(counts.keys())
    vocabulary = {feature: index for index, feature in enumerate(document_frequency)}
    frequency = np.fromiter(document_frequency.values(), np.float64, len(vocabulary))
    idf = np.log((1 + len(counted)) / (1 + frequency)) + 1.0  # scikit-learn's smooth idf
    return vocabulary, idf.astype(np.float32)


def _matrix(vectoriser: Classifier, counted: list[Counter[str]]):
    from scipy.sparse import csr_matrix

    rows, cols, data = [], [], []
    for row, counts in enumerate(counted):
        indices, values = vectoriser._vector(counts)
        rows += [row] * len(indices)
        cols += indices
        data.append(values)
    return csr_matrix((np.concatenate(data), (rows, cols)),
                      shape=(len(counted), len(vectoriser._vocabulary)), dtype=np.float64)


def _columns(model, order: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Weights and biases with one column per class in `order`."""
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:  # two classes: scikit-learn keeps one margin, for the second class
        coef, intercept = np.vstack([-coef, coef]), np.concatenate([-intercept, intercept])
    position = {str(label): i for i, label in enumerate(model.classes_)}
    picked = [position[label] for label in order]
    return (np.ascontiguousarray(coef[picked].T, dtype=np.float32),
            intercept[picked].astype(np.float32))
