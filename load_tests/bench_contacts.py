"""Contact search benchmark: the queries of GET /api/contacts and /api/contacts/{id} on a large
event log, timed and EXPLAIN ANALYZEd.

    .venv/bin/python load_tests/bench_reports.py --events 1000000 --keep /tmp/contacts1m --runs 1
    .venv/bin/python load_tests/bench_contacts.py --keep /tmp/contacts1m --events 1000000
    .venv/bin/python load_tests/bench_contacts.py --keep /tmp/contacts1m --events 1000000 \
        --directory 3000000 --plans

Uses the log bench_reports.py wrote and kept (--keep, --events as given to it), applies any new
migration, and gives every customer of the log a directory entry as ops would have: a name, a
phone number and an email (once; bench_reports' customers have only a tier). Then times each
search the page makes (median and fastest of --runs) and prints each statement's plan with its
execution time (--plans). The log's one agent (`a1`) is not in the agent directory: the agent
filter is given its id as is. --directory pads the directory with customers of UK, French,
German and US numbers, for the searches by a national number (migration 026's index of the
numbers reversed). Results go in load_tests/REPORTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from load_tests.bench_reports import database  # noqa: E402
from service.infra.migrate import migrate  # noqa: E402
from service.reporting import contact_search, contact_timeline  # noqa: E402
from service.reporting.contact_search import Cursor, SearchQuery  # noqa: E402
from service.reporting.reports import ReportRules, Window  # noqa: E402
from service.rules.loader import load_rules  # noqa: E402

FIRST = ("Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas",
         "Keiko", "Liam", "Maya", "Noor", "Oscar", "Priya", "Quinn", "Rosa", "Sami", "Tess")
LAST = ("Lima", "Okafor", "Schmidt", "Tanaka", "Garcia", "Novak", "Ahmed", "Rossi", "Kowalski",
        "Silva", "Haddad", "Jensen", "Moreau", "Quist", "Byrne", "Costa", "Ivanova", "Mensah")


async def give_customers_directory_entries(conn: asyncpg.Connection) -> int:
    """Every customer a name, a phone (+1 555 nnn nnnn) and an email, as `customers add`
    would; the one rare surname `Quist` for one customer in about 18 * 20."""
    if await conn.fetchval("SELECT count(*) FROM customers WHERE display_name IS NOT NULL"):
        return await conn.fetchval("SELECT count(*) FROM customers")
    await conn.execute(f"""
        WITH numbered AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM customers)
        UPDATE customers c SET display_name =
            (ARRAY{list(FIRST)})[1 + n % {len(FIRST)}] || ' ' ||
            (ARRAY{list(LAST)})[1 + (n / {len(FIRST)}) % {len(LAST)}] || ' ' || n
        FROM numbered WHERE numbered.id = c.id""")
    await conn.execute("DELETE FROM customer_identities")
    await conn.execute("""
        INSERT INTO customer_identities (kind, value, customer_id, verified)
        SELECT 'phone', '+1555' || lpad(n::text, 7, '0'), id, true
        FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM customers) c
        UNION ALL
        SELECT 'email', 'customer' || n || '@example.com', id, true
        FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM customers) c""")
    await conn.execute("ANALYZE customers; ANALYZE customer_identities")
    return await conn.fetchval("SELECT count(*) FROM customers")


# The directory's padding: numbers of four countries, as kept (E.164), one customer each.
PADDING_PREFIXES = ("+447", "+336", "+4915", "+1212")


async def pad_directory(conn: asyncpg.Connection, phones: int) -> int:
    """Customers with one phone number each until the directory keeps `phones` numbers; the
    log's customers keep theirs (+1555...). Returns the numbers kept."""
    kept = await conn.fetchval("SELECT count(*) FROM customer_identities WHERE kind = 'phone'")
    if kept >= phones:
        return kept
    await conn.execute(f"""
        INSERT INTO customers (id, display_name)
        SELECT md5('padding ' || n)::uuid, 'Padding ' || n
        FROM generate_series({kept + 1}, {phones}) n""")
    await conn.execute(f"""
        INSERT INTO customer_identities (kind, value, customer_id, verified)
        SELECT 'phone', (ARRAY{list(PADDING_PREFIXES)})[1 + n % {len(PADDING_PREFIXES)}]
                        || lpad(n::text, 9, '0'), md5('padding ' || n)::uuid, true
        FROM generate_series({kept + 1}, {phones}) n""")
    await conn.execute("ANALYZE customers; ANALYZE customer_identities")
    return phones


