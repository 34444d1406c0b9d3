"""What the encoder stage would rank with the n-grams beside the encodings (issue 11).

Banking77's training file split by the SHA-256 of each text: nine tenths to train, a tenth to
score (1,046 rows). Top-1 accuracy of the n-gram SVM, of logistic regression on the encodings
(the stage as shipped), of one linear model on both (TF-IDF blocks and the encoding side by
side), and of the cascade with each as its stage (the n-gram model trained with the background
corpus decides outside the default band 0.05-0.95). Nothing is refused here: this is ranking.

    OMP_NUM_THREADS=1 .venv/bin/python load_tests/stage_features.py
"""

from __future__ import annotations

import csv
import hashlib
import time
from pathlib import Path

import numpy as np
from novelty_gate import tfidf_rows  # load_tests/ is the script's directory
from scipy.sparse import csr_matrix, hstack
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from service.understanding.background import background_texts
from service.understanding.classifier import _matrix, _vocabulary_and_idf, features, train
from service.understanding.encoder import cached_encodings, encoder

DATA = Path(__file__).resolve().parent.parent / "routing_rules/bank/data/banking77_train.csv"
CACHE = Path.home() / ".cache/switchboard/encodings"


def split() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    with DATA.open(newline="", encoding="utf-8") as handle:
        rows = [(r[0], r[1]) for r in list(csv.reader(handle))[1:] if r and r[0].strip()]
    tenth = [int(hashlib.sha256(t.encode()).hexdigest(), 16) % 10 == 0 for t, _ in rows]
    return ([r for r, t in zip(rows, tenth) if not t], [r for r, t in zip(rows, tenth) if t])


def main() -> None:
    train_rows, test_rows = split()
    y_train, y_test = [lab for _, lab in train_rows], np.array([lab for _, lab in test_rows])
    model = encoder()
    enc_train = cached_encodings(model, [t for t, _ in train_rows], CACHE)
    enc_test = cached_encodings(model, [t for t, _ in test_rows], CACHE)
    counted = [features(t) for t, _ in train_rows]
    vocabulary, idf = _vocabulary_and_idf(counted)
    ngrams_train = _matrix(counted, vocabulary, idf)
    ngrams_test = tfidf_rows([t for t, _ in test_rows], vocabulary, idf)
    both_train = hstack([ngrams_train, csr_matrix(enc_train)]).tocsr()
    both_test = hstack([ngrams_test, csr_matrix(enc_test)]).tocsr()
    cheap = train(train_rows, out_of_scope=list(background_texts()))
    predictions = [cheap.cheap_prediction(t) for t, _ in test_rows]
    confidence = np.array([p.confidence for p in predictions])
    cheap_guess = np.array([p.contact_type for p in predictions])
    band = (confidence >= 0.05) & (confidence < 0.95)
    print(f"{len(test_rows)} rows scored; {band.mean():.1%} in the band; n-gram model top-1 "
          f"{(cheap_guess == y_test).mean():.4f}")
    stages = {"n-gram SVM (C=1)": (LinearSVC(C=1), ngrams_train, ngrams_test),
              "encodings, logistic regression (C=10): shipped": (
                  LogisticRegression(C=10, max_iter=2000), enc_train, enc_test),
              "both, SVM (C=1)": (LinearSVC(C=1), both_train, both_test),
              "both, logistic regression (C=30)": (
                  LogisticRegression(C=30, max_iter=3000), both_train, both_test)}
    for name, (stage, fit_on, score_on) in stages.items():
        started = time.perf_counter()
        guess = stage.fit(fit_on, y_train).predict(score_on)
        seconds = time.perf_counter() - started
        cascade = np.where(band, guess, cheap_guess)
        print(f"{name}: alone {(guess == y_test).mean():.4f}, as the stage "
              f"{(cascade == y_test).mean():.4f}, fit {seconds:.1f} s")


if __name__ == "__main__":
    main()
