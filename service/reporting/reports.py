"""Metric queries over the event log (docs/interfaces.md, metric definitions, version 2).

Every figure is computed in SQL from per-contact facts (`contact_facts`, kept from
`contact_events` in the transaction that inserts them), never from counters, for any window;
`FROM_EVENTS` computes the same figures from the raw events, as the reference.
A contact belongs to the window in which it started (its `contact_started` event); whatever
happened to it afterwards counts, even after the window's end, so a report on a past window is
as of the moment it runs.

    window = parse_window("2024-05-01", "2024-05-08")
    rules = ReportRules.from_catalog(catalog)
    await summary(conn, window, rules)    # totals, by type/channel/queue/route, reasons
    await matrix(conn, window, rules)     # touchpoint matrix: contact type x channel
    await journeys(conn, window, rules)   # cross-channel journeys and self-service drop-outs
    await trend(conn, window, rules)      # headline rates per time bucket

Any report can be restricted to one customer segment (`rules.with_segment("tier", "gold")`)
or split into every segment of an attribute (`split(summary, conn, window, rules, "tier")`):
customers' attributes as the directory holds them when the report runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

import asyncpg

from service.reporting import metrics

METRIC_VERSION = "2"  # 1 plus transferred, callbacks, surveys, CSAT and NPS (docs/interfaces.md)
DEFAULT_REPEAT_WINDOW_H = 72
DEFAULT_SERVICE_LEVEL_S = 60
DEFAULT_SPAN = timedelta(days=7)
MAX_TREND_POINTS = 1000
QUERY_TIMEOUT_S = 120
WORK_MEM = "64MB"
UNCLASSIFIED, NO_QUEUE, NO_ROUTE = "unclassified", "none", "none"

DEFINITIONS = {
    "window": "A contact counts in the window [from, to) in which it started; everything that "
              "happened to it afterwards counts too (a report is as of the moment it runs).",
    "contact": "One conversation of one customer on one channel: a call, an SMS conversation "
               "(ended by resolution, wrap-up or 30 min without a message), a chat session.",
    "contact_type": "The latest classification of the contact, or the agent's wrap-up "
                    "correction; 'unclassified' when it never got one.",
    "queue": "The queue of the contact's latest routing decision or escalation; 'none' when "
             "it was never routed.",
    "route": "The route path of the contact's latest routing decision or escalation.",
    "self_service_offered": "Contacts in which a self-service answer or flow started.",
    "self_service_resolved": "Contacts that ended with outcome self_service_resolved and "
                             "never entered an agent queue.",
    "escalated": "Contacts that entered an agent queue; escalation_reasons counts each "
                 "escalated contact once, by the reason code of its first escalation.",
    "abandoned": "Escalated contacts that ended before an agent accepted them; a contact "
                 "whose caller asked to be called back is never abandoned.",
    "false_deflections": "Self-service-resolved contacts followed by another contact of the "
                         "same customer with the same contact type, on any channel, starting "
                         "within the type's repeat window (catalog repeat_window_h, default "
                         "72 h) of the resolved contact's start.",
    "deflection_rate": "self_service_resolved / contacts",
    "true_deflection_rate": "(self_service_resolved - false_deflections) / contacts",
    "containment_rate": "voice contacts that never entered an agent queue / voice contacts",
    "abandonment_rate": "abandoned / escalated",
    "service_level": "escalated contacts accepted by an agent within service_level_s seconds "
                     "of their first escalation / escalated",
    "median_resolution_s": "Median seconds from start to end of contacts that ended "
                           "self_service_resolved or agent_resolved.",
    "journey": "A customer's contacts of one contact type, each starting within the type's "
               "repeat window of the previous one, as channel:handling steps; it counts in "
               "the window in which its first contact started. handling: self_service "
               "(resolved), agent (accepted by an agent), abandoned, queued (still waiting), "
               "dropped (ended without resolution or escalation), open (still going).",
    "dropout": "A contact that left self-service unresolved on its own account: escalated at "
               "the customer's request or after failing self-service, or ended (hung up, "
               "went quiet, opted out); not contacts routed straight to an agent by a rule or "
               "an experiment's arm. "
               "step: where it was (greeting, clarifying, or the self-service step); exit: "
               "the escalation reason or the outcome.",
    "transferred": "Contacts an agent transferred, to a queue or to an agent, counted once "
                   "each (a transferred event: cold at the request, warm when the next agent "
                   "accepted).",
    "callbacks_requested": "Voice contacts whose caller, while waiting in a queue, asked to "
                           "be called back (a callback_requested event), counted once each.",
    "callbacks_completed": "Contacts whose callback reached an agent and the customer: a "
                           "call placed back was answered by the customer and the accepting "
                           "agent dialled in (a callback_completed event), counted once each "
                           "however many attempts it took.",
    "surveys_sent": "Contacts that were sent a CSAT or NPS survey (surveys.yaml).",
    "survey_responses": "Surveyed contacts whose survey got a valid answer in time; a late, "
                        "invalid or missing answer is not a response.",
    "survey_response_rate": "survey_responses / surveys_sent",
    "csat": "Mean of the valid 1-5 answers to CSAT surveys; null when there are none.",
    "nps": "% of NPS answers 9-10 minus % of NPS answers 0-6 (0-10 scale), from -100 to "
           "100; null when there are none.",
    "by_handling": "A matrix cell's figures (counts, rates, surveys) split by who handled "
                   "the contact: self_service (resolved), agent (accepted by an agent), "
                   "abandoned.",
    "flow": "Every journey of a contact type as stages (its 1st, 2nd... contact, up to the "
            "4th): per stage the channel:handling steps taken and how many journeys ended "
            "there, and the moves from one stage to the next.",
    "segment": "Contacts of the customers whose attribute (customer.<name>, as the customer "
               "directory holds it when the report runs) has the value; null: customers "
               "without it. Journeys and false deflections look at those customers' contacts.",
    "rates": "Fractions from 0 to 1; null when the denominator is 0.",
}

COUNT_FIELDS = ("contacts", "self_service_offered", "self_service_resolved", "false_deflections",
                "escalated", "abandoned", "accepted", "accepted_in_service_level",
                "voice_contacts", "voice_contained", "surveys_sent", "survey_responses",
                "csat_responses", "csat_points", "nps_responses", "nps_promoters",
                "nps_detractors", "transferred", "callbacks_requested", "callbacks_completed")
SURVEY_FIELDS = ("surveys_sent", "survey_responses", "survey_response_rate", "csat", "nps")
HANDLED_BY = ("self_service", "agent", "abandoned")


class BadWindow(ValueError):
    """from/to cannot be read or do not make a window; the message says which and why."""


class BadSegment(ValueError):
    """A segment_by that names no customer attribute; the message says what is accepted."""


SEGMENT_PREFIX = "customer."
_ATTRIBUTE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


def parse_segment_by(raw: str) -> str:
    """`customer.<attribute>` -> the attribute's name."""
    name = raw.strip()[len(SEGMENT_PREFIX):] if raw.strip().startswith(SEGMENT_PREFIX) else ""
    if not _ATTRIBUTE_NAME.match(name):
        raise BadSegment(f"'segment_by' must name a customer attribute as customer.<name> "
                         f"(letters, digits, _ or -), e.g. customer.tier, not {raw!r}")
    return name


