"""Day roll-ups of the reports (service/reporting/rollups.py, migration 016): kept, reused,
recomputed when the facts of a day they read change, and always equal to the figures computed
from raw events, also while several writers land batches at once."""

from __future__ import annotations

import asyncio
import functools
import json
import random
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest

from service.conversations.customers import upsert_customer
from service.reporting import partitions, reports, rollups
from service.reporting.reports import ReportRules, Window
from tests.test_reports import COLUMNS, TYPES, Contact, insert, random_contact, without_clock

T0 = datetime(2024, 5, 6, 9, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)
DAY = timedelta(days=1)
RULES = ReportRules({"track_order": 24, "cancel_order": 72, "change_order": 72,
                     "recover_password": 48, "payment_issue": 72}, service_level_s=60)
SERVED = (reports.summary, reports.matrix, reports.journeys)


@pytest.fixture
async def log_db(db):
    await db.execute("TRUNCATE contact_events")
    return db


async def assert_served_equals_events(conn, window: Window, rules: ReportRules = RULES) -> None:
    for report in SERVED:
        served = await report(conn, window, rules)
        reference = await report(conn, window, rules, queries=reports.FROM_EVENTS)
        assert without_clock(served) == without_clock(reference), (report.__name__, window)


async def kept(conn, report: str = "groupings") -> dict:
    rows = await conn.fetch("SELECT day, changes, computed_at FROM report_rollups "
                            "WHERE report = $1 AND segment_by IS NULL ORDER BY day", report)
    return {row["day"]: (row["changes"], row["computed_at"]) for row in rows}


def traffic(rng: random.Random, customers: int, start: datetime, hours: float) -> list[Contact]:
    contacts = []
    for number in range(customers):
        at = start + timedelta(hours=rng.uniform(0, hours))
        for _ in range(rng.choice((1, 1, 2, 3))):
            contacts.append(random_contact(rng, f"rollup-{number}", at))
            at += timedelta(hours=rng.choice((0, 1, 20, 60, 80)))
    return contacts


async def test_whole_days_are_kept_and_read_back_and_edges_come_from_the_facts(log_db):
    await insert(log_db, *traffic(random.Random(1), 60, T0, 96))
    window = Window(T0 - 3 * H, T0 + 4 * DAY + 5 * H)  # 18 h, 3 whole days, 14 h
    days, edges = rollups.whole_days(window)
    assert days == [(T0 + n * DAY).date() for n in range(1, 4)]
    assert edges == [(window.start, datetime(2024, 5, 7, tzinfo=timezone.utc)),
                     (datetime(2024, 5, 10, tzinfo=timezone.utc), window.end)]
    await assert_served_equals_events(log_db, window)
    first = await kept(log_db)
    assert sorted(first) == days
    for name in ("medians", "journeys", "dropouts"):
        assert sorted(await kept(log_db, name)) == days
    await assert_served_equals_events(log_db, window)
    assert await kept(log_db) == first  # read back, not computed again

    # What is served for a whole day is the stored roll-up: alter it and the report shows it.
    await log_db.execute("""
        UPDATE report_rollups SET rows = (
            SELECT jsonb_agg(CASE WHEN (r->>'by_type')::bool OR (r->>'by_channel')::bool
                                       OR (r->>'by_queue')::bool OR (r->>'by_route')::bool
                                       OR (r->>'by_reason')::bool OR (r->>'by_handling')::bool
                                  THEN r ELSE jsonb_set(r, '{contacts}', '1000') END)
            FROM jsonb_array_elements(rows) r)
        WHERE report = 'groupings' AND day = $1""", days[1])
    served = await reports.summary(log_db, window, RULES)
    reference = await reports.summary(log_db, window, RULES, queries=reports.FROM_EVENTS)
    assert served["totals"]["contacts"] > reference["totals"]["contacts"] + 900


