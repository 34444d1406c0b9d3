"""How well the classifier does on messages it never saw, and where its threshold should be.

The threshold is always chosen by cross-validation on the training rows, never by looking at
the rows being scored. With a test file: k-fold cross-validation on the training rows picks
the threshold, then one model trained on all of them scores the test rows. Without one, each
fold in turn is the test set and that whole procedure runs on the other folds (nested
cross-validation), so no score comes from a threshold that saw its own row.

A message is called out of scope when its confidence is under the threshold, exactly as the
conversation decides "not understood".
"""

from __future__ import annotations

import csv
import random
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from service.understanding.cascade import Band, CascadeSpec, Encoder
from service.understanding.classifier import Classifier, train
from service.understanding.embeddings import SentenceEmbedder

TEXT_COLUMNS = ("text", "sentence", "utterance")
LABEL_COLUMNS = ("contact_type", "label", "intent", "category")
OOS_LABELS = ("oos", "out_of_scope", "NO_NODES_DETECTED")
FULL_BAND = (0.0, 1.0)  # inside cross-validation: the encoder stage fitted, to score every row
THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)
# encoder bands [low, high) tried, narrowest first (a high of 1.0 includes 1.0)
BANDS = sorted(((round(low, 2), round(high, 2)) for low in np.arange(0.0, 0.95, 0.05)
                for high in np.arange(low + 0.05, 1.0001, 0.05)),
               key=lambda band: (band[1] - band[0], band[0]))
DEFAULT_FOLDS = 5
DEFAULT_OOS_SHARE = 0.5
# Types are hidden by default only from catalogs with fewer examples a type than this (median):
# see hides_types.
THIN_CATALOG_EXAMPLES = 40

Progress = Callable[[str], None]


class EvalInputError(Exception):
    """Bad input (missing file or column, too little data): the message says which."""


@dataclass(frozen=True)
class Dataset:
    examples: list[tuple[str, str]]  # (text, contact type)
    out_of_scope: list[str] = field(default_factory=list)
    embedder: SentenceEmbedder | None = None  # how to train on it, as a catalog may ask
    # out of scope too, but only ever trained on: the shipped corpus, not the data under test
    background: list[str] = field(default_factory=list)
    encoder: Encoder | None = None  # the cascade's encoder (a MemoEncoder here), if any
    stage_per_type: int | None = None  # the encoder stage's rows a type (catalog's setting)
    stage_keep: frozenset[str] = frozenset()  # ...and the texts it always trains on

    def __len__(self) -> int:
        return len(self.examples) + len(self.out_of_scope) + len(self.background)

    def labelled(self, oos_label: str) -> list[tuple[str, str]]:
        return self.examples + [(text, oos_label) for text in self.out_of_scope]


@dataclass(frozen=True)
class Metrics:
    accuracy: float
    macro_f1: float
    in_scope_accuracy: float | None  # None: no in-scope rows
    oos_recall: float | None  # None: no out-of-scope rows
    mcc: float


@dataclass(frozen=True)
class ScoredRow:
    text: str
    expected: str
    predicted: str  # the likeliest contact type, refused or not
    confidence: float
    refused: bool  # confidence under the threshold: decided out of scope
    weight: float = 1.0  # the row's weight in the summary (see share_weights)

    def decided(self, oos_label: str) -> str:
        return oos_label if self.refused else self.predicted


@dataclass(frozen=True)
class Report:
    metrics: Metrics
    thresholds: list[float]  # one per outer fold, or the single one used for the test file
    train_seconds: float
    latency_ms_p50: float
    latency_ms_p99: float
    train_rows: int
    train_oos_rows: int
    test_rows: int
    test_oos_rows: int
    contact_types: int
    mode: str  # "test file" or "cross-validation"
    folds: int
    embeddings: str | None = None  # the sentence-embedding backend, if the features had one
    background_rows: int = 0  # out-of-scope texts only trained on (shipped corpus, catalog's)
    predictions: tuple[ScoredRow, ...] = ()  # every scored row, in scoring order
    confused: tuple[tuple[str, str, int], ...] = ()  # (expected, decided, count), most first
    bands: tuple[Band | None, ...] = ()  # the encoder band of each outer fold (None: no encoder)
    encoder_share: float | None = None  # share of scored rows the encoder decided
    unseen_type_rows: int = 0  # rows of types hidden from their fold's model, scored as oos
    weighted_oos_share: float | None = None  # out-of-scope rows weighed to this share

    @property
    def band(self) -> Band | None:
        """The folds' bands averaged; None when most folds chose none."""
        chosen = [b for b in self.bands if b is not None]
        if len(chosen) * 2 <= len(self.bands):
            return None
        return (round(statistics.fmean(b[0] for b in chosen), 2),
                round(statistics.fmean(b[1] for b in chosen), 2))

    @property
    def threshold(self) -> float:
        return round(statistics.fmean(self.thresholds), 2)


