"""`switchboard classify-eval`: accuracy, out-of-scope recall and cost of contact-type detection.

    switchboard classify-eval --train TRAIN.csv [--test TEST.csv] [--text-col C]
        [--label-col C] [--oos-label L] [--oos-data OOS.csv] [--embeddings wordllama]
        [--format table|json]
    switchboard classify-eval --catalog routing_rules/ [--test TEST.csv]

Without --test, nested cross-validation on the training rows. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from service.rules.yamlfile import ConfigError
from service.understanding import classify_eval as ev
from service.understanding.background import background_texts, without_examples
from service.understanding.cascade import MemoEncoder
from service.understanding.embeddings import BACKENDS, EmbeddingsUnavailable, embedder
from service.understanding.encoder import (
    ENCODINGS_CACHE,
    EncoderUnavailable,
    cached_encodings,
    encoder,
)


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "classify-eval", help="measure contact-type detection on labelled messages",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--train", type=Path, metavar="TRAIN.csv",
                        help="labelled training messages (a CSV with text and label columns)")
    source.add_argument("--catalog", type=Path, metavar="DIR",
                        help="a rules directory: train on its catalog, as the service does")
    parser.add_argument("--test", type=Path, action="append", metavar="TEST.csv",
                        help="labelled messages to score (repeatable); without it, "
                             "cross-validation on the training rows")
    parser.add_argument("--text-col", help="text column (default: text, sentence or utterance)")
    parser.add_argument("--label-col",
                        help="label column (default: contact_type, label, intent or category)")
    parser.add_argument("--oos-label", help="label of out-of-scope rows (default: oos, "
                                            "out_of_scope or NO_NODES_DETECTED, if present)")
    parser.add_argument("--oos-data", type=Path, action="append", default=[],
                        metavar="OOS.csv", help="extra out-of-scope texts to train on "
                                                "(a CSV with a text column; repeatable)")
    parser.add_argument("--no-background", action="store_true",
                        help="do not train against the shipped out-of-scope background corpus "
                             "(--catalog follows the catalog's classifier.background)")
    parser.add_argument("--folds", type=int, default=ev.DEFAULT_FOLDS,
                        help=f"cross-validation folds (default {ev.DEFAULT_FOLDS})")
    parser.add_argument("--oos-share", type=float, default=ev.DEFAULT_OOS_SHARE,
                        help="share of out-of-scope messages assumed when choosing the "
                             f"threshold (default {ev.DEFAULT_OOS_SHARE})")
    parser.add_argument("--hide-types", action=argparse.BooleanOptionalAction, default=None,
                        help="also hide some contact types from each cross-validation model "
                             "and count their messages as out of scope, so the threshold "
                             "learns to refuse in-domain requests the catalog does not cover "
                             "(default: on for a thin catalog, a median of fewer than "
                             f"{ev.THIN_CATALOG_EXAMPLES} examples a type, whose training rows "
                             "hold no out-of-scope rows of their own: --train rows labelled "
                             "out of scope, or the catalog's out_of_scope_data)")
    parser.add_argument("--unseen-types", action="store_true",
                        help="without --test: also train each outer fold's model without one "
                             "fold of contact types and score their held-out messages as out "
                             "of scope (in-domain requests the catalog lacks, as real traffic "
                             "has)")
    parser.add_argument("--weigh-oos-share", type=float, metavar="S",
                        help="weigh the scored out-of-scope messages to this share of traffic "
                             "in accuracy, macro-F1 and MCC (an estimate for traffic with that "
                             "share)")
    parser.add_argument("--embeddings", choices=sorted(BACKENDS),
                        help="add pretrained sentence embeddings to the features (needs the "
                             "embeddings extra); --catalog uses the catalog's setting")
    parser.add_argument("--encoder", action=argparse.BooleanOptionalAction, default=None,
                        help="the transformer encoder decides the messages the n-gram model is "
                             "unsure of, in a band chosen by cross-validation (default: on; "
                             "--catalog follows the catalog's classifier.encoder)")
    parser.add_argument("--encoder-examples", type=int, metavar="N",
                        help="train the encoder stage on at most N rows a contact type "
                             "(--catalog follows the catalog's classifier.encoder_examples)")
    parser.add_argument("--predictions", type=Path, metavar="FILE",
                        help="write every scored message to this CSV: text, expected, "
                             "predicted, confidence, refused (and weight with "
                             "--weigh-oos-share)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.set_defaults(func=cmd_classify_eval)


def cmd_classify_eval(args: argparse.Namespace, settings: object = None) -> int:
    try:
        report, note = _run(args)
    except (ev.EvalInputError, ConfigError, EmbeddingsUnavailable, EncoderUnavailable) as exc:
        print(f"switchboard classify-eval: {exc}", file=sys.stderr)
        return 2
    if args.predictions is not None:
        try:
            ev.write_predictions(report, args.predictions)
        except OSError as exc:
            print(f"switchboard classify-eval: cannot write {args.predictions}: {exc.strerror}",
                  file=sys.stderr)
            return 2
    if args.format == "json":
        print(json.dumps(ev.as_dict(report)))
    else:
        print(ev.as_table(report) + (f"\n{note}" if note else ""))
    return 0


def _run(args: argparse.Namespace) -> tuple[ev.Report, str]:
    if not 0 <= args.oos_share <= 1:
        raise ev.EvalInputError("--oos-share must be between 0 and 1")
    if args.weigh_oos_share is not None and not 0 < args.weigh_oos_share < 1:
        raise ev.EvalInputError("--weigh-oos-share must be between 0 and 1 (exclusive)")
    if args.unseen_types and args.test:
        raise ev.EvalInputError("--unseen-types works in cross-validation: drop --test")
    if args.predictions is not None and not args.predictions.parent.is_dir():
        raise ev.EvalInputError(f"no such directory for --predictions: "
                                f"{args.predictions.parent}")
    rows, catalog_oos, catalog_background, embeddings, with_encoder, note = _training_rows(args)
    if args.encoder_examples is not None and args.encoder_examples < 1:
        raise ev.EvalInputError("--encoder-examples must be at least 1")
    per_type, keep = args.encoder_examples, frozenset()
    if args.catalog is not None:
        per_type, keep = _catalog_stage(args.catalog, args.encoder_examples)
    test_rows = [row for path in args.test or ()
                 for row in ev.read_labelled(path, args.text_col, args.label_col)]
    oos_label = ev.oos_label_of(rows + test_rows, args.oos_label)
    train_data = ev.split_out_of_scope(rows, oos_label)
    extra = [t for path in args.oos_data for t in ev.read_texts(path)]
    embeddings = args.embeddings or embeddings
    background = catalog_background if args.catalog is not None else [] \
        if args.no_background else list(without_examples(background_texts(),
                                                          tuple(train_data.examples)))
    with_encoder = with_encoder if args.encoder is None else args.encoder
    train_data = ev.Dataset(train_data.examples, train_data.out_of_scope + catalog_oos + extra,
                            embedder(embeddings) if embeddings else None, background)
    if with_encoder:
        train_data = ev.Dataset(train_data.examples, train_data.out_of_scope,
                                train_data.embedder, background, _memo_encoder(train_data),
                                per_type, keep)
    hide = ev.hides_types(train_data, extra) if args.hide_types is None else args.hide_types
    _progress(f"threshold: contact types {'hidden' if hide else 'not hidden'} in its "
              "cross-validation")
    options = dict(folds=args.folds, oos_share=args.oos_share, hide_types=hide,
                   progress=_progress)
    if not args.test:
        _progress(f"cross-validating on {len(train_data):,} rows, {args.folds} folds")
        return ev.cross_validate(train_data, oos_label, unseen_types=args.unseen_types,
                                 weigh_oos_share=args.weigh_oos_share, **options), note
    _warn_unknown_labels(train_data, test_rows, oos_label)
    _progress(f"training on {len(train_data):,} rows, scoring {len(test_rows):,}")
    return ev.evaluate(train_data, ev.split_out_of_scope(test_rows, oos_label), oos_label,
                       weigh_oos_share=args.weigh_oos_share, **options), note


def _catalog_stage(directory: Path, per_type: int | None) -> tuple[int | None, frozenset[str]]:
    """The catalog's cap on the encoder stage's rows (unless given) and its hand-picked
    examples, which the stage trains on whatever the cap."""
    from service.rules.catalog import load_catalog

    catalog = load_catalog(directory, str(directory).rstrip("/"))
    return (catalog.encoder_examples if per_type is None else per_type), catalog.hand_picked


def _memo_encoder(data: ev.Dataset) -> MemoEncoder:
    """The encoder, with the training rows' encodings read from the cache the service uses
    (or encoded once and written there): an evaluation run again is not encoded again."""
    model = encoder()
    texts = [text for text, _ in data.examples] + data.out_of_scope + data.background
    memo = MemoEncoder(model)
    memo.remember(texts, cached_encodings(model, texts, ENCODINGS_CACHE))
    return memo


def _training_rows(args: argparse.Namespace
                   ) -> tuple[list[tuple[str, str]], list[str], list[str], str | None, bool, str]:
    """Labelled training rows, the catalog's out-of-scope texts, background, embeddings,
    whether the encoder is on, and a note for the table."""
    if args.train is not None:
        rows = ev.read_labelled(args.train, args.text_col, args.label_col)
        return rows, [], [], None, True, ""
    from service.rules.catalog import load_catalog

    if not (args.catalog / "catalog.yaml").is_file():
        raise ev.EvalInputError(f"no such file: {args.catalog / 'catalog.yaml'}")
    catalog = load_catalog(args.catalog, str(args.catalog).rstrip("/"))
    note = f"{'catalog threshold':<20} {catalog.threshold:.2f} (configured in catalog.yaml)"
    if catalog.encoder_band is not None:
        low, high = catalog.encoder_band
        note += f"\n{'catalog encoder band':<20} {low:.2f}-{high:.2f} (configured in catalog.yaml)"
    return (list(catalog.training), list(catalog.out_of_scope), list(catalog.background),
            catalog.embeddings, catalog.encoder_band is not None, note)


def _warn_unknown_labels(train_data: ev.Dataset, test_rows: list[tuple[str, str]],
                         oos_label: str) -> None:
    known = {label for _, label in train_data.examples} | {oos_label}
    unknown = sorted({label for _, label in test_rows} - known)
    if unknown:
        _progress(f"warning: {len(unknown)} test label(s) never seen in training, always "
                  f"scored wrong: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