async def test_a_change_to_a_days_facts_makes_its_roll_up_computed_again(log_db):
    ana = Contact("ana-r", "sms", T0).classified("track_order").routed("orders").offered()
    ana.resolved()
    gus = Contact("gus-r", "chat", T0 + 2 * DAY).classified("cancel_order").routed("orders")
    gus.offered().failed().escalated("self_service_failed", "orders").accepted(after_s=30)
    await insert(log_db, ana, gus, *traffic(random.Random(2), 40, T0, 72))
    window = Window(T0 - 9 * H, T0 + 5 * DAY - 9 * H)  # five whole days
    await assert_served_equals_events(log_db, window)
    before = await kept(log_db)
    before_journeys = await kept(log_db, "journeys")

    # Three days later ana comes back about the same thing: her first contact becomes a false
    # deflection and her journey grows; gus's wrap-up corrects his type two days on.
    back = Contact("ana-r", "voice", T0 + 20 * H).classified("track_order").routed("orders")
    back.offered().resolved()
    wrap = Contact("gus-r", "chat", T0)
    wrap.id, wrap.rows = gus.id, []
    wrap.now, wrap.contact_type = T0 + 2 * DAY + 10 * H, "cancel_order"
    wrap.wrap_up(resolved=True, correction="change_order")
    await insert(log_db, back, wrap)
    await assert_served_equals_events(log_db, window)
    after = await kept(log_db)
    changed = {day for day in before if after[day] != before[day]}
    # only the days whose facts changed: ana's two, gus's
    assert changed == {T0.date(), (T0 + DAY).date(), (T0 + 2 * DAY).date()}
    assert after[T0.date()][0] > before[T0.date()][0]
    journeys = await kept(log_db, "journeys")
    assert journeys[T0.date()] != before_journeys[T0.date()]  # its journey gained a contact
    summary = await reports.summary(log_db, window, RULES)
    assert summary["totals"]["false_deflections"] >= 1


async def test_other_rules_keep_their_own_roll_ups(log_db):
    """The repeat windows and the service level are the report's, not the facts': a report
    under other rules neither uses nor spoils the roll-ups of the first."""
    await insert(log_db, *traffic(random.Random(3), 60, T0, 96))
    window = Window(T0 - 9 * H, T0 + 4 * DAY - 9 * H)
    short = ReportRules({t: 1 for t in TYPES}, service_level_s=10)
    await assert_served_equals_events(log_db, window)
    await assert_served_equals_events(log_db, window, short)
    keys = await log_db.fetch("SELECT DISTINCT rules FROM report_rollups WHERE report = "
                              "'groupings'")
    assert len(keys) == 2
    wide = await reports.summary(log_db, window, RULES)
    narrow = await reports.summary(log_db, window, short)
    assert wide["totals"]["false_deflections"] > narrow["totals"]["false_deflections"]
    await assert_served_equals_events(log_db, window)


async def test_days_not_over_are_computed_from_the_facts_and_not_kept(log_db):
    now = datetime.now(timezone.utc)
    await insert(log_db, *traffic(random.Random(4), 30, now - 30 * H, 29))
    window = Window(now - 3 * DAY, now + DAY)
    await assert_served_equals_events(log_db, window)
    assert all(day < now.date() for day in await kept(log_db))


async def test_truncating_the_log_drops_the_roll_ups(log_db):
    await insert(log_db, *traffic(random.Random(5), 20, T0, 48))
    window = Window(T0 - 9 * H, T0 + 3 * DAY - 9 * H)
    await assert_served_equals_events(log_db, window)
    assert await kept(log_db)
    await log_db.execute("TRUNCATE contact_events")
    assert await log_db.fetchval("SELECT count(*) FROM report_rollups") == 0
    assert (await reports.summary(log_db, window, RULES))["totals"]["contacts"] == 0
    await insert(log_db, *traffic(random.Random(6), 20, T0, 48))
    await assert_served_equals_events(log_db, window)


async def test_compacting_the_changes_keeps_the_roll_ups_fresh(log_db):
    rng = random.Random(7)
    for part in range(3):  # three inserts: several change rows per day
        await insert(log_db, *traffic(rng, 15, T0 + part * H, 48))
    window = Window(T0 - 9 * H, T0 + 3 * DAY - 9 * H)
    await assert_served_equals_events(log_db, window)
    before = await kept(log_db)
    rows_before = await log_db.fetchval("SELECT count(*) FROM report_fact_changes")
    await partitions.maintain(log_db, retention_days=0, now=T0)
    assert await log_db.fetchval("SELECT count(*) FROM report_fact_changes") < rows_before
    assert await log_db.fetchval("SELECT count(*) FROM report_fact_changes") == \
        await log_db.fetchval("SELECT count(DISTINCT day) FROM report_fact_changes")
    await assert_served_equals_events(log_db, window)
    assert await kept(log_db) == before  # the totals did not move: nothing recomputed


