"""`classify-eval`: metrics on small known inputs, threshold choice, folds, input errors, CLI."""

from __future__ import annotations

import argparse
import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score, matthews_corrcoef

from service.understanding import classify_eval as ev
from service.understanding.cli import add_parser

TRUTH = ["a", "a", "b", "oos", "oos"]
GUESS = ["a", "b", "b", "oos", "a"]


def test_metrics_on_a_small_known_input():
    m = ev.metrics(TRUTH, GUESS, "oos")
    assert m.accuracy == pytest.approx(3 / 5)
    assert m.in_scope_accuracy == pytest.approx(2 / 3)
    assert m.oos_recall == pytest.approx(1 / 2)
    # F1: a 2*1/(2+1+1), b 2*1/(2+1), oos 2*1/(2+1)
    assert m.macro_f1 == pytest.approx((1 / 2 + 2 / 3 + 2 / 3) / 3)
    # confusion [[1,1,0],[0,1,0],[1,0,1]]: (3*5 - t.p) / sqrt((25 - p.p)(25 - t.t)) = 7/16
    assert m.mcc == pytest.approx(7 / 16)


def test_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(3)
    truth = list(rng.choice(["a", "b", "c", "oos"], 200))
    guess = [t if rng.random() < 0.7 else str(rng.choice(["a", "b", "c", "oos"])) for t in truth]
    m = ev.metrics(truth, guess, "oos")
    assert m.mcc == pytest.approx(matthews_corrcoef(truth, guess))
    assert m.macro_f1 == pytest.approx(f1_score(truth, guess, average="macro"))


def test_metrics_edge_cases():
    perfect = ev.metrics(["a", "b"], ["a", "b"], "oos")
    assert (perfect.accuracy, perfect.macro_f1, perfect.mcc) == (1.0, 1.0, 1.0)
    assert perfect.oos_recall is None and perfect.in_scope_accuracy == 1.0
    constant = ev.metrics(["a", "b", "oos"], ["a", "a", "a"], "oos")
    assert constant.mcc == 0.0 and constant.oos_recall == 0.0
    assert ev.metrics(["oos"], ["oos"], "oos").in_scope_accuracy is None


def kinds(*names: str) -> np.ndarray:
    return np.array(names)


def test_threshold_balances_right_answers_and_refusals():
    # in scope: 0.9 right, 0.8 right, 0.3 wrong; out of scope: 0.2, 0.5.
    # Score is 1/2 * 2/3 + 1/2 * 1 for every threshold in (0.5, 0.8]: the middle is 0.66.
    threshold = ev.choose_threshold(
        np.array([0.9, 0.8, 0.3, 0.2, 0.5]), np.array([True, True, False, False, False]),
        kinds(ev.IN_SCOPE, ev.IN_SCOPE, ev.IN_SCOPE, ev.OUT_OF_SCOPE, ev.OUT_OF_SCOPE))
    assert threshold == 0.66


def test_threshold_also_refuses_unseen_types():
    # An unseen type at 0.7 moves the best range to (0.7, 0.8].
    threshold = ev.choose_threshold(
        np.array([0.9, 0.8, 0.2, 0.5, 0.7]), np.array([True, True, False, False, False]),
        kinds(ev.IN_SCOPE, ev.IN_SCOPE, ev.OUT_OF_SCOPE, ev.OUT_OF_SCOPE, ev.UNSEEN_TYPE))
    assert threshold == 0.76


def test_threshold_without_anything_to_refuse_keeps_every_right_answer():
    threshold = ev.choose_threshold(np.array([0.9, 0.8]), np.array([True, True]),
                                    kinds(ev.IN_SCOPE, ev.IN_SCOPE))
    assert threshold == 0.41  # the middle of 0.01-0.80


def test_threshold_share_moves_it():
    confidence = np.array([0.9, 0.4, 0.3, 0.6])
    correct = np.array([True, True, False, False])
    kind = kinds(ev.IN_SCOPE, ev.IN_SCOPE, ev.OUT_OF_SCOPE, ev.OUT_OF_SCOPE)
    assert ev.choose_threshold(confidence, correct, kind, oos_share=0.2) == 0.36  # (0.3, 0.4]
    assert ev.choose_threshold(confidence, correct, kind, oos_share=0.8) == 0.76  # (0.6, 0.9]


