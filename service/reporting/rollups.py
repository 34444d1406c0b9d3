"""Report queries per UTC day, kept in `report_rollups` and added up over any window.

A report over a window reads its whole days from the roll-ups (one row per day and query, its
result rows as JSON) and its partial edges from `contact_facts`, in one statement that adds
the two up (pools them, for the median), so a report over months costs a row per day, not
per contact. A roll-up is exact while the facts it read are unchanged: triggers on
`contact_facts` add the day of every changed contact to `report_fact_changes`
(migrations/016_report_rollups.sql) and a roll-up stores the total of its days' changes; a
day whose total moved, or that has no roll-up, is computed from the facts again (and kept, if
the day is over). The roll-ups of each query are kept per set of rules (repeat windows,
service level) and per query text, so a catalog change or a new definition needs no rebuild.

The rows are those of the same report query over the facts (reports.py), so the served figures
stay equal to `FROM_EVENTS`; tests/test_reports.py holds them equal on random traffic.

Reports of a customer segment read segmented roll-ups (`SEGMENTED`, migration 018): the same
rows grouped by the value of one attribute each contact's customer has now (`segment`), kept
as one array per value, so one segment reads its value's rows and a split all of them at
once (the trend's and the candidates' too: counts per hour, per contact type). Triggers on
`customers` add the days of the contacts of a customer whose attribute changed to
`report_attribute_changes`, which a segmented roll-up's total counts too; an attribute with
more than MAX_ROLLED_UP_VALUES values is not rolled up.

`Warmer` computes the roll-ups of the recent days ahead of the reports (at start, hourly and
after a rules reload), so the first report after a deploy or a catalog change need not: the
unsegmented ones, then the segmented ones of the attributes ops segment by (`warmed_attributes`:
those configured, and those some report already rolled up). `prepare` computes those a report
by a new attribute reads, in the background, when its client would rather not wait
(preparing.py); `progress` says how far that is, from the stored roll-ups.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable

import asyncpg
import structlog

from service.reporting import metrics, reports
from service.reporting.reports import ReportRules, Window

log = structlog.get_logger(__name__)

DAY = timedelta(days=1)
WARM_LOCK_KEY = 0x5B_0A_7F  # one session warms at a time (partitions.LOCK_KEY is 0x5B_0A_7E)
WARM_DAYS_PER_STATEMENT = 3  # a short transaction each, so a pass never holds one for long
WARM_EVERY_S = 3600
WARM_FAILED = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError)

# The facts of the contacts that started in the ranges [$1[i], $2[i]).
_RANGES = """
ranges AS (SELECT * FROM unnest($1::timestamptz[], $2::timestamptz[]) AS r(lo, hi))"""
_FACTS_IN_RANGES = f"""
facts AS (
    SELECT {reports.FACT_COLUMNS}
    FROM contact_facts JOIN ranges ON started_at >= lo AND started_at < hi
)"""
# Journeys read the facts of the ranges' customers from one repeat window ($9 h) before on.
_FACTS_OF_CUSTOMERS = f"""
customers_in_window AS (
    SELECT DISTINCT customer_id
    FROM contact_facts JOIN ranges ON started_at >= lo AND started_at < hi
),
facts AS (
    SELECT {reports.FACT_COLUMNS} FROM contact_facts JOIN customers_in_window USING (customer_id)
    WHERE started_at >= (SELECT min(lo) FROM ranges) - make_interval(hours => $9::int)
)"""
_JUDGED = reports._judged(reports.FALSE_DEFLECTION_OF_FACTS)
_DAYS = "(SELECT *, (started_at AT TIME ZONE 'UTC')::date AS day FROM derived) d"
_IN_RANGES = f"WITH {reports.WINDOWS}, {_RANGES}, {_FACTS_IN_RANGES}, {_JUDGED}"


# Segmented: each fact also carries its customer's attribute (parameter {attribute}) as the
# directory holds it now, '' without it (reports.Segment). A look-up per contact and a scan
# of the facts per range or customer (OFFSET 0 keeps them apart): the planner cannot tell how
# few contacts a range holds and would otherwise read every fact and every customer.
_SEGMENT_OF = ("COALESCE((SELECT cu.attributes->>{attribute}::text FROM customers cu "
               "WHERE cu.id = f.customer_id), '') AS segment")
_SEGMENTED_FACTS_IN_RANGES = f"""
facts AS (
    SELECT f.*, {_SEGMENT_OF.format(attribute="$9")}
    FROM ranges CROSS JOIN LATERAL (
        SELECT {reports.FACT_COLUMNS} FROM contact_facts
        WHERE started_at >= lo AND started_at < hi OFFSET 0) f
)"""
_SEGMENTED_FACTS_OF_CUSTOMERS = f"""
customers_in_window AS (
    SELECT DISTINCT customer_id FROM ranges CROSS JOIN LATERAL (
        SELECT customer_id FROM contact_facts
        WHERE started_at >= lo AND started_at < hi OFFSET 0) c
),
facts AS (
    SELECT f.*, {_SEGMENT_OF.format(attribute="$10")}
    FROM customers_in_window c CROSS JOIN LATERAL (
        SELECT {reports.FACT_COLUMNS} FROM contact_facts
        WHERE contact_facts.customer_id = c.customer_id
          AND started_at >= (SELECT min(lo) FROM ranges) - make_interval(hours => $9::int)
        OFFSET 0) f
)"""

# Computing roll-ups reads whole days ($8, the ranges in order): one scan of the facts from the
# first day's start to the last day's end, kept to those days. The planner then knows how many
# facts that is (a sequential or bitmap scan, pages read in order) where an index scan per day
# reads a page per contact; and one join with every customer costs less than a look-up per
# contact once the contacts are many. The rows are the same as `by_day`'s.
_SPAN = ("started_at >= ($1::timestamptz[])[1] "
         "AND started_at < ($2::timestamptz[])[cardinality($2::timestamptz[])] "
         "AND (started_at AT TIME ZONE 'UTC')::date = ANY($8::date[])")
_FACTS_IN_DAYS = f"""
facts AS (
    SELECT {reports.FACT_COLUMNS} FROM contact_facts WHERE {_SPAN}
)"""
_FACTS_OF_CUSTOMERS_IN_DAYS = f"""
customers_in_window AS (
    SELECT DISTINCT customer_id FROM contact_facts WHERE {_SPAN}
),
facts AS (
    SELECT {reports.FACT_COLUMNS} FROM contact_facts JOIN customers_in_window USING (customer_id)
    WHERE started_at >= ($1::timestamptz[])[1] - make_interval(hours => $9::int)
)"""
_SEGMENTED_FACTS_IN_DAYS = f"""
facts AS (
    SELECT {reports.FACT_COLUMNS}, COALESCE(cu.attributes->>$9::text, '') AS segment
    FROM contact_facts LEFT JOIN customers cu ON cu.id = customer_id
    WHERE {_SPAN}
)"""
_SEGMENTED_FACTS_OF_CUSTOMERS_IN_DAYS = f"""
customers_in_window AS (
    SELECT DISTINCT customer_id FROM contact_facts WHERE {_SPAN}
),
facts AS (
    SELECT {reports.FACT_COLUMNS}, COALESCE(cu.attributes->>$10::text, '') AS segment
    FROM contact_facts JOIN customers_in_window USING (customer_id)
    LEFT JOIN customers cu ON cu.id = customer_id
    WHERE started_at >= ($1::timestamptz[])[1] - make_interval(hours => $9::int)
)"""
_JOURNEY_BEGAN_IN_RANGES = "EXISTS (SELECT FROM ranges WHERE j.began >= lo AND j.began < hi)"
_JOURNEY_BEGAN_IN_DAYS = "(j.began AT TIME ZONE 'UTC')::date = ANY($8::date[])"
_IN_DAYS = ((_JOURNEY_BEGAN_IN_RANGES, _JOURNEY_BEGAN_IN_DAYS),
            (_FACTS_IN_RANGES, _FACTS_IN_DAYS),
            (_FACTS_OF_CUSTOMERS, _FACTS_OF_CUSTOMERS_IN_DAYS),
            (_SEGMENTED_FACTS_IN_RANGES, _SEGMENTED_FACTS_IN_DAYS),
            (_SEGMENTED_FACTS_OF_CUSTOMERS, _SEGMENTED_FACTS_OF_CUSTOMERS_IN_DAYS))


@dataclass(frozen=True)
class Rollup:
    """One report query, per day of the contacts (or journeys) it counts; segmented: per day
    and value of a customer attribute (the parameter after the others)."""
    name: str
    by_day: str    # its rows with their `day`, over the ranges $1, $2 (rules: $3-$6, $9)
    columns: str   # the rows' columns and types, as stored
    merged: str    # the report's rows from `parts`: the stored and the computed rows
    reads_later_days: bool = False  # journeys: a day's rows read the facts of later days
    segmented: bool = False

    @property
    def names(self) -> str:
        return ", ".join(column.split()[0] for column in self.columns.split(","))

    @property
    def by_day_in_bulk(self) -> str:
        """`by_day` as computing the roll-ups of whole days ($8) runs it: the same rows."""
        query = self.by_day
        for by_range, by_days in _IN_DAYS:
            query = query.replace(by_range, by_days)
        return query

    @property
    def attribute_param(self) -> str:
        """The segment's attribute: the parameter after the rules' ($9, or $10 for journeys)."""
        return "$10" if self.reads_later_days else "$9"

    @property
    def value_param(self) -> str:
        """The one value whose stored rows to read (NULL: all): the parameter after it."""
        return "$11" if self.reads_later_days else "$10"


_COUNTS = ", ".join(f"{name} bigint" for name in reports.COUNT_FIELDS)
_KEYS = ", ".join(reports.GROUPING_KEYS)


def _by(segmented: bool) -> tuple[str, str]:
    """The extra grouping column and its stored declaration, if segmented."""
    return ("segment, ", "segment text, ") if segmented else ("", "")


def _in_ranges(segmented: bool) -> str:
    if not segmented:
        return _IN_RANGES
    return f"WITH {reports.WINDOWS}, {_RANGES}, {_SEGMENTED_FACTS_IN_RANGES}, {_JUDGED}"


def _groupings(segmented: bool) -> Rollup:
    by, column = _by(segmented)
    return Rollup(
        "groupings",
        _in_ranges(segmented) + reports.GROUPINGS.format(
            AGGREGATES=reports.AGGREGATES, source=_DAYS, by=f"day, {by}"
        ).replace("SELECT ", f"SELECT day, {by}", 1),
        column + "by_type boolean, by_channel boolean, by_queue boolean, by_route boolean, "
        "by_reason boolean, by_handling boolean, type_key text, channel text, queue_key text, "
        "route_key text, escalation_reason text, handling text, " + _COUNTS,
        f"SELECT {by}{_KEYS}, " + ", ".join(f"sum({name})::bigint AS {name}"
                                            for name in reports.COUNT_FIELDS)
        + f" FROM parts GROUP BY {by}{_KEYS}" + (" ORDER BY segment" if segmented else ""),
        segmented=segmented)


def _medians(segmented: bool) -> Rollup:
    by, column = _by(segmented)
    keys = "1, 2, 3, 4" if segmented else "1, 2, 3"
    return Rollup(
        "medians",
        f"""{_in_ranges(segmented)}