async def test_reports_during_concurrent_writers_end_equal_to_the_raw_events(log_db,
                                                                            database_url):
    """Four writers COPY shuffled batches of the same traffic at once (a contact's events
    across writers) while reports keep running over the same windows; then every served
    figure equals the raw-event computation."""
    rng = random.Random(8)
    contacts = traffic(rng, 150, T0, 120)
    rows = [row for c in contacts for row in c.rows]
    rng.shuffle(rows)
    batches = [rows[start:start + 61] for start in range(0, len(rows), 61)]
    windows = [Window(T0 - H, T0 + 10 * DAY), Window(T0 + 30 * H, T0 + 3 * DAY + 5 * H)]
    writing = True

    async def writer(share: list[list[tuple]]) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            for batch in share:
                await conn.copy_records_to_table("contact_events", records=batch,
                                                 columns=COLUMNS)
        finally:
            await conn.close()

    async def reader() -> int:
        conn = await asyncpg.connect(database_url)
        runs = 0
        try:
            while writing:
                for window in windows:
                    for report in SERVED:
                        await report(conn, window, RULES)
                        runs += 1
        finally:
            await conn.close()
        return runs

    reading = asyncio.ensure_future(reader())
    await asyncio.gather(*(writer(batches[n::4]) for n in range(4)))
    writing = False
    assert await reading > 0
    assert await log_db.fetchval("SELECT count(*) FROM contact_facts") == len(contacts)
    for window in windows:
        await assert_served_equals_events(log_db, window)


async def test_medians_survive_storage_exactly(log_db):
    """Resolution times with microseconds, kept as JSON numbers, give the median to the bit."""
    rng = random.Random(9)
    contacts = []
    for number in range(40):
        contact = Contact(f"m-{number}", "sms", T0 + timedelta(hours=rng.uniform(0, 40)))
        contact.classified("track_order").routed("orders").offered()
        contacts.append(contact.resolved(gap_s=rng.uniform(0, 1000) + 1e-6 * rng.randint(1, 9)))
    await insert(log_db, *contacts)
    window = Window(T0 - 9 * H, T0 + 2 * DAY - 9 * H)
    served = await reports.matrix(log_db, window, RULES)
    reference = await reports.matrix(log_db, window, RULES, queries=reports.FROM_EVENTS)
    assert [r["median_resolution_s"] for r in served["rows"]] == \
        [r["median_resolution_s"] for r in reference["rows"]]
    stored = await log_db.fetchval("SELECT rows FROM report_rollups WHERE report = 'medians' "
                                   "AND day = $1", T0.date())
    assert any(row["resolutions"] for row in json.loads(stored))


# ---- segments: roll-ups by a customer attribute (migration 018) ---------------------------

SPLIT = functools.partial(reports.split, attribute="tier")


async def give_tiers(conn, rng: random.Random, contacts: list[Contact]) -> list:
    """Most customers get a tier and a language, some an empty directory entry, the last five
    none at all; returns the customers in the order drawn."""
    await conn.execute("TRUNCATE customers CASCADE")  # traffic() draws the same customers
    customers = list(dict.fromkeys(c.customer for c in contacts))
    await conn.executemany(
        "INSERT INTO customers (id, attributes) VALUES ($1, $2::jsonb)",
        [(cid, json.dumps({"tier": rng.choice(("gold", "silver", "bronze")),
                           "language": rng.choice(("en", "fr"))} if rng.random() < 0.85 else {}))
         for cid in customers[:-5]])
    return customers


async def assert_split_equals_events(conn, window: Window, rules: ReportRules = RULES,
                                     attribute: str = "tier") -> dict:
    """Every rolled-up report split by the attribute, and each of its segments alone, equal
    the raw-event computation; returns the served split summary."""
    served_summary = None
    for report in SERVED:
        served = await reports.split(report, conn, window, rules, attribute)
        reference = await reports.split(report, conn, window, rules, attribute,
                                        queries=reports.FROM_EVENTS)
        assert without_clock(served) == without_clock(reference), (report.__name__, window)
        for part in served["segments"]:
            alone = await report(conn, window, rules.with_segment(attribute,
                                                                  part["value"] or ""))
            assert {k: v for k, v in alone.items() if k in part} == \
                {k: v for k, v in part.items() if k != "value"}, (report.__name__, part["value"])
        served_summary = served_summary or served
    return served_summary