def test_folds_spread_each_label_evenly():
    labels = ["a"] * 7 + ["b"] * 3
    fold = ev.fold_of_each(labels, 3)
    assert sorted(np.bincount(fold[:7], minlength=3)) == [2, 2, 3]
    assert sorted(np.bincount(fold[7:], minlength=3)) == [1, 1, 1]
    assert sorted(np.bincount(fold, minlength=3)) == [3, 3, 4]
    assert (fold == ev.fold_of_each(labels, 3)).all()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_labelled_finds_usual_columns(tmp_path):
    path = write(tmp_path / "hint.csv", "\ufeffsentence,label,\nhello there,GREET,\n ,X,\n")
    assert ev.read_labelled(path) == [("hello there", "GREET")]
    assert ev.read_labelled(path, "label", "sentence") == [("GREET", "hello there"), ("X", " ")]


@pytest.mark.parametrize("content, columns, message", [
    ("text,intent\nhi,a\n", ("body", None), "has no column 'body' (columns: text, intent)"),
    ("words,intent\nhi,a\n", (None, None), "no text column among words, intent; name it with "
                                           "--text-col"),
    ("text,kind\nhi,a\n", (None, None), "no label column among text, kind; name it with "
                                        "--label-col"),
])
def test_read_labelled_errors(tmp_path, content, columns, message):
    with pytest.raises(ev.EvalInputError, match=re.escape(message)):
        ev.read_labelled(write(tmp_path / "train.csv", content), *columns)


def test_oos_label_is_found_or_given():
    assert ev.oos_label_of([("x", "a"), ("y", "NO_NODES_DETECTED")], None) == "NO_NODES_DETECTED"
    assert ev.oos_label_of([("x", "a")], None) == "oos"
    assert ev.oos_label_of([("x", "a")], "none") == "none"


PHRASES = {
    "track": ["where is my parcel", "track my parcel", "has my parcel shipped", "parcel status",
              "where is my package now", "track package", "is my parcel on its way",
              "when does my parcel come", "locate my parcel", "parcel tracking please"],
    "refund": ["I want my money back", "refund please", "give me a refund", "refund my order",
               "how do I get a refund", "money back please", "can I have a refund",
               "request a refund", "refund for my purchase", "I need a refund"],
    "password": ["I forgot my password", "reset password", "change my password",
                 "password reset please", "cannot remember password", "new password",
                 "lost my password", "password help", "recover my password",
                 "how to reset the password"],
    "oos": ["hello", "hi there", "what's the weather", "tell me a joke", "good morning",
            "what time is it", "play some music", "how are you", "book a table",
            "who are you"],
}


@pytest.fixture
def train_csv(tmp_path) -> Path:
    lines = ["text,intent"] + [f"{t},{label}" for label, ts in PHRASES.items() for t in ts]
    return write(tmp_path / "train.csv", "\n".join(lines) + "\n")


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="switchboard")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["classify-eval", *argv])
    return args.func(args, None)


def test_cli_cross_validates_without_a_test_file(train_csv, capsys):
    assert run_cli("--train", str(train_csv), "--format", "json") == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["mode"] == "cross-validation" and len(report["thresholds"]) == 5
    assert report["train_rows"] == 40 and report["train_oos_rows"] == 10
    assert report["test_rows"] == 40 and report["test_oos_rows"] == 10
    assert report["contact_types"] == 3
    assert report["accuracy"] >= 0.6 and -1 <= report["mcc"] <= 1
    for key in ("macro_f1", "in_scope_accuracy", "oos_recall", "threshold", "train_seconds",
                "latency_ms_p50", "latency_ms_p99"):
        assert report[key] is not None
    assert "fold 5/5" in err


def test_cli_scores_a_test_file_as_a_table(train_csv, tmp_path, capsys):
    test = write(tmp_path / "test.csv", "text,contact_type\nwhere's my parcel,track\n"
                                        "I'd like a refund,refund\nhow's the weather,oos\n")
    assert run_cli("--train", str(train_csv), "--test", str(test)) == 0
    out = capsys.readouterr().out
    for name in ("accuracy", "macro-F1", "in-scope accuracy", "out-of-scope recall", "MCC",
                 "threshold", "training time", "latency p50 / p99"):
        assert f"\n{name} " in f"\n{out}"
    assert "3 rows (1 out of scope), test file" in out