SELECT day, {by}type_key, channel,
       array_agg(resolution_s) FILTER (WHERE resolution_s IS NOT NULL) AS resolutions
FROM {_DAYS} GROUP BY {keys}""",
        column + "type_key text, channel text, resolutions float8[]",
        f"""SELECT {by}type_key, channel,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY resolution_s) AS median_resolution_s
FROM parts LEFT JOIN LATERAL unnest(resolutions) AS resolution_s ON true
GROUP BY {keys[:-3]}""",
        segmented=segmented)


def _dropouts(segmented: bool) -> Rollup:
    by, column = _by(segmented)
    keys, order = ("1, 2, 3, 4, 5", "2, 3, 4, 5") if segmented else ("1, 2, 3, 4", "1, 2, 3, 4")
    return Rollup(
        "dropouts",
        _in_ranges(segmented) + reports.DROPOUTS.format(
            by=f"day, {by}", source=_DAYS, columns=f"{keys}, {len(keys.split(',')) + 1}"),
        column + "contact_type text, channel text, step text, exit text, contacts bigint",
        f"""SELECT {by}contact_type, channel, step, exit, sum(contacts)::bigint AS contacts
FROM parts GROUP BY {keys} ORDER BY contacts DESC, {order}""",
        segmented=segmented)


def _journeys(segmented: bool) -> Rollup:
    by, column = _by(segmented)
    facts = _SEGMENTED_FACTS_OF_CUSTOMERS if segmented else _FACTS_OF_CUSTOMERS
    keys = "1, 2, 3, 4" if segmented else "1, 2, 3"
    return Rollup(
        "journeys",
        f"""WITH {reports.WINDOWS}, {_RANGES}, {facts}, {_JUDGED}, {reports.journeys_sql(by)}
