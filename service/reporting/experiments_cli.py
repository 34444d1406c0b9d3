"""Experiments and canaries at the command line.

    switchboard experiments report [--from F --to T] [--format table|json]
    switchboard rules canary DIR --share 0.1 --guardrail true_deflection:-0.05
                                 --guardrail csat:-0.3 --min-contacts 200
    switchboard rules canary-status [--format table|json]
    switchboard rules promote [DIR]     the canary becomes the rules (DIR: the rules directory)
    switchboard rules abort             stop the canary by hand
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from service.infra.cli_support import fail, invoking_user, with_database
from service.reporting import reports
from service.reporting.reports import BadWindow, ReportRules
from service.settings import Settings


def add_parsers(commands) -> None:
    group = commands.add_parser("experiments", help="experiments of experiments.yaml and the "
                                "canary: figures per arm with 95%% intervals, verdicts")
    sub = group.add_subparsers(dest="experiments_command", required=True)
    report = sub.add_parser("report", help="per arm: contacts, true deflection, escalation, "
                            "false deflection, CSAT, each with its interval; a verdict per arm")
    report.add_argument("--from", dest="start", metavar="FROM",
                        help="ISO 8601 date or time (default: seven days before --to)")
    report.add_argument("--to", dest="end", metavar="TO", help="end, exclusive (default: now)")
    report.add_argument("--format", choices=("table", "json"), default="table")
    report.set_defaults(func=cmd_experiments_report)


def add_rules_parsers(rules) -> None:
    start = rules.add_parser("canary", help="try a rules directory on a share of new contacts "
                             "beside the rules in force; rolled back by itself when a guardrail "
                             "trips")
    start.add_argument("directory", type=Path)
    start.add_argument("--share", type=float, required=True, help="of new contacts, e.g. 0.1")
    start.add_argument("--guardrail", action="append", default=[], metavar="METRIC:-DROP",
                       help="true_deflection:-0.05 or csat:-0.3 (repeatable)")
    start.add_argument("--min-contacts", type=int, default=100,
                       help="canary contacts before guardrails are judged (default 100)")
    start.set_defaults(func=cmd_canary_start)
    status = rules.add_parser("canary-status", help="the canary against stable, guardrails")
    status.add_argument("--format", choices=("table", "json"), default="table")
    status.set_defaults(func=cmd_canary_status)
    promote = rules.add_parser("promote", help="the running canary's files become the rules "
                               "directory's; running instances reload them")
    promote.add_argument("path", nargs="?", type=Path,
                         help="the rules directory (default SWITCHBOARD_RULES_DIR)")
    promote.set_defaults(func=cmd_canary_promote)
    rules.add_parser("abort", help="stop the running canary").set_defaults(
        func=cmd_canary_abort)


# ---- experiments report -----------------------------------------------------------------

def cmd_experiments_report(args: argparse.Namespace, settings: Settings) -> int:
    from service.reporting import experiments
    from service.rules import canary
    from service.rules.loader import load_rules
    from service.rules.yamlfile import ConfigError

    try:
        window = reports.parse_window(args.start, args.end)
        rules = load_rules(settings.rules_dir, with_classifier=False)
    except BadWindow as exc:
        return fail(str(exc), 2)
    except ConfigError as exc:
        return fail(f"the rules in {settings.rules_dir} are invalid:\n{exc}")

    async def job(conn):
        return await experiments.experiments_report(
            conn, window, ReportRules.from_catalog(rules.catalog), rules.experiments,
            await canary.latest(conn))

    report = with_database(settings, job)
    print(json.dumps(report, indent=2) if args.format == "json" else experiments_table(report))
    return 0


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _interval(bounds: list[float] | None, kind: str = "rate") -> str:
    if bounds is None:
        return ""
    if kind == "rate":
        return f" ({bounds[0] * 100:.1f}-{bounds[1] * 100:.1f})"
    return f" ({bounds[0]:.2f}-{bounds[1]:.2f})"


def _csat(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def arm_row(name: str, treatment: str, figures: dict[str, Any], verdict: str) -> str:
    return (f"  {name:<14} {treatment:<9} {figures['contacts']:>8}  "
            f"{_rate(figures['true_deflection_rate']) + _interval(figures['true_deflection_interval']):<22}"  # noqa: E501
            f"{_rate(figures['escalation_rate']) + _interval(figures['escalation_interval']):<22}"  # noqa: E501
            f"{_rate(figures['false_deflection_rate']) + _interval(figures['false_deflection_interval']):<22}"  # noqa: E501
            f"{_csat(figures['csat']) + _interval(figures['csat_interval'], 'mean'):<18}"
            f"{verdict}").rstrip()


ARM_HEADER = (f"  {'arm':<14} {'treatment':<9} {'contacts':>8}  {'true deflection':<22}"
              f"{'escalation':<22}{'false deflection':<22}{'CSAT':<18}verdict")


def experiments_table(report: dict[str, Any]) -> str:
    """The experiments report as text: one block per experiment, then the canary."""
    lines = [f"Experiments: contacts that started from {report['from']} to {report['to']}",
             "95% intervals in brackets (Wilson for rates, Student's t for CSAT)", ""]
    if not report["experiments"]:
        lines += ["No experiments in experiments.yaml.", ""]
    for experiment in report["experiments"]:
        lines.append(f"{experiment['experiment']}: contact type {experiment['contact_type']}, "
                     f"control {experiment['control']}, verdicts after "
                     f"{experiment['min_contacts']} contacts per arm")
        lines.append(ARM_HEADER)
        for arm in experiment["arms"]:
            judged = arm["verdict"]
            said = "(control)" if judged is None else f"{judged['verdict']}: {judged['reason']}"
            lines.append(arm_row(arm["arm"], arm["treatment"], arm, said))
        lines.append("")
    if report.get("canary"):
        lines += canary_lines(report["canary"])
    lines.append(f"Verdict rule: {report['definitions']['verdict']}")
    return "\n".join(lines) + "\n"


def canary_lines(found: dict[str, Any]) -> list[str]:
    lines = [f"Canary {found['id']} ({found['state'].replace('_', ' ')}): v{found['version']} "
             f"on {found['share']:.0%} of new contacts since {found['started_at']}"
             + (f", ended {found['ended_at']} by {found['ended_by']}" if found['ended_at']
                else "")]
    if found.get("end_reason"):
        lines.append(f"  why: {found['end_reason']}")
    lines.append(ARM_HEADER)
    for arm in ("canary", "stable"):
        lines.append(arm_row(arm, "rules", found["arms"][arm], ""))
    for guard in found["guardrails"]:
        state = "TRIPPED" if guard["tripped"] else "holds" if guard["judged"] else \
            f"not judged yet (after {found['min_contacts']} canary contacts)"
        change = "-" if guard["change"] is None else f"{guard['change']:+.3f}"
        lines.append(f"  guardrail {guard['guardrail']:<24} change {change:<8} {state}")
    return [*lines, ""]


# ---- canary -----------------------------------------------------------------------------

def cmd_canary_start(args: argparse.Namespace, settings: Settings) -> int:
    from service.rules import canary
    from service.rules.loader import load_rules
    from service.rules.yamlfile import ConfigError

    try:
        guardrails = [canary.Guardrail.parse(raw) for raw in args.guardrail]
        canary.check_settings(args.share, args.min_contacts)
    except canary.BadCanary as exc:
        return fail(str(exc), 2)
    try:
        rules = load_rules(args.directory, with_classifier=False)
        stable = load_rules(settings.rules_dir, with_classifier=False)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return fail(f"{len(exc.issues)} problem(s); no canary started")

    async def job(conn):
        return await canary.start(conn, rules, stable, share=args.share, guardrails=guardrails,
                                  min_contacts=args.min_contacts, actor=invoking_user())

    try:
        started = with_database(settings, job)
    except canary.BadCanary as exc:
        return fail(f"{exc}; no canary started")
    print(f"canary {started.id} started: v{started.version_id} ({started.digest}) decides "
          f"{started.share:.0%} of new contacts; running instances follow it now "
          "(see: switchboard rules canary-status)")
    if not guardrails:
        print("no guardrails: it runs until `rules promote` or `rules abort`")
    return 0


def cmd_canary_status(args: argparse.Namespace, settings: Settings) -> int:
    from service.reporting import experiments
    from service.rules import canary
    from service.rules.loader import load_rules

    catalog = load_rules(settings.rules_dir, with_classifier=False).catalog

    async def job(conn):
        found = await canary.latest(conn)
        return await experiments.canary_result(conn, found, ReportRules.from_catalog(catalog)) \
            if found else None

    found = with_database(settings, job)
    if args.format == "json":
        print(json.dumps({"canary": found}, indent=2))
    elif found is None:
        print("no canary has run")
    else:
        print("\n".join(canary_lines(found)), end="")
    return 0


def cmd_canary_promote(args: argparse.Namespace, settings: Settings) -> int:
    from service.rules import canary

    directory = args.path or settings.rules_dir
    try:
        ended = with_database(
            settings, lambda conn: canary.promote(conn, directory, invoking_user()))
    except canary.BadCanary as exc:
        return fail(str(exc))
    print(f"canary {ended.id} promoted: v{ended.version_id} written into {directory}; running "
          "instances reload it now (see: switchboard rules history)")
    return 0


def cmd_canary_abort(args: argparse.Namespace, settings: Settings) -> int:
    from service.rules import canary

    try:
        ended = with_database(settings, lambda conn: canary.abort(conn, invoking_user()))
    except canary.BadCanary as exc:
        return fail(str(exc))
    print(f"canary {ended.id} aborted: every new contact is decided by the rules in force")
    return 0
