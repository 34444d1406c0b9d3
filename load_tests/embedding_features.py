"""Would pretrained sentence embeddings lift the classifier? A cross-validated experiment.

Compares, on the same stratified folds of one labelled CSV, the classifier's own features
(word and character n-gram TF-IDF, linear SVM: `service/classifier.py`) with the same features
plus WordLlama sentence embeddings appended as a dense block at a few weights, and the
embeddings alone. WordLlama is the one pretrained text model we found whose wheel carries its
weights (256 dimensions, 16 MB), so it runs with nothing downloaded; it is not a dependency of
the project, so install it next to the project for this script only:

    .venv/bin/pip install wordllama
    .venv/bin/python load_tests/embedding_features.py --train DATA/banking77/train.csv

Results and what they mean for the product: load_tests/classifier_results.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.understanding.classifier import _matrix, _vocabulary_and_idf, features  # noqa: E402
from service.understanding.classify_eval import read_labelled  # noqa: E402

DENSE = (("n-grams + WordLlama x0.5", 0.5, 256), ("n-grams + WordLlama x1", 1.0, 256),
         ("n-grams + WordLlama x2", 2.0, 256), ("n-grams + WordLlama x1, 64 dims", 1.0, 64))


def load_wordllama():
    try:
        import wordllama
    except ImportError:
        sys.exit("this experiment needs WordLlama: .venv/bin/pip install wordllama")
    # Its own lookup of the bundled tokenizer misses (it looks in "tokenizer/", the wheel ships
    # "tokenizers/"); pointing the cache at the package finds both files, with downloads off.
    return wordllama.WordLlama.load(cache_dir=Path(wordllama.__file__).parent,
                                    disable_download=True)


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def fold_accuracies(texts, labels, embeddings, folds: int) -> dict[str, list[float]]:
    from scipy.sparse import csr_matrix, hstack
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import LinearSVC

    counted = [features(t) for t in texts]
    results: dict[str, list[float]] = {}
    split = StratifiedKFold(folds, shuffle=True, random_state=0).split(texts, labels)
    for fold, (train, test) in enumerate(split, 1):
        vocabulary, idf = _vocabulary_and_idf([counted[i] for i in train])
        known = [{f: n for f, n in counted[i].items() if f in vocabulary} for i in test]
        sparse_train = _matrix([counted[i] for i in train], vocabulary, idf)
        sparse_test = _matrix(known, vocabulary, idf)
        candidates = {"n-grams (the classifier)": (sparse_train, sparse_test),
                      "WordLlama alone": (csr_matrix(embeddings[train]),
                                          csr_matrix(embeddings[test]))}
        for name, weight, dims in DENSE:
            dense = weight * unit_rows(embeddings[:, :dims])
            candidates[name] = (hstack([sparse_train, csr_matrix(dense[train])]).tocsr(),
                                hstack([sparse_test, csr_matrix(dense[test])]).tocsr())
        for name, (x_train, x_test) in candidates.items():
            model = LinearSVC(C=1.0, max_iter=10_000).fit(x_train, labels[train])
            results.setdefault(name, []).append(float((model.predict(x_test) ==
                                                       labels[test]).mean()))
        print(f"fold {fold}/{folds} done", file=sys.stderr, flush=True)
    return results


def embedding_latency(model, texts: list[str]) -> tuple[float, float]:
    costs = []
    for text in texts[:1000]:
        start = time.perf_counter()
        model.embed([text])
        costs.append(time.perf_counter() - start)
    return float(np.percentile(costs, 50) * 1e6), float(np.percentile(costs, 99) * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, required=True, help="labelled CSV")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    texts, labels = map(list, zip(*read_labelled(args.train)))
    model = load_wordllama()
    embeddings = model.embed(texts, norm=True).astype(np.float64)
    p50, p99 = embedding_latency(model, texts)
    print(f"{len(texts)} rows, {len(set(labels))} labels, {args.folds}-fold stratified CV, seed 0")
    print(f"WordLlama embedding of one message: p50 {p50:.0f} us, p99 {p99:.0f} us")
    print("| features | mean accuracy | per fold |\n|---|---:|---|")
    for name, accuracies in fold_accuracies(texts, np.array(labels), embeddings,
                                            args.folds).items():
        print(f"| {name} | {np.mean(accuracies):.4f} | "
              f"{', '.join(f'{a:.4f}' for a in accuracies)} |")


if __name__ == "__main__":
    main()
