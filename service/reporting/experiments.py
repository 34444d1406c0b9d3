"""Experiments and canaries: per arm, the figures of the metric spec with 95% intervals, and
a verdict of each arm against the control (docs/interfaces.md, "Experiments and canaries").

A contact is in an arm from its `experiment_assigned` (or `canary_assigned`) event, kept per
contact in `contact_arms` (migration 011); what happened to it is judged from its facts exactly
as in every report (reports.py), and it counts in the window in which it started.

    contacts              contacts of the arm
    true_deflection_rate  (self_service_resolved - false_deflections) / contacts
    escalation_rate       escalated / contacts
    false_deflection_rate false_deflections / self_service_resolved (the customer came back)
    csat                  mean of the arm's valid CSAT answers (1-5)

Intervals: Wilson score intervals at 95% for the rates; for mean CSAT, Student's t interval
(mean +- t(0.975, n-1) * s / sqrt(n), clipped to 1-5, null under 2 answers). Verdict of an
arm against the control (VERDICT_RULE): two-proportion z-test on true deflection and Welch's
t-test on CSAT, both two-sided at 95%, once both arms have min_contacts contacts.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping, Sequence

import asyncpg
import structlog

from service.reporting import reports
from service.reporting.events import Event, EventWriter
from service.reporting.reports import (
    AGGREGATES,
    FACT_COLUMNS,
    FALSE_DEFLECTION_OF_FACTS,
    WINDOWS,
    ReportRules,
    Window,
    _fetch,
    _in_segment,
    _judged,
    header,
    ratio,
)
from service.rules import canary as canaries
from service.rules.canary import Canary
from service.rules.experiments import Experiment, Experiments

log = structlog.get_logger(__name__)
UNREADABLE = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

Z_95 = 1.959963984540054  # the standard normal's 97.5th percentile
CSAT_SCALE = (1.0, 5.0)
ARM_COUNTS = ("contacts", "self_service_resolved", "false_deflections", "escalated",
              "csat_responses", "csat_points", "csat_squares")
VERDICT_RULE = (
    "Against the control, once both arms have at least min_contacts contacts: 'better' when "
    "true deflection is higher by a two-proportion z-test (pooled, two-sided, 95%: |z| >= "
    "1.96) and CSAT is not lower by Welch's t-test (two-sided, 95%); 'worse' when true "
    "deflection is lower or CSAT is lower by those tests; otherwise 'no clear difference'. "
    "Before that: 'not enough data yet'.")
GUARDRAIL_RULE = (
    "Once the canary arm has min_contacts contacts: a guardrail 'metric:-X' trips when the "
    "canary's figure minus stable's is below -X (true_deflection: the rate; csat: the mean, "
    "judged only when both arms have CSAT answers). A tripped guardrail rolls the canary back.")
DEFINITIONS = {
    "arm": "A contact is in the arm its experiment_assigned event names (canary_assigned for "
           "a canary: arm canary or stable); the customer's arm is a stable hash of customer "
           "id and experiment name (a canary: of the contact id), so it never changes.",
    "contacts": "Contacts of the arm that started in the window.",
    "true_deflection_rate": "(self_service_resolved - false_deflections) / contacts, as in "
                            "the summary.",
    "escalation_rate": "escalated / contacts.",
    "false_deflection_rate": "false_deflections / self_service_resolved: resolutions after "
                             "which the customer came back about the same type within its "
                             "repeat window.",
    "csat": "Mean of the arm's valid 1-5 CSAT answers.",
    "interval": "95% intervals: Wilson score for rates; Student's t (n-1 degrees of freedom) "
                "for mean CSAT, clipped to the 1-5 scale, null under 2 answers.",
    "verdict": VERDICT_RULE,
    "guardrails": GUARDRAIL_RULE,
}

ARMS_SQL = f"""WITH {WINDOWS},
arms AS (
    SELECT contact_id, experiment, arm FROM contact_arms WHERE experiment = ANY($9::text[])
),
facts AS (
    SELECT {FACT_COLUMNS} FROM contact_facts
    WHERE started_at >= $1::timestamptz AND started_at < $2::timestamptz
      AND contact_id IN (SELECT contact_id FROM arms) AND {_in_segment("customer_id")}
), {_judged(FALSE_DEFLECTION_OF_FACTS)}
SELECT a.experiment, a.arm, {AGGREGATES},
    COALESCE(sum(survey_score * survey_score) FILTER (WHERE survey_kind = 'csat'), 0)::int
        AS csat_squares
FROM derived d JOIN arms a USING (contact_id)
GROUP BY 1, 2 ORDER BY 1, 2
"""


# ---- statistics -------------------------------------------------------------------------

def wilson(successes: int, n: int, z: float = Z_95) -> list[float] | None:
    """The Wilson score interval of a proportion; None when n is 0."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, centre - half), min(1.0, centre + half)]


def t_quantile(degrees: float) -> float:
    """Student's t 97.5th percentile (a two-sided 95% interval)."""
    from scipy.stats import t  # loaded when an interval is first asked for

    return float(t.ppf(0.975, degrees))