def test_cli_evaluates_a_catalog(tmp_path, capsys):
    examples = "\n".join(f"      - {json.dumps(t)}" for t in PHRASES["track"])
    refunds = "\n".join(f"      - {json.dumps(t)}" for t in PHRASES["refund"])
    write(tmp_path / "catalog.yaml", f"""
classifier:
  threshold: 0.4
  out_of_scope_data: [oos.csv]
contact_types:
  track:
    label: Track
    skills: [orders]
    agent_only: true
    examples:
{examples}
  refund:
    label: Refund
    skills: [billing]
    agent_only: true
    examples:
{refunds}
""")
    write(tmp_path / "oos.csv", "text\n" + "\n".join(PHRASES["oos"]) + "\n")
    test = write(tmp_path / "test.csv", "text,contact_type\nwhere's my parcel,track\n"
                                        "good evening,out_of_scope\n")
    assert run_cli("--catalog", str(tmp_path), "--test", str(test), "--format", "json") == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["train_rows"], report["train_oos_rows"], report["test_oos_rows"]) == (30, 10, 1)


def test_cli_with_embeddings_says_so_and_scores_unseen_wording(train_csv, tmp_path, capsys):
    test = write(tmp_path / "test.csv", "text,contact_type\nshipment status?,track\n"
                                        "return the cash,refund\n")
    assert run_cli("--train", str(train_csv), "--test", str(test), "--embeddings", "wordllama",
                   "--no-background",
                   "--format", "json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["embeddings"] == "wordllama" and report["in_scope_accuracy"] == 1.0
    assert run_cli("--train", str(train_csv), "--test", str(test)) == 0
    assert "\nfeatures             word and character n-grams\n" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--train", "{tmp}/missing.csv"], "no such file: {tmp}/missing.csv"),
    (["--train", "{train}", "--label-col", "topic"], "has no column 'topic'"),
    (["--train", "{train}", "--test", "{tmp}/nope.csv"], "no such file: {tmp}/nope.csv"),
    (["--catalog", "{tmp}/rules"], "no such file: {tmp}/rules/catalog.yaml"),
    (["--train", "{train}", "--folds", "1"], "at least 2 folds"),
])
def test_cli_input_errors_exit_2_without_a_traceback(train_csv, tmp_path, capsys, argv,
                                                     message):
    argv = [a.format(tmp=tmp_path, train=train_csv) for a in argv]
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and "Traceback" not in err


def test_unseen_types_take_part_when_there_are_enough(tmp_path):
    words = ["parcel", "refund", "password", "invoice", "address", "account", "voucher",
             "return", "delivery", "payment"]
    examples = [(f"{prefix} {word}", word) for word in words
                for prefix in ("help with my", "question about", "problem with my", "my",
                               "about the", "sort out my")]
    threshold = ev.cross_validated_threshold(ev.Dataset(examples, ["hi", "hello", "bye", "ok"]),
                                             2, 0.5, lambda _: None, hide_types=True)
    assert 0 < threshold < 1
    assert ev._type_folds(words, 2) != {} and ev._type_folds(words[:3], 2) == {}


def test_the_background_is_scored_only_when_no_type_is_hidden():
    data = ev.Dataset([("my parcel", "parcel"), ("a refund", "refund")], ["not ours"],
                      background=["hello", "what's the weather"])
    scored = {text for text, label in ev.threshold_data(data, False).labelled("oos")
              if label == "oos"}
    assert scored == {"not ours", "hello", "what's the weather"}
    hidden = ev.threshold_data(data, True)
    assert {text for text, label in hidden.labelled("oos") if label == "oos"} == {"not ours"}
    assert hidden.background == data.background  # it still trains every fold's model


def test_predictions_file_rows_match_the_summary_and_the_confused_pairs(train_csv, tmp_path,
                                                                        capsys):
    test = write(tmp_path / "test.csv", "text,intent\n" + "\n".join([
        "where is my parcel today,track", "refund me now,refund", "my password is lost,password",
        "parcel refund,track", "hello there,oos", "what's the weather like,oos",
        "please refund the parcel,password", "my password for the refund,track"]) + "\n")
    out_file = tmp_path / "predictions.csv"
    assert run_cli("--train", str(train_csv), "--test", str(test), "--predictions", str(out_file),
                   "--format", "json") == 0
    report = json.loads(capsys.readouterr().out)
    with out_file.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["text"] for r in rows][:2] == ["where is my parcel today", "refund me now"]
    assert len(rows) == report["test_rows"] == 8
    decided = ["oos" if r["refused"] == "yes" else r["predicted"] for r in rows]
    expected = [r["expected"] for r in rows]
    right = [e == d for e, d in zip(expected, decided)]
    assert report["accuracy"] == pytest.approx(sum(right) / len(rows), abs=1e-4)
    in_scope = [ok for ok, e in zip(right, expected) if e != "oos"]
    assert report["in_scope_accuracy"] == pytest.approx(sum(in_scope) / len(in_scope), abs=1e-4)
    refused = [r["refused"] == "yes" for r in rows if r["expected"] == "oos"]
    assert report["oos_recall"] == pytest.approx(sum(refused) / len(refused), abs=1e-4)
    assert report["mcc"] == pytest.approx(matthews_corrcoef(expected, decided), abs=1e-4)
    for r in rows:  # refused exactly when under the reported threshold
        assert (float(r["confidence"]) < report["threshold"]) == (r["refused"] == "yes")
    wrong = Counter((e, d) for e, d in zip(expected, decided) if e != d)
    assert wrong, "the test rows were meant to hold some errors"
    assert {(p["expected"], p["decided"]): p["count"] for p in report["most_confused"]} == wrong