async def kept_segmented(conn, report: str = "groupings", attribute: str = "tier") -> dict:
    rows = await conn.fetch("SELECT day, changes, computed_at FROM report_rollups "
                            "WHERE report = $1 AND segment_by = $2 ORDER BY day",
                            report, attribute)
    return {row["day"]: (row["changes"], row["computed_at"]) for row in rows}


def contacts_by_tier(split: dict) -> dict:
    return {s["value"]: s["totals"]["contacts"] for s in split["segments"]}


async def test_segments_and_splits_are_served_from_roll_ups_by_attribute(log_db):
    rng = random.Random(11)
    contacts = traffic(rng, 80, T0, 96)
    await insert(log_db, *contacts)
    await give_tiers(log_db, rng, contacts)
    windows = [Window(T0 - 3 * H, T0 + 4 * DAY + 5 * H),  # edges around three whole days
               Window(T0 - 9 * H, T0 + 5 * DAY - 9 * H),  # five whole days
               Window(T0 + 2 * H, T0 + 20 * H)]           # inside one day
    for window in windows:
        served = await assert_split_equals_events(log_db, window)
        assert list(contacts_by_tier(served)) == [None, "bronze", "gold", "silver"]
    days = rollups.whole_days(windows[1])[0]
    for name in set(rollups.SEGMENTED) - {"trend", "candidates"}:  # what these reports read
        assert sorted(await kept_segmented(log_db, name)) == days, name
    first = await kept_segmented(log_db)
    stored = await log_db.fetchval("SELECT rows FROM report_rollups WHERE segment_by = 'tier' "
                                   "AND report = 'groupings' AND day = $1", days[1])
    assert set(json.loads(stored)) == {"", "bronze", "gold", "silver"}  # rows per value
    await assert_split_equals_events(log_db, windows[1], attribute="language")
    assert sorted(await kept_segmented(log_db, attribute="language")) == days
    await assert_split_equals_events(log_db, windows[0])
    assert await kept_segmented(log_db) == first  # read back, not computed again

    # What is served is the stored rows of each value: alter a stored day's silver rows and
    # the split shows it, the other values and the whole (apart roll-ups) do not.
    gold = await reports.summary(log_db, windows[1], RULES.with_segment("tier", "gold"))
    await log_db.execute("""
        UPDATE report_rollups SET rows = jsonb_set(rows, '{silver}', (
            SELECT jsonb_agg(jsonb_set(r, '{contacts}', '1000'))
            FROM jsonb_array_elements(rows->'silver') r))
        WHERE report = 'groupings' AND segment_by = 'tier' AND day = $1""", days[1])
    altered = contacts_by_tier(await SPLIT(reports.summary, log_db, windows[1], RULES))
    assert altered["silver"] >= 1000 and altered["gold"] == gold["totals"]["contacts"] < 1000
    assert (await reports.summary(log_db, windows[1], RULES.with_segment("tier", "silver"))
            )["totals"]["contacts"] >= 1000
    assert without_clock(await reports.summary(
        log_db, windows[1], RULES.with_segment("tier", "gold"))) == without_clock(gold)
    whole = await reports.summary(log_db, windows[1], RULES)
    assert whole["totals"]["contacts"] < 1000


