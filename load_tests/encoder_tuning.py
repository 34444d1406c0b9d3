"""Tuning the cascade's encoder stage: frozen features against a fine-tuned top layer.

    OMP_NUM_THREADS=1 .venv/bin/python load_tests/encoder_tuning.py [--skip-tuning] \
        [--variants NAME ...] [--only oos|bank] [--seed N] [--epochs 6] [--layer-rate 3e-4] \
        [--head-rate 1e-3] [--probe LAYERS [--zero-head]]

Two data sets, measured as docs/classifier.md describes (results: classifier_results.md,
"Issue 11: tuning the encoder stage"):

- BANKING77-OOS: every row of the train split (and the background corpus, as out of scope) is
  scored out of fold by 5-fold cross-validation; band and threshold are chosen from those rows
  exactly as classify-eval does (types not hidden); a model trained on the whole train split
  scores the validation split once. Nothing is chosen on the validation split.
- Banking77 (the bank catalog's training file): 3-fold cross-validation, top-1 accuracy (no
  out-of-scope rows of its own, so no threshold here), alone and in the default band.

Encoder-stage variants, each trained on the same rows (types + out of scope + background):

  frozen-L6      today's stage: mean-pooled last layer, logistic regression (C = 10)
  frozen-L56     layers 5 and 6 mean-pooled, each L2-normalised, concatenated
  frozen-L456    layers 4, 5 and 6
  tuned-L6       the top layer and a softmax head fine-tuned (Adam, tuning.py); the head
                 starts from frozen-L6's regression, layers 1-5 are frozen and run once a text
  tuned-L56      the top two layers and the head (layers 1-4 frozen)

In the band the stage's probabilities decide ("alone") or their average with the n-gram
model's ("average"). The lower layers' token states are computed once and kept in
~/.cache/switchboard/tuning (about 5.5 ms of CPU a text the first time; layer 4's, from which
layer 5's are computed at start).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.understanding import classify_eval as ev  # noqa: E402
from service.understanding import tuning  # noqa: E402
from service.understanding.background import background_texts, without_examples  # noqa: E402
from service.understanding.cascade import DEFAULT_BAND, ENCODER_C  # noqa: E402
from service.understanding.classifier import LETTER, OUT_OF_SCOPE, train  # noqa: E402
from service.understanding.encoder import _batches, _block, encoder, padding_of  # noqa: E402

DATA = ROOT / "load_tests" / "data" / "banking77_oos"
BANK = ROOT / "routing_rules" / "bank" / "data" / "banking77_train.csv"
CACHE = Path.home() / ".cache" / "switchboard" / "tuning"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the lower layers, once -----------------------------------------------------------------


class States:
    """Text -> token states after layers 4 and 5, and the pooled unit vectors of every layer."""

    def __init__(self, texts: list[str]):
        texts = sorted(set(texts))
        digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
        path = CACHE / f"states4-{digest}.npz"
        if path.exists():
            with np.load(path) as data:
                flat, offsets, pooled = data["flat"], data["offsets"], data["pooled"]
        else:
            log(f"encoding {len(texts)} texts (layers 1-4 kept per token)")
            started = time.process_time()
            lower = tuning.lower_states(encoder(), texts, frozen=4)
            log(f"encoded in {time.process_time() - started:.0f} s of CPU")
            offsets = np.cumsum([0] + [len(s) for s in lower.states])
            flat, pooled = np.concatenate(lower.states).astype(np.float16), lower.pooled
            CACHE.mkdir(parents=True, exist_ok=True)
            np.savez(path, flat=flat, offsets=offsets, pooled=pooled)
        self.index = {t: i for i, t in enumerate(texts)}
        self._offsets, self._pooled = offsets, pooled
        self._flat = {4: flat, 5: self._fifth(flat, offsets)}

    @staticmethod
    def _fifth(flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Layer 5's token states from layer 4's (the pretrained layer, run once)."""
        lengths = np.diff(offsets).tolist()
        out = np.empty_like(flat)
        layer = encoder()._layers[4]
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        for chunk in _batches(order, lengths):
            hidden, mask = tuning.pad([flat[offsets[i]:offsets[i + 1]].astype(np.float32)
                                       for i in chunk])
            hidden = _block(hidden, padding_of(mask), layer)
            for row, i in enumerate(chunk):
                out[offsets[i]:offsets[i + 1]] = hidden[row, :lengths[i]]
        return out

    def tokens(self, texts: list[str], after: int = 5) -> list[np.ndarray]:
        spans = [(self._offsets[i], self._offsets[i + 1]) for i in map(self.index.get, texts)]
        return [self._flat[after][a:b].astype(np.float32) for a, b in spans]

    def pooled(self, texts: list[str], layers: tuple[int, ...]) -> np.ndarray:
        rows = self._pooled[[self.index[t] for t in texts]]
        return np.hstack([rows[:, layer - 1] for layer in layers])