@dataclass(frozen=True)
class Segment:
    """Customers whose attribute has this value ("" when they do not carry it)."""
    attribute: str
    value: str

    def as_dict(self) -> dict[str, str | None]:
        return {"by": SEGMENT_PREFIX + self.attribute, "value": self.value or None}


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime

    def as_dict(self) -> dict[str, str]:
        return {"from": iso(self.start), "to": iso(self.end)}


@dataclass(frozen=True)
class ReportRules:
    """What reports need from the catalog: repeat windows and labels of the contact types."""
    repeat_windows_h: Mapping[str, int] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    default_window_h: int = DEFAULT_REPEAT_WINDOW_H
    service_level_s: float = DEFAULT_SERVICE_LEVEL_S
    segment: Segment | None = None  # only these customers' contacts count

    @classmethod
    def from_catalog(cls, catalog, service_level_s: float = DEFAULT_SERVICE_LEVEL_S
                     ) -> "ReportRules":
        types = catalog.types.values()
        return cls({t.id: t.repeat_window_h for t in types}, {t.id: t.label for t in types},
                   service_level_s=service_level_s)

    @property
    def longest_window_h(self) -> int:
        return max([self.default_window_h, *self.repeat_windows_h.values()])

    def with_segment(self, attribute: str, value: str) -> "ReportRules":
        return replace(self, segment=Segment(attribute, value))

    def params(self, window: Window) -> list[Any]:
        """$1..$8 of every report query ($7, $8: the segment's attribute and value)."""
        ids = list(self.repeat_windows_h)
        segment = self.segment
        return [window.start, window.end, ids, [self.repeat_windows_h[i] for i in ids],
                self.default_window_h, float(self.service_level_s),
                segment and segment.attribute, segment and segment.value]


# ---- windows ------------------------------------------------------------------------------

def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def parse_moment(raw: str, name: str) -> datetime:
    """ISO 8601: a date (midnight UTC) or a date and time (UTC unless an offset is given)."""
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise BadWindow(f"'{name}' is not a date or time: {raw!r} (use ISO 8601, e.g. "
                        "2024-05-01 or 2024-05-01T09:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def parse_window(raw_from: str | None, raw_to: str | None,
                 now: datetime | None = None) -> Window:
    """The window [from, to); `to` defaults to now, `from` to seven days before `to`."""
    end = parse_moment(raw_to, "to") if raw_to else (now or datetime.now(timezone.utc))
    start = parse_moment(raw_from, "from") if raw_from else end - DEFAULT_SPAN
    if start >= end:
        raise BadWindow(f"'from' ({iso(start)}) must be before 'to' ({iso(end)})")
    return Window(start, end)


