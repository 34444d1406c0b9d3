"""Ops commands of the `switchboard` CLI: report, simulate, tokens add, demo.

    switchboard report --from 2024-05-01 --to 2024-05-08 [--format table|json|csv]
    switchboard report agents --from F --to T [--format table|json|csv]   (agent_report_cli.py)
    switchboard simulate [--rules DIR] [--against DIR] [--from F --to T] [--format table|json]
    switchboard tokens add --role ops|supervisor [--name N]   the token alone on the last line
    switchboard demo --contacts 200 [--url U]         synthetic traffic through the public endpoints

`add_parsers(commands)` registers them on the CLI's sub-command parser; each command is
`func(args, settings) -> exit code`, like the others in service/__main__.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from service.infra.cli_support import connect, csv_value, database, fail, percent
from service.reporting import candidates, reports
from service.reporting.reports import BadWindow, ReportRules
from service.settings import Settings


def add_parsers(commands) -> None:
    report = commands.add_parser(
        "report", help="metrics of the event log for a window (metric version 2)")
    report.add_argument("--from", dest="start", metavar="FROM",
                        help="ISO 8601 date or time, UTC unless an offset is given "
                             "(default: seven days before --to)")
    report.add_argument("--to", dest="end", metavar="TO", help="end, exclusive (default: now)")
    report.add_argument("--format", choices=("table", "json", "csv"), default="table")
    report.add_argument("--service-level-s", type=float, default=reports.DEFAULT_SERVICE_LEVEL_S,
                        help="answer-time target of service_level (default 60)")
    _segment_arguments(report)
    report.set_defaults(func=cmd_report)
    from service.reporting import agent_report_cli

    agent_report_cli.add_parser(report)

    ranked = commands.add_parser(
        "candidates", help="contact types ranked as self-service candidates: agent time they "
        "cost, self-service success, false deflection, CSAT gap (formula in the output)")
    ranked.add_argument("--from", dest="start", metavar="FROM",
                        help="ISO 8601 date or time (default: seven days before --to)")
    ranked.add_argument("--to", dest="end", metavar="TO", help="end, exclusive (default: now)")
    ranked.add_argument("--format", choices=("table", "json"), default="table")
    ranked.add_argument("--service-level-s", type=float, default=reports.DEFAULT_SERVICE_LEVEL_S,
                        help=argparse.SUPPRESS)
    _segment_arguments(ranked)
    ranked.set_defaults(func=cmd_candidates)

    simulate = commands.add_parser(
        "simulate", help="replay past contacts through a rules directory: how their first "
        "message would be understood and routed, next to what happened (or to --against)")
    simulate.add_argument("--rules", type=Path, metavar="DIR",
                          help="the rules to try (default SWITCHBOARD_RULES_DIR)")
    simulate.add_argument("--against", type=Path, metavar="DIR",
                          help="compare with these rules replayed the same way, instead of "
                               "with what was recorded")
    simulate.add_argument("--from", dest="start", metavar="FROM",
                          help="contacts that started from this moment (default: seven days "
                               "before --to)")
    simulate.add_argument("--to", dest="end", metavar="TO", help="end, exclusive (default: now)")
    simulate.add_argument("--format", choices=("table", "json"), default="table")
    simulate.add_argument("--examples", type=int, default=10,
                          help="changed contacts to show (default 10)")
    simulate.set_defaults(func=cmd_simulate)

    tokens = commands.add_parser("tokens", help="API tokens").add_subparsers(
        dest="tokens_command", required=True)
    add = tokens.add_parser("add", help="create a token and print it once: ops (the report API, "
                            "/ops and /supervisor) or supervisor (/supervisor and the agent report "
                            "only); agents get theirs from `agents add`")
    add.add_argument("--role", required=True, choices=("ops", "supervisor"))
    add.add_argument("--name", default="", help="who or what uses it, for your records")
    add.set_defaults(func=cmd_tokens_add)

    demo = commands.add_parser(
        "demo", help="send synthetic customers through the public endpoints of a running "
        "service: signed SMS and voice webhooks and chat WebSockets, with repeat contacts")
    demo.add_argument("--contacts", type=int, default=100, help="how many contacts (default 100)")
    demo.add_argument("--url", help="where the service listens (default SWITCHBOARD_PUBLIC_URL)")
    demo.add_argument("--seed", type=int, default=None, help="repeatable traffic")
    demo.add_argument("--agent-token", help="an agent token: a demo agent then takes the chats "
                      "it is offered and wraps them up")
    demo.set_defaults(func=cmd_demo)


# ---- shared -----------------------------------------------------------------------------

def _segment_arguments(parser) -> None:
    parser.add_argument("--by", metavar="customer.ATTRIBUTE",
                        help="split the report by a customer attribute, one report per value "
                             "(e.g. --by customer.tier)")
    parser.add_argument("--segment", metavar="VALUE",
                        help="with --by: only the customers whose attribute has this value "
                             "('' for customers without it)")


# ---- tokens -----------------------------------------------------------------------------

def cmd_tokens_add(args: argparse.Namespace, settings: Settings) -> int:
    from service.infra.tokens import create_token

    async def run(url: str) -> str:
        conn = await connect(url)
        try:
            return await create_token(conn, args.role, args.name)
        finally:
            await conn.close()

    with database(settings) as url:
        token = asyncio.run(run(url))
    print(f"{args.role} token{f' for {args.name}' if args.name else ''} created; it is shown "
          "once, only its hash is kept. Send it as 'Authorization: Bearer <token>':")
    print(token)
    return 0


# ---- report -----------------------------------------------------------------------------

def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    return _run_report(args, settings, reports.summary, {
        "json": lambda r: json.dumps(r, indent=2), "csv": report_csv, "table": report_table})


def cmd_candidates(args: argparse.Namespace, settings: Settings) -> int:
    return _run_report(args, settings, candidates.candidates, {
        "json": lambda r: json.dumps(r, indent=2), "table": candidates_table})


def _run_report(args: argparse.Namespace, settings: Settings, query, formats) -> int:
    """One report over a window, printed in the format asked for."""
    from service.rules.loader import load_rules
    from service.rules.yamlfile import ConfigError

    try:
        window = reports.parse_window(args.start, args.end)
    except BadWindow as exc:
        return fail(str(exc), 2)
    if not args.service_level_s > 0:
        return fail("--service-level-s must be a positive number of seconds", 2)
    try:
        catalog = load_rules(settings.rules_dir, with_classifier=False).catalog
    except ConfigError as exc:
        return fail(f"the rules in {settings.rules_dir} are invalid (reports need their "
                     f"repeat windows):\n{exc}")
    rules = ReportRules.from_catalog(catalog, service_level_s=args.service_level_s)
    if args.segment is not None and not args.by:
        return fail("--segment needs --by (e.g. --by customer.tier --segment gold)", 2)
    try:
        attribute = reports.parse_segment_by(args.by) if args.by else None
    except reports.BadSegment as exc:
        return fail(str(exc).replace("'segment_by'", "--by"), 2)
    if attribute and args.segment is not None:
        rules = rules.with_segment(attribute, args.segment)

    async def run(url: str) -> dict[str, Any]:
        conn = await connect(url)
        try:
            if attribute and args.segment is None:
                return await reports.split(query, conn, window, rules, attribute)
            return await query(conn, window, rules)
        finally:
            await conn.close()

    with database(settings) as url:
        try:
            report = asyncio.run(run(url))
        except reports.BadSegment as exc:
            return fail(str(exc).replace("'segment'", "--segment"), 2)
    print(_each_segment(report, formats[args.format]) if args.format != "json"
          else formats["json"](report), end="")
    return 0


def _each_segment(report: dict[str, Any], render) -> str:
    """A split report as one rendering per segment, each under its own heading (CSV: the
    segment in the first two columns of every row)."""
    if "segments" not in report:
        return render(report)
    head = {k: v for k, v in report.items() if k not in ("segments", "segment_by")}
    parts = []
    for part in report["segments"]:
        one = head | {k: v for k, v in part.items() if k != "value"} | {
            "segment": {"by": report["segment_by"], "value": part["value"]}}
        parts.append(render(one))
    if render is report_csv:  # one header row
        return "".join([parts[0], *(p.split("\n", 1)[1] for p in parts[1:])]) if parts else ""
    return "\n".join(parts)


def candidates_table(report: dict[str, Any]) -> str:
    """The ranked candidates as a plain table, with the formula under it."""
    head = ("rank", "contact type", "agent handled", "agent min", "success", "false defl.",
            "CSAT gap", "risk", "score")
    rows = [(str(c["rank"]), c["contact_type"], str(c["agent_handled"]),
             f"{c['agent_minutes']:.1f}",
             percent(c["success"]) + (" (est.)" if c["success_estimated"] else ""),
             percent(c["false_deflection"]),
             "-" if c["csat_gap"] is None else f"{c['csat_gap']:+.2f}",
             f"{c['risk']:.2f}", f"{c['score']:.1f}") for c in report["rows"]]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = [f"Self-service candidates, {report['from']} to {report['to']}",
             *_segment_line(report), ""]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
              for row in (head, *rows)]
    return "\n".join(lines + ["", report["formula"], ""])


# ---- simulate ---------------------------------------------------------------------------

def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from service.rules.loader import load_rules
    from service.rules.yamlfile import ConfigError

    try:
        window = reports.parse_window(args.start, args.end)
    except BadWindow as exc:
        return fail(str(exc), 2)
    if args.examples < 0:
        return fail("--examples must be 0 or more", 2)
    directories = [args.rules or settings.rules_dir] + ([args.against] if args.against else [])
    for directory in directories:  # every problem before any training or database work
        try:
            load_rules(directory, with_classifier=False)
        except ConfigError as exc:
            return fail(f"the rules in {directory} are invalid:\n{exc}")

    with database(settings) as url:
        report = asyncio.run(_simulate(url, window, directories, args.examples))
    print(json.dumps(report, indent=2) if args.format == "json" else simulation_table(report),
          end="\n" if args.format == "json" else "")
    return 0


async def _simulate(url: str, window, directories: list[Path], examples: int) -> dict[str, Any]:
    from service.reporting import simulate
    from service.rules.loader import load_rules
    from service.understanding.learning import learned_examples

    conn = await connect(url)
    try:
        learned = [(r["text"], r["label"]) for r in await learned_examples(conn)]
        rule_sets = []
        for directory in directories:
            _progress(f"training the classifier of {directory} "
                      f"({len(learned)} learned examples)")
            rule_sets.append(await asyncio.to_thread(load_rules, directory, learned=learned))
        contacts, earlier = await simulate.load_past(
            conn, window, simulate.longest_repeat_window_h(*rule_sets))
    finally:
        await conn.close()
    _progress(f"replaying {len(contacts):,} contacts")
    replays = [simulate.replay(rules, contacts, earlier,
                               lambda n: _progress(f"  {n:,} of {len(contacts):,}"))
               for rules in rule_sets]
    against = rule_sets[1] if len(rule_sets) > 1 else None
    return simulate.compare(window, contacts, replays[0], replays[1] if against else None,
                            rule_sets[0], against, examples)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def simulation_table(report: dict[str, Any]) -> str:
    baseline = report["baseline"]
    lines = [f"Simulation of {report['rules']['directory']} (digest {report['rules']['digest']}) "
             f"on contacts that started from {report['from']} to {report['to']} (exclusive)",
             "baseline: " + ("what was recorded" if baseline == "recorded" else
                             f"{baseline['directory']} (digest {baseline['digest']}) replayed"),
             f"contacts {report['contacts']}, replayed {report['replayed']}" + "".join(
                 f", {why.replace('_', ' ')} {n}" for why, n in report["not_replayed"].items()),
             "", f"{'first decision':<44}{'baseline':>10}{'simulated':>11}{'change':>9}"]
    lines += _side_by_side_rows(report["first_decisions"])
    lines += ["", "agent queue of the first decision"]
    lines += _side_by_side_rows(report["queues"]) or ["  (none)"]
    changed = report["changed"]
    lines += ["", f"changed, of {report['replayed']} replayed: first decision "
              f"{changed['first_decision']}, contact type {changed['contact_type']}, route "
              f"{changed['route']}, queue {changed['queue']}"]
    for title, key in (("contact type changes", "contact_type_changes"),
                       ("first decision changes", "first_decision_changes")):
        if report[key]:
            lines += ["", title]
            lines += [f"  {row['from'] or '-'} -> {row['to'] or '-'}: {row['contacts']}"
                      for row in report[key]]
    if report["examples"]:
        lines += ["", "examples"]
        lines += [_example_line(e) for e in report["examples"]]
    return "\n".join(lines) + "\n"


def _side_by_side_rows(figures: dict[str, dict[str, int]]) -> list[str]:
    return [f"  {name:<42}{f['baseline']:>10}{f['simulated']:>11}"
            f"{f['simulated'] - f['baseline']:>+9}" for name, f in figures.items()]


def _example_line(example: dict[str, Any]) -> str:
    def decision(result: dict[str, Any]) -> str:
        where = ", ".join(str(v) for v in (result["contact_type"], result["route_path"]) if v)
        label = result["outcome"] + (f":{result['reason']}" if result["reason"] else "")
        return f"{label} ({where})" if where else label

    return (f"  {example['contact_id'][:8]} {example['channel']:<5} {example['said']!r}: "
            f"{decision(example['baseline'])} -> {decision(example['simulated'])}")


RATES = ("deflection_rate", "true_deflection_rate", "containment_rate", "abandonment_rate",
         "service_level", "survey_response_rate", "csat", "nps")
SURVEY_COLUMNS = (("surveys", "surveys_sent"), ("responses", "survey_responses"),
                  ("resp_rate", "survey_response_rate"), ("csat", "csat"), ("nps", "nps"))
SCORES = {"csat": "{:.2f}", "nps": "{:+.1f}"}  # a mean of 1-5 and points from -100 to 100
TABLE_COLUMNS = (("contacts", "contacts"), ("offered", "self_service_offered"),
                 ("resolved", "self_service_resolved"), ("false_defl", "false_deflections"),
                 ("escalated", "escalated"), ("abandoned", "abandoned"),
                 ("transfer", "transferred"), ("deflect", "deflection_rate"),
                 ("true_defl", "true_deflection_rate"),
                 ("contain", "containment_rate"), ("abandon", "abandonment_rate"),
                 ("svc_level", "service_level"))
GROUPS = (("contact type", "by_contact_type"), ("channel", "by_channel"),
          ("queue", "by_queue"), ("route", "by_route"))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if isinstance(value, float) else str(value)


def _table_row(name: str, figures: dict[str, Any], columns=TABLE_COLUMNS) -> str:
    return f"{name[:28]:<28}" + "".join(f"{_score(key, figures[key]):>11}"
                                        for _, key in columns)


def _score(key: str, value: Any) -> str:
    return SCORES[key].format(value) if key in SCORES and value is not None else _cell(value)


def _survey_table(report: dict[str, Any]) -> list[str]:
    lines = ["", f"{'satisfaction surveys':<28}" + "".join(f"{t:>11}" for t, _ in SURVEY_COLUMNS),
             _table_row("total", report["totals"], SURVEY_COLUMNS)]
    for title, key in GROUPS[:2]:
        lines += [f"by {title}"]
        lines += [_table_row(f"  {name}", figures, SURVEY_COLUMNS)
                  for name, figures in report[key].items()]
    return lines


def _segment_line(report: dict[str, Any]) -> list[str]:
    segment = report.get("segment")
    if not segment:
        return []
    value = "(not set)" if segment["value"] is None else segment["value"]
    return [f"customers with {segment['by']} = {value}"]


def report_table(report: dict[str, Any]) -> str:
    lines = [f"Switchboard report, metric version {report['metric_version']}",
             *_segment_line(report),
             f"contacts that started from {report['from']} to {report['to']} (exclusive); "
             f"service level: accepted within {report['service_level_s']:g} s",
             "", f"{'':<28}" + "".join(f"{title:>11}" for title, _ in TABLE_COLUMNS),
             _table_row("total", report["totals"])]
    for title, key in GROUPS:
        lines += ["", f"by {title}"]
        lines += [_table_row(f"  {name}", figures) for name, figures in report[key].items()]
    lines += _survey_table(report)
    lines += ["", "escalation reasons"]
    lines += [f"  {reason:<26}{count:>11}" for reason, count in
              report["escalation_reasons"].items()] or ["  (none)"]
    lines += ["", "rates are fractions of the group; '-' when the denominator is 0; csat is "
              "the mean 1-5 answer, nps points from -100 to 100. "
              "Definitions: switchboard report --format json"]
    return "\n".join(lines) + "\n"


def report_csv(report: dict[str, Any]) -> str:
    """One row per group: the window, the group, its counts and rates."""
    fields = [*reports.COUNT_FIELDS, *RATES]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    segment = report.get("segment")
    columns = ["segment_by", "segment"] if segment else []
    writer.writerow([*columns, "metric_version", "from", "to", "group", "key", *fields])
    head = [*([segment["by"], csv_value(segment["value"])] if segment else []),
            report["metric_version"], report["from"], report["to"]]
    writer.writerow([*head, "total", "", *(csv_value(report["totals"][f]) for f in fields)])
    for title, key in GROUPS:
        for name, figures in report[key].items():
            writer.writerow([*head, title.replace(" ", "_"), name,
                             *(csv_value(figures[f]) for f in fields)])
    for reason, count in report["escalation_reasons"].items():
        writer.writerow([*head, "escalation_reason", reason,
                         *(count if f == "escalated" else "" for f in fields)])
    return out.getvalue()


# ---- demo -------------------------------------------------------------------------------
# Synthetic customers through the public endpoints, so the dashboard shows exactly what real
# traffic would produce; the one direct write is the customer directory (as `customers add`
# does), giving most customers a name, a tier and a language for the reports' segments. They
# answer the satisfaction surveys they are asked (surveys.yaml).

DEMO_CONCURRENCY = 4
STORIES = (("sms_answer", 34), ("voice_keypad", 20), ("chat_answer", 18), ("voice_agent", 7),
           ("voice_menu_hang_up", 6), ("sms_unclear", 8), ("sms_person", 7))
FOLLOW_UP_BY_PHONE = 0.35  # a texter calls back about the same thing (false deflection)
FEATURED_SHARE = 0.4  # of texted and chatted questions, about a type in an experiment
DEMO_TIERS = (("standard", 60), ("silver", 25), ("gold", 15))
DEMO_LANGUAGES = (("en", 80), ("es", 20))
DEMO_NAMES = ("Ana", "Ben", "Chloe", "Dev", "Eva", "Femi", "Gus", "Hana", "Ivan", "Jo")
IN_DIRECTORY = 0.85  # the rest are strangers to the directory


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    import aiohttp

    from service.rules.loader import load_rules
    from service.rules.yamlfile import ConfigError

    if args.contacts < 1:
        return fail("--contacts must be at least 1", 2)
    url = (args.url or settings.public_url).rstrip("/")
    try:
        rules = load_rules(settings.rules_dir, with_classifier=False)
    except ConfigError as exc:
        return fail(f"the rules in {settings.rules_dir} are invalid:\n{exc}")
    featured = [e.contact_type for e in rules.experiments.by_type.values()]
    if not (settings.database_url and settings.redis_url):
        print("customers get no attributes: the demo needs DATABASE_URL and REDIS_URL to add "
              "them to the directory", file=sys.stderr)
    try:
        sent = asyncio.run(run_demo(settings, url, rules.catalog, args.contacts, args.seed,
                                    args.agent_token, featured))
    except (OSError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
        problem = str(exc) or type(exc).__name__
        return fail(f"demo traffic to {url} failed: {problem} (is `switchboard serve` "
                     "running, with the same TWILIO_AUTH_TOKEN and SWITCHBOARD_PUBLIC_URL?)")
    print(f"sent {sum(sent.values())} contacts to {url}: " + ", ".join(
        f"{n} {channel}" for channel, n in sorted(sent.items())))
    print(f"see them at {url}/ops (a token: switchboard tokens add --role ops)")
    return 0


async def run_demo(settings: Settings, url: str, catalog, contacts: int, seed: int | None,
                   agent_token: str | None = None,
                   featured: Sequence[str] = ()) -> dict[str, int]:
    """Send `contacts` contacts; return how many went over each channel. `featured`: contact
    types asked about more often (those in experiments, so their panel fills)."""
    import random
    from collections import Counter

    import aiohttp

    sent: Counter[str] = Counter()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            DemoDirectory.of(settings) as directory:
        traffic = DemoTraffic(session, url, settings.public_url, settings.twilio_auth_token,
                              catalog, featured)
        agent = asyncio.create_task(demo_agent(session, url, agent_token)) if agent_token \
            else None
        limit = asyncio.Semaphore(DEMO_CONCURRENCY)

        async def one(story: str, follow_up: bool, story_seed: int) -> None:
            rng = random.Random(story_seed)  # each customer's own: the same seed, the same story
            phone = f"+1555{rng.randrange(1_000_000, 10_000_000)}"
            async with limit:
                if directory:
                    await directory.add(phone, random.Random(story_seed + 1))
                sent.update(await getattr(traffic, story)(phone, rng, follow_up))

        plans = _demo_plans(random.Random(seed), contacts)
        try:
            await asyncio.gather(*(one(*plan) for plan in plans))
        finally:
            if agent:
                agent.cancel()
                await asyncio.gather(agent, return_exceptions=True)
    return dict(sent)


def _demo_plans(rng, contacts: int) -> list[tuple[str, bool, int]]:
    """(story, with a follow-up call, seed) until the stories add up to `contacts` contacts."""
    names, weights = zip(*STORIES)
    plans, planned = [], 0
    while planned < contacts:
        story = rng.choices(names, weights)[0]
        follow_up = story == "sms_answer" and contacts - planned >= 2 and \
            rng.random() < FOLLOW_UP_BY_PHONE
        plans.append((story, follow_up, rng.getrandbits(32)))
        planned += 2 if follow_up else 1
    return plans


class DemoDirectory:
    """The demo's customers in the customer directory, with a name and attributes."""

    def __init__(self, pool, client):
        self.pool, self.client = pool, client

    @classmethod
    @contextlib.asynccontextmanager
    async def of(cls, settings: Settings):
        """A directory to add to, or None without a database and Redis to reach."""
        if not (settings.database_url and settings.redis_url):
            yield None
            return
        import asyncpg

        from service.infra.redis_url import client_for, close_client

        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
        client = client_for(settings.redis_url)
        try:
            yield cls(pool, client)
        finally:
            await pool.close()
            await close_client(client)

    async def add(self, phone: str, rng) -> None:
        from service.conversations.customers import upsert_customer

        if rng.random() >= IN_DIRECTORY:
            return
        tiers, languages = zip(*DEMO_TIERS), zip(*DEMO_LANGUAGES)
        attributes = {"tier": rng.choices(*tiers)[0], "language": rng.choices(*languages)[0]}
        async with self.pool.acquire() as conn:
            await upsert_customer(conn, self.client, identities=[("phone", phone)],
                                  display_name=rng.choice(DEMO_NAMES), attributes=attributes)