# --- reading ---------------------------------------------------------------------------------


def read_labelled(path: Path, text_col: str | None = None,
                  label_col: str | None = None) -> list[tuple[str, str]]:
    """(text, label) rows of a CSV; columns are guessed from common names unless given."""
    with _open(path) as handle:
        reader = csv.DictReader(handle)
        columns = [c for c in reader.fieldnames or [] if c]
        text = _column(path, columns, text_col, TEXT_COLUMNS, "text")
        label = _column(path, columns, label_col, LABEL_COLUMNS, "label")
        rows = [(row[text] or "", row[label] or "") for row in reader]
    return [(t, label) for t, label in rows if t.strip()]


def read_texts(path: Path, text_col: str | None = None) -> list[str]:
    with _open(path) as handle:
        reader = csv.DictReader(handle)
        column = _column(path, [c for c in reader.fieldnames or [] if c], text_col,
                         TEXT_COLUMNS, "text")
        return [row[column] for row in reader if (row[column] or "").strip()]


def _open(path: Path):
    if not path.is_file():
        raise EvalInputError(f"no such file: {path}")
    return path.open(newline="", encoding="utf-8-sig")


def _column(path: Path, columns: list[str], wanted: str | None, usual: Sequence[str],
            kind: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise EvalInputError(f"{path} has no column '{wanted}' (columns: "
                                 f"{', '.join(columns) or 'none'})")
        return wanted
    found = next((c for c in usual if c in columns), None)
    if found is None:
        raise EvalInputError(f"{path}: no {kind} column among {', '.join(columns) or 'none'}; "
                             f"name it with --{kind}-col")
    return found


def split_out_of_scope(rows: list[tuple[str, str]], oos_label: str) -> Dataset:
    return Dataset([(t, lab) for t, lab in rows if lab != oos_label],
                   [t for t, lab in rows if lab == oos_label])


def oos_label_of(rows: list[tuple[str, str]], given: str | None) -> str:
    """The label meaning "none of these": as given, else the first usual one present."""
    if given is not None:
        return given
    present = {label for _, label in rows}
    return next((label for label in OOS_LABELS if label in present), OOS_LABELS[0])


# --- metrics ---------------------------------------------------------------------------------


def metrics(truth: Sequence[str], predicted: Sequence[str], oos_label: str,
            weights: Sequence[float] | None = None) -> Metrics:
    """The figures of the report; `weights` (one per row) weigh accuracy, macro-F1 and MCC."""
    labels = sorted(set(truth) | set(predicted))
    index = {label: i for i, label in enumerate(labels)}
    weight = np.ones(len(truth)) if weights is None else np.asarray(weights, float)
    confusion = np.zeros((len(labels), len(labels)), float)
    np.add.at(confusion, ([index[t] for t in truth], [index[p] for p in predicted]), weight)
    true_oos = np.array([t == oos_label for t in truth], bool)
    right = np.array([t == p for t, p in zip(truth, predicted)], bool)
    return Metrics(
        accuracy=float(np.average(right, weights=weight)),
        macro_f1=_macro_f1(confusion),
        in_scope_accuracy=float(right[~true_oos].mean()) if (~true_oos).any() else None,
        oos_recall=float(right[true_oos].mean()) if true_oos.any() else None,
        mcc=_mcc(confusion),
    )


def share_weights(truth: Sequence[str], oos_label: str, oos_share: float) -> list[float]:
    """Row weights under which out-of-scope rows make `oos_share` of the total, and the rows
    still count len(truth) in all (the in-scope rows and the others share the rest evenly)."""
    outside = sum(t == oos_label for t in truth)
    inside = len(truth) - outside
    if not outside or not inside:
        raise EvalInputError("weighing the out-of-scope share needs both in-scope and "
                             "out-of-scope rows among the scored ones")
    per_oos, per_in = oos_share * len(truth) / outside, (1 - oos_share) * len(truth) / inside
    return [per_oos if t == oos_label else per_in for t in truth]


def _macro_f1(confusion: np.ndarray) -> float:
    hits = np.diag(confusion).astype(float)
    denominator = confusion.sum(0) + confusion.sum(1)
    f1 = np.divide(2 * hits, denominator, out=np.zeros_like(hits), where=denominator > 0)
    return float(f1.mean())


def _mcc(confusion: np.ndarray) -> float:
    """Matthews correlation for any number of classes (Gorodkin's R_K)."""
    n, hits = confusion.sum(), np.trace(confusion)
    true, predicted = confusion.sum(1), confusion.sum(0)
    covariance = float(hits * n - true @ predicted)
    spread = float(n * n - predicted @ predicted) * float(n * n - true @ true)
    return covariance / np.sqrt(spread) if spread > 0 else 0.0


# --- threshold -------------------------------------------------------------------------------

IN_SCOPE, OUT_OF_SCOPE, UNSEEN_TYPE = "in scope", "out of scope", "unseen type"


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, kind: np.ndarray,
                     oos_share: float = DEFAULT_OOS_SHARE) -> float:
    """The threshold that scores best when `oos_share` of messages are out of scope.

    An in-scope message scores when its guess is right and confident enough. A message that
    should be refused scores when its confidence is under the threshold; it is either an
    out-of-scope example or (when asked for) one of a contact type hidden from the model,
    which stands for the in-domain requests a catalog does not cover. Each of those two kinds
    counts for half of the out-of-scope share when both are present. Weighting by an assumed
    share rather than by row counts keeps a large out-of-scope file from deciding alone. Of
    several equally good thresholds, the middle one.
    """
    return _best_threshold(confidence, correct, kind, oos_share)[1]