# --- encoder-stage variants -----------------------------------------------------------------


def logistic(features: np.ndarray, targets: np.ndarray, classes: int):
    """Weights (dims, classes) and biases of classify's logistic regression."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=ENCODER_C, max_iter=2000).fit(features, targets)
    weights = np.zeros((features.shape[1], classes), np.float32)
    bias = np.full(classes, -30.0, np.float32)  # a class the fold never saw
    weights[:, model.classes_] = model.coef_.T
    bias[model.classes_] = model.intercept_
    return weights, bias


def softmax(scores: np.ndarray) -> np.ndarray:
    scores = np.exp(scores - scores.max(1, keepdims=True))
    return scores / scores.sum(1, keepdims=True)


def frozen(layers: tuple[int, ...]):
    def fit_and_score(states, train_texts, targets, classes, test_texts, settings):
        weights, bias = logistic(states.pooled(train_texts, layers), targets, classes)
        return softmax(states.pooled(test_texts, layers) @ weights + bias)
    return fit_and_score


def tuned(layers: int):
    def fit_and_score(states, train_texts, targets, classes, test_texts, settings):
        head, head_bias = logistic(states.pooled(train_texts, (6,)), targets, classes)
        start = tuning.top_parameters(encoder(), head, head_bias, layers)
        after = 6 - layers
        p = tuning.fine_tune(start, states.tokens(train_texts, after), targets, settings, log)
        return tuning.probabilities(p, states.tokens(test_texts, after))
    return fit_and_score


VARIANTS = {"frozen-L6": frozen((6,)), "frozen-L56": frozen((5, 6)),
            "frozen-L456": frozen((4, 5, 6)), "tuned-L6": tuned(1), "tuned-L56": tuned(2)}


# --- scoring --------------------------------------------------------------------------------


def ngram(train_rows, test_texts, columns):
    """The n-gram model's probabilities (columns: types, then out of scope)."""
    examples = [(t, label) for t, label in train_rows if label != OUT_OF_SCOPE]
    outside = [t for t, label in train_rows if label == OUT_OF_SCOPE]
    model = train(examples, outside)
    out = np.zeros((len(test_texts), len(columns)), np.float32)
    order = [columns.index(c) for c in (*model.labels, OUT_OF_SCOPE)]
    for i, text in enumerate(test_texts):
        out[i, order] = model.probabilities(text)
    return out


def decided(probabilities, texts, truth, types):
    """(confidence, right) of each row's likeliest contact type."""
    best = probabilities[:, :types].argmax(1)
    confidence = probabilities[np.arange(len(texts)), best]
    confidence = np.where([LETTER.search(t) is not None for t in texts], confidence, 0.0)
    return confidence, best == truth


class Scored:
    """Out-of-fold (or test) probabilities of the n-gram model and of each stage variant."""

    def __init__(self, rows, columns):
        self.texts = [t for t, _ in rows]
        self.truth = np.array([columns.index(label) for _, label in rows])
        self.outside = np.array([label == OUT_OF_SCOPE for _, label in rows])
        self.ngram = np.zeros((len(rows), len(columns)), np.float32)
        self.stages = {name: np.zeros_like(self.ngram) for name in VARIANTS}


def cross_validated(states, rows, columns, folds, variants, settings, timings, seed):
    scored = Scored(rows, columns)
    fold = ev.fold_of_each([label for _, label in rows], folds, seed)
    for k in range(folds):
        train_rows = [row for row, f in zip(rows, fold) if f != k]
        held = np.flatnonzero(fold == k)
        held_texts = [rows[i][0] for i in held]
        log(f"fold {k + 1}/{folds}: {len(train_rows)} training rows, {len(held)} held out")
        scored.ngram[held] = ngram(train_rows, held_texts, columns)
        for name in variants:
            scored.stages[name][held] = fit_stage(name, states, train_rows, columns, held_texts,
                                                  settings, timings)
    return scored


def fit_stage(name, states, train_rows, columns, test_texts, settings, timings):
    texts = [t for t, _ in train_rows]
    targets = np.array([columns.index(label) for _, label in train_rows])
    started = time.perf_counter()
    out = VARIANTS[name](states, texts, targets, len(columns), test_texts, settings)
    timings.setdefault(name, []).append(time.perf_counter() - started)
    log(f"  {name}: {timings[name][-1]:.0f} s")
    return out


WEIGHTS = (0.25, 0.5, 0.75, 1.0)  # the stage's weight in "weighted", chosen on training rows


def second_opinion(scored: Scored, name: str, weight: float) -> np.ndarray:
    """In the band: the stage's probabilities (weight 1) or a weighted mean with the n-gram
    model's."""
    return weight * scored.stages[name] + (1 - weight) * scored.ngram


