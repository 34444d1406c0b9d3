"""The `switchboard` command line: the only place that reads argv and the environment."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from service.infra.cli_support import database, fail, invoking_user, servers, with_database
from service.rules.yamlfile import ConfigError
from service.settings import Settings, SettingsError, settings_from_env


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_from_env()
    except SettingsError as exc:
        return fail(str(exc), 2)
    from service.infra.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    return args.func(args, settings)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the service")
    serve.add_argument("--workers", type=_worker_count, default=1, metavar="N",
                       help="serving processes sharing the port (default 1; one per core)")
    serve.set_defaults(func=cmd_serve)
    commands.add_parser("migrate", help="apply database migrations").set_defaults(
        func=cmd_migrate)

    rules = commands.add_parser("rules", help="check or try routing rules").add_subparsers(
        dest="rules_command", required=True)
    check = rules.add_parser("check", help="validate a rules directory (exit 1 on errors)")
    check.add_argument("path", nargs="?", type=Path)
    check.set_defaults(func=cmd_rules_check)
    test = rules.add_parser(
        "test", help="show the decision for a contact: [DIR] channel=sms contact_type=... "
        "customer.tier=vip repeat_contact=true confidence=0.9 waiting.orders=12 "
        "at=2026-11-23T18:30-05:00 "
        "(or text='where is my order'; at defaults to now)")
    test.add_argument("args", nargs="+", metavar="[DIR] KEY=VALUE")
    test.set_defaults(func=cmd_rules_test)
    history = rules.add_parser("history", help="every load and reload: when, why, who, the "
                               "version and what changed")
    history.add_argument("--limit", type=int, default=20)
    history.add_argument("--diff", action="store_true", help="show each load's diff")
    history.add_argument("--format", choices=("table", "json"), default="table")
    history.set_defaults(func=cmd_rules_history)
    diff = rules.add_parser("diff", help="the difference between two versions (numbers or "
                            "digests; B defaults to the version in force)")
    diff.add_argument("a")
    diff.add_argument("b", nargs="?")
    diff.set_defaults(func=cmd_rules_diff)
    rollback = rules.add_parser(
        "rollback", help="put a version's files back into the rules directory and have "
        "running instances reload them; a version that no longer validates changes nothing")
    rollback.add_argument("version")
    rollback.add_argument("path", nargs="?", type=Path, help="the rules directory "
                          "(default SWITCHBOARD_RULES_DIR)")
    rollback.set_defaults(func=cmd_rules_rollback)
    encode = rules.add_parser(
        "encode", help="write the encoder stage's training encodings into the rules "
        "directory (encodings.npz), so a first load on a new machine does not encode them")
    encode.add_argument("path", nargs="?", type=Path)
    encode.set_defaults(func=cmd_rules_encode)
    reload = rules.add_parser("reload", help="have every running instance reload its rules "
                              "directory (all or nothing, recorded)")
    reload.set_defaults(func=cmd_rules_reload)
    from service.reporting import experiments_cli

    experiments_cli.add_rules_parsers(rules)

    agents = commands.add_parser("agents", help="manage agents").add_subparsers(
        dest="agents_command", required=True)
    agent_add = agents.add_parser("add", help="add an agent; prints their token (shown once)")
    agent_add.add_argument("name")
    agent_add.add_argument("--skills", required=True, help="comma-separated, e.g. care,orders")
    agent_add.add_argument("--capacity", default="",
                           help="contacts at once per channel, e.g. voice=1,chat=2 (a channel "
                                "left out takes its default)")
    agent_add.add_argument("--phone", help="E.164 number accepted calls are bridged to")
    agent_add.set_defaults(func=cmd_agents_add)
    agent_disable = agents.add_parser(
        "disable", help="disable an agent: their token stops signing in, open consoles close")
    agent_disable.add_argument("agent", help="the agent's name or id")
    agent_disable.set_defaults(func=cmd_agents_disable)

    learned = commands.add_parser(
        "learned", help="training examples learned from agents' corrections and confirmed "
        "self-service (used on the next rules load)")
    learned.add_argument("--format", choices=("table", "json"), default="table")
    learned.set_defaults(func=cmd_learned)

    customers = commands.add_parser("customers", help="manage known customers").add_subparsers(
        dest="customers_command", required=True)
    add = customers.add_parser("add", help="add or update a customer")
    add.add_argument("--phone", action="append", default=[], help="E.164 number (repeatable)")
    add.add_argument("--email", action="append", default=[])
    add.add_argument("--web-id", action="append", default=[],
                     help="the customer id your site signs for the chat widget")
    add.add_argument("--name")
    add.add_argument("--customer", metavar="ID",
                     help="update this customer; identities other customers own move to it")
    add.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE",
                     help="customer field used by routing, e.g. tier=vip")
    add.set_defaults(func=cmd_customers_add)
    erase = customers.add_parser(
        "erase", help="erase a customer's personal data (right to erasure); prints counts")
    who = erase.add_mutually_exclusive_group(required=True)
    who.add_argument("--customer", metavar="ID")
    who.add_argument("--phone", metavar="NUMBER")
    who.add_argument("--web-id", metavar="ID")
    erase.add_argument("--dry-run", action="store_true", help="count, change nothing")
    erase.set_defaults(func=cmd_customers_erase)

    from service.reporting import cli as cli_ops
    from service.reporting import unrecognised_cli
    from service.understanding import cli as cli_classify

    cli_ops.add_parsers(commands)
    experiments_cli.add_parsers(commands)
    unrecognised_cli.add_parser(commands)
    cli_classify.add_parser(commands)
    return parser


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from aiohttp import web

    from service.app import create_app
    from service.infra.runtime import (
        EventLoopUnavailable,
        new_event_loop,
        one_native_thread,
        tune_gc,
    )

    try:
        from service.rules.loader import load_rules

        load_rules(settings.rules_dir, with_classifier=False)
    except ConfigError as exc:
        print(f"switchboard: the rules in {settings.rules_dir} are invalid:\n{exc}",
              file=sys.stderr)
        return 1
    try:
        loop = new_event_loop(settings.event_loop)
    except EventLoopUnavailable as exc:
        return fail(str(exc), 2)
    tune_gc()
    one_native_thread()
    with servers(settings) as ready:
        if args.workers == 1:
            web.run_app(create_app(ready), host=ready.host, port=ready.port, print=None,
                        access_log=None, loop=loop)
            return 0
        from service.infra.workers import run_workers

        loop.close()  # each worker makes its own, after the fork

        def serve(sock) -> None:
            one_native_thread()  # a forked child starts OpenBLAS's threads afresh
            web.run_app(create_app(ready), sock=sock, print=None, access_log=None,
                        loop=new_event_loop(ready.event_loop))

        return run_workers(args.workers, serve, ready.host, ready.port)


def _worker_count(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 256:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 256, not {raw!r}")
    return int(raw)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    import asyncpg

    from service.infra.migrate import migrate

    async def run(url: str) -> list[int]:
        conn = await asyncpg.connect(url)
        try:
            return await migrate(conn)
        finally:
            await conn.close()

    with database(settings) as url:
        applied = asyncio.run(run(url))
    print(f"applied {len(applied)} migration(s)" + (f": {applied}" if applied else ""))
    return 0


def cmd_rules_check(args: argparse.Namespace, settings: Settings) -> int:
    from service.rules.loader import load_rules

    directory = args.path or settings.rules_dir
    try:
        rules = load_rules(directory, with_classifier=False)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print(f"{len(exc.issues)} problem(s) in {directory}", file=sys.stderr)
        return 1
    templates = len(rules.replies.templates)
    print(f"{directory}: OK ({len(rules.catalog.types)} contact types, "
          f"{len(rules.tree.queues)} queues, {len(rules.catalog.training)} training examples"
          f"{f', {len(rules.replies.replies)} saved replies' if rules.replies.replies else ''}"
          f"{f', {templates} message templates' if templates else ''})")
    _print_encodings_coverage(directory)
    return 0


def _print_encodings_coverage(directory: Path) -> None:
    """When the directory ships encodings, say whether they are current."""
    from service.rules.loader import stage_coverage
    from service.understanding.encodings_file import RULES_ENCODINGS

    if not (directory / RULES_ENCODINGS).exists():
        return
    coverage = stage_coverage(directory)
    if coverage is None:
        print(f"{RULES_ENCODINGS}: unused (the catalog turns the encoder off)")
        return
    stored, needed = coverage
    advice = "" if stored == needed else \
        f"; a first load encodes the other {needed - stored}: run switchboard rules encode"
    print(f"{RULES_ENCODINGS}: holds {stored} of the encoder stage's {needed} training "
          f"texts{advice}")


def cmd_rules_encode(args: argparse.Namespace, settings: Settings) -> int:
    from service.rules.loader import EncoderOff, encode_rules
    from service.understanding.encoder import EncoderUnavailable

    directory = args.path or settings.rules_dir

    def progress(done: int, total: int) -> None:
        print(f"encoded {done} of {total} texts", file=sys.stderr, flush=True)

    try:
        encoded = encode_rules(directory, progress)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print(f"{len(exc.issues)} problem(s) in {directory}", file=sys.stderr)
        return 1
    except (EncoderOff, EncoderUnavailable) as exc:
        return fail(str(exc))
    print(f"wrote {encoded.path}: {encoded.texts} texts ({encoded.encoded} encoded now, "
          f"{encoded.texts - encoded.encoded} kept from the file)")
    return 0


def cmd_rules_test(args: argparse.Namespace, settings: Settings) -> int:
    from service.rules.loader import load_rules
    from service.understanding.understand import understand

    items = list(args.args)
    directory = Path(items.pop(0)) if items and "=" not in items[0] else settings.rules_dir
    try:
        attrs = _attributes(items)
        rules = load_rules(directory, with_classifier="text" in attrs)
    except (ValueError, ConfigError) as exc:
        return fail(str(exc))
    understood = None
    if "text" in attrs:
        understood = understand(rules, "message", str(attrs.pop("text")))
        if understood.outcome == "classified":
            attrs.setdefault("contact_type", understood.contact_type)
            attrs.setdefault("confidence", round(understood.confidence, 4))
    unknown = attrs.get("contact_type") not in (None, *rules.catalog.types)
    if unknown:
        return fail(f"unknown contact_type '{attrs['contact_type']}'")
    at = attrs.pop("at", None) or datetime.now(timezone.utc)
    attrs["hours"] = sorted(rules.tree.intervals_at(at.timestamp()))
    decision = rules.tree.decide(attrs)
    print(json.dumps({"input": attrs, **decision.as_dict(),
                      "self_service_path": _path(rules, decision, attrs, understood)}, indent=2))
    return 0


def _path(rules, decision, attrs: dict[str, object], understood) -> str:
    """What a live turn would do next, in words."""
    from service.understanding.understand import escalation_reason

    if understood is not None and understood.outcome == "agent":
        return "agent (requested_agent)"
    if understood is not None and understood.outcome == "missed":
        offered = ", ".join(t for t, _ in understood.ranked) or "nothing"
        return f"clarifying question ({understood.reason}; offers {offered})"
    contact_type = attrs.get("contact_type")
    if contact_type is None:
        return f"agent ({decision.reason})" if not decision.self_service else \
            "agent (no contact type)"
    reason = escalation_reason(rules, str(contact_type), decision)
    return f"agent ({reason})" if reason else "answer"


def _attributes(items: list[str]) -> dict[str, object]:
    attrs: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        if key == "confidence" or key.startswith("waiting."):
            attrs[key] = float(value)
        elif key == "repeat_contact":
            attrs[key] = value.lower() in ("true", "1", "yes")
        elif key == "at":
            attrs[key] = _moment(value)
        else:
            attrs[key] = value
    return attrs


def _moment(raw: str) -> datetime:
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"at={raw!r}: expected an ISO 8601 time such as "
                         "2026-11-23T18:30-05:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def cmd_rules_history(args: argparse.Namespace, settings: Settings) -> int:
    from service.rules import versions

    loads = with_database(settings, lambda conn: versions.history(conn, args.limit))
    if args.format == "json":
        print(json.dumps([load.as_dict() for load in loads], indent=2))
        return 0
    print(f"{'load':>5}  {'when (UTC)':<19}  {'cause':<8}  {'version':>7}  {'digest':<16}  "
          f"{'change':>9}  who / where")
    for load in loads:
        lines = load.diff.splitlines()
        added = sum(1 for x in lines if x.startswith("+") and not x.startswith("+++"))
        removed = sum(1 for x in lines if x.startswith("-") and not x.startswith("---"))
        change = f"+{added} -{removed}" if load.version_id else "FAILED"
        when = load.loaded_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{load.id:>5}  {when:<19}  {load.cause:<8}  "
              f"{'v' + str(load.version_id) if load.version_id else '-':>7}  "
              f"{load.digest or '-':<16}  {change:>9}  {load.actor or '-'} @ {load.instance}")
        for problem in load.errors:
            print(f"{'':>7}{problem}")
        if args.diff and load.diff:
            print("".join(f"{'':>7}{line}\n" for line in lines), end="")
    return 0


def cmd_rules_diff(args: argparse.Namespace, settings: Settings) -> int:
    from service.rules import versions

    async def job(conn):
        old = await versions.version(conn, args.a)
        new = await versions.version(conn, args.b) if args.b else await versions.in_force(conn)
        if new is None:
            raise versions.UnknownVersion("no version has been loaded yet")
        return versions.unified_diff(old.files, new.files, f"v{old.id}", f"v{new.id}")

    try:
        print(with_database(settings, job), end="")
    except versions.UnknownVersion as exc:
        return fail(str(exc))
    return 0


def cmd_rules_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from service.rules import versions
    from service.rules.restore import RestoreFailed, restore

    directory = args.path or settings.rules_dir

    async def job(conn):
        target = await versions.version(conn, args.version)
        restore(directory, target.files)  # validated first; raises, changing nothing
        await versions.ask_reload(conn, versions.LoadCause(
            "rollback", f"{invoking_user()} (to v{target.id})"))
        return target

    try:
        target = with_database(settings, job)
    except versions.UnknownVersion as exc:
        return fail(str(exc))
    except RestoreFailed as exc:
        print(f"switchboard: version {args.version} does not validate any more; nothing "
              f"changed:\n{exc}", file=sys.stderr)
        return 1
    print(f"restored v{target.id} ({target.digest}) into {directory}; running instances "
          "reload it now (see: switchboard rules history)")
    return 0


def cmd_rules_reload(args: argparse.Namespace, settings: Settings) -> int:
    from service.rules import versions

    with_database(settings, lambda conn: versions.ask_reload(
        conn, versions.LoadCause("cli", invoking_user())))
    print("asked every running instance to reload (see: switchboard rules history)")
    return 0


def cmd_customers_add(args: argparse.Namespace, settings: Settings) -> int:
    import asyncpg

    from service.conversations.customers import CustomerError, upsert_customer
    from service.infra.migrate import migrate
    from service.infra.redis_url import client_for, close_client

    identities = [("phone", p) for p in args.phone] + [("email", e.lower()) for e in args.email]
    identities += [("web", f"id:{w}") for w in args.web_id]
    if not identities:
        return fail("give at least one --phone, --email or --web-id", 2)
    try:
        attributes = dict(_split(a) for a in args.attr)
    except ValueError as exc:
        return fail(str(exc), 2)

    async def run(ready: Settings) -> str:
        conn = await asyncpg.connect(ready.database_url)
        client = client_for(ready.redis_url)
        try:
            await migrate(conn)
            return await upsert_customer(conn, client, identities=identities,
                                         display_name=args.name, attributes=attributes,
                                         customer_id=args.customer)
        finally:
            await conn.close()
            await close_client(client)

    with servers(settings) as ready:
        try:
            print(asyncio.run(run(ready)))
        except CustomerError as exc:
            return fail(str(exc), 2)
    return 0


def cmd_customers_erase(args: argparse.Namespace, settings: Settings) -> int:
    import asyncpg

    from service.conversations import erasure
    from service.infra.migrate import migrate
    from service.infra.redis_url import client_for, close_client

    async def run(ready: Settings) -> erasure.Erasure:
        async with asyncpg.create_pool(ready.database_url, min_size=1, max_size=1) as pool:
            client = client_for(ready.redis_url)
            try:
                async with pool.acquire() as conn:
                    await migrate(conn)
                customer = args.customer or await erasure.customer_id_for(
                    pool, *(("phone", args.phone) if args.phone else ("web", f"id:{args.web_id}")))
                return await erasure.erase(pool, client, customer, by=f"cli: {invoking_user()}",
                                           dry_run=args.dry_run)
            finally:
                await close_client(client)

    with servers(settings) as ready:
        try:
            done = asyncio.run(run(ready))
        except erasure.ErasureError as exc:
            return fail(str(exc), 2 if exc.reason == "bad_input" else 1)
    print(json.dumps(done.as_dict(), indent=2))
    return 0


def cmd_agents_add(args: argparse.Namespace, settings: Settings) -> int:
    from service.agents.desk import add_agent
    from service.channel_list import channel_names

    skills = [s.strip() for s in args.skills.split(",") if s.strip()]
    try:
        capacity = {k: int(v) for k, v in (_split(p) for p in args.capacity.split(",") if p)}
        names = sorted(channel_names())
        unknown = set(capacity) - set(names)
        if unknown or any(v < 0 for v in capacity.values()):
            raise ValueError(f"capacity takes {', '.join(names[:-1])} and {names[-1]} with "
                             f"whole numbers, got {args.capacity!r}")
    except ValueError as exc:
        return fail(str(exc), 2)
    if not skills:
        return fail("give at least one skill", 2)

    token = with_database(settings, lambda conn: add_agent(conn, args.name, skills, capacity,
                                                          args.phone))
    print(f"agent {args.name} added with skills {','.join(sorted(set(skills)))}; their token "
          "(shown once):")
    print(token)
    return 0


def cmd_agents_disable(args: argparse.Namespace, settings: Settings) -> int:
    import asyncpg

    from service.agents.desk import disable_agent

    async def run(database_url: str, redis_url: str) -> tuple[str, bool]:
        conn = await asyncpg.connect(database_url)
        try:
            agent_id = await disable_agent(conn, args.agent)
        finally:
            await conn.close()
        return agent_id, await _close_consoles(redis_url, agent_id)

    try:
        with servers(settings) as ready:
            agent_id, told = asyncio.run(run(ready.database_url, ready.redis_url))
    except ValueError as exc:
        return fail(str(exc))
    print(f"agent {args.agent} ({agent_id}) disabled; " + (
        "their open consoles were closed" if told else
        "Redis could not be reached: their open consoles close within "
        "a few seconds"))
    return 0


async def _close_consoles(redis_url: str, agent_id: str) -> bool:
    """Tell every instance to close the agent's sockets now (they also recheck by themselves)."""
    from service.agents.bus import Bus
    from service.agents.desk import revoked_frame
    from service.infra.redis_url import client_for, close_client, publisher_for

    client = client_for(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        await Bus(client, publish=publisher_for(client)).publish(f"agent:{agent_id}",
                                                                 revoked_frame())
        return True
    except Exception:  # the database already refuses the token
        return False
    finally:
        await close_client(client)


def cmd_learned(args: argparse.Namespace, settings: Settings) -> int:
    import asyncpg

    from service.infra.migrate import migrate
    from service.understanding.learning import learned_examples

    async def run(url: str) -> list[dict]:
        async with asyncpg.create_pool(url, min_size=1, max_size=1) as pool:
            async with pool.acquire() as conn:
                await migrate(conn)
            return await learned_examples(pool)

    with servers(settings) as ready:
        rows = asyncio.run(run(ready.database_url))
    if args.format == "json":
        print(json.dumps([{**r, "occurred_at": r["occurred_at"].isoformat()} for r in rows],
                         indent=2))
        return 0
    print(f"{len(rows)} learned example(s)")
    for row in rows:
        print(f"{row['occurred_at']:%Y-%m-%d %H:%M}  {row['source']:<22}  {row['label']:<24}  "
              f"{row['text']}")
    return 0


def _split(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {item!r}")
    return key, value


if __name__ == "__main__":
    sys.exit(main())