def _best_threshold(confidence: np.ndarray, correct: np.ndarray, kind: np.ndarray,
                    oos_share: float) -> tuple[float, float]:
    """(best score, threshold) of choose_threshold."""
    accepted = confidence[:, None] >= THRESHOLDS[None, :]
    in_scope = kind == IN_SCOPE
    score = (accepted[in_scope] & correct[in_scope, None]).mean(0) if in_scope.any() else \
        np.zeros(len(THRESHOLDS))
    refusals = [(~accepted[kind == k]).mean(0) for k in (OUT_OF_SCOPE, UNSEEN_TYPE)
                if (kind == k).any()]
    if refusals:
        score = (1 - oos_share) * score + oos_share * np.mean(refusals, axis=0)
    best = np.flatnonzero(np.isclose(score, np.max(score)))
    return float(np.max(score)), float(THRESHOLDS[best[len(best) // 2]])


def choose_band(cheap: tuple[np.ndarray, np.ndarray], encoder: tuple[np.ndarray, np.ndarray],
                kind: np.ndarray, oos_share: float = DEFAULT_OOS_SHARE
                ) -> tuple[Band | None, float]:
    """The encoder band and threshold that score best together, as choose_threshold scores.

    `cheap` and `encoder` are each (confidence, correct) per row: the cheap model's, and the
    encoder stage's for the same row. A row whose cheap confidence is in the band takes the
    encoder's. No band (the cheap model alone) unless a band scores better; of equally good
    bands the narrowest, which asks the encoder least often."""
    best_score, threshold = _best_threshold(*cheap, kind, oos_share)
    best: tuple[Band | None, float] = (None, threshold)
    for band in BANDS:
        inside = in_band(cheap[0], band)
        score, threshold = _best_threshold(np.where(inside, encoder[0], cheap[0]),
                                           np.where(inside, encoder[1], cheap[1]), kind,
                                           oos_share)
        if score > best_score + 1e-9:
            best_score, best = score, (band, threshold)
    return best


def in_band(confidence: np.ndarray, band: Band) -> np.ndarray:
    """Rows the encoder decides: as EncoderStage.in_band, for many rows at once."""
    low, high = band
    return (confidence >= low) & ((confidence < high) | (high >= 1.0))


# --- evaluation ------------------------------------------------------------------------------


def fold_of_each(labels: Sequence[str], folds: int, seed: int = 0) -> np.ndarray:
    """Stratified fold numbers: each label spread evenly over the folds."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    assignment, offset = np.empty(len(labels), np.int64), 0
    for label in sorted(by_label):
        members = by_label[label]
        rng.shuffle(members)
        for position, i in enumerate(members):
            assignment[i] = (offset + position) % folds
        offset += len(members)  # the next label starts where this one stopped
    return assignment


@dataclass
class _Scored:
    texts: list[str] = field(default_factory=list)
    truth: list[str] = field(default_factory=list)
    guess: list[str] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    by_encoder: list[bool] = field(default_factory=list)
    # the encoder stage's own guess and confidence for each row (rows without letters: the
    # cheap model's), for choosing the band
    encoder_guess: list[str] = field(default_factory=list)
    encoder_confidence: list[float] = field(default_factory=list)

    def add(self, classifier: Classifier, rows: list[tuple[str, str]]) -> None:
        for text, label in rows:
            started = time.perf_counter()
            prediction = classifier.predict(text, top=1)
            self.latency_ms.append((time.perf_counter() - started) * 1000)
            self._append(text, label, prediction.contact_type, prediction.confidence)
            self.by_encoder.append(classifier.decided_by_encoder(text))

    def add_both(self, classifier: Classifier, rows: list[tuple[str, str]]) -> None:
        """The cheap model's prediction, and the encoder stage's whatever the band."""
        for text, label in rows:
            cheap = classifier.cheap_prediction(text, top=1)
            self._append(text, label, cheap.contact_type, cheap.confidence)
            second = classifier.stage_prediction(text, top=1) or cheap
            self.encoder_guess.append(second.contact_type)
            self.encoder_confidence.append(second.confidence)

    def _append(self, text: str, label: str, guess: str, confidence: float) -> None:
        self.texts.append(text)
        self.truth.append(label)
        self.guess.append(guess)
        self.confidence.append(confidence)

    def decided(self, thresholds: list[float], oos_label: str) -> list[str]:
        return [g if c >= t else oos_label
                for g, c, t in zip(self.guess, self.confidence, thresholds)]


def _fit(data: Dataset, band: Band | None = None) -> Classifier:
    """A model as the service trains it; with an encoder and a band, the cascade."""
    cascade = CascadeSpec(data.encoder, band, per_type=data.stage_per_type,
                          keep=data.stage_keep) if data.encoder and band else None
    try:
        return train(data.examples, out_of_scope=data.out_of_scope + data.background,
                     embedder=data.embedder, cascade=cascade)
    except ValueError as exc:  # e.g. one class left in a fold
        raise EvalInputError(f"cannot train on these rows: {exc}") from None


def _subset(data: Dataset, rows: list[tuple[str, str]], keep: np.ndarray,
            oos_label: str) -> Dataset:
    part = split_out_of_scope([row for row, k in zip(rows, keep) if k], oos_label)
    return Dataset(part.examples, part.out_of_scope, data.embedder, data.background,
                   data.encoder, data.stage_per_type, data.stage_keep)


@dataclass(frozen=True)
class Choice:
    threshold: float
    band: Band | None = None  # the encoder's band; None: the cheap model alone


def cross_validated_choice(data: Dataset, folds: int, oos_share: float,
                           progress: Progress, hide_types: bool = False,
                           oos_label: str = "\0oos") -> Choice:
    """k models, each trained without one fold of rows (and with `hide_types`, without one
    fold of contact types): the rows it did not see score as in scope, out of scope or of an
    unseen type. The background corpus always trains; it is scored like out-of-scope rows only
    when no type is hidden. Any threshold worth having refuses it (greetings, weather), so
    next to hidden types it would only dilute what the threshold decides: how many of the
    in-domain requests the catalog lacks it refuses. With an encoder, each model is a
    cascade and the band is chosen with the threshold."""
    types = sorted({label for _, label in data.examples})
    hidden_in = _type_folds(types, folds) if hide_types else {}
    data = threshold_data(data, bool(hidden_in))
    rows = data.labelled(oos_label)
    fold = fold_of_each([label for _, label in rows], folds)
    scored, kinds = _Scored(), []
    for k in range(folds):
        progress(f"  threshold fold {k + 1}/{folds}")
        unseen = {label for label, f in hidden_in.items() if f == k}
        keep = (fold != k) & np.array([label not in unseen for _, label in rows])
        model = _fit(_subset(data, rows, keep, oos_label), FULL_BAND)
        scored.add_both(model, [r for r, f in zip(rows, fold) if f == k])
        kinds += [OUT_OF_SCOPE if label == oos_label else UNSEEN_TYPE if label in unseen
                  else IN_SCOPE for (_, label), f in zip(rows, fold) if f == k]
    truth = np.array(scored.truth, dtype=object)
    cheap = (np.array(scored.confidence), truth == np.array(scored.guess, dtype=object))
    if data.encoder is None:
        return Choice(choose_threshold(*cheap, np.array(kinds), oos_share))
    encoder = (np.array(scored.encoder_confidence),
               truth == np.array(scored.encoder_guess, dtype=object))
    return Choice(*reversed(choose_band(cheap, encoder, np.array(kinds), oos_share)))


def threshold_data(data: Dataset, types_hidden: bool) -> Dataset:
    """The data the threshold's cross-validation scores: the background corpus joins the
    out-of-scope rows (scored) unless contact types are hidden (then it only trains)."""
    if types_hidden:
        return data
    return Dataset(data.examples, data.out_of_scope + data.background, data.embedder,
                   encoder=data.encoder, stage_per_type=data.stage_per_type,
                   stage_keep=data.stage_keep)


def cross_validated_threshold(data: Dataset, folds: int, oos_share: float,
                              progress: Progress, hide_types: bool = False) -> float:
    """The threshold of cross_validated_choice."""
    return cross_validated_choice(data, folds, oos_share, progress, hide_types).threshold


def hides_types(data: Dataset, borrowed: Sequence[str] = ()) -> bool:
    """Whether the threshold's cross-validation should hide contact types by default: only
    for a thin catalog (a median of fewer than THIN_CATALOG_EXAMPLES examples a type) whose
    data has no out-of-scope rows of its own.

    Labelled out-of-scope rows of the same traffic (`borrowed` rows from elsewhere, e.g.
    another domain's, do not count) already show the in-domain requests the catalog lacks,
    which hidden types only imitate; hiding types next to them double-counts refusals and
    refuses the catalog's own sibling types. A catalog with a hundred or more real messages a
    type was built from its traffic and covers it: hidden types there are siblings of kept
    ones, refusable only by refusing the catalog's own customers (docs/classifier.md)."""
    borrowed_texts = set(borrowed)
    if any(text not in borrowed_texts for text in data.out_of_scope):
        return False
    per_type = Counter(label for _, label in data.examples)
    return bool(per_type) and statistics.median(per_type.values()) < THIN_CATALOG_EXAMPLES


def _type_folds(types: list[str], folds: int) -> dict[str, int]:
    """The fold that hides each contact type; none hidden when too few would remain."""
    if len(types) < 2 * folds:
        return {}
    shuffled = types[:]
    random.Random(1).shuffle(shuffled)
    return {label: i % folds for i, label in enumerate(shuffled)}


def evaluate(train_data: Dataset, test_data: Dataset, oos_label: str, *,
             folds: int = DEFAULT_FOLDS, oos_share: float = DEFAULT_OOS_SHARE,
             hide_types: bool = False, weigh_oos_share: float | None = None,
             progress: Progress = lambda _: None) -> Report:
    _check_enough(train_data, folds)
    choice = cross_validated_choice(train_data, folds, oos_share, progress, hide_types)
    progress(f"  training on all {len(train_data):,} rows")
    started = time.perf_counter()
    model = _fit(train_data, choice.band)
    seconds = time.perf_counter() - started
    scored = _Scored()
    scored.add(model, test_data.labelled(oos_label))
    return _report(scored, [choice.threshold] * len(scored.truth), [choice], [seconds],
                   oos_label, train_data, "test file", folds,
                   weigh_oos_share=weigh_oos_share)


def cross_validate(data: Dataset, oos_label: str, *, folds: int = DEFAULT_FOLDS,
                   oos_share: float = DEFAULT_OOS_SHARE, hide_types: bool = False,
                   unseen_types: bool = False, weigh_oos_share: float | None = None,
                   progress: Progress = lambda _: None) -> Report:
    """Nested cross-validation. With `unseen_types`, each outer fold's model is also trained
    without one fold of contact types, whose held-out rows are scored as out of scope: real
    traffic holds in-domain requests of types the catalog lacks. With `weigh_oos_share`, the
    summary weighs the out-of-scope rows to that share of the scored messages."""
    _check_enough(data, folds)
    rows = data.labelled(oos_label)
    fold = fold_of_each([label for _, label in rows], folds)
    hidden_in = _type_folds(sorted({label for _, label in data.examples}), folds) \
        if unseen_types else {}
    if unseen_types and not hidden_in:
        raise EvalInputError(f"scoring unseen types needs at least {2 * folds} contact types")
    scored, choices, row_thresholds, seconds, unseen_rows = _Scored(), [], [], [], 0
    for k in range(folds):
        unseen = {label for label, f in hidden_in.items() if f == k}
        keep = (fold != k) & np.array([label not in unseen for _, label in rows])
        progress(f"fold {k + 1}/{folds}: {int(keep.sum()):,} rows to train, "
                 f"{int((fold == k).sum()):,} to score")
        part = _subset(data, rows, keep, oos_label)
        _check_enough(part, folds)
        choices.append(cross_validated_choice(part, folds, oos_share, progress, hide_types))
        started = time.perf_counter()
        model = _fit(part, choices[-1].band)
        seconds.append(time.perf_counter() - started)
        held_out = [(text, oos_label if label in unseen else label)
                    for (text, label), f in zip(rows, fold) if f == k]
        unseen_rows += sum(label in unseen for (_, label), f in zip(rows, fold) if f == k)
        scored.add(model, held_out)
        row_thresholds += [choices[-1].threshold] * len(held_out)
    return _report(scored, row_thresholds, choices, seconds, oos_label, data,
                   "cross-validation", folds, unseen_rows, weigh_oos_share)


def _check_enough(data: Dataset, folds: int) -> None:
    labels = {label for _, label in data.examples}
    if len(labels) < 2:
        raise EvalInputError(f"need at least two contact types to train, found {len(labels)}")
    if len(data) < folds * 2:
        raise EvalInputError(f"{len(data)} rows are too few for {folds}-fold cross-validation")
    if folds < 2:
        raise EvalInputError("cross-validation needs at least 2 folds")


def _report(scored: _Scored, row_thresholds: list[float], choices: list[Choice],
            seconds: list[float], oos_label: str, train_data: Dataset, mode: str,
            folds: int, unseen_rows: int = 0, weigh_oos_share: float | None = None) -> Report:
    latency = np.array(scored.latency_ms)
    decided = scored.decided(row_thresholds, oos_label)
    weights = [1.0] * len(scored.truth) if weigh_oos_share is None else \
        share_weights(scored.truth, oos_label, weigh_oos_share)
    rows = tuple(ScoredRow(text, truth, guess, confidence, confidence < threshold, weight)
                 for text, truth, guess, confidence, threshold, weight in
                 zip(scored.texts, scored.truth, scored.guess, scored.confidence,
                     row_thresholds, weights))
    return Report(
        metrics=metrics(scored.truth, decided, oos_label, weights),
        unseen_type_rows=unseen_rows,
        weighted_oos_share=weigh_oos_share,
        predictions=rows,
        confused=most_confused(scored.truth, decided),
        thresholds=[choice.threshold for choice in choices],
        bands=tuple(choice.band for choice in choices),
        encoder_share=float(np.mean(scored.by_encoder)) if train_data.encoder and
        scored.by_encoder else None,
        train_seconds=statistics.fmean(seconds),
        latency_ms_p50=float(np.percentile(latency, 50)) if len(latency) else 0.0,
        latency_ms_p99=float(np.percentile(latency, 99)) if len(latency) else 0.0,
        train_rows=len(train_data.examples) + len(train_data.out_of_scope),
        train_oos_rows=len(train_data.out_of_scope),
        background_rows=len(train_data.background),
        test_rows=len(scored.truth),
        test_oos_rows=sum(t == oos_label for t in scored.truth),
        contact_types=len({label for _, label in train_data.examples}),
        mode=mode,
        folds=folds,
        embeddings=train_data.embedder.name if train_data.embedder else None,
    )


def most_confused(truth: Sequence[str], decided: Sequence[str], top: int = 10
                  ) -> tuple[tuple[str, str, int], ...]:
    """The commonest (expected, decided) pairs among wrong decisions."""
    pairs = Counter((t, d) for t, d in zip(truth, decided) if t != d)
    return tuple((t, d, n) for (t, d), n in
                 sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:top])


def write_predictions(report: Report, path: Path) -> None:
    """One CSV row per scored message: text, expected, predicted, confidence, refused (and
    the row's weight when the report weighs the out-of-scope share)."""
    weighted = report.weighted_oos_share is not None
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["text", "expected", "predicted", "confidence", "refused"]
                        + (["weight"] if weighted else []))
        for row in report.predictions:
            writer.writerow([row.text, row.expected, row.predicted, f"{row.confidence:.4f}",
                             "yes" if row.refused else "no"]
                            + ([f"{row.weight:.6f}"] if weighted else []))


# --- output ----------------------------------------------------------------------------------


def as_dict(report: Report) -> dict:
    m = report.metrics
    return {
        "accuracy": _round(m.accuracy), "macro_f1": _round(m.macro_f1),
        "in_scope_accuracy": _round(m.in_scope_accuracy), "oos_recall": _round(m.oos_recall),
        "mcc": _round(m.mcc), "threshold": report.threshold,
        "thresholds": report.thresholds, "train_seconds": round(report.train_seconds, 3),
        "latency_ms_p50": round(report.latency_ms_p50, 4),
        "latency_ms_p99": round(report.latency_ms_p99, 4),
        "train_rows": report.train_rows, "train_oos_rows": report.train_oos_rows,
        "test_rows": report.test_rows, "test_oos_rows": report.test_oos_rows,
        "contact_types": report.contact_types, "mode": report.mode, "folds": report.folds,
        "embeddings": report.embeddings, "background_rows": report.background_rows,
        "encoder_band": list(report.band) if report.band else None,
        "encoder_bands": [list(b) if b else None for b in report.bands],
        "encoder_share": _round(report.encoder_share),
        "unseen_type_rows": report.unseen_type_rows,
        "weighted_oos_share": report.weighted_oos_share,
        "most_confused": [{"expected": t, "decided": d, "count": n}
                          for t, d, n in report.confused],
    }


def as_table(report: Report) -> str:
    m = report.metrics
    how = ("chosen by cross-validation on the training rows" if report.mode == "test file"
           else f"mean of the {report.folds} folds' own choices "
                f"{min(report.thresholds):.2f}-{max(report.thresholds):.2f}")
    lines = [
        ("scored", f"{report.test_rows:,} rows ({report.test_oos_rows:,} out of scope"
                   + (f", of which {report.unseen_type_rows:,} of unseen types"
                      if report.unseen_type_rows else "") + f"), {report.mode}"),
        *([("estimate", f"out-of-scope rows weighed to {report.weighted_oos_share:.0%} of "
                        "traffic: an estimate, not a test-set figure")]
          if report.weighted_oos_share is not None else []),
        ("trained on", f"{report.train_rows:,} rows ({report.train_oos_rows:,} out of scope), "
                       f"{report.contact_types} contact types, + {report.background_rows:,} "
                       "background out-of-scope texts"),
        ("features", "word and character n-grams" + (f" + {report.embeddings} embeddings"
                                                      if report.embeddings else "")),
        ("accuracy", _cell(m.accuracy)),
        ("macro-F1", _cell(m.macro_f1)),
        ("in-scope accuracy", _cell(m.in_scope_accuracy)),
        ("out-of-scope recall", _cell(m.oos_recall, "n/a (no out-of-scope rows scored)")),
        ("MCC", _cell(m.mcc)),
        ("threshold", f"{report.threshold:.2f} ({how})"),
        *([("encoder band", _band_cell(report))] if report.encoder_share is not None else []),
        ("training time", f"{report.train_seconds:.2f} s"),
        ("latency p50 / p99", f"{report.latency_ms_p50:.3f} / {report.latency_ms_p99:.3f} ms "
                              "per message"),
    ]
    table = "\n".join(f"{name:<20} {value}" for name, value in lines)
    if not report.confused:
        return table
    pairs = [f"  {n:>5}  {t} -> {d}" for t, d, n in report.confused]
    return "\n".join([table, "most confused (count, expected -> decided):", *pairs])


def _band_cell(report: Report) -> str:
    chosen = ", ".join("none" if b is None else f"{b[0]:.2f}-{b[1]:.2f}" for b in report.bands)
    band = report.band
    picked = "none (the n-gram model alone)" if band is None else f"{band[0]:.2f}-{band[1]:.2f}"
    return (f"{picked} (folds: {chosen}); {report.encoder_share:.1%} of scored messages "
            "decided by the encoder")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _cell(value: float | None, missing: str = "n/a") -> str:
    return missing if value is None else f"{value:.4f}"