def test_predictions_into_a_missing_directory_is_refused_before_training(train_csv, tmp_path,
                                                                          capsys):
    assert run_cli("--train", str(train_csv), "--predictions",
                   str(tmp_path / "nowhere" / "p.csv")) == 2
    assert "no such directory for --predictions" in capsys.readouterr().err


WORDS = ["parcel", "refund", "password", "invoice", "address", "account", "voucher", "return",
         "delivery", "payment"]


@pytest.fixture
def ten_types_csv(tmp_path) -> Path:
    prefixes = ("help with my", "question about", "problem with my", "my", "about the",
                "sort out my", "i need my", "what about my")
    lines = ["text,intent"] + [f"{prefix} {word},{word}" for word in WORDS for prefix in prefixes]
    lines += [f"{t},oos" for t in ("hello", "hi there", "what's the weather", "tell me a joke",
                                   "good morning", "play some music", "how are you",
                                   "who are you")]
    return write(tmp_path / "ten.csv", "\n".join(lines) + "\n")


def test_weighted_metrics_agree_with_scikit_learn():
    weights = ev.share_weights(TRUTH, "oos", 0.7)
    assert sum(w for w, t in zip(weights, TRUTH) if t == "oos") / sum(weights) == \
        pytest.approx(0.7)
    assert sum(weights) == pytest.approx(len(TRUTH))
    m = ev.metrics(TRUTH, GUESS, "oos", weights)
    right = [t == g for t, g in zip(TRUTH, GUESS)]
    assert m.accuracy == pytest.approx(np.average(right, weights=weights))
    assert m.mcc == pytest.approx(matthews_corrcoef(TRUTH, GUESS, sample_weight=weights))
    assert m.macro_f1 == pytest.approx(f1_score(TRUTH, GUESS, average="macro",
                                                sample_weight=weights))
    assert m.in_scope_accuracy == pytest.approx(2 / 3) and m.oos_recall == pytest.approx(0.5)
    assert ev.metrics(TRUTH, GUESS, "oos", [1.0] * 5) == ev.metrics(TRUTH, GUESS, "oos")
    with pytest.raises(ev.EvalInputError, match="both in-scope and out-of-scope"):
        ev.share_weights(["a", "b"], "oos", 0.5)


def test_unseen_types_estimate_rows_match_the_weighted_summary(ten_types_csv, tmp_path, capsys):
    out_file = tmp_path / "estimate.csv"
    assert run_cli("--train", str(ten_types_csv), "--folds", "2", "--no-encoder",
                   "--unseen-types", "--weigh-oos-share", "0.6", "--predictions",
                   str(out_file), "--format", "json") == 0
    report = json.loads(capsys.readouterr().out)
    with out_file.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == report["test_rows"] == 88
    # half the types are hidden from each outer fold's model: their held-out rows, 40 of
    # them, must be refused, next to the file's own 8 out-of-scope rows
    unseen = [r for r in rows if r["expected"] == "oos" and r["text"].split()[-1] in WORDS]
    assert len(unseen) == report["unseen_type_rows"] == 40
    assert report["test_oos_rows"] == 48 and report["weighted_oos_share"] == 0.6
    weights = [float(r["weight"]) for r in rows]
    expected = [r["expected"] for r in rows]
    assert sum(w for w, e in zip(weights, expected) if e == "oos") / sum(weights) == \
        pytest.approx(0.6, abs=1e-4)
    decided = ["oos" if r["refused"] == "yes" else r["predicted"] for r in rows]
    right = [e == d for e, d in zip(expected, decided)]
    assert report["accuracy"] == pytest.approx(np.average(right, weights=weights), abs=1e-4)
    assert report["mcc"] == pytest.approx(
        matthews_corrcoef(expected, decided, sample_weight=weights), abs=1e-4)
    refused = [r["refused"] == "yes" for r in rows if r["expected"] == "oos"]
    assert report["oos_recall"] == pytest.approx(sum(refused) / len(refused), abs=1e-4)
    in_scope = [ok for ok, e in zip(right, expected) if e != "oos"]
    assert report["in_scope_accuracy"] == pytest.approx(sum(in_scope) / len(in_scope), abs=1e-4)
    # unweighted, the same rows give the plain share of right decisions
    assert run_cli("--train", str(ten_types_csv), "--folds", "2", "--no-encoder",
                   "--unseen-types", "--format", "json") == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["unseen_type_rows"] == 40 and plain["weighted_oos_share"] is None
    assert plain["oos_recall"] == report["oos_recall"]


