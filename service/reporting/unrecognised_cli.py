"""`switchboard unrecognised`: the clusters of unrecognised traffic, and adopting one.

    switchboard unrecognised [report] [--from F] [--to T] [--format table|json]
    switchboard unrecognised adopt CLUSTER_ID --type TYPE [--new [--label L] [--skill S ...]]
                                   [--rules DIR] [--from F] [--to T]

`adopt` clusters the same window's messages again (the same window as the report it follows:
a cluster's id is a digest of its first message, so it holds while that does) and writes the
cluster's messages into the rules directory (service/rules/adopt.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from service.infra.cli_support import fail, with_database
from service.reporting import reports
from service.reporting.reports import BadWindow
from service.settings import Settings


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "unrecognised", help="what customers said that was refused, clarified, escalated for "
        "low confidence or corrected at wrap-up, in clusters; adopt one as training examples")
    parser.set_defaults(func=cmd_report, start=None, end=None, format="table", limit=50)
    actions = parser.add_subparsers(dest="unrecognised_command", required=False)
    report = actions.add_parser("report", help="the clusters (the default)")
    _window_options(report)
    report.add_argument("--format", choices=("table", "json"), default="table")
    report.add_argument("--limit", type=int, default=50,
                        help="the largest clusters to show (default 50)")
    report.set_defaults(func=cmd_report)
    adopt = actions.add_parser(
        "adopt", help="write a cluster's messages into the rules directory as examples of a "
        "contact type (a new one with --new); the next `rules check` / reload uses them")
    adopt.add_argument("cluster_id", metavar="CLUSTER_ID", help="as the report shows it")
    adopt.add_argument("--type", required=True, dest="contact_type", metavar="TYPE")
    adopt.add_argument("--new", action="store_true",
                       help="create TYPE: an agent-only stub in catalog.yaml")
    adopt.add_argument("--label", help="the new type's label (default: from its id)")
    adopt.add_argument("--skill", action="append", default=[],
                       help="the new type's skills (repeatable; default: the default queue's)")
    adopt.add_argument("--rules", type=Path, metavar="DIR",
                       help="the rules directory to write (default SWITCHBOARD_RULES_DIR)")
    _window_options(adopt)
    adopt.set_defaults(func=cmd_adopt)


def _window_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="start", metavar="FROM",
                        help="ISO 8601 date or time (default: seven days before --to)")
    parser.add_argument("--to", dest="end", metavar="TO", help="end, exclusive (default: now)")


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from service.reporting.unrecognised import unrecognised
    from service.rules.loader import load_rules
    from service.rules.yamlfile import ConfigError

    try:
        window = reports.parse_window(args.start, args.end)
    except BadWindow as exc:
        return fail(str(exc), 2)
    if args.limit < 1:
        return fail("--limit must be at least 1", 2)
    try:
        catalog = load_rules(settings.rules_dir, with_classifier=False).catalog
    except ConfigError as exc:
        return fail(f"the rules in {settings.rules_dir} are invalid:\n{exc}")
    labels = {t.id: t.label for t in catalog.types.values()}
    report = with_database(settings, lambda conn: unrecognised(conn, window, labels,
                                                        limit=args.limit))
    print(json.dumps(report, indent=2) if args.format == "json" else table(report), end="\n"
          if args.format == "json" else "")
    return 0


def cmd_adopt(args: argparse.Namespace, settings: Settings) -> int:
    from service.reporting.unrecognised import find_cluster, unrecognised_messages
    from service.rules.adopt import ADOPTED_FILE, AdoptError, adopt
    from service.understanding.clusters import best_method, cluster

    directory = args.rules or settings.rules_dir
    try:
        window = reports.parse_window(args.start, args.end)
    except BadWindow as exc:
        return fail(str(exc), 2)
    if not args.new and (args.label or args.skill):
        return fail("--label and --skill describe a new contact type: they need --new; "
                     "nothing was written", 2)
    if not (directory / "catalog.yaml").is_file():
        return fail(f"{directory} is not a rules directory (no catalog.yaml in it); "
                     "nothing was written", 2)
    messages = with_database(settings, lambda conn: unrecognised_messages(conn, window))
    found = find_cluster(cluster([m.text for m in messages], best_method()), args.cluster_id)
    if found is None:
        return fail(f"no cluster '{args.cluster_id}' in the unrecognised traffic from "
                     f"{reports.iso(window.start)} to {reports.iso(window.end)} (see "
                     "`switchboard unrecognised` for this window's ids); nothing was written", 2)
    try:
        done = adopt(directory, found.texts, args.contact_type, new=args.new, label=args.label,
                     skills=args.skill)
    except AdoptError as exc:
        return fail(f"{exc}", 2)
    where = "a new contact type in catalog.yaml" if done.new_type else f"{ADOPTED_FILE}"
    print(f"Cluster {found.id}: {len(done.added)} message(s) added as examples of "
          f"'{done.contact_type}' ({where}); {done.already_known} were examples already.")
    print(f"Changed: {', '.join(done.files)} in {directory}.")
    print(f"Check with `switchboard rules check {directory}`, then reload (SIGHUP, "
          "`switchboard rules reload` or POST /api/rules/reload) to train on them.")
    return 0


def table(report: dict[str, Any]) -> str:
    """The clusters as plain text: counts per way, agents' types and examples."""
    method = report["similarity"]
    lines = [f"Unrecognised traffic, {report['from']} to {report['to']}: "
             f"{report['messages']} messages in {report['clusters_total']} clusters "
             f"({method['method']} similarity >= {method['threshold']})", ""]
    for found in report["clusters"]:
        how = ", ".join(f"{n} {k}" for k, n in found["how"].items() if n)
        lines.append(f"{found['id']}  {found['messages']} messages, {found['contacts']} "
                     f"contacts ({how})")
        if found["agent_types"]:
            lines.append("  agents chose: " + ", ".join(
                f"{t['contact_type']} ({t['contacts']})" for t in found["agent_types"]))
        lines += [f"  \"{text}\"" for text in found["examples"]]
        lines.append("")
    if not report["clusters"]:
        lines.append("Nothing unrecognised in this window.")
    elif report["clusters_total"] > len(report["clusters"]):
        lines.append(f"(the {len(report['clusters'])} largest shown; --limit shows more)")
    lines.append("Adopt a cluster: switchboard unrecognised adopt CLUSTER_ID --type TYPE [--new]")
    return "\n".join(lines) + "\n"
