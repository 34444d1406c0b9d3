"""How the encoder stage should combine with the n-gram model, on BANKING77-OOS: a diagnosis.

    OMP_NUM_THREADS=1 .venv/bin/python load_tests/cascade_variants.py

Scores every training row by 5-fold cross-validation (as classify-eval chooses a threshold and
band, types not hidden) and the validation split by a model trained on the train split, each
row by both models, once. Then, for each way of deciding a message in the band (the encoder
stage's probabilities, as the service does, or the average of both models'), it chooses band
and threshold from the cross-validated rows exactly as classify-eval does and reports the
validation split's in-scope accuracy and out-of-scope recall. Nothing is tuned on the
validation split; its top-1 figures show the ceiling no threshold can pass.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.understanding import classify_eval as ev  # noqa: E402
from service.understanding.background import background_texts, without_examples  # noqa: E402
from service.understanding.cascade import DEFAULT_BAND  # noqa: E402
from service.understanding.cli import _memo_encoder  # noqa: E402

DATA = ROOT / "load_tests" / "data" / "banking77_oos"
OOS = "\0oos"


def scores(model, rows):
    """(text, label, n-gram probabilities, encoder-stage probabilities) per row."""
    return [(text, label, model.probabilities(text), model.encoder_stage.probabilities(text))
            for text, label in rows]


def decided(labels, scored, mode):
    """(cheap (confidence, right), second (confidence, right), truth) arrays for one mode."""
    n, out = len(labels), {"cheap": ([], []), "second": ([], [])}
    for text, label, cheap, stage in scored:
        second = stage if mode == "encoder" else (cheap + stage) / 2
        for name, probabilities in (("cheap", cheap), ("second", second)):
            best = int(np.argmax(probabilities[:n]))
            letters = any(ch.isalpha() for ch in text)
            out[name][0].append(float(probabilities[best]) if letters else 0.0)
            out[name][1].append(labels[best] == label)
    return tuple((np.array(c), np.array(r)) for c, r in out.values())


def main() -> None:
    train = ev.split_out_of_scope(ev.read_labelled(DATA / "b77oos_train.csv"), "oos")
    test = ev.read_labelled(DATA / "b77oos_test.csv")
    background = list(without_examples(background_texts(), tuple(train.examples)))
    plain = ev.Dataset(train.examples, train.out_of_scope, None, background)
    data = ev.Dataset(train.examples, train.out_of_scope, None, background,
                      _memo_encoder(plain))
    full = ev._fit(data, ev.FULL_BAND)
    test_scored = scores(full, test)
    pooled = ev.Dataset(data.examples, data.out_of_scope + data.background, encoder=data.encoder)
    rows = pooled.labelled(OOS)
    fold = ev.fold_of_each([label for _, label in rows], 5)
    cv_scored, cv_labels = [], []
    for k in range(5):
        model = ev._fit(ev._subset(pooled, rows, fold != k, OOS), ev.FULL_BAND)
        held = [row for row, f in zip(rows, fold) if f == k]
        cv_scored.append(scores(model, held))
        cv_labels.append(list(model.labels))
    kinds = np.array([ev.OUT_OF_SCOPE if label == OOS else ev.IN_SCOPE
                      for k in range(5) for (_, label), f in zip(rows, fold) if f == k])
    oos = np.array([label == "oos" for _, label in test])
    for mode in ("encoder", "average"):
        parts = [decided(cv_labels[k], cv_scored[k], mode) for k in range(5)]
        cheap = tuple(np.concatenate([p[0][i] for p in parts]) for i in (0, 1))
        second = tuple(np.concatenate([p[1][i] for p in parts]) for i in (0, 1))
        t_cheap, t_second = decided(list(full.labels), test_scored, mode)
        print(f"{mode}: validation top-1 in scope, n-gram {t_cheap[1][~oos].mean():.4f}, "
              f"in the band {t_second[1][~oos].mean():.4f}")
        for band in (None, DEFAULT_BAND, (0.0, 0.95)):
            if band is None:
                band, threshold = ev.choose_band(cheap, second, kinds)
            else:
                inside = ev.in_band(cheap[0], band)
                threshold = ev.choose_threshold(np.where(inside, second[0], cheap[0]),
                                                np.where(inside, second[1], cheap[1]), kinds)
            inside = ev.in_band(t_cheap[0], band) if band else np.zeros(len(oos), bool)
            confidence = np.where(inside, t_second[0], t_cheap[0])
            right = np.where(inside, t_second[1], t_cheap[1])
            shown = f"{band[0]:.2f}-{band[1]:.2f}" if band else "none"
            print(f"  band {shown} threshold {threshold:.2f}: encoder share {inside.mean():.3f}, "
                  f"in scope {(right & (confidence >= threshold))[~oos].mean():.4f}, "
                  f"OOS recall {(confidence < threshold)[oos].mean():.4f}", flush=True)


if __name__ == "__main__":
    main()