async def test_a_customers_new_tier_moves_all_their_contacts_in_the_next_report(
        log_db, redis_client):
    rng = random.Random(12)
    ana = [Contact("ana-seg", "sms", T0 + n * DAY + 2 * H).classified("track_order")
           .routed("orders").offered().resolved() for n in range(3)]
    contacts = [*ana, *traffic(rng, 60, T0, 96)]
    await insert(log_db, *contacts)
    await give_tiers(log_db, rng, contacts)
    await log_db.execute("""UPDATE customers SET attributes = '{"tier": "bronze"}'
                            WHERE id = $1""", ana[0].customer)
    await log_db.execute("INSERT INTO customer_identities (kind, value, customer_id) "
                         "VALUES ('phone', '+15555550901', $1)", ana[0].customer)
    window = Window(T0 - 9 * H, T0 + 5 * DAY - 9 * H)  # five whole days
    before = await assert_split_equals_events(log_db, window)
    kept_before = {name: await kept_segmented(log_db, name) for name in rollups.SEGMENTED}
    whole_before = await kept(log_db)
    changes_before = await log_db.fetchval("SELECT count(*) FROM report_attribute_changes")

    # The directory's own update, with the attributes she already has: nothing to recompute.
    await upsert_customer(log_db, redis_client, identities=[("phone", "+15555550901")],
                          display_name="Ana", attributes={"tier": "bronze"})
    assert await log_db.fetchval("SELECT count(*) FROM report_attribute_changes") == \
        changes_before
    await assert_split_equals_events(log_db, window)
    assert {name: await kept_segmented(log_db, name) for name in rollups.SEGMENTED} == \
        kept_before

    # Ana goes gold: her three contacts (and her journey) move; only her days are computed
    # again, only the tier's roll-ups, and the unsegmented ones stay as they were.
    await upsert_customer(log_db, redis_client, identities=[("phone", "+15555550901")],
                          display_name=None, attributes={"tier": "gold"})
    after = await assert_split_equals_events(log_db, window)
    moved = {tier: contacts_by_tier(after)[tier] - contacts_by_tier(before)[tier]
             for tier in ("bronze", "gold", "silver")}
    assert moved == {"bronze": -3, "gold": 3, "silver": 0}
    ana_days = {(T0 + n * DAY).date() for n in range(3)}
    now_kept = await kept_segmented(log_db)
    assert {day for day in now_kept if now_kept[day] != kept_before["groupings"][day]} == \
        ana_days
    journeys = await kept_segmented(log_db, "journeys")
    assert journeys[T0.date()] != kept_before["journeys"][T0.date()]
    assert await kept(log_db) == whole_before

    # The compaction folds the attribute changes too, and the roll-ups stay fresh.
    await partitions.maintain(log_db, retention_days=0, now=T0)
    assert await log_db.fetchval("SELECT count(*) FROM report_attribute_changes") == \
        await log_db.fetchval("SELECT count(*) FROM (SELECT DISTINCT attribute, day "
                              "FROM report_attribute_changes) d")
    await assert_split_equals_events(log_db, window)
    assert await kept_segmented(log_db) == now_kept


async def test_new_customers_and_values_appear_and_other_attributes_stay_fresh(log_db):
    rng = random.Random(13)
    contacts = traffic(rng, 60, T0, 72)
    await insert(log_db, *contacts)
    customers = await give_tiers(log_db, rng, contacts)
    window = Window(T0 - 9 * H, T0 + 4 * DAY - 9 * H)
    await assert_split_equals_events(log_db, window)
    await assert_split_equals_events(log_db, window, attribute="language")
    languages = await kept_segmented(log_db, attribute="language")
    changes = await log_db.fetchval("SELECT count(*) FROM report_attribute_changes")

    # New customers with no attributes (what the event writer adds for new addresses) and
    # an update to other columns change no segment.
    newcomer = Contact("newcomer-seg", "chat", T0 + DAY + 3 * H).classified("cancel_order")
    await log_db.execute("INSERT INTO customers (id) VALUES ($1)", newcomer.customer)
    await log_db.execute("UPDATE customers SET display_name = 'someone'")
    assert await log_db.fetchval("SELECT count(*) FROM report_attribute_changes") == changes

    # A customer who was not in the directory joins it with a new tier; another leaves it.
    await log_db.execute("""INSERT INTO customers (id, attributes)
                            VALUES ($1, '{"tier": "platinum"}')""", customers[-1])
    gone = await log_db.fetchrow("""
        DELETE FROM customers WHERE id = (SELECT min(id::text)::uuid FROM customers
                                          WHERE attributes ? 'language')
        RETURNING id, attributes->>'tier' AS tier""")
    split = await assert_split_equals_events(log_db, window)
    assert "platinum" in contacts_by_tier(split)
    await assert_split_equals_events(log_db, window, attribute="language")
    languages_after = await kept_segmented(log_db, attribute="language")
    assert languages_after != languages  # the customer who left moved to the null segment

    # A change of the tier alone leaves the roll-ups by language fresh.
    await log_db.execute("""UPDATE customers SET attributes = attributes || '{"tier": "gold"}'
                            WHERE id = $1""", customers[-1])
    split = await assert_split_equals_events(log_db, window)
    assert "platinum" not in contacts_by_tier(split)
    await assert_split_equals_events(log_db, window, attribute="language")
    assert await kept_segmented(log_db, attribute="language") == languages_after
    assert gone["tier"] in ("gold", "silver", "bronze")