class Explaining:
    """A connection that EXPLAIN ANALYZEs every statement it runs first, keeping the plans."""

    def __init__(self, conn: asyncpg.Connection):
        self.conn, self.plans = conn, []

    def transaction(self, **options):
        return self.conn.transaction(**options)

    async def execute(self, sql: str, *args):
        return await self.conn.execute(sql, *args)

    async def fetch(self, sql: str, *args, timeout=None):
        plan = await self.conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
        self.plans.append("\n".join(r[0] for r in plan))
        return await self.conn.fetch(sql, *args)


async def timed(runs: int, query) -> tuple[float, float]:
    seconds = []
    for _ in range(runs):
        began = time.perf_counter()
        await query()
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds), min(seconds)


async def bench(url: str, runs: int, plans: bool, directory: int) -> None:
    rules = ReportRules.from_catalog(load_rules(ROOT / "routing_rules",
                                                with_classifier=False).catalog)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        customers = await give_customers_directory_entries(conn)
        if directory:
            print(f"  {await pad_directory(conn, directory):,} phone numbers in the directory")
        events = await conn.fetchval("SELECT count(*) FROM contact_events")
        contacts = await conn.fetchval("SELECT count(*) FROM contact_facts")
        print(f"  {events:,} events, {contacts:,} contacts, {customers:,} customers")
        # the log's busy weeks end where four in five of its contacts have started (after
        # them a thin tail of come-backs): the windows end there, so they are full
        end = await conn.fetchval("SELECT percentile_disc(0.8) WITHIN GROUP "
                                  "(ORDER BY started_at) FROM contact_facts")
        for name, days in (("7 days", 7), ("30 days", 30)):
            print(f"  contacts in the {name} window: ", await conn.fetchval(
                "SELECT count(*) FROM contact_facts WHERE started_at >= $1 AND started_at < $2",
                end - timedelta(days=days), end))
        week, month = Window(end - timedelta(days=7), end), Window(end - timedelta(days=30), end)
        whole = Window(end - timedelta(days=400), end)
        a_customer = await conn.fetchrow(
            "SELECT c.id, c.display_name, p.value AS phone, e.value AS email FROM customers c "
            "JOIN customer_identities p ON p.customer_id = c.id AND p.kind = 'phone' "
            "AND p.value LIKE '+1555%' "
            "JOIN customer_identities e ON e.customer_id = c.id AND e.kind = 'email' "
            "JOIN contact_facts f ON f.customer_id = c.id ORDER BY c.id LIMIT 1")
        phone = a_customer["phone"]  # +1555nnnnnnn, typed the way a person would
        typed_phone = f"({phone[2:5]}) {phone[5:8]}-{phone[8:]}"
        # a national number: the log's customer's, as a UK one typed without +44; the last
        # seven digits of a padded number, which any number ending in them matches
        await conn.execute("INSERT INTO customer_identities (kind, value, customer_id) "
                           "VALUES ('phone', '+447700900123', $1) ON CONFLICT DO NOTHING",
                           a_customer["id"])
        seven = (await conn.fetchval("SELECT value FROM customer_identities WHERE kind = "
                                     "'phone' ORDER BY value DESC LIMIT 1"))[-7:]
        a_contact = await conn.fetchval(
            "SELECT contact_id FROM contact_facts WHERE (ending).value = 'agent_resolved' "
            "ORDER BY started_at DESC LIMIT 1")
        deep = await contact_search.search(conn, SearchQuery(month, limit=100), rules)
        for _ in range(9):  # the 11th page of 100
            deep = await contact_search.search(conn, SearchQuery(
                month, before=Cursor.decode(deep.next_before), limit=100), rules)

        def q(**kw) -> SearchQuery:
            return SearchQuery(**{"window": month, "limit": 25, **kw})

        cases = [
            ("newest 25, last 7 days", q(window=week)),
            ("newest 100, last 30 days", q(limit=100)),
            ("page 11 of 100 (cursor), 30 days", q(before=Cursor.decode(deep.next_before),
                                                   limit=100)),
            ("phone typed (555) nnn-nnnn, 400 days", q(window=whole, customer=typed_phone)),
            ("national number 07700 900123, 400 days", q(window=whole,
                                                          customer="07700 900123")),
            (f"last 7 digits {seven}, 400 days", q(window=whole, customer=seven)),
            ("email, 400 days", q(window=whole, customer=a_customer["email"].upper())),
            ("customer id, 400 days", q(window=whole, customer=str(a_customer["id"]))),
            ("whole name (a few match), 400 days",
             q(window=whole, customer=a_customer["display_name"].lower())),
            ("name part ('quist 1', >500 match), 400 days", q(window=whole, customer="quist 1")),
            ("name part ('ana', >500 match), 30 days", q(customer="ana")),
            ("contact id prefix (6 hex)", q(window=whole, contact_id=str(a_contact)[:6])),
            ("voice + abandoned, 30 days", q(channel="voice", outcome="abandoned")),
            ("still waiting (queued), 30 days", q(outcome="queued")),
            ("type + self_service, 7 days", q(window=week, contact_type="track_order",
                                             outcome="self_service")),
            ("outcome code hung_up_in_ivr, 30 days", q(outcome="hung_up_in_ivr")),
            ("an outcome no contact has, 30 days", q(outcome="callback_failed")),
            ("no filter, the whole log: newest 25", q(window=whole)),
            ("agent (accepted a quarter of all), 30 days", q(agent="a1")),
            ("agent + abandoned (none), 7 days", q(window=week, agent="a1",
                                                   outcome="abandoned")),
        ]
        # the log's one agent is "a1", not an id of the agent directory: searched as such
        contact_search.matching_agents = _the_logs_agent
        print(f"\n{'search':<40}{'median':>10}{'fastest':>10}   ({runs} runs)")
        for name, query in cases:
            median, fastest = await timed(runs, lambda: contact_search.search(conn, query,
                                                                              rules))
            print(f"{name:<40}{median * 1000:>8.1f} ms{fastest * 1000:>7.1f} ms")
            if plans:  # as a customer's look-up runs from its sixth time: a generic plan
                explaining = Explaining(conn)
                await conn.execute("SET plan_cache_mode = force_generic_plan")
                await contact_search.search(explaining, query, rules)
                await conn.execute("RESET plan_cache_mode")
                for plan in explaining.plans:
                    print("\n".join("    " + line for line in plan.splitlines()))

        async def one_contact(pool) -> None:
            row = await contact_search.contact(pool, a_contact, rules)
            events_ = await contact_timeline.events_of(
                pool, row.contact_id, await conn.fetchval(
                    "SELECT started_at FROM contact_facts WHERE contact_id = $1", a_contact))
            await contact_timeline.agent_names(pool, events_)
            await contact_search.customer_contacts(pool, row.customer.id, rules, 51)
        median, fastest = await timed(runs, lambda: one_contact(conn))
        print(f"{'one contact: row, events, others':<40}{median * 1000:>8.1f} ms"
              f"{fastest * 1000:>7.1f} ms")
        if plans:
            explaining = Explaining(conn)
            await one_contact(explaining)
            for plan in explaining.plans:
                print("\n".join("    " + line for line in plan.splitlines()))
        assert uuid.UUID(str(a_contact))
    finally:
        await conn.close()


async def _the_logs_agent(conn, raw: str) -> list[str]:
    return [raw]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000,
                        help="as given to bench_reports.py with this --keep")
    parser.add_argument("--keep", type=Path, required=True,
                        help="the folder bench_reports.py --keep wrote the log in")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--plans", action="store_true", help="print every EXPLAIN ANALYZE")
    parser.add_argument("--directory", type=int, default=0,
                        help="pad the directory with customers until it keeps this many "
                             "phone numbers (of four countries)")
    args = parser.parse_args()
    with database(args.keep, args.events) as url:
        asyncio.run(bench(url, args.runs, args.plans, args.directory))


if __name__ == "__main__":
    main()