SELECT (began AT TIME ZONE 'UTC')::date AS day, {by}contact_type, path, count(*) AS journeys,
       bool_or(channels > 1) AS cross_channel, max(latest_start) AS latest_start
FROM journeys j WHERE {_JOURNEY_BEGAN_IN_RANGES}
GROUP BY {keys}""",
        column + "contact_type text, path text, journeys bigint, cross_channel boolean",
        f"""SELECT {by}contact_type, path, sum(journeys)::bigint AS journeys,
       bool_or(cross_channel) AS cross_channel
FROM parts GROUP BY {keys[:-3]} ORDER BY contact_type, journeys DESC, path""",
        reads_later_days=True, segmented=segmented)


# The contacts per value: what a split's segments are (cheaper to read than the groupings).
SEGMENTS = Rollup(
    "segments",
    f"""{_in_ranges(True)}
SELECT day, segment, count(*) AS contacts FROM {_DAYS} GROUP BY 1, 2""",
    "segment text, contacts bigint",
    "SELECT segment, sum(contacts)::bigint AS contacts FROM parts GROUP BY 1 ORDER BY 1",
    segmented=True)

# Only by segment (a split's trend and candidates read them once for all values; the whole
# log's read the facts): the trend's counts per hour, and the candidates' per contact type
# (the agent seconds kept exact, numeric, and float8 once added up, as the query gives them).
TREND = Rollup(
    "trend",
    f"""{_in_ranges(True)}