def chosen(cheap_cv, second_cv, kinds, band):
    """(score, band, threshold) on the training rows: the band chosen as classify-eval does,
    or the band given."""
    if band is None:
        band, threshold = ev.choose_band(cheap_cv, second_cv, kinds)
    if band is None:
        return ev._best_threshold(*cheap_cv, kinds, ev.DEFAULT_OOS_SHARE)[0], None, threshold
    inside = ev.in_band(cheap_cv[0], band)
    score, threshold = ev._best_threshold(np.where(inside, second_cv[0], cheap_cv[0]),
                                          np.where(inside, second_cv[1], cheap_cv[1]), kinds,
                                          ev.DEFAULT_OOS_SHARE)
    return score, band, threshold


def report_oos(cv: Scored, test: Scored, types: int, variants, timings, own: int) -> None:
    """`own`: the first `own` rows of `cv` are the train split's (the rest: background)."""
    kinds = np.where(cv.outside, ev.OUT_OF_SCOPE, ev.IN_SCOPE)
    own_oos = cv.outside & (np.arange(len(cv.texts)) < own)
    cheap_cv = decided(cv.ngram, cv.texts, cv.truth, types)
    cheap_test = decided(test.ngram, test.texts, test.truth, types)
    inside_scope = ~test.outside
    print("\nBANKING77-OOS, validation split (band and threshold chosen on out-of-fold train rows)")
    print(f"n-gram alone: top-1 in scope {cheap_test[1][inside_scope].mean():.4f}")
    print("| stage | in the band (stage weight) | top-1 in scope, every message | band | "
          "threshold | encoder share | in-scope acc. | OOS recall | fit s (mean) | "
          "goal threshold: in-scope acc. / OOS recall |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in variants:
        for rule in ("alone", "average", "weighted"):
            for how in ("chosen", "default"):
                weights = {"alone": (1.0,), "average": (0.5,), "weighted": WEIGHTS}[rule]
                options = []
                for weight in weights:
                    second_cv = decided(second_opinion(cv, name, weight), cv.texts, cv.truth,
                                        types)
                    band = None if how == "chosen" else DEFAULT_BAND
                    options.append((*chosen(cheap_cv, second_cv, kinds, band), weight))
                _, band, threshold, weight = max(options, key=lambda o: o[0])
                second_test = decided(second_opinion(test, name, weight), test.texts,
                                      test.truth, types)
                inside = ev.in_band(cheap_test[0], band) if band else \
                    np.zeros(len(test.texts), bool)
                confidence = np.where(inside, second_test[0], cheap_test[0])
                right = np.where(inside, second_test[1], cheap_test[1])
                shown = f"{band[0]:.2f}-{band[1]:.2f} ({how})" if band else "none (chosen)"
                goal = goal_threshold(cheap_cv, second_cv_of(cv, name, weight, types), band,
                                      own_oos)
                answered = (right & (confidence >= goal))[inside_scope].mean()
                goal_cell = f"{goal:.2f}: {answered:.4f} / " \
                            f"{(confidence < goal)[test.outside].mean():.4f}"
                print(f"| {name} | {rule} ({weight:g}) | {second_test[1][inside_scope].mean():.4f} "
                      f"| {shown} | {threshold:.2f} | {inside.mean():.1%} "
                      f"| {(right & (confidence >= threshold))[inside_scope].mean():.4f} "
                      f"| {(confidence < threshold)[test.outside].mean():.4f} "
                      f"| {np.mean(timings.get(name, [0])):.0f} | {goal_cell} |", flush=True)


def second_cv_of(cv: Scored, name: str, weight: float, types: int):
    return decided(second_opinion(cv, name, weight), cv.texts, cv.truth, types)


def goal_threshold(cheap_cv, second_cv, band, own_oos) -> float:
    """A diagnosis, from training rows only: the lowest threshold that refuses 80% of the
    train split's own out-of-scope rows (out of fold), the bank goal's recall."""
    inside = ev.in_band(cheap_cv[0], band) if band else np.zeros(len(own_oos), bool)
    confidence = np.where(inside, second_cv[0], cheap_cv[0])[own_oos]
    return float(next(t for t in ev.THRESHOLDS if (confidence < t).mean() >= 0.80))


def report_bank(cv: Scored, types: int, variants, timings) -> None:
    in_scope = ~cv.outside
    cheap = decided(cv.ngram, cv.texts, cv.truth, types)
    print("\nBanking77 train, 3-fold cross-validation, top-1 accuracy of its rows")
    print(f"n-gram alone: {cheap[1][in_scope].mean():.4f}")
    print("| stage | stage alone, every message | cascade, default band: alone | "
          "cascade, default band: average | encoder share | fit s (mean) |")
    print("|---|---|---|---|---|---|")
    inside = ev.in_band(cheap[0], DEFAULT_BAND)
    for name in variants:
        cells = [decided(cv.stages[name], cv.texts, cv.truth, types)[1][in_scope].mean()]
        for weight in (1.0, 0.5):
            second = decided(second_opinion(cv, name, weight), cv.texts, cv.truth, types)
            cells.append(np.where(inside, second[1], cheap[1])[in_scope].mean())
        print(f"| {name} | " + " | ".join(f"{c:.4f}" for c in cells) +
              f" | {inside[in_scope].mean():.1%} | {np.mean(timings.get(name, [0])):.0f} |",
              flush=True)


def probe(states, pool, columns, settings, layers: int, zero_head: bool) -> None:
    """Choosing the fine-tuning settings: train on folds 2-5 of the pool, print the stage's
    top-1 in scope on fold 1 after each epoch (training rows only)."""
    fold = ev.fold_of_each([label for _, label in pool], 5)
    kept = [pool[i] for i in np.flatnonzero(fold != 0)]
    held = [pool[i] for i in np.flatnonzero(fold == 0)]
    texts, targets = [t for t, _ in kept], np.array([columns.index(lb) for _, lb in kept])
    truth = np.array([columns.index(label) for _, label in held])
    head, head_bias = logistic(states.pooled(texts, (6,)), targets, len(columns))
    if zero_head:
        head, head_bias = np.zeros_like(head), np.zeros_like(head_bias)
    held_states = states.tokens([t for t, _ in held], 6 - layers)

    def report(epoch, p):
        best = tuning.probabilities(p, held_states)[:, :-1].argmax(1)
        in_scope = truth < len(columns) - 1
        print(f"epoch {epoch}: top-1 in scope {(best == truth)[in_scope].mean():.4f}", flush=True)

    start = tuning.top_parameters(encoder(), head, head_bias, layers)
    report(0, start)
    tuning.fine_tune(start, states.tokens(texts, 6 - layers), targets, settings, log, report)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-tuning", action="store_true", help="frozen variants only")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--layer-rate", type=float, default=3e-4)
    parser.add_argument("--head-rate", type=float, default=1e-3)
    parser.add_argument("--only", choices=("oos", "bank"))
    parser.add_argument("--seed", type=int, default=0, help="of the folds' assignment")
    parser.add_argument("--probe", type=int, choices=(1, 2), metavar="LAYERS",
                        help="one split of BANKING77-OOS's training rows, top-1 after each "
                             "epoch, tuning this many layers")
    parser.add_argument("--zero-head", action="store_true", help="with --probe: head from 0")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    settings = tuning.TuningSettings(args.epochs, args.layer_rate, args.head_rate)
    variants = [v for v in args.variants if not (args.skip_tuning and v.startswith("tuned"))]

    train_rows = [(t, OUT_OF_SCOPE if label == "oos" else label) for t, label in
                  ev.read_labelled(DATA / "b77oos_train.csv")]
    test_rows = [(t, OUT_OF_SCOPE if label == "oos" else label) for t, label in
                 ev.read_labelled(DATA / "b77oos_test.csv")]
    bank_rows = ev.read_labelled(BANK)
    background = list(background_texts())
    states = States([t for t, _ in train_rows + test_rows + bank_rows] + background)

    if args.only != "bank":
        examples = tuple(r for r in train_rows if r[1] != OUT_OF_SCOPE)
        pool = train_rows + [(t, OUT_OF_SCOPE) for t in without_examples(tuple(background),
                                                                         examples)]
        columns = [*sorted({label for _, label in examples}), OUT_OF_SCOPE]
        if args.probe:
            return probe(states, pool, columns, settings, args.probe, args.zero_head)
        timings: dict[str, list[float]] = {}
        cv = cross_validated(states, pool, columns, 5, variants, settings, timings, args.seed)
        test = Scored(test_rows, columns)
        test_texts = [t for t, _ in test_rows]
        log("the whole train split -> validation split")
        test.ngram[:] = ngram(pool, test_texts, columns)
        for name in variants:
            test.stages[name][:] = fit_stage(name, states, pool, columns, test_texts, settings,
                                             timings)
        report_oos(cv, test, len(columns) - 1, variants, timings, len(train_rows))

    if args.only != "oos":
        pool = bank_rows + [(t, OUT_OF_SCOPE) for t in without_examples(tuple(background),
                                                                        tuple(bank_rows))]
        columns = [*sorted({label for _, label in bank_rows}), OUT_OF_SCOPE]
        timings = {}
        cv = cross_validated(states, pool, columns, 3, variants, settings, timings, args.seed)
        report_bank(cv, len(columns) - 1, variants, timings)


if __name__ == "__main__":
    main()
