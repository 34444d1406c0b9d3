"""A rules directory's own encodings (`switchboard rules encode`): a first load on a new
machine reads the encoder stage's training encodings from the directory instead of encoding
them, `rules check` says when the file is out of date, and the example deployments ship
theirs current."""

from __future__ import annotations

import numpy as np
import pytest

from service.__main__ import main
from service.rules import loader
from service.rules.loader import load_rules, stage_coverage
from service.understanding.encoder import WEIGHTS_SHA256, encoder
from service.understanding.encodings_file import RULES_ENCODINGS, read_encodings, text_keys
from tests.test_encoder import CountingEncoder, write_rules
from tests.test_rules_load_cache import PROBES


@pytest.fixture
def new_machine(tmp_path, monkeypatch):
    """Empty caches, as on a machine that never loaded these rules; the encoder counts."""
    counting = CountingEncoder()
    monkeypatch.setattr(loader, "ENCODINGS_CACHE", tmp_path / "encodings-cache")
    monkeypatch.setattr(loader, "MODELS_CACHE", None)
    monkeypatch.setattr(loader, "_trained_by_digest", {})
    monkeypatch.setattr(loader, "encoder", lambda: counting)
    return counting


def test_a_first_load_encodes_nothing_the_directory_ships(tmp_path, new_machine, capsys):
    directory = write_rules(tmp_path / "rules")
    assert main(["rules", "encode", str(directory)]) == 0
    out = capsys.readouterr()
    assert f"wrote {directory / RULES_ENCODINGS}: 8 texts (8 encoded now" in out.out
    assert "encoded 8 of 8 texts" in out.err  # progress
    new_machine.texts.clear()
    shipped = load_rules(directory)
    assert new_machine.texts == []  # nothing encoded at load
    (directory / RULES_ENCODINGS).unlink()
    loader._trained_by_digest.clear()
    (tmp_path / "fresh").mkdir()
    loader.ENCODINGS_CACHE = tmp_path / "fresh"  # monkeypatch restores the module attribute
    encoded = load_rules(directory)
    assert len(new_machine.texts) == 8
    for text in PROBES:  # float16 vectors train the same model, to rounding
        a, b = shipped.classifier.predict(text), encoded.classifier.predict(text)
        assert a.contact_type == b.contact_type and abs(a.confidence - b.confidence) < 0.01


def test_check_says_when_the_file_is_out_of_date_and_encode_adds_only_new_texts(
        tmp_path, new_machine, capsys):
    directory = write_rules(tmp_path / "rules")
    assert main(["rules", "check", str(directory)]) == 0
    assert RULES_ENCODINGS not in capsys.readouterr().out  # no file: nothing said
    assert main(["rules", "encode", str(directory)]) == 0
    assert main(["rules", "check", str(directory)]) == 0
    assert f"{RULES_ENCODINGS}: holds 8 of the encoder stage's 8 training texts\n" in \
        capsys.readouterr().out
    catalog = directory / "catalog.yaml"
    catalog.write_text(catalog.read_text().replace("when will my package arrive",
                                                   "when will my package arrive, lost parcel"))
    assert stage_coverage(directory) == (8, 9)
    assert main(["rules", "check", str(directory)]) == 0
    assert "holds 8 of the encoder stage's 9 training texts; a first load encodes the other " \
        "1: run switchboard rules encode" in capsys.readouterr().out
    new_machine.texts.clear()
    assert main(["rules", "encode", str(directory)]) == 0
    assert new_machine.texts == ["lost parcel"]
    assert "9 texts (1 encoded now, 8 kept from the file)" in capsys.readouterr().out
    stored = read_encodings(directory / RULES_ENCODINGS, new_machine.weights_sha256)
    fresh = encoder().embed(["lost parcel"])[0]
    assert np.abs(stored[text_keys(["lost parcel"])[0]] - fresh).max() < 2e-3


def test_a_file_made_by_other_weights_is_not_used(tmp_path, new_machine):
    directory = write_rules(tmp_path / "rules")
    assert main(["rules", "encode", str(directory)]) == 0
    assert read_encodings(directory / RULES_ENCODINGS, "other weights") == {}
    assert len(read_encodings(directory / RULES_ENCODINGS, WEIGHTS_SHA256)) == 8


def test_encode_refuses_invalid_rules_and_a_catalog_without_the_encoder(tmp_path, capsys):
    off = write_rules(tmp_path / "off", "encoder: false")
    assert main(["rules", "encode", str(off)]) == 1
    assert "turns the encoder off" in capsys.readouterr().err
    assert not (off / RULES_ENCODINGS).exists()
    bad = write_rules(tmp_path / "bad", "threshold: 2")
    assert main(["rules", "encode", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "catalog.yaml" in err and "threshold" in err and "problem(s)" in err
    assert not (bad / RULES_ENCODINGS).exists()


@pytest.mark.parametrize("directory", ["routing_rules", "routing_rules/bank"])
def test_the_example_deployments_ship_current_encodings(directory):
    """A catalog edited without `rules encode` fails here, not on a user's first start."""
    from pathlib import Path

    stored, needed = stage_coverage(Path(directory))
    assert stored == needed > 0
    shipped = read_encodings(Path(directory) / RULES_ENCODINGS, WEIGHTS_SHA256)
    texts = loader._own_stage_texts(load_rules(Path(directory), with_classifier=False).catalog,
                                    WEIGHTS_SHA256)
    picked = texts[:: max(1, len(texts) // 5)][:5]
    fresh = encoder().embed(picked)
    stored_rows = np.stack([shipped[key] for key in text_keys(picked).tolist()])
    assert np.abs(fresh - stored_rows).max() < 2e-3
