"""Does splitting the out-of-scope class into clusters help? A diagnosis on BANKING77-OOS.

    OMP_NUM_THREADS=1 .venv/bin/python load_tests/oos_split.py [--k 0 8 16 32] [--seed 0]

The out-of-scope rows (the data's own and the background corpus) are one class to both models
today. Here they are split into k sub-classes by k-means on their encoder vectors (fitted on
each fold's training rows only); both models train with the sub-classes, and a sub-class's
probability is added back to out of scope at prediction. Band and threshold are chosen on
out-of-fold training rows as classify-eval chooses them; the validation split is only scored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import encoder_tuning as et  # noqa: E402

from service.understanding import classify_eval as ev  # noqa: E402
from service.understanding.background import background_texts, without_examples  # noqa: E402
from service.understanding.classifier import OUT_OF_SCOPE  # noqa: E402


def sub_labels(states, rows, k, seed, space="encoder"):
    """The rows with each out-of-scope row's label replaced by its k-means cluster's, the
    rows clustered by their encodings or by their n-gram tf-idf rows."""
    if k <= 1 or space == "none":
        return rows
    from sklearn.cluster import KMeans

    outside = [t for t, label in rows if label == OUT_OF_SCOPE]
    if space == "tfidf":
        vectors = tfidf(outside)
    else:
        vectors = states.pooled(outside, (6,))
    cluster = KMeans(k, n_init=3, random_state=seed).fit_predict(vectors)
    names = iter(f"~oos{c:02d}" for c in cluster)
    return [(t, next(names) if label == OUT_OF_SCOPE else label) for t, label in rows]


def tfidf(texts):
    from service.understanding.classifier import _training_matrix

    return _training_matrix(texts, None)[2]


def fitted(states, rows, columns, test_texts, k, seed, spaces=("encoder", "encoder")):
    """(n-gram, stage) probabilities of test_texts over `columns`, sub-classes summed."""
    ngram_probabilities = ngram_part(states, rows, columns, test_texts, k, seed, spaces[0])
    split = sub_labels(states, rows, k, seed, spaces[1])
    wide = [*columns[:-1], *sorted({lb for _, lb in split if lb.startswith("~oos")}),
            OUT_OF_SCOPE]
    targets = np.array([wide.index(lb) for _, lb in split])
    weights, bias = et.logistic(states.pooled([t for t, _ in split], (6,)), targets, len(wide))
    stage = et.softmax(states.pooled(test_texts, (6,)) @ weights + bias)
    return ngram_probabilities, narrow(stage, len(columns) - 1)


def ngram_part(states, rows, columns, test_texts, k, seed, space):
    split = sub_labels(states, rows, k, seed, space)
    wide = [*columns[:-1], *sorted({lb for _, lb in split if lb.startswith("~oos")}),
            OUT_OF_SCOPE]
    examples = [(t, lb) for t, lb in split if lb != OUT_OF_SCOPE]
    outside = [t for t, lb in split if lb == OUT_OF_SCOPE]
    model = et.train(examples, outside)
    ngram = np.zeros((len(test_texts), len(wide)), np.float32)
    order = [wide.index(c) for c in (*model.labels, *([OUT_OF_SCOPE] if outside else []))]
    for i, text in enumerate(test_texts):
        ngram[i, order] = model.probabilities(text)
    return narrow(ngram, len(columns) - 1)


def narrow(p, types):
    return np.hstack([p[:, :types], p[:, types:].sum(1, keepdims=True)])


def run(states, pool, test_rows, columns, own, k, seed, spaces):
    cv = et.Scored(pool, columns)
    fold = ev.fold_of_each([label for _, label in pool], 5, seed)
    for f in range(5):
        train_rows = [row for row, g in zip(pool, fold) if g != f]
        held = np.flatnonzero(fold == f)
        cv.ngram[held], cv.stages["frozen-L6"][held] = fitted(
            states, train_rows, columns, [pool[i][0] for i in held], k, seed, spaces)
        et.log(f"k={k} fold {f + 1}/5")
    test = et.Scored(test_rows, columns)
    test.ngram[:], test.stages["frozen-L6"][:] = fitted(
        states, pool, columns, [t for t, _ in test_rows], k, seed, spaces)
    print(f"\n## k = {k}, clustered by (n-gram model, stage): {spaces}")
    et.report_oos(cv, test, len(columns) - 1, ["frozen-L6"], {}, own)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, nargs="+", default=[0, 8, 16, 32])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ngram-space", choices=("encoder", "tfidf", "none"), default="encoder",
                        help="what the n-gram model's out-of-scope rows are clustered by")
    parser.add_argument("--stage-space", choices=("encoder", "tfidf", "none"), default="encoder",
                        help="what the encoder stage's out-of-scope rows are clustered by")
    args = parser.parse_args()
    train_rows = [(t, OUT_OF_SCOPE if lb == "oos" else lb) for t, lb in
                  ev.read_labelled(et.DATA / "b77oos_train.csv")]
    test_rows = [(t, OUT_OF_SCOPE if lb == "oos" else lb) for t, lb in
                 ev.read_labelled(et.DATA / "b77oos_test.csv")]
    bank_rows = ev.read_labelled(et.BANK)
    background = list(background_texts())
    states = et.States([t for t, _ in train_rows + test_rows + bank_rows] + background)
    examples = tuple(r for r in train_rows if r[1] != OUT_OF_SCOPE)
    pool = train_rows + [(t, OUT_OF_SCOPE) for t in without_examples(tuple(background),
                                                                     examples)]
    columns = [*sorted({lb for _, lb in examples}), OUT_OF_SCOPE]
    for k in args.k:
        run(states, pool, test_rows, columns, len(train_rows), k, args.seed,
            (args.ngram_space, args.stage_space))


if __name__ == "__main__":
    main()
