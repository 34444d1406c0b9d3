"""The agent performance report: per agent over a window, what they were offered, what they
handled and how well, with a team total.

    GET /api/reports/agents?from=&to=       (ops or supervisor token)
    switchboard report agents --from F --to T [--format table|json|csv]

Time in status (available, busy, away per reason) comes from `agent_status_changed` (the
agent's own events, service/agents/activity.py), clipped to the window: STATUS_QUERY.

Read from the agent events of the event log (service/conversations/handoff.py, transfer.py):
`offered`, `agent_accepted`, `offer_declined`, `offer_expired` and `wrap_up` carry the agent in
`data.agent_id`, `transferred` in `data.from_agent`. Each event counts in the window in which it
happened (unlike the contact reports, which count a contact in the window it started in): an
agent's hour is the work done in that hour. Handle time, resolution, re-typing and CSAT belong
to the wrap-up, so to the window of the wrap-up. The time filter on `occurred_at` prunes the
monthly partitions to the window and reads migration 020's partial index of agent events.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Iterable, Mapping

import asyncpg
from aiohttp import web

from service.appkeys import PG
from service.reporting.ops_api import _json, _window, ops_report
from service.reporting.reports import METRIC_VERSION, Window, _run, ratio

# The kinds of migration 020's partial index (its predicate must imply the query's filter).
AGENT_EVENTS = ("offered", "agent_accepted", "offer_declined", "offer_expired", "wrap_up",
                "transferred")

DEFINITIONS = {
    "window": "Every figure counts the agent events that happened in [from, to): an offer in "
              "the window its offer event happened in, a declined or expired offer when it was "
              "declined or expired, an accept when accepted, a handled contact (and its handle "
              "time, resolution, re-typing and CSAT) when it was wrapped up, a transfer when it "
              "was made (a warm one when the next agent accepted).",
    "agents": "Every enabled agent of the directory, and any other agent with an event in the "
              "window or time signed in within it; id and name from the agent directory.",
    "offers": "Contacts offered to the agent (offered events), a contact offered again "
              "counting again.",
    "accepted": "Offers the agent accepted (agent_accepted events).",
    "declined": "Offers the agent declined (offer_declined events).",
    "expired": "Offers the agent let expire unanswered, i.e. missed (offer_expired events, "
               "after SWITCHBOARD_OFFER_TIMEOUT_S).",
    "acceptance_rate": "accepted / (accepted + declined + expired): of the offers the agent "
                       "answered or missed; offers withdrawn first (the customer left) are "
                       "in none of them.",
    "handled": "Contacts the agent wrapped up (wrap_up events).",
    "handle_time_mean_s": "Mean seconds from the agent's own accept of a contact (its latest "
                          "agent_accepted by this agent before the wrap-up) to its wrap-up, "
                          "over the contacts handled; a transferred contact's time starts "
                          "at its second agent's accept.",
    "handle_time_median_s": "Median of the same seconds.",
    "resolved": "Contacts handled that the agent wrapped up as resolved.",
    "resolved_rate": "resolved / handled",
    "transfers_out": "Transfers the agent made to a queue or a colleague (transferred events "
                     "from the agent: cold at the request, warm when the next agent "
                     "accepted); a transfer that failed or came back is not one.",
    "retyped": "Contacts handled whose contact type the agent corrected at wrap-up to another "
               "type than the one they were classified as.",
    "csat": "Mean of the valid 1-5 answers to the CSAT surveys of the contacts the agent "
            "wrapped up in the window (the contact's first survey_answered, whenever it came); "
            "null when there are none. csat_responses: how many.",
    "available_s": "Seconds the agent was available (console open, taking contacts, holding "
                   "none) within the window, from the agent_status_changed events; a status "
                   "that began before the window counts from its start, one still going on "
                   "up to the window's end (or now). Offline (no console open) is not counted.",
    "busy_s": "Seconds the agent held at least one contact, within the window.",
    "away_s": "Seconds the agent was signed in but away (taking no new contacts, holding none), "
              "within the window, whatever the reason.",
    "away_reasons_s": "Of away_s, the seconds per away reason the agent gave (its id, "
                      "away_reasons.yaml); away with no reason is in away_s only.",
    "team": "The same figures over every agent's events together (means and the median over "
            "all handled contacts, not means of the agents' figures).",
    "rates": "Fractions from 0 to 1; null when the denominator is 0. Seconds and CSAT are null "
             "when there is nothing to measure.",
}

# The agent events of the window, then each wrap-up with the seconds since the same agent's
# accept and its contact's CSAT answer (contact_facts: the first survey_sent kind and the first
# survey_answered score). The accept is nearly always in the window too; only when it is not
# is it looked up by contact (COALESCE evaluates that sub-query only then).
QUERY = f"""
WITH window_events AS (
    SELECT e.kind, e.contact_id, e.occurred_at, e.data,
           CASE WHEN e.kind = 'transferred' THEN e.data->>'from_agent'
                ELSE e.data->>'agent_id' END AS agent_id
    FROM contact_events e
    WHERE e.occurred_at >= $1::timestamptz AND e.occurred_at < $2::timestamptz
      AND e.kind IN ({', '.join(repr(k) for k in AGENT_EVENTS)})
),
accepts AS (
    SELECT contact_id, agent_id, max(occurred_at) AS at FROM window_events
    WHERE kind = 'agent_accepted' GROUP BY contact_id, agent_id
),
wrap_ups AS (
    SELECT w.agent_id, w.kind,
           extract(epoch FROM w.occurred_at - COALESCE(
               CASE WHEN a.at <= w.occurred_at THEN a.at END,
               (SELECT p.occurred_at FROM contact_events p
                WHERE p.contact_id = w.contact_id AND p.occurred_at <= w.occurred_at
                  AND p.kind = 'agent_accepted' AND p.data->>'agent_id' = w.agent_id
                ORDER BY p.occurred_at DESC, p.seq DESC LIMIT 1)))::float8 AS handle_s,
           (w.data->>'resolved')::boolean AS resolved,
           (w.data->>'corrected_contact_type' IS NOT NULL
            AND w.data->>'corrected_contact_type'
                IS DISTINCT FROM w.data->>'classified_as') AS retyped,
           CASE WHEN (f.survey).value = 'csat' THEN ((f.survey_answer).value)::int END AS csat
    FROM window_events w
    LEFT JOIN accepts a ON a.contact_id = w.contact_id AND a.agent_id = w.agent_id
    LEFT JOIN contact_facts f ON f.contact_id = w.contact_id
    WHERE w.kind = 'wrap_up'
),
agent_rows AS (
    SELECT agent_id, kind, NULL::float8 AS handle_s, NULL::boolean AS resolved,
           NULL::boolean AS retyped, NULL::int AS csat
    FROM window_events WHERE kind <> 'wrap_up' AND agent_id IS NOT NULL
    UNION ALL
    SELECT agent_id, kind, handle_s, resolved, retyped, csat FROM wrap_ups
    WHERE agent_id IS NOT NULL
    UNION ALL  -- enabled agents without events still get a row of zeros
    SELECT id::text, NULL, NULL, NULL, NULL, NULL FROM agents WHERE disabled_at IS NULL
)
SELECT r.agent_id, GROUPING(r.agent_id) = 1 AS team,
       (SELECT a.name FROM agents a WHERE a.id::text = r.agent_id) AS name,
       count(*) FILTER (WHERE kind = 'offered') AS offers,
       count(*) FILTER (WHERE kind = 'agent_accepted') AS accepted,
       count(*) FILTER (WHERE kind = 'offer_declined') AS declined,
       count(*) FILTER (WHERE kind = 'offer_expired') AS expired,
       count(*) FILTER (WHERE kind = 'wrap_up') AS handled,
       avg(handle_s) AS handle_time_mean_s,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY handle_s) AS handle_time_median_s,
       count(*) FILTER (WHERE kind = 'wrap_up' AND resolved) AS resolved,
       count(*) FILTER (WHERE kind = 'transferred') AS transfers_out,
       count(*) FILTER (WHERE retyped) AS retyped,
       count(csat) AS csat_responses, COALESCE(sum(csat), 0) AS csat_points