SELECT day, segment, date_bin('1 hour', started_at, TIMESTAMPTZ '2000-01-01 00:00+00') AS hour,
       {reports.AGGREGATES}
FROM {_DAYS} GROUP BY 1, 2, 3""",
    "segment text, hour timestamptz, " + _COUNTS,
    "SELECT segment, hour, " + ", ".join(f"sum({name})::bigint AS {name}"
                                         for name in reports.COUNT_FIELDS)
    + " FROM parts GROUP BY 1, 2 ORDER BY 1, 2",
    segmented=True)
_CANDIDATE_COUNTS = ("contacts", "agent_handled", "agent_timed", "self_service_offered",
                     "offered_and_resolved", "self_service_resolved", "false_deflections",
                     "csat_self_responses", "csat_agent_responses")
CANDIDATES = Rollup(
    "candidates",
    _in_ranges(True) + reports.CANDIDATES.format(by="day, segment, ", seconds="",
                                                 source=_DAYS, columns="1, 2, 3"),
    "segment text, contact_type text, agent_seconds numeric, csat_self_points bigint, "
    "csat_agent_points bigint, " + ", ".join(f"{name} bigint" for name in _CANDIDATE_COUNTS),
    "SELECT segment, contact_type, sum(agent_seconds)::float8 AS agent_seconds, "
    "sum(csat_self_points)::int AS csat_self_points, "
    "sum(csat_agent_points)::int AS csat_agent_points, "
    + ", ".join(f"sum({name})::bigint AS {name}" for name in _CANDIDATE_COUNTS)
    + " FROM parts GROUP BY 1, 2 ORDER BY 1, 2",
    segmented=True)

_BUILDERS = (_groupings, _medians, _dropouts, _journeys)
BY_NAME = {rollup.name: rollup for rollup in (build(False) for build in _BUILDERS)}
SEGMENTED = {rollup.name: rollup for rollup in (*(build(True) for build in _BUILDERS),
                                                SEGMENTS, TREND, CANDIDATES)}
GROUPINGS, MEDIANS, DROPOUTS, JOURNEYS = BY_NAME.values()

_FACT_CHANGES = """(SELECT COALESCE(sum(c.weight), 0) FROM report_fact_changes c
                    WHERE c.day BETWEEN {first} AND {last})"""
# A segmented roll-up's days also change with its attribute ('': every attribute).
_ATTRIBUTE_CHANGES = """(SELECT COALESCE(sum(a.weight), 0) FROM report_attribute_changes a
                    WHERE {attribute} IS NOT NULL AND a.attribute IN ({attribute}, '')
                      AND a.day BETWEEN {first} AND {last})"""


def _changes(first: str, last: str, attribute: str) -> str:
    """The total weight of the changes a roll-up over days first..last depends on."""
    return (_FACT_CHANGES.format(first=first, last=last) + " + "
            + _ATTRIBUTE_CHANGES.format(first=first, last=last, attribute=attribute))


# The days whose roll-up ($1 rules, $2 query) is still exact: its days' changes are the same.
_FRESH = f"""
SELECT ro.day FROM report_rollups ro
WHERE ro.rules = $1 AND ro.report = $2 AND ro.day = ANY($3::date[])
  AND ro.changes = {_changes("ro.first_day", "ro.last_day", "ro.segment_by")}"""

# An attribute with more values than a split shows is not rolled up (its rows would be as many
# as the contacts'): its reports read the facts. The roll-up of the contacts per value
# (`segments`) is refused in the statement that computes it; the others count the values it
# keeps for their days (computed first, if need be), rather than looking every contact up again.
MAX_ROLLED_UP_VALUES = reports.MAX_SEGMENTS
_VALUES_KEPT = """
SELECT count(DISTINCT s.value) FROM report_rollups ro, jsonb_object_keys(ro.rows) AS s(value)
WHERE ro.rules = $1 AND ro.report = 'segments' AND ro.day = ANY($2::date[])"""

# A journey that began on a day reads its customer's facts from a repeat window before it to
# a repeat window after its latest contact: what a change there may alter (in whole days).
_REACH = "ceil($9::int / 24.0)::int"


def _merged_sql(rollup: Rollup) -> str:
    """The report's rows: the stored ones of days $8 and those computed over ranges $1, $2."""
    return f"""WITH stored AS ({_stored_sql(rollup)}
),
live AS ({rollup.by_day}),
parts AS (SELECT {rollup.names} FROM stored UNION ALL SELECT {rollup.names} FROM live)
{rollup.merged}"""