def ratio(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else numerator / denominator


# ---- SQL ----------------------------------------------------------------------------------

def _type_assigned(alias: str) -> str:
    """The contact type an event gives its contact: a classification or a wrap-up correction."""
    return (f"CASE WHEN {alias}.kind = 'classified' THEN {alias}.contact_type "
            f"WHEN {alias}.kind = 'wrap_up' THEN COALESCE({alias}.data->>'corrected_contact_type',"
            f" {alias}.data->>'contact_type') END")


def _in_order(expression: str, condition: str) -> str:
    """The values of `expression` over the contact's events that match, oldest first. Every
    aggregate orders alike, so PostgreSQL sorts the events once for all of them."""
    return (f"array_agg({expression} ORDER BY e.occurred_at, e.seq) "
            f"FILTER (WHERE {condition})")


def _in_segment(customer: str) -> str:
    """The customer is in the report's segment ($7 attribute, $8 value), or there is none."""
    return (f"($7::text IS NULL OR COALESCE((SELECT cu.attributes->>$7 FROM customers cu "
            f"WHERE cu.id = {customer}), '') = $8::text)")


STARTED_IN_WINDOW = """
chosen AS (
    SELECT contact_id, customer_id, channel, occurred_at AS started_at
    FROM contact_events
    WHERE kind = 'contact_started' AND occurred_at >= $1::timestamptz
      AND occurred_at < $2::timestamptz
)"""
# The same for reports, whose queries always carry the segment ($7, $8).
STARTED_IN_SEGMENT = STARTED_IN_WINDOW.replace(
    "AND occurred_at < $2::timestamptz",
    f"AND occurred_at < $2::timestamptz AND {_in_segment('customer_id')}")

# Journeys need the customers' other contacts: from one repeat window before the window on.
CUSTOMERS_OF_WINDOW = f"""
customers_in_window AS (
    SELECT DISTINCT customer_id FROM contact_events
    WHERE kind = 'contact_started' AND occurred_at >= $1::timestamptz
      AND occurred_at < $2::timestamptz AND {_in_segment("customer_id")}
),
chosen AS (
    SELECT e.contact_id, e.customer_id, e.channel, e.occurred_at AS started_at
    FROM contact_events e JOIN customers_in_window USING (customer_id)
    WHERE e.kind = 'contact_started'
      AND e.occurred_at >= $1::timestamptz - make_interval(hours => $9::int)
)"""

TYPE_ASSIGNED = _type_assigned("e")

WINDOWS = """
windows AS (
    SELECT * FROM unnest($3::text[], $4::int[]) AS w(contact_type, hours)
)"""

# The reference: one row per chosen contact, what happened to it read from its events.
FACTS_OF_EVENTS = f"""
gathered AS (
    SELECT c.contact_id, c.customer_id, c.channel, c.started_at,
        {_in_order(TYPE_ASSIGNED, TYPE_ASSIGNED + " IS NOT NULL")} AS types,
        {_in_order("e.data->>'step'", "e.kind = 'self_service_started'")} AS steps,
        COALESCE(bool_or(e.kind = 'classification_missed'), false) AS missed,
        COALESCE(bool_or(e.kind = 'routed' AND e.data->>'self_service' = 'false'), false)
            AS routed_to_agent,
        min(e.occurred_at) FILTER (WHERE e.kind = 'escalated') AS escalated_at,
        {_in_order("e.reason", "e.kind = 'escalated'")} AS escalation_reasons,
        min(e.occurred_at) FILTER (WHERE e.kind = 'agent_accepted') AS accepted_at,
        min(e.occurred_at) FILTER (WHERE e.kind = 'ended') AS ended_at,
        {_in_order("e.data->>'outcome'", "e.kind = 'ended'")} AS outcomes,
        {_in_order("e.data->>'queue'", "e.kind IN ('routed', 'escalated')")} AS queues,
        {_in_order("e.route_path",
                   "e.kind IN ('routed', 'escalated') AND e.route_path IS NOT NULL")} AS routes,
        {_in_order("e.data->>'kind'", "e.kind = 'survey_sent'")} AS survey_kinds,
        {_in_order("e.data->>'score'", "e.kind = 'survey_answered'")} AS survey_scores,
        COALESCE(bool_or(e.kind = 'transferred'), false) AS transferred,
        COALESCE(bool_or(e.kind = 'callback_requested'), false) AS callback_requested,
        COALESCE(bool_or(e.kind = 'callback_completed'), false) AS callback_completed
    FROM chosen c
    LEFT JOIN contact_events e ON e.contact_id = c.contact_id
        AND e.kind IN ('classified', 'wrap_up', 'self_service_started', 'classification_missed',
                       'routed', 'escalated', 'agent_accepted', 'ended', 'survey_sent',
                       'survey_answered', 'transferred', 'callback_requested',
                       'callback_completed')
    GROUP BY c.contact_id, c.customer_id, c.channel, c.started_at
),
facts AS (
    SELECT contact_id, customer_id, channel, started_at, missed, routed_to_agent,
        escalated_at, accepted_at, ended_at, transferred, callback_requested,
        callback_completed,
        types[cardinality(types)] AS contact_type,
        steps IS NOT NULL AS offered,
        steps[cardinality(steps)] AS last_step,
        escalation_reasons[1] AS escalation_reason,
        outcomes[1] AS outcome,
        queues[cardinality(queues)] AS queue,
        routes[cardinality(routes)] AS route,
        survey_kinds[1] AS survey_kind,
        survey_scores[1]::int AS survey_score
    FROM gathered
)"""

# A self-service resolution followed by a contact of the same type within the repeat window.
FALSE_DEFLECTION_OF_EVENTS = f"""EXISTS (
            SELECT 1 FROM contact_events later
            WHERE later.kind = 'contact_started' AND later.customer_id = j.customer_id
              AND later.contact_id <> j.contact_id
              AND later.occurred_at > j.started_at
              AND later.occurred_at <= j.started_at + j.repeat_window
              AND (SELECT {_type_assigned("t")} FROM contact_events t
                   WHERE t.contact_id = later.contact_id
                     AND {_type_assigned("t")} IS NOT NULL
                   ORDER BY t.occurred_at DESC, t.seq DESC LIMIT 1) = j.contact_type
        )"""

# What reports serve: the same columns from contact_facts, which the event inserts keep
# (migrations/004_partitioned_events.sql).
FACT_COLUMNS = """contact_id, customer_id, (started).value AS channel, started_at, missed,
        routed_to_agent, (escalation).at AS escalated_at, accepted_at, (ending).at AS ended_at,
        (contact_type).value AS contact_type, offered, (last_step).value AS last_step,
        (escalation).value AS escalation_reason, (ending).value AS outcome,
        (queue).value AS queue, (route).value AS route, next_same_type_at,
        (survey).value AS survey_kind, (survey_answer).value::int AS survey_score, transferred,
        callback_requested, callback_completed"""

STORED_FACTS_IN_WINDOW = f"""
facts AS (
    SELECT {FACT_COLUMNS} FROM contact_facts
    WHERE started_at >= $1::timestamptz AND started_at < $2::timestamptz
      AND {_in_segment("customer_id")}
)"""

STORED_FACTS_OF_CUSTOMERS = f"""
customers_in_window AS (
    SELECT DISTINCT customer_id FROM contact_facts
    WHERE started_at >= $1::timestamptz AND started_at < $2::timestamptz
      AND {_in_segment("customer_id")}
),
facts AS (
    SELECT {FACT_COLUMNS} FROM contact_facts JOIN customers_in_window USING (customer_id)
    WHERE started_at >= $1::timestamptz - make_interval(hours => $9::int)
)"""

FALSE_DEFLECTION_OF_FACTS = "COALESCE(j.next_same_type_at <= j.started_at + j.repeat_window, " \
                            "false)"


def _judged(false_deflection: str) -> str:
    """The judgement of each contact from its facts: the metric definitions of section 5."""
    return f"""
judged AS (
    SELECT f.*,
        make_interval(hours => COALESCE(w.hours, $5::int)) AS repeat_window,
        f.escalated_at IS NOT NULL AS escalated,
        COALESCE(f.outcome = 'self_service_resolved', false) AND f.escalated_at IS NULL
            AS resolved_in_self_service,
        f.escalated_at IS NOT NULL AND f.ended_at IS NOT NULL
            AND (f.accepted_at IS NULL OR f.accepted_at > f.ended_at)
            AND NOT f.callback_requested AS abandoned,
        f.escalated_at IS NOT NULL AND f.accepted_at IS NOT NULL AS accepted,
        CASE WHEN f.outcome IN ('self_service_resolved', 'agent_resolved')
             THEN extract(epoch FROM f.ended_at - f.started_at)::float8 END AS resolution_s
    FROM facts f LEFT JOIN windows w ON w.contact_type = f.contact_type
),
derived AS (
    SELECT j.*,
        COALESCE(j.contact_type, '{UNCLASSIFIED}') AS type_key,
        COALESCE(j.queue, '{NO_QUEUE}') AS queue_key,
        COALESCE(j.route, '{NO_ROUTE}') AS route_key,
        j.accepted AND j.accepted_at - j.escalated_at <= make_interval(secs => $6::float8)
            AS accepted_in_service_level,
        j.resolved_in_self_service AND j.contact_type IS NOT NULL AND {false_deflection}
            AS false_deflection,
        NOT j.resolved_in_self_service AND NOT j.routed_to_agent
            AND COALESCE(j.escalation_reason, '') NOT IN ('no_self_service', 'experiment')
            AND (j.escalated OR j.ended_at IS NOT NULL) AS dropped_out,
        CASE WHEN j.resolved_in_self_service THEN 'self_service'
             WHEN j.accepted AND NOT j.abandoned THEN 'agent'
             WHEN j.abandoned THEN 'abandoned'
             WHEN j.escalated THEN 'queued'
             WHEN j.ended_at IS NOT NULL THEN 'dropped'
             ELSE 'open' END AS handling
    FROM judged j
)"""


AGGREGATES = """
    count(*) AS contacts,
    count(*) FILTER (WHERE offered) AS self_service_offered,
    count(*) FILTER (WHERE resolved_in_self_service) AS self_service_resolved,
    count(*) FILTER (WHERE false_deflection) AS false_deflections,
    count(*) FILTER (WHERE escalated) AS escalated,
    count(*) FILTER (WHERE abandoned) AS abandoned,
    count(*) FILTER (WHERE accepted) AS accepted,
    count(*) FILTER (WHERE accepted_in_service_level) AS accepted_in_service_level,
    count(*) FILTER (WHERE channel = 'voice') AS voice_contacts,
    count(*) FILTER (WHERE channel = 'voice' AND NOT escalated) AS voice_contained,
    count(*) FILTER (WHERE survey_kind IS NOT NULL) AS surveys_sent,
    count(*) FILTER (WHERE survey_kind IS NOT NULL AND survey_score IS NOT NULL)
        AS survey_responses,
    count(*) FILTER (WHERE survey_kind = 'csat' AND survey_score IS NOT NULL) AS csat_responses,
    COALESCE(sum(survey_score) FILTER (WHERE survey_kind = 'csat'), 0)::int AS csat_points,
    count(*) FILTER (WHERE survey_kind = 'nps' AND survey_score IS NOT NULL) AS nps_responses,
    count(*) FILTER (WHERE survey_kind = 'nps' AND survey_score >= 9) AS nps_promoters,
    count(*) FILTER (WHERE survey_kind = 'nps' AND survey_score <= 6) AS nps_detractors,
    count(*) FILTER (WHERE transferred) AS transferred,
    count(*) FILTER (WHERE callback_requested) AS callbacks_requested,
    count(*) FILTER (WHERE callback_completed) AS callbacks_completed"""


GROUPING_KEYS = ("by_type", "by_channel", "by_queue", "by_route", "by_reason", "by_handling",
                 "type_key", "channel", "queue_key", "route_key", "escalation_reason", "handling")
GROUPINGS = """
SELECT GROUPING(type_key) = 0 AS by_type, GROUPING(channel) = 0 AS by_channel,
       GROUPING(queue_key) = 0 AS by_queue, GROUPING(route_key) = 0 AS by_route,
       GROUPING(escalation_reason) = 0 AS by_reason, GROUPING(handling) = 0 AS by_handling,
       type_key, channel, queue_key, route_key, escalation_reason, handling, {AGGREGATES}
FROM {source}
GROUP BY {by}GROUPING SETS ((), (type_key), (channel), (queue_key), (route_key),
                        (escalation_reason), (type_key, channel),
                        (type_key, channel, handling))
"""
DROPOUTS = """
SELECT {by}type_key AS contact_type, channel,
       COALESCE(last_step, CASE WHEN missed THEN 'clarifying' ELSE 'greeting' END) AS step,
       COALESCE(escalation_reason, outcome) AS exit, count(*) AS contacts
FROM {source} WHERE dropped_out
GROUP BY {columns}"""

# Per contact type, what the self-service candidates are ranked by (candidates.py); the agent
# seconds are summed exactly (numeric), as float8 ({seconds}) once summed over the window.
CANDIDATES = """
SELECT {by}type_key AS contact_type, count(*) AS contacts,
       count(*) FILTER (WHERE handling = 'agent') AS agent_handled,
       count(*) FILTER (WHERE handling = 'agent' AND ended_at >= accepted_at) AS agent_timed,
       COALESCE(sum(extract(epoch FROM ended_at - accepted_at))
                FILTER (WHERE handling = 'agent' AND ended_at >= accepted_at), 0){seconds}
           AS agent_seconds,
       count(*) FILTER (WHERE offered) AS self_service_offered,
       count(*) FILTER (WHERE offered AND resolved_in_self_service) AS offered_and_resolved,
       count(*) FILTER (WHERE resolved_in_self_service) AS self_service_resolved,
       count(*) FILTER (WHERE false_deflection) AS false_deflections,
       count(*) FILTER (WHERE handling = 'self_service' AND survey_kind = 'csat'
                        AND survey_score IS NOT NULL) AS csat_self_responses,
       COALESCE(sum(survey_score) FILTER (WHERE handling = 'self_service'
                                          AND survey_kind = 'csat'), 0)::int AS csat_self_points,
       count(*) FILTER (WHERE handling = 'agent' AND survey_kind = 'csat'
                        AND survey_score IS NOT NULL) AS csat_agent_responses,
       COALESCE(sum(survey_score) FILTER (WHERE handling = 'agent'
                                          AND survey_kind = 'csat'), 0)::int AS csat_agent_points
FROM {source} WHERE contact_type IS NOT NULL
GROUP BY {columns}"""


def journeys_sql(carried: str = "") -> str:
    """Each customer's journeys per contact type, with the columns `carried` ("segment, ": a
    value of the customer's, so it does not split a journey) kept on each journey."""
    return f"""
marked AS (
    SELECT {carried}customer_id, contact_type, contact_id, channel, started_at, handling,
        CASE WHEN started_at - lag(started_at) OVER topic <= repeat_window THEN 0 ELSE 1 END
            AS opens_journey
    FROM derived WHERE contact_type IS NOT NULL
    WINDOW topic AS (PARTITION BY customer_id, contact_type ORDER BY started_at, contact_id)
),
numbered AS (
    SELECT *, sum(opens_journey) OVER (PARTITION BY customer_id, contact_type
                                       ORDER BY started_at, contact_id) AS journey
    FROM marked
),
journeys AS (
    SELECT {carried}contact_type, min(started_at) AS began, max(started_at) AS latest_start,
           count(DISTINCT channel) AS channels,
           string_agg(channel || ':' || handling, ' -> ' ORDER BY started_at, contact_id) AS path
    FROM numbered GROUP BY {carried}customer_id, contact_type, journey
)"""


JOURNEYS = journeys_sql()


@dataclass(frozen=True)
class Queries:
    """The report queries over one source of per-contact facts."""
    groupings: str
    medians: str  # apart: an ordered-set aggregate would make every grouping set sort
    trend: str
    dropouts: str
    journeys: str
    candidates: str
    segment_values: str  # $1, $2 the window, $3 the attribute

    @classmethod
    def over(cls, in_window: str, of_customers: str, false_deflection: str,
             segment_values: str) -> "Queries":
        judged = _judged(false_deflection)
        window_facts = f"WITH {WINDOWS}, {in_window}, {judged}"
        return cls(
            segment_values=segment_values,
            groupings=window_facts + GROUPINGS.format(AGGREGATES=AGGREGATES, source="derived",
                                                      by=""),
            medians=f"""{window_facts}
SELECT type_key, channel,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY resolution_s) AS median_resolution_s
FROM derived GROUP BY 1, 2
""",
            trend=f"""{window_facts}
SELECT date_bin($9::interval, started_at, $1::timestamptz) AS bucket, {AGGREGATES}
FROM derived GROUP BY 1 ORDER BY 1
""",
            dropouts=window_facts + DROPOUTS.format(by="", source="derived",
                                                    columns="1, 2, 3, 4") + """
ORDER BY contacts DESC, 1, 2, 3, 4
""",
            journeys=f"""WITH {WINDOWS}, {of_customers}, {judged}, {JOURNEYS}
SELECT contact_type, path, count(*) AS journeys, bool_or(channels > 1) AS cross_channel
FROM journeys WHERE began >= $1::timestamptz AND began < $2::timestamptz
GROUP BY contact_type, path ORDER BY contact_type, journeys DESC, path
""",
            candidates=window_facts + CANDIDATES.format(by="", seconds="::float8",
                                                        source="derived", columns="1")
            + " ORDER BY 1\n")


# Served: per-contact facts kept as events land. Reference: the same figures from raw events
# (slow; the tests hold the two equal).
def _segment_values(table: str, started: str) -> str:
    """The values an attribute takes among the customers of the window's contacts."""
    return f"""
SELECT COALESCE(cu.attributes->>$3::text, '') AS value, count(*) AS contacts
FROM {table} s LEFT JOIN customers cu ON cu.id = s.customer_id
WHERE {started} GROUP BY 1 ORDER BY 1"""


FROM_FACTS = Queries.over(STORED_FACTS_IN_WINDOW, STORED_FACTS_OF_CUSTOMERS,
                          FALSE_DEFLECTION_OF_FACTS, _segment_values(
                              "contact_facts", "s.started_at >= $1::timestamptz "
                              "AND s.started_at < $2::timestamptz"))
FROM_EVENTS = Queries.over(f"{STARTED_IN_SEGMENT}, {FACTS_OF_EVENTS}",
                           f"{CUSTOMERS_OF_WINDOW}, {FACTS_OF_EVENTS}",
                           FALSE_DEFLECTION_OF_EVENTS, _segment_values(
                               "contact_events", "s.kind = 'contact_started' "
                               "AND s.occurred_at >= $1::timestamptz "
                               "AND s.occurred_at < $2::timestamptz"))


# ---- reports ------------------------------------------------------------------------------

def figures(row: Mapping[str, Any]) -> dict[str, Any]:
    """Counts of one group and the rates of section 5 computed from them."""
    counts = {name: row[name] for name in COUNT_FIELDS}
    resolved, contacts = counts["self_service_resolved"], counts["contacts"]
    return counts | {
        "deflection_rate": ratio(resolved, contacts),
        "true_deflection_rate": ratio(resolved - counts["false_deflections"], contacts),
        "containment_rate": ratio(counts["voice_contained"], counts["voice_contacts"]),
        "abandonment_rate": ratio(counts["abandoned"], counts["escalated"]),
        "service_level": ratio(counts["accepted_in_service_level"], counts["escalated"]),
        "survey_response_rate": ratio(counts["survey_responses"], counts["surveys_sent"]),
        "csat": ratio(counts["csat_points"], counts["csat_responses"]),
        "nps": _nps(counts),
    }


def _nps(counts: Mapping[str, int]) -> float | None:
    """% promoters minus % detractors of the NPS answers; None without any."""
    share = ratio(counts["nps_promoters"] - counts["nps_detractors"], counts["nps_responses"])
    return None if share is None else round(100 * share, 6)


def header(window: Window, rules: ReportRules) -> dict[str, Any]:
    segment = {"segment": rules.segment.as_dict()} if rules.segment else {}
    return {"metric_version": METRIC_VERSION, **window.as_dict(),
            "as_of": iso(datetime.now(timezone.utc)), "service_level_s": rules.service_level_s,
            **segment, "definitions": DEFINITIONS}


async def attributes(conn, window: Window) -> dict[str, Any]:
    """The customer attributes of the window's contacts: per name, its values and how many
    contacts each has (what a segment selector offers)."""
    rows = await _fetch(conn, "attributes", """
SELECT a.key AS name, a.value, count(*) AS contacts
FROM contact_facts f JOIN customers cu ON cu.id = f.customer_id,
     jsonb_each_text(cu.attributes) AS a
WHERE f.started_at >= $1::timestamptz AND f.started_at < $2::timestamptz
GROUP BY 1, 2 ORDER BY 1, 2""", window.start, window.end)
    found: dict[str, dict[str, int]] = {}
    for row in rows:
        found.setdefault(row["name"], {})[row["value"]] = row["contacts"]
    return {**window.as_dict(), "as_of": iso(datetime.now(timezone.utc)),
            "attributes": {SEGMENT_PREFIX + name: values for name, values in found.items()}}


MAX_SEGMENTS = 20
HEADER_FIELDS = ("metric_version", "from", "to", "as_of", "service_level_s", "segment",
                 "definitions")


async def split(report, conn, window: Window, rules: ReportRules, attribute: str,
                queries: Queries = FROM_FACTS, **options: Any) -> dict[str, Any]:
    """`report` once per value the customer attribute takes in the window, smallest first;
    customers without it make the segment whose value is null."""
    reading = _SPLIT_ROWS.set({})
    try:
        values = await _split_values(report, conn, window, rules, attribute, queries)
        if len(values) > MAX_SEGMENTS:  # each is one more report
            raise BadSegment(f"customer.{attribute} takes {len(values)} values in this "
                             f"window; a split shows at most {MAX_SEGMENTS}: choose one value "
                             "with 'segment', or another attribute")
        segments = []
        for value in values:
            part = await report(conn, window, rules.with_segment(attribute, value),
                                queries=queries, **options)
            segments.append({"value": value or None,
                             **{k: v for k, v in part.items() if k not in HEADER_FIELDS}})
    finally:
        _SPLIT_ROWS.reset(reading)
    return header(window, rules) | {"segment_by": SEGMENT_PREFIX + attribute,
                                    "segments": segments}


async def _split_values(report, conn, window: Window, rules: ReportRules, attribute: str,
                        queries: Queries) -> list[str]:
    """The values the attribute takes among the window's contacts, in order: from the roll-ups
    of the contacts per value, unless it takes too many to be rolled up."""
    if queries is FROM_FACTS:
        by_segment = await _rows_by_segment(conn, "segments", "segments", window, rules,
                                            attribute)
        if by_segment is not None:
            return list(by_segment)
    rows = await _fetch(conn, "segments", queries.segment_values, window.start, window.end,
                        attribute)
    return [row["value"] for row in rows]


_running: dict[tuple, asyncio.Future] = {}


async def _fetch(conn: asyncpg.Connection | asyncpg.Pool, report: str, sql: str,
                 *args: Any) -> list[asyncpg.Record]:
    """Run a report query; the same query already running on `conn` is joined, not repeated
    (the dashboard asks for the summary and the matrix, which share one query, at once)."""
    return await shared((id(conn), sql, repr(args)), lambda: _run(conn, report, sql, args))


async def shared(key: tuple, start) -> Any:
    """The result of `start()`, or of the same work (`key`) already running."""
    if key in _running:
        return await asyncio.shield(_running[key])
    _running[key] = asyncio.ensure_future(start())
    try:
        return await asyncio.shield(_running[key])
    finally:
        _running.pop(key, None)


async def _run(conn: asyncpg.Connection | asyncpg.Pool, report: str, sql: str,
               args: tuple) -> list[asyncpg.Record]:
    """One query with room to sort in memory (reports sort many rows, rarely)."""
    started = time.perf_counter()
    try:
        async with _connection(conn) as connection, connection.transaction(readonly=True):
            await connection.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
            return await connection.fetch(sql, *args, timeout=QUERY_TIMEOUT_S)
    finally:
        metrics.REPORT_SECONDS.labels(report).observe(time.perf_counter() - started)


def _connection(conn: asyncpg.Connection | asyncpg.Pool):
    if isinstance(conn, asyncpg.Pool):
        return conn.acquire(timeout=QUERY_TIMEOUT_S)
    return contextlib.nullcontext(conn)


async def summary(conn, window: Window, rules: ReportRules,
                  queries: Queries = FROM_FACTS) -> dict[str, Any]:
    rows = await _report_rows(conn, "summary", "groupings", window, rules, queries)
    return header(window, rules) | summary_from(rows)


async def _report_rows(conn, label: str, query: str, window: Window, rules: ReportRules,
                       queries: Queries, *extra: Any) -> list[Mapping[str, Any]]:
    """The rows of one report query: served from the day roll-ups and the window's edges when
    the report is of the stored facts (a segment's: from the roll-ups by its attribute, unless
    that takes too many values), else by the query itself."""
    if queries is FROM_FACTS:
        from service.reporting import rollups  # it builds its queries from this module's

        if rules.segment is None and query in rollups.BY_NAME:
            return await rollups.rows(conn, label, rollups.BY_NAME[query], window, rules)
        if rules.segment is not None:
            by_segment = await _rows_by_segment(conn, label, query, window, rules,
                                                rules.segment.attribute, rules.segment.value)
            if by_segment is not None:
                return by_segment.get(rules.segment.value, [])
    return await _fetch(conn, label, getattr(queries, query), *rules.params(window), *extra)


# While `split` runs: each rolled-up query's rows by segment, read once for all its segments.
_SPLIT_ROWS: ContextVar[dict[tuple[str, str], Any] | None] = ContextVar("split_rows",
                                                                        default=None)


async def _rows_by_segment(conn, label: str, query: str, window: Window, rules: ReportRules,
                           attribute: str, value: str | None = None
                           ) -> dict[str, list[dict[str, Any]]] | None:
    """The query's rolled-up rows per value of the attribute, in the values' order (None when
    it takes too many values to be rolled up): of every value in a split, else of `value`'s
    at least."""
    from service.reporting import rollups

    cache = _SPLIT_ROWS.get()
    if cache is not None and (query, attribute) in cache:
        return cache[query, attribute]
    found = await rollups.rows(conn, label, rollups.SEGMENTED[query], window,
                               replace(rules, segment=None), attribute,
                               None if cache is not None else value)
    by_segment = None
    if found is not None:
        by_segment = {}
        for row in found:
            part = dict(row.items())
            by_segment.setdefault(part.pop("segment"), []).append(part)
    if cache is not None:
        cache[query, attribute] = by_segment
    return by_segment


def summary_from(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    report: dict[str, Any] = {"totals": None, "by_contact_type": {}, "by_channel": {},
                              "by_queue": {}, "by_route": {}, "escalation_reasons": {}}
    groups = {"by_type": ("by_contact_type", "type_key"), "by_channel": ("by_channel", "channel"),
              "by_queue": ("by_queue", "queue_key"), "by_route": ("by_route", "route_key")}
    for row in rows:
        if row["by_handling"]:
            continue  # the matrix's split by handling
        chosen = [flag for flag in (*groups, "by_reason") if row[flag]]
        if not chosen:
            report["totals"] = figures(row)
        elif chosen == ["by_reason"]:
            if row["escalation_reason"] is not None:
                report["escalation_reasons"][row["escalation_reason"]] = row["escalated"]
        elif len(chosen) == 1:
            name, key = groups[chosen[0]]
            report[name][row[key]] = figures(row)
    report["totals"] = report["totals"] or figures({name: 0 for name in COUNT_FIELDS})
    for name in ("by_contact_type", "by_channel", "by_queue", "by_route",
                 "escalation_reasons"):
        report[name] = dict(sorted(report[name].items()))
    return report


async def matrix(conn, window: Window, rules: ReportRules,
                 queries: Queries = FROM_FACTS) -> dict[str, Any]:
    rows = await _report_rows(conn, "matrix", "groupings", window, rules, queries)
    medians = {(r["type_key"], r["channel"]): r["median_resolution_s"] for r in
               await _report_rows(conn, "medians", "medians", window, rules, queries)}
    handled = _by_handling(rows)
    cells = [{"contact_type": r["type_key"], "label": rules.labels.get(r["type_key"],
                                                                       r["type_key"]),
              "channel": r["channel"], **figures(r),
              # a cell new since the medians' read (a separate statement) has none yet
              "median_resolution_s": medians.get((r["type_key"], r["channel"])),
              "by_handling": handled[r["type_key"], r["channel"]]}
             for r in rows if r["by_type"] and r["by_channel"] and not r["by_handling"]]
    cells.sort(key=lambda c: (c["contact_type"], c["channel"]))
    return header(window, rules) | {"rows": cells}


def _by_handling(rows: list[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Each cell's figures for the contacts self-service, an agent or nobody handled."""
    empty = {field_name: 0 for field_name in COUNT_FIELDS}
    split: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        if row["by_handling"]:
            split.setdefault((row["type_key"], row["channel"]), {})[row["handling"]] = row
    return {cell: {who: figures(found.get(who, empty)) for who in HANDLED_BY}
            for cell, found in split.items()}


async def journeys(conn, window: Window, rules: ReportRules, limit: int = 5,
                   queries: Queries = FROM_FACTS) -> dict[str, Any]:
    """The `limit` most common journeys of each contact type, and the self-service drop-outs."""
    rows = await _report_rows(conn, "journeys", "journeys", window, rules, queries,
                              rules.longest_window_h)
    dropouts = await _report_rows(conn, "dropouts", "dropouts", window, rules, queries)
    kept: dict[str, int] = {}
    top = []
    for row in rows:  # ordered by contact type, then most common first
        kept[row["contact_type"]] = kept.get(row["contact_type"], 0) + 1
        if kept[row["contact_type"]] <= limit:
            top.append({"contact_type": row["contact_type"], "path": row["path"],
                        "steps": row["path"].split(" -> "), "journeys": row["journeys"],
                        "cross_channel": row["cross_channel"]})
    top.sort(key=lambda j: (-j["journeys"], j["contact_type"], j["path"]))
    return header(window, rules) | {"limit_per_contact_type": limit, "journeys": top,
                                    "flows": flows(rows), "max_stages": MAX_STAGES,
                                    "dropouts": [dict(r) for r in dropouts]}


MAX_STAGES = 4  # a flow shows journeys up to their 4th contact


def flows(rows: list[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every journey of each contact type (not only the top ones) as a flow: per stage (1st
    contact, 2nd...) the steps taken, how many journeys ended there, and the moves between."""
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        flow = found.setdefault(row["contact_type"], {"journeys": 0, "nodes": {}, "links": {}})
        steps = row["path"].split(" -> ")
        count = row["journeys"]
        flow["journeys"] += count
        for stage, step in enumerate(steps[:MAX_STAGES], 1):
            node = flow["nodes"].setdefault((stage, step), {"journeys": 0, "ended": 0})
            node["journeys"] += count
            node["ended"] += count if stage == len(steps) else 0
        for stage, (left, right) in enumerate(zip(steps[:MAX_STAGES - 1],
                                                  steps[1:MAX_STAGES]), 1):
            flow["links"][stage, left, right] = flow["links"].get((stage, left, right), 0) + count
    return {contact_type: {
        "journeys": flow["journeys"],
        "nodes": [{"stage": stage, "step": step, "channel": step.split(":")[0],
                   "handling": step.split(":")[1], **figures}
                  for (stage, step), figures in sorted(flow["nodes"].items(), key=_node_order)],
        "links": [{"stage": stage, "from": left, "to": right, "journeys": count}
                  for (stage, left, right), count in sorted(flow["links"].items())]}
        for contact_type, flow in sorted(found.items())}


def _node_order(item) -> tuple:
    (stage, step), figures = item
    return stage, -figures["journeys"], step


BUCKETS = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}


def choose_bucket(window: Window, requested: str | None = None) -> str:
    if requested is not None:
        if requested not in BUCKETS:
            raise BadWindow(f"'bucket' must be one of {', '.join(BUCKETS)}, not {requested!r}")
        if (window.end - window.start) / BUCKETS[requested] > MAX_TREND_POINTS:
            raise BadWindow(f"a {requested} bucket gives more than {MAX_TREND_POINTS} points "
                            "for this window; choose a longer bucket")
        return requested
    span = window.end - window.start
    return "hour" if span <= timedelta(days=3) else "day" if span <= timedelta(days=180) \
        else "week"


async def trend(conn, window: Window, rules: ReportRules, bucket: str | None = None,
                queries: Queries = FROM_FACTS) -> dict[str, Any]:
    """Headline figures per time bucket, every bucket of the window present."""
    name = choose_bucket(window, bucket)
    step = BUCKETS[name]
    found = {row["bucket"]: figures(row)
             for row in await _trend_rows(conn, window, rules, queries, step)}
    empty = figures({field_name: 0 for field_name in COUNT_FIELDS})
    points, start = [], window.start
    while start < window.end:
        points.append({"start": iso(start), **found.get(start, empty)})
        start += step
    return header(window, rules) | {"bucket": name, "points": points}


async def _trend_rows(conn, window: Window, rules: ReportRules, queries: Queries,
                      step: timedelta) -> list[Mapping[str, Any]]:
    """The trend's counts per bucket: a segment's from its roll-ups' hours when the window
    starts on the hour (every bucket is then whole hours), else by the query itself."""
    segment = rules.segment
    if queries is FROM_FACTS and segment is not None and window.start.timestamp() % 3600 == 0:
        by_segment = await _rows_by_segment(conn, "trend", "trend", window, rules,
                                            segment.attribute, segment.value)
        if by_segment is not None:
            return in_buckets(by_segment.get(segment.value, []), window.start, step)
    return await _fetch(conn, "trend", queries.trend, *rules.params(window), step)


def in_buckets(hours: list[Mapping[str, Any]], start: datetime,
               step: timedelta) -> list[dict[str, Any]]:
    """Counts per hour added up per bucket of `step` from `start` (as date_bin puts them)."""
    buckets: dict[datetime, dict[str, Any]] = {}
    for row in hours:
        bucket = start + (row["hour"] - start) // step * step
        counts = buckets.setdefault(bucket, {"bucket": bucket,
                                             **{name: 0 for name in COUNT_FIELDS}})
        for name in COUNT_FIELDS:
            counts[name] += row[name]
    return [buckets[bucket] for bucket in sorted(buckets)]
