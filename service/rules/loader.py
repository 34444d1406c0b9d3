"""One deployment's rules: catalog, routing tree and the classifier trained from the catalog.

Loading is all or nothing: a `Rules` object exists only when every file is valid, so a
failed reload leaves the running rules untouched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Iterable, Mapping

import numpy as np

from service.conversations.redaction import CARDS_ONLY, Redactor
from service.rules.away_reasons import DEFAULT_REASONS, AwayReasons, load_away_reasons
from service.rules.catalog import Catalog, load_catalog
from service.rules.experiments import NO_EXPERIMENTS, Experiments, load_experiments
from service.rules.flows import NO_FLOWS, Flows, load_flows
from service.rules.redaction import load_redaction
from service.rules.replies import NO_REPLIES, SavedReplies, load_replies
from service.rules.routing import RoutingTree, load_routing_tree
from service.rules.surveys import NO_SURVEYS, Surveys, load_surveys
from service.rules.yamlfile import ConfigError
from service.understanding.background import shipped_encodings
from service.understanding.cascade import Band, CascadeSpec
from service.understanding.classifier import Classifier, stage_texts, train
from service.understanding.embeddings import embedder
from service.understanding.encoder import ENCODINGS_CACHE, cached_encodings, encoder
from service.understanding.encodings_file import (
    RULES_ENCODINGS,
    read_encodings,
    text_keys,
    write_encodings,
)
from service.understanding.model_cache import MODELS_CACHE, load_model, save_model

# flows, redaction, surveys, experiments, replies and away reasons are optional
RULE_FILES = ("catalog.yaml", "routes.yaml", "flows.yaml", "redaction.yaml", "surveys.yaml",
              "experiments.yaml", "replies.yaml", "away_reasons.yaml")


@dataclass(frozen=True)
class Rules:
    directory: Path
    digest: str
    catalog: Catalog
    tree: RoutingTree
    classifier: Classifier | None
    learned: tuple[tuple[str, str], ...] = ()  # examples from agents' corrections and outcomes
    flows: Flows = NO_FLOWS
    files: Mapping[str, str] = field(default_factory=dict)  # the YAML as loaded, by name
    redactor: Redactor = CARDS_ONLY
    surveys: Surveys = NO_SURVEYS
    experiments: Experiments = NO_EXPERIMENTS
    replies: SavedReplies = NO_REPLIES
    away_reasons: AwayReasons = DEFAULT_REASONS


def load_rules(directory: Path, *, with_classifier: bool = True,
               learned: Iterable[tuple[str, str]] = (),
               channels: Collection[str] | None = None) -> Rules:
    """Validate every file (raising ConfigError listing all problems), then train on the
    catalog's examples plus what was learned from live contacts (kept apart, see learning.py).
    `channels`: the channel values routes may name (default: every channel this build has)."""
    display = str(directory).rstrip("/")
    files = rule_files(directory)  # read first: the digest is of what was validated
    flows, catalog = _flows_and_catalog(directory, display)
    tree = load_routing_tree(directory, display, catalog, _served(channels))
    redactor = load_redaction(directory, display)
    surveys = load_surveys(directory, display, catalog.types.keys())
    experiments = load_experiments(directory, display, catalog.types.keys(), flows.flows.keys())
    replies = load_replies(directory, display, catalog.types.keys())
    away_reasons = load_away_reasons(directory, display)
    learned = tuple((text, label) for text, label in learned if label in catalog.types)
    examples = catalog.training + learned
    out_of_scope = catalog.out_of_scope + catalog.background
    training_digest = _training_digest(examples, out_of_scope, catalog.embeddings,
                                       catalog.encoder_band, catalog.encoder_examples)
    classifier = _trained(training_digest, examples, out_of_scope, catalog, directory) \
        if with_classifier else None
    return Rules(directory, _digest(files, training_digest), catalog, tree, classifier,
                 learned, flows, files, redactor, surveys, experiments, replies, away_reasons)


def _served(channels: Collection[str] | None) -> Collection[str]:
    if channels is not None:
        return channels
    from service.channel_list import channel_names  # the channel modules only when asked

    return channel_names()


def rule_files(directory: Path) -> dict[str, str]:
    """The rule files of a directory (the optional ones only when they exist)."""
    return {name: (directory / name).read_text(encoding="utf-8") for name in RULE_FILES
            if (directory / name).exists()}


def _flows_and_catalog(directory: Path, display: str) -> tuple[Flows, Catalog]:
    """Both files' problems at once: a flow's mistake must not hide the catalog's."""
    try:
        flows, problems = load_flows(directory, display), []
    except ConfigError as exc:
        flows, problems = NO_FLOWS, exc.issues
    try:
        catalog = load_catalog(directory, display, None if problems else flows.flows.keys())
    except ConfigError as exc:
        raise ConfigError([*problems, *exc.issues]) from None
    if problems:
        raise ConfigError(problems)
    return flows, catalog


KEPT_MODELS = 2  # the rules in force and a canary's
_trained_by_digest: dict[str, Classifier] = {}