def _stored_sql(rollup: Rollup) -> str:
    """The stored rows of days $8; segmented, they are kept per value (an object of arrays),
    so one value's rows are read without the others'."""
    where = f"ro.rules = $7 AND ro.report = '{rollup.name}' AND ro.day = ANY($8::date[])"
    if not rollup.segmented:
        return f"""
    SELECT x.* FROM report_rollups ro, jsonb_to_recordset(ro.rows) AS x({rollup.columns})
    WHERE {where}"""
    columns = rollup.columns.removeprefix("segment text, ")
    return f"""
    SELECT s.key AS segment, x.*
    FROM report_rollups ro, jsonb_each(ro.rows) s, jsonb_to_recordset(s.value) AS x({columns})
    WHERE {where}
      AND ({rollup.value_param}::text IS NULL OR s.key = {rollup.value_param}::text)"""


def _refresh_sql(rollup: Rollup) -> str:
    """Compute and keep the roll-ups of days $8 (the ranges $1, $2 are those days)."""
    first, last = ("d.day", "d.day") if not rollup.reads_later_days else (
        f"d.day - {_REACH}",
        f"greatest(d.day, max((l.latest_start AT TIME ZONE 'UTC')::date)) + {_REACH}")
    attribute = f"{rollup.attribute_param}::text" if rollup.segmented else "NULL::text"
    refused = (f"WHERE (SELECT count(DISTINCT segment) FROM live) <= {MAX_ROLLED_UP_VALUES}"
               if rollup.name == "segments" else "")
    return f"""WITH live AS ({_per_value(rollup) if rollup.segmented else rollup.by_day_in_bulk}),
days AS (SELECT unnest($8::date[]) AS day),
per_day AS (
    SELECT d.day, {first} AS first_day, {last} AS last_day, {_day_rows(rollup)} AS rows
    FROM days d LEFT JOIN live l ON l.day = d.day GROUP BY d.day
)
INSERT INTO report_rollups AS ro (rules, report, day, first_day, last_day, changes, rows,
                                  segment_by)
SELECT $7, '{rollup.name}', p.day, p.first_day, p.last_day,
       {_changes("p.first_day", "p.last_day", attribute)}, p.rows, {attribute}
FROM per_day p {refused}
ON CONFLICT (rules, report, day) DO UPDATE SET first_day = EXCLUDED.first_day,
    last_day = EXCLUDED.last_day, changes = EXCLUDED.changes, rows = EXCLUDED.rows,
    segment_by = EXCLUDED.segment_by, computed_at = now()"""


def _per_value(rollup: Rollup) -> str:
    """A segmented roll-up's rows of each day and value as one array, without those two."""
    latest = ", max(latest_start) AS latest_start" if rollup.reads_later_days else ""
    return f"""
    SELECT day, segment,
           jsonb_agg(to_jsonb(v) - 'day' - 'segment' - 'latest_start') AS rows{latest}
    FROM ({rollup.by_day_in_bulk}) v GROUP BY day, segment"""


def _day_rows(rollup: Rollup) -> str:
    """A day's stored rows: an array; segmented, an object of one array per value."""
    if rollup.segmented:
        return ("COALESCE(jsonb_object_agg(l.segment, l.rows) FILTER (WHERE l.day IS NOT NULL),"
                " '{}'::jsonb)")
    return ("COALESCE(jsonb_agg(to_jsonb(l) - 'day' - 'latest_start')\n"
            "                    FILTER (WHERE l.day IS NOT NULL), '[]'::jsonb)")


MERGED = {rollup: _merged_sql(rollup) for rollup in (*BY_NAME.values(), *SEGMENTED.values())}
REFRESH = {rollup: _refresh_sql(rollup) for rollup in (*BY_NAME.values(), *SEGMENTED.values())}