def test_unseen_types_estimate_is_labelled_in_the_table(ten_types_csv, capsys):
    assert run_cli("--train", str(ten_types_csv), "--folds", "2", "--no-encoder",
                   "--unseen-types", "--weigh-oos-share", "0.42") == 0
    out = capsys.readouterr().out
    assert "of which 40 of unseen types" in out
    assert "weighed to 42% of traffic: an estimate, not a test-set figure" in out


@pytest.mark.parametrize("extra, message", [
    (["--unseen-types", "--test", "TRAIN"], "--unseen-types works in cross-validation"),
    (["--weigh-oos-share", "1"], "--weigh-oos-share must be between 0 and 1"),
    (["--unseen-types", "--folds", "6"], "needs at least 12 contact types"),
])
def test_unseen_types_estimate_input_errors(ten_types_csv, capsys, extra, message):
    argv = [str(ten_types_csv) if a == "TRAIN" else a for a in extra]
    assert run_cli("--train", str(ten_types_csv), "--no-encoder", *argv) == 2
    assert message in capsys.readouterr().err


def test_types_are_hidden_by_default_only_without_out_of_scope_rows_of_its_own(
        ten_types_csv, tmp_path, capsys):
    examples = [("my parcel", "parcel"), ("a refund", "refund")]
    assert ev.hides_types(ev.Dataset(examples))
    assert not ev.hides_types(ev.Dataset(examples, ["hello"]))
    assert ev.hides_types(ev.Dataset(examples, ["hello"]), borrowed=["hello"])
    # a catalog built from its traffic (a median of THIN_CATALOG_EXAMPLES rows a type or more)
    # covers it: its types are not hidden, whatever else it has
    rich = [(f"parcel {i}", "parcel") for i in range(ev.THIN_CATALOG_EXAMPLES)] + \
        [(f"refund {i}", "refund") for i in range(ev.THIN_CATALOG_EXAMPLES)]
    assert not ev.hides_types(ev.Dataset(rich))
    assert ev.hides_types(ev.Dataset(rich[1:-1]))
    in_scope_only = write(tmp_path / "in_scope.csv", "\n".join(
        line for line in ten_types_csv.read_text().splitlines() if not line.endswith(",oos"))
        + "\n")
    other_domain = write(tmp_path / "other.csv", "text\nbook a flight\nset an alarm\n")
    thresholds = {}
    for train, extra, hidden in ((ten_types_csv, [], False), (in_scope_only, [], True),
                                 (in_scope_only, ["--oos-data", str(other_domain)], True),
                                 (ten_types_csv, ["--hide-types"], True),
                                 (in_scope_only, ["--no-hide-types"], False),
                                 (ten_types_csv, ["--no-hide-types"], False),
                                 (in_scope_only, ["--hide-types"], True)):
        assert run_cli("--train", str(train), "--folds", "2", "--no-encoder", *extra,
                       "--format", "json") == 0
        out, err = capsys.readouterr()
        assert f"contact types {'hidden' if hidden else 'not hidden'}" in err, (train, extra)
        thresholds[train.name, tuple(extra)] = json.loads(out)["thresholds"]
    # the default is the forced choice it names, and that choice matters
    assert thresholds["ten.csv", ()] == thresholds["ten.csv", ("--no-hide-types",)] != \
        thresholds["ten.csv", ("--hide-types",)]
    assert thresholds["in_scope.csv", ()] == thresholds["in_scope.csv", ("--hide-types",)] != \
        thresholds["in_scope.csv", ("--no-hide-types",)]
