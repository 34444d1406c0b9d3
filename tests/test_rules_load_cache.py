"""What makes a rules load fast: the background corpus's encodings ship with the package,
and a trained model is kept on disk for the next process (load_tests/rules_load.py measures
both)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from service.rules import loader
from service.rules.loader import load_rules
from service.rules.yamlfile import ConfigError
from service.understanding import background
from service.understanding.background import background_texts, shipped_encodings
from service.understanding.cascade import stage_sample
from service.understanding.encoder import WEIGHTS_SHA256, cached_encodings, encoder
from tests.test_encoder import CountingEncoder, write_rules

PROBES = ["where is my parcel", "I would like my money back", "hi", "what's the weather",
          "my package has not arrived", "12345"]


def test_the_shipped_encodings_are_the_encoders_own_for_this_corpus():
    texts = background_texts()
    shipped = shipped_encodings(WEIGHTS_SHA256)
    assert len(shipped) == len(set(texts))
    picked = [texts[i] for i in range(0, len(texts), len(texts) // 7)]
    fresh = encoder().embed(picked)
    stored = np.stack([shipped[k] for k in background.text_keys(picked).tolist()])
    assert np.abs(fresh - stored).max() < 2e-3  # float16
    assert shipped_encodings("another weights hash") == {}


def test_the_corpus_is_never_encoded_and_a_changed_corpus_is(monkeypatch):
    counting = CountingEncoder()
    corpus = list(background_texts()[:50])
    cached_encodings(counting, [*corpus, "where is my parcel"], None)
    assert counting.texts == ["where is my parcel"]
    changed = (*background_texts()[:-1], "a row added to the corpus")
    monkeypatch.setattr(background, "background_texts", lambda: changed)
    background.shipped_encodings.cache_clear()
    try:
        assert shipped_encodings(WEIGHTS_SHA256) == {}  # made from another corpus: unused
    finally:
        background.shipped_encodings.cache_clear()


@pytest.fixture
def caches(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "ENCODINGS_CACHE", tmp_path / "encodings")
    monkeypatch.setattr(loader, "MODELS_CACHE", tmp_path / "models")
    monkeypatch.setattr(loader, "_trained_by_digest", {})
    return tmp_path / "models"


def test_a_new_process_loads_the_model_kept_on_disk_instead_of_training(tmp_path, caches,
                                                                        monkeypatch):
    rules_dir = write_rules(tmp_path / "rules", "encoder_band: [0.0, 1.0]")
    first = load_rules(rules_dir)
    assert len(list(caches.glob("model-*.npz"))) == 1
    loader._trained_by_digest.clear()  # as a new process
    monkeypatch.setattr(loader, "train", lambda *a, **k: pytest.fail("trained again"))
    again = load_rules(rules_dir)
    assert again.classifier is not first.classifier
    for text in PROBES:
        assert again.classifier.predict(text) == first.classifier.predict(text)
        assert again.classifier.decided_by_encoder(text) == \
            first.classifier.decided_by_encoder(text)


def test_a_changed_catalog_or_a_damaged_file_trains_again(tmp_path, caches, monkeypatch):
    rules_dir = write_rules(tmp_path / "rules")
    load_rules(rules_dir)
    trained = []
    real_train = loader.train
    monkeypatch.setattr(loader, "train", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    loader._trained_by_digest.clear()
    load_rules(write_rules(rules_dir, "encoder: false"))  # another training set
    assert trained == [1] and len(list(caches.glob("model-*.npz"))) == 2
    for path in caches.glob("model-*.npz"):
        path.write_bytes(b"not a model")
    loader._trained_by_digest.clear()
    rules = load_rules(rules_dir)
    assert trained == [1, 1]
    assert rules.classifier.predict("where is my parcel").contact_type == "track"


def test_the_stage_sample_is_stable_and_caps_only_large_types():
    texts = [f"row {n}" for n in range(10)] + ["a", "b"] + [f"oos {n}" for n in range(6)]
    targets = ["big"] * 10 + ["small"] * 2 + ["~oos"] * 6
    picked = stage_sample(texts, targets, 4, unlimited={"~oos"})
    assert Counter(targets[i] for i in picked) == {"big": 4, "small": 2, "~oos": 6}
    order = list(reversed(range(len(texts))))
    again = stage_sample([texts[i] for i in order], [targets[i] for i in order], 4, {"~oos"})
    assert sorted(texts[order[i]] for i in again) == sorted(texts[i] for i in picked)
    assert stage_sample(texts, targets, None) == list(range(len(texts)))


def test_a_catalog_caps_the_encoder_stages_rows_and_encodes_only_those(tmp_path, caches,
                                                                       monkeypatch):
    counting = CountingEncoder()
    monkeypatch.setattr(loader, "encoder", lambda: counting)
    directory = write_rules(tmp_path / "rules", "encoder_examples: 2")
    (directory / "data").mkdir()
    (directory / "data" / "more.csv").write_text("text,contact_type\n" + "".join(
        f"parcel question {n},track\nmoney back please {n},refund\n" for n in range(5)))
    with (directory / "catalog.yaml").open("a") as catalog:
        catalog.write("training_data:\n  - data/more.csv\n")
    rules = load_rules(directory)
    assert rules.catalog.encoder_examples == 2
    # the four hand-picked examples of each type, and two of the file's five
    assert len(counting.texts) == 12
    assert set(rules.catalog.hand_picked) <= set(counting.texts)
    assert rules.classifier.predict("where is my parcel").contact_type == "track"
    for bad in ("encoder_examples: 0", "encoder_examples: many"):
        with pytest.raises(ConfigError, match="encoder_examples must be a whole number"):
            load_rules(write_rules(tmp_path / "bad", bad), with_classifier=False)


def test_hand_picked_texts_are_always_in_the_stage_sample():
    texts = [f"row {n}" for n in range(10)]
    picked = stage_sample(texts, ["big"] * 10, 2, keep={"row 7"})
    assert "row 7" in [texts[i] for i in picked] and len(picked) == 3
