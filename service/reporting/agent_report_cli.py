"""`switchboard report agents`: the agent performance report (agent_report.py) in a terminal.

    switchboard report agents [--from F] [--to T] [--format table|json|csv]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from typing import Any

from service.infra.cli_support import csv_value, fail, percent, with_database
from service.reporting import agent_report, reports
from service.reporting.reports import BadWindow
from service.settings import Settings


def add_parser(report: argparse.ArgumentParser) -> None:
    """`agents` under the `report` command (`report` alone stays the summary)."""
    subjects = report.add_subparsers(dest="report_subject", required=False, metavar="agents")
    agents = subjects.add_parser(
        "agents", help="per agent over the window: offers accepted, declined and missed, "
        "contacts handled, handle time, resolved, transfers, re-typed, CSAT, time available, "
        "busy and away (per reason); a team total")
    agents.add_argument("--from", dest="start", metavar="FROM",
                        help="ISO 8601 date or time, UTC unless an offset is given "
                             "(default: seven days before --to)")
    agents.add_argument("--to", dest="end", metavar="TO", help="end, exclusive (default: now)")
    agents.add_argument("--format", choices=("table", "json", "csv"), default="table")
    agents.set_defaults(func=cmd_agents)


def cmd_agents(args: argparse.Namespace, settings: Settings) -> int:
    try:
        window = reports.parse_window(args.start, args.end)
    except BadWindow as exc:
        return fail(str(exc), 2)
    report = with_database(settings, lambda conn: agent_report.agent_report(conn, window))
    render = {"json": lambda r: json.dumps(r, indent=2) + "\n", "csv": agents_csv,
              "table": agents_table}[args.format]
    print(render(report), end="")
    return 0


COLUMNS = (("agent", "name"), ("offers", "offers"), ("accepted", "accepted"),
           ("declined", "declined"), ("missed", "expired"), ("accept %", "acceptance_rate"),
           ("handled", "handled"), ("mean handle", "handle_time_mean_s"),
           ("median handle", "handle_time_median_s"), ("resolved %", "resolved_rate"),
           ("transfers", "transfers_out"), ("re-typed", "retyped"), ("CSAT", "csat"),
           ("available", "available_s"), ("busy", "busy_s"), ("away", "away_s"),
           ("away by reason", "away_reasons_s"))
TIMES = ("available_s", "busy_s", "away_s")


def duration(seconds: float) -> str:
    """Time in a status as the table shows it: 1h 05m, 12m, 40s."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    hours, minutes = divmod(whole // 60, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m"


def _cell(figures: dict[str, Any], field: str) -> str:
    value = figures[field]
    if value is None:
        return "-"
    if field in TIMES:
        return duration(value)
    if field == "away_reasons_s":
        return ", ".join(f"{r} {duration(v)}" for r, v in value.items()) or "-"
    if field.endswith("_rate"):
        return percent(value)
    if field.endswith("_s"):
        return f"{value:.0f} s"
    if field == "csat":
        return f"{value:.2f} ({figures['csat_responses']})"
    return str(value)


def agents_table(report: dict[str, Any]) -> str:
    """One line per agent and the team's under them, definitions left to --format json."""
    team = {**report["team"], "name": "team"}
    rows = [[a["name"] or a["id"], *(_cell(a, f) for _, f in COLUMNS[1:])]
            for a in report["agents"]]
    rows.append([team["name"], *(_cell(team, f) for _, f in COLUMNS[1:])])
    head = [title for title, _ in COLUMNS]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = [f"Agents, {report['from']} to {report['to']} (events in the window)", ""]
    lines += ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
              for row in (head, *rows)]
    return "\n".join(lines) + "\n"


def agents_csv(report: dict[str, Any]) -> str:
    """One row per agent, then the team's (id and name empty, `team` true)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    names = agent_report.FIELDS
    writer.writerow(["metric_version", "from", "to", "team", *names])
    head = [report["metric_version"], report["from"], report["to"]]
    for agent in report["agents"]:
        writer.writerow([*head, "false", *(_csv_cell(agent[f]) for f in names)])
    writer.writerow([*head, "true", *(_csv_cell(report["team"][f]) for f in names)])
    return out.getvalue()


def _csv_cell(value: Any) -> Any:
    """away_reasons_s as JSON ({"lunch": 2700.0}); the rest as cells are."""
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else csv_value(value)