def _trained(training_digest: str, examples: tuple[tuple[str, str], ...],
             out_of_scope: tuple[str, ...], catalog: Catalog, directory: Path) -> Classifier:
    """Training takes seconds; a reload that leaves the examples alone reuses the model, a
    new process the model kept on disk (model_cache.py), and a new training set the encodings
    of the texts it shares with the last one or the rules directory's own (encode_rules)."""
    if training_digest not in _trained_by_digest:
        keep = catalog.hand_picked | {text for text, _ in examples[len(catalog.training):]}
        cascade = _cascade(catalog.encoder_band, catalog.encoder_examples, keep, directory)
        weights = cascade.encoder.weights_sha256 if cascade else ""
        model = None if catalog.embeddings else load_model(
            MODELS_CACHE, training_digest, cascade and cascade.encoder, weights)
        if model is None:
            model = train(examples, out_of_scope=out_of_scope,
                          embedder=embedder(catalog.embeddings) if catalog.embeddings else None,
                          cascade=cascade)
            save_model(MODELS_CACHE, training_digest, model, weights)
        while len(_trained_by_digest) >= KEPT_MODELS:
            del _trained_by_digest[next(iter(_trained_by_digest))]
        _trained_by_digest[training_digest] = model
    return _trained_by_digest[training_digest]


def _cascade(band: Band | None, per_type: int | None = None,
             keep: frozenset[str] = frozenset(), directory: Path | None = None
             ) -> CascadeSpec | None:
    """The encoder stage's spec; `keep`: texts it trains on whatever `per_type` says (the
    catalog's hand-picked examples and the learned ones); `directory`: the rules, whose own
    encodings file (if any) spares encoding the texts it holds."""
    if band is None:
        return None
    model = encoder()
    shipped = read_encodings(directory / RULES_ENCODINGS, model.weights_sha256) \
        if directory is not None else {}
    return CascadeSpec(model, band,
                       lambda texts: cached_encodings(model, texts, ENCODINGS_CACHE, shipped),
                       per_type, frozenset(keep))


@dataclass(frozen=True)
class EncodedRules:
    path: Path
    texts: int  # the encoder stage's training texts the file holds (not the package's own)
    encoded: int  # of those, encoded by this run (the others were in the file already)


class EncoderOff(Exception):
    """The catalog has no encoder stage, so there is nothing to encode."""


def stage_coverage(directory: Path) -> tuple[int, int] | None:
    """(texts the rules directory's encodings file holds, texts the encoder stage trains on
    that the package does not ship), or None if the catalog has no encoder stage."""
    rules = load_rules(directory, with_classifier=False)
    if rules.catalog.encoder_band is None:
        return None
    weights = encoder().weights_sha256
    own = _own_stage_texts(rules.catalog, weights)
    stored = read_encodings(directory / RULES_ENCODINGS, weights)
    return sum(key in stored for key in text_keys(own).tolist()), len(own)


def encode_rules(directory: Path, progress: Callable[[int, int], None] = lambda done, all: None,
                 chunk: int = 256) -> EncodedRules:
    """Write the encoder stage's training encodings into the rules directory (RULES_ENCODINGS),
    so a first load on a new machine encodes none of them. Texts already in the file are kept
    as they are; learned examples are not included (they change as the deployment runs)."""
    rules = load_rules(directory, with_classifier=False)
    if rules.catalog.encoder_band is None:
        raise EncoderOff(f"{directory}: the catalog turns the encoder off (classifier.encoder: "
                         f"false); there is nothing to encode")
    model = encoder()
    texts = _own_stage_texts(rules.catalog, model.weights_sha256)
    keys = text_keys(texts)
    path = directory / RULES_ENCODINGS
    stored = read_encodings(path, model.weights_sha256)
    missing = [i for i, key in enumerate(keys.tolist()) if key not in stored]
    vectors = np.stack([stored.get(key, ZERO) for key in keys.tolist()]) if texts else \
        np.zeros((0, ZERO.size), np.float32)
    for start in range(0, len(missing), chunk):
        rows = missing[start:start + chunk]
        vectors[rows] = model.embed([texts[i] for i in rows])
        progress(start + len(rows), len(missing))
    write_encodings(path, keys, vectors, model.weights_sha256)
    return EncodedRules(path, len(texts), len(missing))


ZERO = np.zeros(384, np.float32)


def _own_stage_texts(catalog: Catalog, weights_sha256: str) -> list[str]:
    """The encoder stage's distinct training texts that the package's encodings do not hold."""
    shipped = shipped_encodings(weights_sha256)
    texts = stage_texts(catalog.training, catalog.out_of_scope + catalog.background,
                        catalog.encoder_examples, catalog.hand_picked)
    unique = list(dict.fromkeys(texts))
    return [t for t, key in zip(unique, text_keys(unique).tolist()) if key not in shipped]


def _training_digest(examples: tuple[tuple[str, str], ...], out_of_scope: tuple[str, ...],
                     embeddings: str | None, encoder_band: Band | None = None,
                     encoder_examples: int | None = None) -> str:
    h = hashlib.sha256(f"embeddings={embeddings}\n".encode() if embeddings else b"")
    if encoder_band is not None:
        h.update(f"encoder_band={encoder_band}\n".encode())
    if encoder_examples is not None:
        h.update(f"encoder_examples={encoder_examples}\n".encode())
    for text, label in examples:
        h.update(f"{label}\t{text}\n".encode())
    for text in out_of_scope:
        h.update(f"~oos\t{text}\n".encode())
    return h.hexdigest()


def _digest(files: Mapping[str, str], training_digest: str) -> str:
    h = hashlib.sha256(training_digest.encode())
    for name in RULE_FILES:
        if name in files:
            h.update(files[name].encode())
    return h.hexdigest()[:16]
