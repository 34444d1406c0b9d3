"""Contact type + confidence from a customer's words. Pure: no I/O.

A multinomial logistic regression over word unigrams, word bigrams and character n-grams
(within word boundaries), trained with scikit-learn when the rules load. Inference does not
go through scikit-learn: the features of one message are looked up in a dict and the class
scores are one small gather and dot product, which keeps a message well under a millisecond.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

TOKEN = re.compile(r"[a-z0-9']+")
DIGITS = re.compile(r"\d+")
CHAR_NGRAMS = (3, 4, 5)
AGENT_REQUEST = re.compile(
    r"\b(agent|human|representative|operator|real person|"
    r"(speak|talk|chat) (to|with) (a|an|some|somebody|someone|a real))\b"
)


def wants_agent(text: str) -> bool:
    """Explicit requests for a person, recognised at any step of any flow."""
    return AGENT_REQUEST.search(text.lower()) is not None


def features(text: str) -> Counter[str]:
    tokens = TOKEN.findall(DIGITS.sub("0", text.lower()))
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


@dataclass(frozen=True, slots=True)
class Prediction:
    contact_type: str
    confidence: float
    ranked: tuple[tuple[str, float], ...]  # best first, for "did you mean" menus


class Classifier:
    def __init__(self, labels: Sequence[str], vocabulary: dict[str, int], idf: np.ndarray,
                 weights: np.ndarray, bias: np.ndarray):
        self.labels = tuple(labels)
        self._vocabulary = vocabulary
        self._idf = idf
        self._weights = weights  # (features, classes), rows gathered per message
        self._bias = bias

    def predict(self, text: str, top: int = 3) -> Prediction:
        indices, values = self._vector(features(text))
        scores = values @ self._weights[indices] + self._bias if indices else self._bias.copy()
        scores = np.exp(scores - scores.max())
        probabilities = scores / scores.sum()
        order = np.argsort(-probabilities)[:top]
        ranked = tuple((self.labels[i], float(probabilities[i])) for i in order)
        return Prediction(ranked[0][0], ranked[0][1], ranked)

    def _vector(self, counts: Counter[str]) -> tuple[list[int], np.ndarray]:
        indices, values = [], []
        for feature, count in counts.items():
            index = self._vocabulary.get(feature)
            if index is not None:
                indices.append(index)
                values.append((1.0 + math.log(count)) * self._idf[index])
        vector = np.asarray(values, dtype=np.float32)
        norm = float(np.sqrt(vector @ vector)) if values else 1.0
        return indices, vector / norm


def train(examples: Iterable[tuple[str, str]], c: float = 20.0) -> Classifier:
    """Fit on (text, label) pairs. Takes seconds for thousands of examples."""
    from scipy.sparse import csr_matrix
    from sklearn.linear_model import LogisticRegression

    texts, labels = zip(*examples)
    counted = [features(t) for t in texts]
    vocabulary: dict[str, int] = {}
    document_frequency: Counter[str] = Counter()
    for counts in counted:
        document_frequency.update(counts.keys())
        for feature in counts:
            vocabulary.setdefault(feature, len(vocabulary))
    n = len(counted)
    idf = np.empty(len(vocabulary), dtype=np.float32)
    for feature, index in vocabulary.items():
        idf[index] = math.log((1 + n) / (1 + document_frequency[feature])) + 1.0
    partial = Classifier((), vocabulary, idf, np.zeros((0, 0), np.float32), np.zeros(0))
    rows, cols, data = [], [], []
    for row, counts in enumerate(counted):
        indices, values = partial._vector(counts)
        rows += [row] * len(indices)
        cols += indices
        data += values.tolist()
    matrix = csr_matrix((data, (rows, cols)), shape=(n, len(vocabulary)), dtype=np.float64)
    model = LogisticRegression(C=c, max_iter=2000)
    model.fit(matrix, labels)
    return Classifier(
        labels=[str(label) for label in model.classes_],
        vocabulary=vocabulary,
        idf=idf,
        weights=np.ascontiguousarray(model.coef_.T, dtype=np.float32),
        bias=model.intercept_.astype(np.float32),
    )
