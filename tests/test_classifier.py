"""Contact-type detection: features, out of scope, the retail catalog's data, the bank catalog."""

from __future__ import annotations

import csv
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from service.rules.catalog import load_catalog
from service.rules.loader import load_rules
from service.rules.yamlfile import ConfigError
from service.understanding.background import background_texts, without_examples
from service.understanding.classifier import (
    TEMPERATURE,
    Prediction,
    _TokenColumns,
    features,
    train,
    wants_agent,
)
from service.understanding.embeddings import embedder

DATA = Path(__file__).resolve().parent.parent / "routing_rules" / "data"
RETAIL_THRESHOLD = 0.45  # routing_rules/catalog.yaml


def rows(name: str, label: str = "contact_type") -> list[tuple[str, str]]:
    with (DATA / name).open(newline="", encoding="utf-8") as handle:
        return [(row["text"], row[label]) for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def retail():
    """Trained as the retail catalog is: Bitext, CLINC150 order-status phrasings, and the
    shipped background corpus of texts that are none of the contact types."""
    examples = rows("bitext_train.csv") + rows("clinc150_track_order.csv")
    return train(examples, out_of_scope=without_examples(background_texts(), tuple(examples)))


TINY = [("where is my parcel", "track"), ("track my parcel please", "track"),
        ("has my parcel shipped", "track"), ("I want my money back", "refund"),
        ("refund my order", "refund"), ("give me a refund", "refund")]


def test_features_keep_the_shape_of_numbers_but_not_their_value():
    counts = features("Order 12, order 34")
    assert counts["w:order"] == 2 and counts["w:00"] == 2 and counts["b:order 00"] == 2
    assert counts["b:00 order"] == 1 and counts["c: or"] == 2 and counts["c:der "] == 2
    assert "w:12" not in counts and features("order 99") == features("ORDER 12")


def test_wants_agent():
    assert wants_agent("Can I talk to a real person?")
    assert wants_agent("AGENT")
    assert not wants_agent("where is my parcel")


def test_predict_ranks_the_types_best_first():
    prediction = train(TINY).predict("where has my parcel got to", top=2)
    assert isinstance(prediction, Prediction)
    assert prediction.contact_type == "track" and not prediction.out_of_scope
    assert [label for label, _ in prediction.ranked] == ["track", "refund"]
    assert prediction.confidence == prediction.ranked[0][1] > 0.5
    assert sum(p for _, p in prediction.ranked) == pytest.approx(1.0)


def test_three_types_and_the_top_argument():
    examples = TINY + [("change my password", "password"), ("reset password", "password"),
                       ("I forgot my password", "password")]
    prediction = train(examples).predict("forgot the password", top=1)
    assert prediction.contact_type == "password" and len(prediction.ranked) == 1


def test_out_of_scope_texts_take_the_confidence_away():
    classifier = train(TINY, out_of_scope=["hello there", "hi", "what's the weather like",
                                           "tell me a joke", "good morning"])
    greeting = classifier.predict("hello, good morning")
    assert greeting.out_of_scope and greeting.confidence < 0.2
    assert [label for label, _ in greeting.ranked] == ["refund", "track"] or \
        [label for label, _ in greeting.ranked] == ["track", "refund"]  # types only, never OOS
    assert not classifier.predict("track my parcel").out_of_scope


def test_a_message_without_letters_says_nothing_about_why():
    prediction = train(TINY).predict("12345")
    assert prediction.confidence == 0.0 and prediction.out_of_scope
    assert len(prediction.ranked) == 2  # still a menu to offer


def test_retail_held_out_accuracy(retail):
    held_out = rows("bitext_heldout.csv")
    right = sum(retail.predict(text).contact_type == label for text, label in held_out)
    assert right / len(held_out) >= 0.99


def test_retail_held_out_out_of_scope_messages_get_low_confidence(retail):
    texts = [text for text, _ in rows("clinc150_out_of_scope_heldout.csv")]
    low = sum(retail.predict(text).confidence < RETAIL_THRESHOLD for text in texts)
    assert low / len(texts) >= 0.95


@pytest.mark.parametrize("text, contact_type", [
    ("where is my order", "track_order"),
    ("where's my package?", "track_order"),
    ("I forgot my password", "recover_password"),
    ("I want to cancel order 12345", "cancel_order"),
    ("when will my order arrive", "delivery_period"),
])
def test_everyday_retail_phrasings(retail, text, contact_type):
    prediction = retail.predict(text)
    assert (prediction.contact_type, prediction.out_of_scope) == (contact_type, False)
    assert prediction.confidence >= 0.8


@pytest.mark.parametrize("text", ["hi", "hello", "what's the weather", "12345", "thanks",
                                  "tell me a joke", "what time is it"])
def test_not_retail_contacts(retail, text):
    prediction = retail.predict(text)
    assert prediction.confidence < RETAIL_THRESHOLD and prediction.out_of_scope


def test_median_message_costs_well_under_a_millisecond(retail):
    texts = [text for text, _ in rows("bitext_heldout.csv")[:300]]
    costs = []
    for text in texts:
        started = time.perf_counter()
        retail.predict(text)
        costs.append(time.perf_counter() - started)
    assert statistics.median(costs) < 0.001


def reference_probabilities(classifier, text: str, char_block: np.ndarray) -> np.ndarray:
    """The scores computed the plain way, from features() strings, float32 step for step as
    the training matrix is built: what the id-based fast path must reproduce bit for bit."""
    known = [(classifier._vocabulary[f], c) for f, c in features(text).items()
             if f in classifier._vocabulary]
    scores = classifier._bias.copy()
    if known:
        indices = [i for i, _ in known]
        values = (1.0 + np.log(np.array([c for _, c in known], np.float32))) * \
            classifier._idf[indices]
        blocks = char_block[indices]
        norms = np.sqrt(np.bincount(blocks, weights=values * values, minlength=2))
        values = (values / norms[blocks]).astype(np.float32)
        scores = values @ classifier._weights[indices] + classifier._bias
    scores = np.exp(TEMPERATURE * (scores - scores.max()))
    return scores / scores.sum()


def test_fast_path_gives_exactly_the_reference_predictions(retail):
    texts = [text for name in ("bitext_heldout.csv", "clinc150_out_of_scope_heldout.csv")
             for text, _ in rows(name)]
    texts += ["", "?!", "12345", "order order order order", "aaaaaa", "zzqx plorfing wibble",
              "ORDER ١٢٣ café", "don't can't", "track my parcel track my parcel"]
    types = len(retail.labels)
    char_block = np.array([f.startswith("c:") for f in retail._vocabulary], np.int8)
    for text in texts * 2:  # the second round reads the columns of unknown words from cache
        expected = reference_probabilities(retail, text, char_block)
        assert np.array_equal(retail.probabilities(text), expected), text
        order = np.argsort(-expected[:types])[:3]
        prediction = retail.predict(text)
        assert [label for label, _ in prediction.ranked] == [retail.labels[i] for i in order]
        assert [p for _, p in prediction.ranked] == pytest.approx(expected[order], abs=1e-9)
        if any(c.isalpha() for c in text):
            assert prediction.confidence == prediction.ranked[0][1]
            assert prediction.out_of_scope == bool(expected[-1] > expected[order[0]])


def test_embeddings_know_words_the_examples_never_use():
    """No word of these messages is in their type's examples: n-grams alone guess the right
    type without conviction; with sentence embeddings the guess is confident."""
    plain, embedded = train(TINY), train(TINY, embedder=embedder("wordllama"))
    for text, contact_type in [("shipment status?", "track"), ("return the cash", "refund"),
                               ("when will the package arrive", "track")]:
        assert plain.predict(text).confidence < 0.7
        prediction = embedded.predict(text)
        assert (prediction.contact_type, prediction.confidence > 0.75) == (contact_type, True)
    assert embedded.predict("where is my parcel").contact_type == "track"


def test_catalog_embeddings_are_trained_on_rules_load(tmp_path):
    rules_dir = tmp_path / "rules"
    shutil.copytree(DATA.parent, rules_dir, ignore=shutil.ignore_patterns("bank"))
    catalog_file = rules_dir / "catalog.yaml"
    catalog_file.write_text(catalog_file.read_text().replace(
        "\nclassifier:\n", "\nclassifier:\n  embeddings: wordllama\n", 1))
    plain, embedded = load_rules(DATA.parent), load_rules(rules_dir)
    assert embedded.catalog.embeddings == "wordllama" and plain.catalog.embeddings is None
    assert embedded.classifier._embedder is embedder("wordllama")
    assert plain.classifier._embedder is None
    assert embedded.digest != plain.digest  # a reload that turns them on retrains
    assert embedded.classifier.predict("I want to cancel my order").contact_type == \
        "cancel_order"


@pytest.mark.parametrize("value, available, message", [
    ("bert", True, "rules/catalog.yaml:3: unknown embeddings 'bert' (known: wordllama) "
                   "(classifier -> embeddings)"),
    ("wordllama", False, "rules/catalog.yaml:3: embeddings 'wordllama' are not installed; "
                         "install the embeddings extra: pip install 'switchboard[embeddings]' "
                         "(classifier -> embeddings)"),
])
def test_catalog_embeddings_errors(tmp_path, monkeypatch, value, available, message):
    monkeypatch.setattr("service.rules.catalog.installed", lambda name: available)
    write_catalog(tmp_path, f"  embeddings: {value}")
    with pytest.raises(ConfigError) as error:
        load_catalog(tmp_path, "rules")
    assert str(error.value) == message


def test_columns_of_words_outside_the_vocabulary_are_kept_within_a_bound():
    columns = _TokenColumns({"w:ab": 0, "c: a": 1, "c:b ": 2, "c:ba": 3}, limit=2)
    assert dict(columns) == {"ab": (0, 1, 2)}  # vocabulary words up front
    assert columns["ba"] == (3,) and columns["cab"] == (2,) and columns["x"] == ()
    assert len(columns._others) <= 2 and columns["ba"] == (3,)


def write_catalog(directory: Path, classifier_section: str) -> None:
    (directory / "catalog.yaml").write_text(f"""
classifier:
{classifier_section}
contact_types:
  track:
    label: Track
    skills: [orders]
    agent_only: true
    examples: ["where is my parcel", "track my parcel"]
  refund:
    label: Refund
    skills: [billing]
    agent_only: true
    examples: ["I want my money back", "refund please"]
""")


def test_catalog_reads_out_of_scope_data(tmp_path):
    write_catalog(tmp_path, "  threshold: 0.3\n  out_of_scope_data: [oos.csv]")
    (tmp_path / "oos.csv").write_text("text,source\nhello,greeting\nwhat's the weather,weather\n")
    catalog = load_catalog(tmp_path, "rules")
    assert catalog.out_of_scope == ("hello", "what's the weather")
    assert catalog.threshold == 0.3 and len(catalog.training) == 4


@pytest.mark.parametrize("section, oos_file, message", [
    ("  out_of_scope_data: [missing.csv]", None,
     "rules/catalog.yaml:3: out-of-scope file 'missing.csv' does not exist "
     "(classifier -> out_of_scope_data -> 0)"),
    ("  out_of_scope_data: oos.csv", None,
     "rules/catalog.yaml:3: expected a list of CSV files (classifier -> out_of_scope_data)"),
    ("  out_of_scope_data: [oos.csv]", "words\nhello\n",
     "rules/oos.csv:1: expected a column text"),
])
def test_catalog_out_of_scope_data_errors(tmp_path, section, oos_file, message):
    write_catalog(tmp_path, section)
    if oos_file is not None:
        (tmp_path / "oos.csv").write_text(oos_file)
    with pytest.raises(ConfigError) as error:
        load_catalog(tmp_path, "rules")
    assert str(error.value) == message


def test_retail_catalog_trains_against_the_background_corpus_by_default():
    catalog = load_catalog(DATA.parent, "routing_rules")
    assert len(catalog.background) > 1900 and "what's the weather like" not in catalog.training
    assert {"hi", "i have a question", "what is the weather like"} <= set(catalog.background)


def test_background_can_be_turned_off_and_rejects_a_non_boolean(tmp_path):
    write_catalog(tmp_path, "  threshold: 0.3\n  background: false")
    assert load_catalog(tmp_path, "rules").background == ()
    write_catalog(tmp_path, "  threshold: 0.3\n  background: maybe")
    with pytest.raises(ConfigError) as error:
        load_catalog(tmp_path, "rules")
    assert "rules/catalog.yaml:4: background must be true or false (classifier -> background)" \
        in str(error.value)


def test_background_leaves_out_the_catalogs_own_examples(tmp_path):
    write_catalog(tmp_path, "  threshold: 0.3")
    examples = {text for text, _ in load_catalog(tmp_path, "rules").training}
    assert len(background_texts()) > len(without_examples(background_texts(),
                                                          (("Hello", "x"), ("good  Morning", "x"))))
    assert not examples & set(load_catalog(tmp_path, "rules").background)


def test_bank_deployment_is_valid():
    rules = load_rules(DATA.parent / "bank", with_classifier=False)
    assert len(rules.catalog.types) == 77
    assert len(rules.catalog.training) > 10_000 and len(rules.catalog.background) > 1000
    assert rules.tree.decide({"contact_type": "compromised_card", "channel": "sms"}).queue == \
        "fraud"