def whole_days(window: Window) -> tuple[list[date], list[tuple[datetime, datetime]]]:
    """The UTC days wholly inside the window, and the partial edges around them."""
    first = _midnight(window.start)
    if first < window.start:
        first += DAY
    last = _midnight(window.end)
    if first >= last:
        return [], [(window.start, window.end)]
    days = [(first + n * DAY).date() for n in range((last - first) // DAY)]
    edges = [(lo, hi) for lo, hi in ((window.start, first), (last, window.end)) if lo < hi]
    return days, edges


def _midnight(moment: datetime) -> datetime:
    utc = moment.astimezone(timezone.utc)
    return datetime(utc.year, utc.month, utc.day, tzinfo=timezone.utc)


def _day_range(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    return start, start + DAY


def fingerprint(rollup: Rollup, rules: ReportRules, attribute: str | None = None) -> str:
    """What a roll-up depends on besides the facts: the rules, the query's text and, if it is
    segmented, the attribute."""
    ids = sorted(rules.repeat_windows_h)
    material = [rollup.by_day, ids, [rules.repeat_windows_h[i] for i in ids],
                rules.default_window_h, float(rules.service_level_s)]
    material += [attribute, "rows per value"] if rollup.segmented else []
    return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:32]


def _rule_params(rollup: Rollup, rules: ReportRules) -> list[Any]:
    """$3-$6 (and $9 for journeys) of the roll-up queries."""
    ids = sorted(rules.repeat_windows_h)
    params: list[Any] = [ids, [rules.repeat_windows_h[i] for i in ids],
                         rules.default_window_h, float(rules.service_level_s)]
    return params + ([rules.longest_window_h] if rollup.reads_later_days else [])


def _with_rules(base: list[Any], rollup: Rollup, rules: ReportRules, key: str,
                days: list[date], attribute: str | None) -> list[Any]:
    """$1-$10 in order: the ranges, the rules, the roll-ups' key and days, the reach, the
    attribute (each of the last two only if the roll-up has it)."""
    rule_params = _rule_params(rollup, rules)
    return [*base, *rule_params[:4], key, days, *rule_params[4:],
            *([attribute] if rollup.segmented else [])]


def _reading(params: list[Any], rollup: Rollup, value: str | None) -> list[Any]:
    """The parameters of the merged query: a segmented one's also name the value to read."""
    return params + ([value] if rollup.segmented else [])


class TooManyValues(Exception):
    """The attribute takes more values than MAX_ROLLED_UP_VALUES: not rolled up."""


async def rows(conn, label: str, rollup: Rollup, window: Window, rules: ReportRules,
               attribute: str | None = None,
               value: str | None = None) -> list[asyncpg.Record] | None:
    """The report query's rows over the window, as the same query over the facts gives them;
    segmented: with their `segment`, of every value of `attribute` (or at least of `value`'s:
    the stored rows of the others are not read), None when it takes too many values to be
    rolled up."""
    key = fingerprint(rollup, rules, attribute)
    return await reports.shared(("rollup", id(conn), rollup.name, window, key, value),
                                lambda: _timed(conn, label, rollup, window, rules, key,
                                               attribute, value))


async def _timed(conn, label: str, rollup: Rollup, window: Window, rules: ReportRules,
                 key: str, attribute: str | None,
                 value: str | None) -> list[asyncpg.Record] | None:
    started = time.perf_counter()
    try:
        async with reports._connection(conn) as connection:
            return await _rows(connection, rollup, window, rules, key, attribute, value)
    except TooManyValues:
        return None
    finally:
        metrics.REPORT_SECONDS.labels(label).observe(time.perf_counter() - started)


async def _rows(conn: asyncpg.Connection, rollup: Rollup, window: Window, rules: ReportRules,
                key: str, attribute: str | None, value: str | None) -> list[asyncpg.Record]:
    days, edges = whole_days(window)
    today = datetime.now(timezone.utc).date()
    await refresh(conn, rollup, rules, key, [day for day in days if day < today], attribute)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute(f"SET LOCAL work_mem = '{reports.WORK_MEM}'")
        fresh = await _fresh(conn, rollup, key, days)
        ranges = edges + [_day_range(day) for day in days if day not in fresh]
        base = [[lo for lo, _ in ranges], [hi for _, hi in ranges]]
        params = _with_rules(base, rollup, rules, key, sorted(fresh), attribute)
        return await conn.fetch(MERGED[rollup], *_reading(params, rollup, value),
                                timeout=reports.QUERY_TIMEOUT_S)


async def _fresh(conn: asyncpg.Connection, rollup: Rollup, key: str,
                 days: list[date]) -> set[date]:
    if not days:
        return set()
    return {row["day"] for row in await conn.fetch(_FRESH, key, rollup.name, days)}


async def refresh(conn: asyncpg.Connection, rollup: Rollup, rules: ReportRules, key: str,
                  days: list[date], attribute: str | None = None) -> list[date]:
    """Compute and keep the roll-ups of the days among `days` that have none still exact
    (segmented: raises TooManyValues, keeping nothing, if the attribute takes too many values
    among those days' contacts)."""
    stale = sorted(set(days) - await _fresh(conn, rollup, key, days))
    if stale:
        ranges = [_day_range(day) for day in stale]
        base = [[lo for lo, _ in ranges], [hi for _, hi in ranges]]
        async with conn.transaction():
            await conn.execute(f"SET LOCAL work_mem = '{reports.WORK_MEM}'")
            if rollup.segmented and rollup is not SEGMENTS:
                await _check_values(conn, rules, stale, attribute)
            done = await conn.execute(REFRESH[rollup],
                                      *_with_rules(base, rollup, rules, key, stale, attribute),
                                      timeout=reports.QUERY_TIMEOUT_S)
            if done.split()[-1] == "0":  # only `segments` refuses (its statement counts them)
                raise TooManyValues(attribute)
    return stale


async def _check_values(conn: asyncpg.Connection, rules: ReportRules, days: list[date],
                        attribute: str | None) -> None:
    """Raise TooManyValues if the attribute takes too many values among the days' contacts,
    counted in their roll-ups of the contacts per value (computed now if need be)."""
    key = fingerprint(SEGMENTS, rules, attribute)
    await refresh(conn, SEGMENTS, rules, key, days, attribute)
    if await conn.fetchval(_VALUES_KEPT, key, days) > MAX_ROLLED_UP_VALUES:
        raise TooManyValues(attribute)


# ---- warming ------------------------------------------------------------------------------

def recent_days(count: int, today: date | None = None) -> list[date]:
    """The `count` whole UTC days before today, newest first."""
    today = today or datetime.now(timezone.utc).date()
    return [today - n * DAY for n in range(1, count + 1)]


# Segmented roll-ups are warmed for at most this many configured attributes, and as many of
# those a report rolled up (most recently computed first): each costs a pass over its days.
MAX_WARMED_ATTRIBUTES = 8
# The attributes some report (or pass) rolled up, most recently computed first.
_ROLLED_UP_ATTRIBUTES = """
SELECT segment_by FROM report_rollups WHERE segment_by IS NOT NULL
GROUP BY 1 ORDER BY max(computed_at) DESC, 1 LIMIT $1"""


async def warm(conn: asyncpg.Connection | asyncpg.Pool, rules: ReportRules,
               days: list[date], attributes: tuple[str, ...] = ()) -> int:
    """Compute every report's roll-ups of the days among `days` that are over and have none
    still exact, a few days per statement, newest first: the unsegmented ones, then those by
    each of `warmed_attributes`; returns how many day roll-ups it computed (0 when another
    session is warming: that pass is skipped)."""
    today = datetime.now(timezone.utc).date()
    over = sorted({day for day in days if day < today}, reverse=True)
    if not over:
        return 0
    async with reports._connection(conn) as connection:
        if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", WARM_LOCK_KEY):
            log.debug("reports.warm_skipped", reason="another session is warming")
            return 0
        try:
            computed = await _warm_locked(connection, rules, over, BY_NAME.values(), None)
            for attribute in await warmed_attributes(connection, attributes):
                computed += await _warm_attribute(connection, rules, over, attribute)
            return computed
        finally:  # a pool's connection also drops its locks when released
            with contextlib.suppress(*WARM_FAILED):
                await connection.execute("SELECT pg_advisory_unlock($1)", WARM_LOCK_KEY)


async def warmed_attributes(conn: asyncpg.Connection,
                            configured: tuple[str, ...] = ()) -> list[str]:
    """The attributes whose segmented roll-ups a pass keeps warm: the configured ones, then
    those already rolled up (asked by a report at least once), each list bounded."""
    rolled_up = [row["segment_by"] for row in
                 await conn.fetch(_ROLLED_UP_ATTRIBUTES, MAX_WARMED_ATTRIBUTES)]
    chosen = list(dict.fromkeys(configured[:MAX_WARMED_ATTRIBUTES]))
    return chosen + [attribute for attribute in rolled_up if attribute not in chosen]


async def _warm_attribute(conn: asyncpg.Connection, rules: ReportRules, days: list[date],
                          attribute: str) -> int:
    """One attribute's segmented roll-ups of `days`; an attribute with too many values among
    some days' contacts is left (its reports read the facts), logged."""
    started = time.perf_counter()
    try:
        computed = await _warm_locked(conn, rules, days, SEGMENTED.values(), attribute)
    except TooManyValues:
        log.info("reports.warm_segments_skipped", attribute=attribute,
                 reason=f"more than {MAX_ROLLED_UP_VALUES} values")
        return 0
    log.info("reports.warmed_segments", attribute=attribute, computed=computed,
             seconds=round(time.perf_counter() - started, 2))
    return computed


async def _warm_locked(conn: asyncpg.Connection, rules: ReportRules, days: list[date],
                       chosen, attribute: str | None,
                       per_statement: int = WARM_DAYS_PER_STATEMENT) -> int:
    """The `chosen` roll-ups of the days without one still exact, newest first: one look at
    which are missing or stale, then a few days per statement."""
    # the contacts per value first: the others count the values in them (`_check_values`)
    keys = {rollup: fingerprint(rollup, rules, attribute)
            for rollup in sorted(chosen, key=lambda rollup: rollup is not SEGMENTS)}
    stale = {rollup: set(days) - await _fresh(conn, rollup, key, days)
             for rollup, key in keys.items()}
    to_compute = sorted(set().union(*stale.values()), reverse=True)
    computed = 0
    for at in range(0, len(to_compute), per_statement):
        chunk = to_compute[at:at + per_statement]
        for rollup, key in keys.items():
            computed += len(await refresh(conn, rollup, rules, key,
                                          [day for day in chunk if day in stale[rollup]],
                                          attribute))
    return computed


# ---- preparing a report's segmented roll-ups before answering it ---------------------------

# The segmented roll-ups each report reads (a split also reads the contacts per value).
READ_BY = {"summary": ("groupings",), "matrix": ("groupings", "medians"),
           "journeys": ("journeys", "dropouts"), "trend": ("trend",),
           "candidates": ("candidates",)}
# Progress moves per statement; fewer, longer ones: each reads the facts of its journeys'
# customers up to the end of the log.
PREPARE_DAYS_PER_STATEMENT = 12


def read_by(report: str, window: Window, split: bool) -> tuple[str, ...]:
    """The segmented roll-ups `report` by a customer attribute reads over the window."""
    names = READ_BY.get(report, ())
    if report == "trend" and window.start.timestamp() % 3600:
        names = ()  # a trend that does not start on the hour reads the facts
    return (*names, "segments") if split else names


def kept_days(window: Window) -> list[date]:
    """The window's days that have roll-ups: whole and over (edges and today are read from
    the facts)."""
    today = datetime.now(timezone.utc).date()
    return [day for day in whole_days(window)[0] if day < today]


@dataclass(frozen=True)
class Progress:
    """How many of the days a report by `attribute` reads have every roll-up it needs exact."""
    attribute: str
    days_done: int
    days_to_do: int

    def as_dict(self) -> dict[str, Any]:
        return {"status": "preparing", "segment_by": reports.SEGMENT_PREFIX + self.attribute,
                "days_done": self.days_done, "days_to_do": self.days_to_do}


async def progress(conn: asyncpg.Connection | asyncpg.Pool, rules: ReportRules,
                   names: tuple[str, ...], window: Window, attribute: str) -> Progress:
    """Which of the window's kept days have the named segmented roll-ups still exact (read
    from report_rollups, so every instance sees the same)."""
    days = kept_days(window)
    done = set(days)
    async with reports._connection(conn) as connection:
        for name in names:
            rollup = SEGMENTED[name]
            done &= await _fresh(connection, rollup, fingerprint(rollup, rules, attribute), days)
    return Progress(attribute, len(done), len(days))


async def prepare(conn: asyncpg.Connection | asyncpg.Pool, rules: ReportRules,
                  names: tuple[str, ...], days: list[date], attribute: str) -> int | None:
    """Compute the named segmented roll-ups of the days that have none still exact, newest
    first, a few days per statement, under the warming lock: how many it computed, None when
    another session holds the lock (raises TooManyValues, as `refresh`)."""
    async with reports._connection(conn) as connection:
        if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", WARM_LOCK_KEY):
            return None
        try:
            return await _warm_locked(connection, rules, sorted(days, reverse=True),
                                      [SEGMENTED[name] for name in names], attribute,
                                      PREPARE_DAYS_PER_STATEMENT)
        finally:
            with contextlib.suppress(*WARM_FAILED):
                await connection.execute("SELECT pg_advisory_unlock($1)", WARM_LOCK_KEY)


class Warmer:
    """Keeps the roll-ups of the last `days` days computed under the rules in force (and those
    by `attributes`, and by every attribute a report rolled up): a pass at start, every
    WARM_EVERY_S and whenever asked (after a rules reload)."""

    def __init__(self, pool: asyncpg.Pool, rules: Callable[[], ReportRules], days: int,
                 every_s: float = WARM_EVERY_S, attributes: tuple[str, ...] = ()):
        self._pool, self._rules, self._days, self._every_s = pool, rules, days, every_s
        self._attributes = attributes
        self._asked = asyncio.Event()
        self._asked.set()  # the first pass right away

    def ask(self) -> None:
        """Run a pass soon (the rules changed)."""
        self._asked.set()

    async def run(self) -> None:
        """Warm until cancelled; a failed pass is logged and tried again at the next one."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._asked.wait(), self._every_s)
            self._asked.clear()
            await self.warm_once()

    async def warm_once(self) -> int | None:
        """One pass: the day roll-ups it computed, or None when PostgreSQL failed it."""
        started = time.perf_counter()
        try:
            computed = await warm(self._pool, self._rules(), recent_days(self._days),
                                  self._attributes)
        except WARM_FAILED as exc:
            log.warning("reports.warm_failed", error=str(exc) or type(exc).__name__)
            return None
        log.info("reports.warmed", days=self._days, computed=computed,
                 seconds=round(time.perf_counter() - started, 2))
        return computed