FROM agent_rows r
GROUP BY GROUPING SETS ((r.agent_id), ())
"""


# Time in each status, from `agent_status_changed` (service/agents/activity.py): every change
# in the window closes the status before it (from, from_reason, seconds: [at - seconds, at)),
# and each agent's latest change before the window's end opens the one it was in at the end
# (to, reason: [at, end or now)); both clipped to the window, so a status that began before
# it counts from its start. Agents: the directory's (enabled or not) and any in the window.
STATUS_QUERY = """
WITH changes AS (
    SELECT e.data->>'agent_id' AS agent_id, e.occurred_at AS at, e.data->>'from' AS status,
           e.data->>'from_reason' AS reason,
           e.occurred_at - make_interval(secs => (e.data->>'seconds')::float8) AS began
    FROM contact_events e
    WHERE e.kind = 'agent_status_changed'
      AND e.occurred_at >= $1::timestamptz AND e.occurred_at < $2::timestamptz
),
agent_ids AS (
    SELECT id::text AS agent_id FROM agents UNION SELECT agent_id FROM changes
),
segments AS (
    SELECT agent_id, status, reason, began, at AS ended FROM changes
    WHERE status IS NOT NULL AND began IS NOT NULL
    UNION ALL
    SELECT a.agent_id, last.status, last.reason, last.at, LEAST($2::timestamptz, now())
    FROM agent_ids a CROSS JOIN LATERAL (
        SELECT p.occurred_at AS at, p.data->>'to' AS status, p.data->>'reason' AS reason
        FROM contact_events p
        WHERE p.kind = 'agent_status_changed' AND p.data->>'agent_id' = a.agent_id
          AND p.occurred_at < $2::timestamptz
        ORDER BY p.occurred_at DESC, p.seq DESC LIMIT 1) last
)
SELECT agent_id, (SELECT a.name FROM agents a WHERE a.id::text = agent_id) AS name,
       status, COALESCE(reason, '') AS reason,
       sum(extract(epoch FROM LEAST(ended, $2::timestamptz)
                              - GREATEST(began, $1::timestamptz)))::float8 AS seconds