async def test_emptying_the_directory_drops_the_segmented_roll_ups_only(log_db):
    rng = random.Random(14)
    contacts = traffic(rng, 30, T0, 48)
    await insert(log_db, *contacts)
    await give_tiers(log_db, rng, contacts)
    window = Window(T0 - 9 * H, T0 + 3 * DAY - 9 * H)
    await assert_split_equals_events(log_db, window)
    await assert_served_equals_events(log_db, window)
    whole = await kept(log_db)
    await log_db.execute("TRUNCATE customers CASCADE")
    assert await kept_segmented(log_db) == {}
    assert await kept(log_db) == whole
    split = await assert_split_equals_events(log_db, window)
    assert list(contacts_by_tier(split)) == [None]


async def test_an_attribute_with_more_values_than_a_split_shows_is_not_rolled_up(log_db):
    rng = random.Random(15)
    contacts = traffic(rng, 40, T0, 48)
    await insert(log_db, *contacts)
    customers = list(dict.fromkeys(c.customer for c in contacts))
    await log_db.execute("TRUNCATE customers CASCADE")
    await log_db.executemany("INSERT INTO customers (id, attributes) VALUES ($1, $2::jsonb)",
                             [(cid, json.dumps({"ref": f"r{n}"}))
                              for n, cid in enumerate(customers)])
    window = Window(T0 - 9 * H, T0 + 3 * DAY - 9 * H)
    rules = RULES.with_segment("ref", "r3")
    for report in SERVED:
        served = await report(log_db, window, rules)
        reference = await report(log_db, window, rules, queries=reports.FROM_EVENTS)
        assert without_clock(served) == without_clock(reference), report.__name__
    assert await kept_segmented(log_db, attribute="ref") == {}
    with pytest.raises(reports.BadSegment, match="customer.ref takes 40 values"):
        await reports.split(reports.summary, log_db, window, RULES, "ref")


async def test_splits_during_writers_and_tier_changes_end_equal_to_the_raw_events(
        log_db, database_url):
    """Two writers COPY shuffled batches while a third session keeps moving customers between
    tiers and splits by tier keep running (roll-ups computed, stored and read meanwhile); then
    every split equals the raw-event computation over the tiers as they ended."""
    rng = random.Random(16)
    contacts = traffic(rng, 100, T0, 96)
    customers = await give_tiers(log_db, rng, contacts)
    rows = [row for c in contacts for row in c.rows]
    rng.shuffle(rows)
    batches = [rows[start:start + 53] for start in range(0, len(rows), 53)]
    windows = [Window(T0 - H, T0 + 8 * DAY), Window(T0 + 30 * H, T0 + 3 * DAY + 5 * H)]
    busy = True

    async def session(work) -> int:
        conn = await asyncpg.connect(database_url)
        try:
            return await work(conn)
        finally:
            await conn.close()

    async def write(conn, share: list[list[tuple]]) -> int:
        for batch in share:
            await conn.copy_records_to_table("contact_events", records=batch, columns=COLUMNS)
        return len(share)

    async def move_tiers(conn) -> int:
        moves, mover = 0, random.Random(17)
        while busy:
            await conn.execute("UPDATE customers SET attributes = jsonb_build_object('tier', "
                               "$2::text) WHERE id = $1", mover.choice(customers),
                               mover.choice(("gold", "silver", "bronze", "platinum")))
            moves += 1
            await asyncio.sleep(0.01)
        return moves

    async def read(conn) -> int:
        runs = 0
        while busy:
            for window in windows:
                for report in SERVED:
                    await SPLIT(report, conn, window, RULES)
                    runs += 1
        return runs

    moving = asyncio.ensure_future(session(move_tiers))
    reading = asyncio.ensure_future(session(read))
    await asyncio.gather(*(session(functools.partial(write, share=batches[n::2]))
                           for n in range(2)))
    await asyncio.sleep(0.5)  # a few more moves and reads after the last batch
    busy = False
    assert await moving > 0 and await reading > 0
    for window in windows:
        await assert_split_equals_events(log_db, window)