def rating_asked(text: str) -> tuple[int, int] | None:
    """The scale of a satisfaction question as a customer reads it, or None."""
    if "not at all" not in text:
        return None
    return (0, 10) if re.search(r"\b10\b", text) else (1, 5)


def a_rating(scale: tuple[int, int], rng) -> str:
    """Mostly content customers, some not."""
    low, high = scale
    return str(rng.choice((high, high, high - 1, high - 1, (low + high) // 2, low)))


class DemoTraffic:
    """Customers of a running service, over signed webhooks and the chat WebSocket."""

    def __init__(self, session, url: str, public_url: str, auth_token: str, catalog,
                 featured: Sequence[str] = ()):
        from twilio.request_validator import RequestValidator

        self.session, self.url = session, url
        self.public_url = public_url.rstrip("/")
        self.validator = RequestValidator(auth_token)
        self.answered = [t for t in catalog.types.values() if t.answer]
        self.keypad = [t for t in self.answered if t.ivr_digit]
        self.featured = [t for t in self.answered if t.id in featured]

    def topic(self, rng):
        """What a customer asks about; the featured types (in experiments) in FEATURED_SHARE."""
        if self.featured and rng.random() < FEATURED_SHARE:
            return rng.choice(self.featured)
        return rng.choice(self.answered)

    @staticmethod
    def sid(prefix: str) -> str:
        import uuid

        return prefix + uuid.uuid4().hex

    async def post(self, path: str, params: dict[str, str]) -> str:
        from urllib.parse import urlencode

        signature = self.validator.compute_signature(self.public_url + path, params)
        async with self.session.post(self.url + path, data=urlencode(params), headers={
                "X-Twilio-Signature": signature,
                "Content-Type": "application/x-www-form-urlencoded"}) as response:
            response.raise_for_status()
            return await response.text()

    async def text(self, phone: str, body: str) -> str:
        sid = self.sid("SM")
        return await self.post("/twilio/sms", {
            "MessageSid": sid, "SmsMessageSid": sid, "SmsSid": sid, "AccountSid": "AC" + "0" * 32,
            "From": phone, "To": "+15005550006", "Body": body, "NumMedia": "0",
            "NumSegments": "1", "SmsStatus": "received", "ApiVersion": "2010-04-01"})

    # ---- stories: each returns the channels of the contacts it made ----

    async def sms_answer(self, phone: str, rng, follow_up: bool) -> list[str]:
        topic = self.topic(rng)
        twiml = await self.text(phone, rng.choice(topic.examples))
        for _ in range(3):
            if "Did that help" in twiml:
                twiml = await self.text(phone, "yes" if rng.random() < 0.8 else "no")
                if (scale := rating_asked(twiml)) and rng.random() < 0.75:
                    await self.text(phone, a_rating(scale, rng))
                break
            if "not sure I understood" not in twiml:
                break
            twiml = await self.text(phone, "1")
        return ["sms", *(await self.call_back(phone) if follow_up else [])]

    async def sms_unclear(self, phone: str, rng, follow_up: bool) -> list[str]:
        await self.text(phone, "blorp")
        await self.text(phone, "qwzx vvv")
        return ["sms"]

    async def sms_person(self, phone: str, rng, follow_up: bool) -> list[str]:
        await self.text(phone, "Can I talk to a real person please")
        return ["sms"]

    async def voice_keypad(self, phone: str, rng, follow_up: bool) -> list[str]:
        call = await DemoCall(self, phone).dial()
        await call.press(str(rng.choice(self.keypad).ivr_digit))
        await call.press("1" if rng.random() < 0.7 else "2")
        if (scale := rating_asked(" ".join(call.said()))) and rng.random() < 0.75:
            await call.press(a_rating(scale, rng))
        if call.queued:
            await call.hold_then_hang_up()
        await call.end()
        return ["voice"]

    async def voice_agent(self, phone: str, rng, follow_up: bool) -> list[str]:
        call = await DemoCall(self, phone).dial()
        await call.press("0")
        await call.hold_then_hang_up()
        await call.end()
        return ["voice"]

    async def voice_menu_hang_up(self, phone: str, rng, follow_up: bool) -> list[str]:
        await (await DemoCall(self, phone).dial()).end()
        return ["voice"]

    async def call_back(self, phone: str) -> list[str]:
        """The texter calls about the same thing: 'Welcome back', press 1, a person."""
        call = await DemoCall(self, phone).dial()
        await call.press("1")
        if call.queued:
            await call.hold_then_hang_up()
        await call.end()
        return ["voice"]

    async def chat_answer(self, phone: str, rng, follow_up: bool) -> list[str]:
        topic = self.topic(rng)
        async with self.session.ws_connect(self.url + "/chat/ws") as ws:
            await ws.send_json({"type": "start", "session": None})
            await _until_status(ws)
            await ws.send_json({"type": "message", "text": rng.choice(topic.examples)})
            said = await _until_status(ws)
            if any("Did that help" in text for text in said):
                await ws.send_json({"type": "message",
                                    "text": "yes" if rng.random() < 0.7 else "no"})
                said = await _until_status(ws)
                if (scale := rating_asked(" ".join(said))) and rng.random() < 0.75:
                    await ws.send_json({"type": "message", "text": a_rating(scale, rng)})
                    said = await _until_status(ws)
            if said and said[-1] == "queued":
                await _until_status(ws, wanted="closed", timeout_s=4)
            await ws.send_json({"type": "end"})
        return ["chat"]


async def _until_status(ws, wanted: str | None = None, timeout_s: float = 10) -> list[str]:
    """Bot texts until the next status frame (or the `wanted` state); the state comes last."""
    said: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (left := deadline - loop.time()) > 0:
        try:
            frame = await ws.receive_json(timeout=left)
        except (asyncio.TimeoutError, TypeError, ValueError):
            break
        if frame.get("type") == "message":
            said.append(frame.get("text", ""))
        elif frame.get("type") == "status" and wanted in (None, frame.get("state")):
            return [*said, frame["state"]]
    return said


class DemoCall:
    """One phone call driven the way Twilio drives it: post, read the TwiML, follow it."""

    def __init__(self, traffic: DemoTraffic, phone: str):
        self.traffic, self.phone, self.sid = traffic, phone, traffic.sid("CA")
        self.twiml = None

    @property
    def queued(self) -> bool:
        return self.twiml is not None and self.twiml.find("Enqueue") is not None

    async def _post(self, path: str, **extra: str) -> None:
        import xml.etree.ElementTree as ET

        params = {"CallSid": self.sid, "AccountSid": "AC" + "0" * 32, "From": self.phone,
                  "To": "+15005550006", "CallStatus": "in-progress", "Direction": "inbound",
                  "ApiVersion": "2010-04-01", **extra}
        self.twiml = ET.fromstring(await self.traffic.post(path, params))

    def said(self) -> list[str]:
        return [say.text or "" for say in self.twiml.iter("Say")] if self.twiml is not None \
            else []

    async def dial(self) -> "DemoCall":
        await self._post("/twilio/voice", CallStatus="ringing")
        return self

    async def press(self, digits: str) -> None:
        gather = self.twiml.find("Gather")
        if gather is not None:
            await self._post(gather.get("action"), Digits=digits)

    async def hold_then_hang_up(self) -> None:
        enqueue = self.twiml.find("Enqueue")
        await self._post(enqueue.get("waitUrl"), QueuePosition="1", QueueTime="20")
        await self._post(enqueue.get("action"), QueueResult="hangup", QueueTime="45")

    async def end(self) -> None:
        await self._post("/twilio/voice/status", CallStatus="completed", CallDuration="60")


async def demo_agent(session, url: str, token: str) -> None:
    """A demo agent: takes the chats it is offered, wraps each up a moment later."""
    async with session.ws_connect(url + "/agent/ws") as ws:
        await ws.send_json({"type": "auth", "token": token})
        await ws.send_json({"type": "presence", "status": "available"})
        async for msg in ws:
            frame = json.loads(msg.data)
            kind, contact = frame.get("type"), frame.get("contact_id")
            if kind == "offer":
                await ws.send_json({"type": "accept" if frame["channel"] == "chat" else
                                    "decline", "contact_id": contact})
            elif kind == "assigned":
                await asyncio.sleep(0.3)
                await ws.send_json({"type": "wrap_up", "contact_id": contact,
                                    "resolved": True, "note": "demo"})
            elif kind == "error" and frame.get("code") == "unauthorized":
                raise RuntimeError("the demo agent token was refused")