FROM segments
WHERE status IN ('available', 'busy', 'away') AND ended > $1::timestamptz
  AND began < $2::timestamptz AND LEAST(ended, $2::timestamptz) > GREATEST(began, $1::timestamptz)
GROUP BY agent_id, status, COALESCE(reason, '')
"""


@dataclass(frozen=True)
class StatusTimes:
    """Seconds an agent spent in each status within the window (console open: signed in)."""
    available_s: float = 0.0
    busy_s: float = 0.0
    away_s: float = 0.0
    away_reasons_s: Mapping[str, float] = field(default_factory=dict)  # those given a reason

    def plus(self, status: str, reason: str, seconds: float) -> "StatusTimes":
        if status == "away" and reason:
            reasons = {**self.away_reasons_s}
            reasons[reason] = reasons.get(reason, 0.0) + seconds
            return replace(self, away_s=self.away_s + seconds, away_reasons_s=reasons)
        name = f"{status}_s"
        return replace(self, **{name: getattr(self, name) + seconds})

    def rounded(self) -> "StatusTimes":
        return StatusTimes(round(self.available_s, 3), round(self.busy_s, 3),
                           round(self.away_s, 3),
                           {r: round(s, 3) for r, s in sorted(self.away_reasons_s.items())})


@dataclass(frozen=True)
class AgentFigures:
    """One agent's figures over the window (or the team's: no id or name)."""
    id: str | None
    name: str | None
    offers: int
    accepted: int
    declined: int
    expired: int
    acceptance_rate: float | None
    handled: int
    handle_time_mean_s: float | None
    handle_time_median_s: float | None
    resolved: int
    resolved_rate: float | None
    transfers_out: int
    retyped: int
    csat: float | None
    csat_responses: int
    available_s: float = 0.0
    busy_s: float = 0.0
    away_s: float = 0.0
    away_reasons_s: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> "AgentFigures":
        answered = row["accepted"] + row["declined"] + row["expired"]
        return cls(
            id=None if row["team"] else row["agent_id"], name=None if row["team"] else row["name"],
            offers=row["offers"], accepted=row["accepted"], declined=row["declined"],
            expired=row["expired"], acceptance_rate=ratio(row["accepted"], answered),
            handled=row["handled"], handle_time_mean_s=_seconds(row["handle_time_mean_s"]),
            handle_time_median_s=_seconds(row["handle_time_median_s"]),
            resolved=row["resolved"], resolved_rate=ratio(row["resolved"], row["handled"]),
            transfers_out=row["transfers_out"], retyped=row["retyped"],
            csat=(round(row["csat_points"] / row["csat_responses"], 3)
                  if row["csat_responses"] else None),
            csat_responses=row["csat_responses"])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FIELDS = tuple(f.name for f in fields(AgentFigures))
NO_FIGURES = AgentFigures(None, None, 0, 0, 0, 0, None, 0, None, None, 0, None, 0, 0, None, 0)


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def agent_report(conn: asyncpg.Connection | asyncpg.Pool, window: Window) -> dict[str, Any]:
    """Per agent and for the team, the figures of DEFINITIONS over the window."""
    rows = await _run(conn, "agents", QUERY, (window.start, window.end))
    times, names = await status_times(conn, window)
    [team] = [AgentFigures.from_row(r) for r in rows if r["team"]]
    team = replace(team, **asdict(sum_times(times.values())))
    listed = {figures.id: figures for figures in (AgentFigures.from_row(r) for r in rows
                                                  if not r["team"])}
    for agent_id in times.keys() - listed.keys():  # signed in, but no other event: disabled
        listed[agent_id] = replace(NO_FIGURES, id=agent_id, name=names.get(agent_id))
    agents = sorted((replace(figures, **asdict(times.get(agent_id or "", StatusTimes())))
                     for agent_id, figures in listed.items()),
                    key=lambda a: ((a.name or "").lower(), a.id or ""))
    return {"metric_version": METRIC_VERSION, **window.as_dict(),
            "agents": [a.as_dict() for a in agents], "team": team.as_dict(),
            "definitions": DEFINITIONS}


async def status_times(conn: asyncpg.Connection | asyncpg.Pool, window: Window
                       ) -> tuple[dict[str, StatusTimes], dict[str, str | None]]:
    """Per agent id, the seconds in each status within the window (STATUS_QUERY), and the
    agents' names."""
    rows = await _run(conn, "agent_status", STATUS_QUERY, (window.start, window.end))
    times: dict[str, StatusTimes] = {}
    for row in rows:
        times[row["agent_id"]] = times.get(row["agent_id"], StatusTimes()).plus(
            row["status"], row["reason"], row["seconds"])
    return ({agent_id: t.rounded() for agent_id, t in times.items()},
            {row["agent_id"]: row["name"] for row in rows})


def sum_times(all_times: Iterable[StatusTimes]) -> StatusTimes:
    """The team's: every agent's seconds added up."""
    total = StatusTimes()
    for times in all_times:
        total = replace(total, available_s=total.available_s + times.available_s,
                        busy_s=total.busy_s + times.busy_s, away_s=total.away_s + times.away_s,
                        away_reasons_s={r: total.away_reasons_s.get(r, 0.0)
                                        + times.away_reasons_s.get(r, 0.0)
                                        for r in {*total.away_reasons_s, *times.away_reasons_s}})
    return total.rounded()


def routes() -> list[web.RouteDef]:
    return [web.get("/api/reports/agents", agents_over_window)]


@ops_report("agents", roles=("ops", "supervisor"), what="the agent report")
async def agents_over_window(request: web.Request) -> web.Response:
    """The agent report over the request's window (from/to as every report takes them)."""
    return _json(await agent_report(request.app[PG], _window(request)))
