"""Would a nearest-example check refuse what the cascade's confidence accepts? (issue 11)

For every scored message: the cascade's prediction and confidence, and how similar it is to
the nearest training example of the type it was given (cosine of encoder vectors; of the
n-gram model's TF-IDF vectors, which every message has at no encoder cost). Then the best
score of the confidence threshold alone against a second gate on that similarity, both chosen
on the scored rows themselves: an upper bound of what the gate could add.

    OMP_NUM_THREADS=1 .venv/bin/python load_tests/novelty_gate.py --train T.csv --share S
        # 5 folds of rows; a fifth of the types hidden from each fold's model (out of scope)
    OMP_NUM_THREADS=1 .venv/bin/python load_tests/novelty_gate.py --train T.csv --test E.csv
        # a test file whose out-of-scope rows are labelled oos: best in-scope at recall >= 0.8
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

import numpy as np

from service.understanding.background import background_texts, shipped_encodings
from service.understanding.cascade import DEFAULT_BAND, CascadeSpec, MemoEncoder
from service.understanding.classifier import _matrix, _vocabulary_and_idf, features, train
from service.understanding.classify_eval import _type_folds, fold_of_each
from service.understanding.encoder import encoder
from service.understanding.encodings_file import text_keys

OOS = "oos"


def read(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle)
        next(rows)
        return [(row[0], row[1]) for row in rows if row and row[0].strip()]


def tfidf_rows(texts: list[str], vocabulary: dict[str, int], idf: np.ndarray):
    """The texts' TF-IDF rows in a trained vocabulary (features it lacks dropped; a text with
    none is a row of zeros)."""
    return _matrix([Counter({f: c for f, c in features(text).items() if f in vocabulary})
                    for text in texts], vocabulary, idf)


def scored(memo: MemoEncoder, background: list[str], rows: list[tuple[str, str]],
           own_oos: list[str], test: list[tuple[str, str]]) -> list[dict]:
    """Each test row: truth, guess, confidence, in band, nearest same-type similarities."""
    model = train(rows, out_of_scope=own_oos + background,
                  cascade=CascadeSpec(memo, DEFAULT_BAND))
    labels = np.array([label for _, label in rows])
    near = memo.embed([t for t, _ in test]) @ memo.embed([t for t, _ in rows]).T
    counted = [features(t) for t, _ in rows] + [features(t) for t in own_oos + background]
    vocabulary, idf = _vocabulary_and_idf(counted)
    near_tf = (tfidf_rows([t for t, _ in test], vocabulary, idf)
               @ _matrix(counted[:len(rows)], vocabulary, idf).T).toarray() / 2
    out = []
    for i, (text, truth) in enumerate(test):
        p = model.predict(text)
        same = labels == p.contact_type
        out.append({"truth": truth, "right": p.contact_type == truth and not p.out_of_scope,
                    "confidence": p.confidence, "band": model.decided_by_encoder(text),
                    "encoder": float(near[i][same].max()), "tfidf": float(near_tf[i][same].max())})
    return out


def best(rows: list[dict], accept, grid, share: float | None) -> tuple:
    oos = np.array([r["truth"] == OOS for r in rows])
    right = np.array([r["right"] for r in rows])
    results = []
    for params in grid:
        accepted = accept(params)
        in_scope, recall = (right & accepted)[~oos].mean(), (~accepted)[oos].mean()
        value = (1 - share) * in_scope + share * recall if share is not None else \
            (in_scope if recall >= 0.8 else -1.0)
        results.append((round(float(value), 4), round(float(in_scope), 4),
                        round(float(recall), 4), params))
    return max(results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path)
    parser.add_argument("--share", type=float, help="out-of-scope share to score for")
    args = parser.parse_args()
    memo, background = MemoEncoder(encoder()), list(background_texts())
    shipped = shipped_encodings(memo.weights_sha256)
    memo.remember(background, np.stack([shipped[k.tobytes()] for k in text_keys(background)]))
    rows = read(args.train)
    if args.test:
        results = scored(memo, background, [r for r in rows if r[1] != OOS],
                         [t for t, label in rows if label == OOS], read(args.test))
    else:
        fold = fold_of_each([label for _, label in rows], 5)
        hidden = _type_folds(sorted({label for _, label in rows}), 5)
        results = []
        for k in range(5):
            unseen = {label for label, f in hidden.items() if f == k}
            results += scored(memo, background,
                              [r for r, f in zip(rows, fold) if f != k and r[1] not in unseen],
                              [], [(t, OOS if label in unseen else label)
                                   for (t, label), f in zip(rows, fold) if f == k])
    confidence = np.array([r["confidence"] for r in results])
    band = np.array([r["band"] for r in results])
    thresholds = np.round(np.arange(0, 1, 0.01), 2)
    pairs = [(t, g) for t in thresholds[::2] for g in np.round(np.arange(0, 1, 0.02), 2)]
    print(f"{len(results)} rows scored, {band.mean():.0%} in the encoder's band")
    print("confidence alone:", best(results, lambda t: confidence >= t, thresholds, args.share))
    for name in ("encoder", "tfidf"):
        similar = np.array([r[name] for r in results])
        print(f"and {name} similarity, every message:",
              best(results, lambda p: (confidence >= p[0]) & (similar >= p[1]), pairs,
                   args.share))
    similar = np.array([r["encoder"] for r in results])
    print("and encoder similarity, band only:",
          best(results, lambda p: (confidence >= p[0]) & ((similar >= p[1]) | ~band), pairs,
               args.share))


if __name__ == "__main__":
    main()