def mean_interval(n: int, total: float, squares: float,
                  scale: tuple[float, float] = CSAT_SCALE) -> list[float] | None:
    """Student's t interval of a mean from the count, sum and sum of squares, clipped to the
    answers' scale; None under 2."""
    if n < 2:
        return None
    mean = total / n
    variance = max(0.0, (squares - n * mean * mean) / (n - 1))
    half = t_quantile(n - 1) * math.sqrt(variance / n)
    return [max(scale[0], mean - half), min(scale[1], mean + half)]


def two_proportion_z(x1: int, n1: int, x0: int, n0: int) -> float | None:
    """The pooled two-proportion z statistic of arm 1 against arm 0; None when undefined."""
    if not n1 or not n0:
        return None
    pooled = (x1 + x0) / (n1 + n0)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    return None if spread == 0 else (x1 / n1 - x0 / n0) / spread


def welch_t(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[float, float] | None:
    """Welch's t statistic of mean CSAT of arm a against arm b, with its degrees of freedom;
    None under 2 answers on a side or without any spread."""
    parts = []
    for arm in (a, b):
        n = arm["csat_responses"]
        if n < 2:
            return None
        mean = arm["csat_points"] / n
        variance = max(0.0, (arm["csat_squares"] - n * mean * mean) / (n - 1))
        parts.append((mean, variance / n, n))
    (mean_a, se_a, n_a), (mean_b, se_b, n_b) = parts
    if se_a + se_b == 0:
        return None
    t = (mean_a - mean_b) / math.sqrt(se_a + se_b)
    df = (se_a + se_b) ** 2 / (se_a ** 2 / (n_a - 1) + se_b ** 2 / (n_b - 1))
    return t, df


# ---- figures ----------------------------------------------------------------------------

def arm_figures(counts: Mapping[str, int]) -> dict[str, Any]:
    """One arm's counts, rates, CSAT and their intervals."""
    contacts, resolved = counts["contacts"], counts["self_service_resolved"]
    deflected = resolved - counts["false_deflections"]
    csat_n = counts["csat_responses"]
    return {name: counts[name] for name in ARM_COUNTS} | {
        "true_deflection_rate": ratio(deflected, contacts),
        "true_deflection_interval": wilson(deflected, contacts),
        "escalation_rate": ratio(counts["escalated"], contacts),
        "escalation_interval": wilson(counts["escalated"], contacts),
        "false_deflection_rate": ratio(counts["false_deflections"], resolved),
        "false_deflection_interval": wilson(counts["false_deflections"], resolved),
        "csat": ratio(counts["csat_points"], csat_n),
        "csat_interval": mean_interval(csat_n, counts["csat_points"], counts["csat_squares"]),
    }


def verdict(arm: Mapping[str, Any], control: Mapping[str, Any],
            min_contacts: int) -> dict[str, Any]:
    """The arm against the control, by VERDICT_RULE, with the statistics behind it."""
    z = two_proportion_z(_deflected(arm), arm["contacts"], _deflected(control),
                         control["contacts"])
    welch = welch_t(arm, control)
    tests = {"deflection_z": _round(z), "csat_t": _round(welch[0]) if welch else None,
             "csat_df": _round(welch[1]) if welch else None}
    if min(arm["contacts"], control["contacts"]) < min_contacts:
        return {"verdict": "not enough data yet", **tests,
                "reason": f"each arm needs {min_contacts} contacts; this has {arm['contacts']}"
                          f", the control {control['contacts']}"}
    deflection_up = z is not None and z >= Z_95
    deflection_down = z is not None and z <= -Z_95
    csat_down = welch is not None and welch[0] <= -t_quantile(welch[1])
    if deflection_down or csat_down:
        why = [what for what, found in (("true deflection is lower", deflection_down),
                                        ("CSAT is lower", csat_down)) if found]
        return {"verdict": "worse", **tests, "reason": " and ".join(why) + " (95%)"}
    if deflection_up:
        return {"verdict": "better", **tests,
                "reason": "true deflection is higher (95%) and CSAT is not lower"}
    return {"verdict": "no clear difference", **tests,
            "reason": "no difference in true deflection or CSAT at 95%"}


def _deflected(figures: Mapping[str, Any]) -> int:
    return figures["self_service_resolved"] - figures["false_deflections"]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def experiment_result(experiment: Experiment,
                      counts_by_arm: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """One experiment's arms (in the order configured) with figures and verdicts."""
    empty = {name: 0 for name in ARM_COUNTS}
    figures = {arm.name: arm_figures(counts_by_arm.get(arm.name, empty))
               for arm in experiment.arms}
    control = figures[experiment.control]
    arms = []
    for arm in experiment.arms:
        judged = None if arm.name == experiment.control else \
            verdict(figures[arm.name], control, experiment.min_contacts)
        arms.append({"arm": arm.name, "treatment": arm.treatment,
                     "control": arm.name == experiment.control, **figures[arm.name],
                     "verdict": judged})
    return {"experiment": experiment.name, "contact_type": experiment.contact_type,
            "control": experiment.control, "min_contacts": experiment.min_contacts,
            "arms": arms}


async def arm_counts(conn, window: Window, rules: ReportRules,
                     names: Sequence[str]) -> dict[str, dict[str, dict[str, int]]]:
    """Counts per experiment and arm of the contacts that started in the window."""
    if not names:
        return {}
    rows = await _fetch(conn, "experiments", ARMS_SQL, *rules.params(window), list(names))
    found: dict[str, dict[str, dict[str, int]]] = {}
    for row in rows:
        found.setdefault(row["experiment"], {})[row["arm"]] = {
            name: row[name] for name in ARM_COUNTS}
    return found


async def experiments_report(conn, window: Window, rules: ReportRules,
                             experiments: Experiments,
                             canary: Canary | None = None) -> dict[str, Any]:
    """Every experiment of the rules in force over the window, and the canary (its own span)."""
    configured = list(experiments.by_type.values())
    counts = await arm_counts(conn, window, rules, [e.name for e in configured])
    shared = {name: reports.DEFINITIONS[name] for name in ("window", "rates")}
    report = header(window, rules) | {"definitions": shared | DEFINITIONS,
                                      "experiments": [experiment_result(e, counts.get(e.name, {}))
                                                      for e in configured]}
    return report | {"canary": await canary_result(conn, canary, rules) if canary else None}


# ---- canaries ---------------------------------------------------------------------------

def canary_window(canary: Canary, now: datetime | None = None) -> Window:
    """The canary's own span: from its start to its end, or to a minute from now."""
    end = canary.ended_at or (now or datetime.now(timezone.utc)) + timedelta(minutes=1)
    return Window(canary.started_at, max(end, canary.started_at + timedelta(microseconds=1)))


async def canary_result(conn, canary: Canary, rules: ReportRules) -> dict[str, Any]:
    """The canary against stable over the canary's span, with its guardrails judged."""
    window = canary_window(canary)
    counts = (await arm_counts(conn, window, rules, [canary.experiment])).get(
        canary.experiment, {})
    empty = {name: 0 for name in ARM_COUNTS}
    arms = {arm: arm_figures(counts.get(arm, empty)) for arm in ("canary", "stable")}
    return {**canary.as_dict(), "window": window.as_dict(), "arms": arms,
            "guardrail_rule": GUARDRAIL_RULE,
            "guardrails": judge_guardrails(canary, arms["canary"], arms["stable"])}


def judge_guardrails(canary: Canary, ours: Mapping[str, Any],
                     stable: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each guardrail: the canary's figure, stable's, the difference and whether it tripped."""
    judged = []
    for guardrail in canary.guardrails:
        key = "true_deflection_rate" if guardrail.metric == "true_deflection" else "csat"
        mine, theirs = ours[key], stable[key]
        change = None if mine is None or theirs is None else mine - theirs
        enough = ours["contacts"] >= canary.min_contacts
        judged.append({"guardrail": str(guardrail), "metric": guardrail.metric,
                       "max_drop": guardrail.max_drop, "canary": mine, "stable": theirs,
                       "change": _round(change), "judged": enough and change is not None,
                       "tripped": enough and change is not None
                       and change < -guardrail.max_drop - 1e-12})
    return judged


def tripped(judged: Iterable[Mapping[str, Any]]) -> str | None:
    """Why the canary must go back, in words; None when every guardrail holds."""
    trips = [g for g in judged if g["tripped"]]
    if not trips:
        return None
    return "; ".join(f"{g['metric']} down {-g['change']:.3f} (canary {g['canary']:.3f}, stable "
                     f"{g['stable']:.3f}; allowed {g['max_drop']:g})" for g in trips)


async def guard_canary(pool, holder, events: EventWriter,
                       rules: ReportRules) -> Canary | None:
    """One instance's look at the canary (every few seconds): follow the one recorded, and roll
    it back when a guardrail trips. The canary it rolled back, if it did."""
    running = await holder.sync_canary()
    if running is None:
        return None
    try:
        result = await canary_result(pool, running.canary, rules)
    except UNREADABLE as exc:  # PostgreSQL away: judged again at the next look
        log.warning("rules.canary_not_judged", canary=running.id, error=str(exc))
        return None
    reason = tripped(result["guardrails"])
    if reason is None:
        return None
    figures = {"arms": result["arms"], "guardrails": result["guardrails"]}
    async with pool.acquire() as conn:
        ended = await canaries.end(conn, running.id, "rolled_back", "guardrail", reason, figures)
    if ended is None:  # another instance or a person ended it first
        return None
    log.warning("rules.canary_rolled_back", canary=ended.id, reason=reason)
    events.emit(Event("canary_rolled_back", None, None, None, reason="guardrail",
                      data={"canary": ended.id, "version": ended.version_id,
                            "explanation": reason, **figures}))
    await holder.sync_canary()
    return ended
