"""Which contact type to move to self-service next: the benefit, the risk and a ranking.

Per contact type in the window, from the same judged facts as every report (a contact counts in
the window it started):

    agent_minutes       agent time the type cost: accepted to wrap-up, summed
    success             its self-service success: offered and resolved / offered; a type never
                        offered self-service takes the rate of all types (`success_estimated`)
    false_deflection    false deflections / self-service resolutions (the customer came back)
    csat_gap            CSAT with an agent minus CSAT after self-service (1-5 scale; null
                        without answers on both sides)
    risk                false_deflection + max(0, csat_gap) / 4, at most 1
    score               agent_minutes x success x (1 - risk): the agent minutes of the
                        window's traffic self-service would likely have saved, discounted by
                        how likely customers are to come back or to be less satisfied

Ranked by score, highest first; types no agent handled in the window save nothing and are
left out. The formula is in every report (`formula`), so ops can argue with it.
"""

from __future__ import annotations

from typing import Any, Mapping

from service.reporting.reports import (
    FROM_FACTS,
    Queries,
    ReportRules,
    Window,
    _report_rows,
    header,
)

FORMULA = ("score = agent_minutes x success x (1 - risk); risk = min(1, false_deflection + "
           "max(0, csat_gap) / 4); csat_gap = csat_agent - csat_self_service; success = "
           "self-service resolved / offered for the type (all types' rate when never offered)")


async def candidates(conn, window: Window, rules: ReportRules,
                     queries: Queries = FROM_FACTS) -> dict[str, Any]:
    """The contact types ranked as self-service candidates, with the figures behind each."""
    rows = await _report_rows(conn, "candidates", "candidates", window, rules, queries)
    return header(window, rules) | {"formula": FORMULA,
                                    "rows": rank(rows, rules.labels)}


def rank(rows: list[Mapping[str, Any]], labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """Each type's benefit and risk, best candidate first."""
    offered = sum(r["self_service_offered"] for r in rows)
    overall = _ratio(sum(r["offered_and_resolved"] for r in rows), offered)
    ranked = [_judge(row, labels, overall) for row in rows if row["agent_handled"]]
    ranked.sort(key=lambda c: (-c["score"], -c["agent_handled"], c["contact_type"]))
    for place, candidate in enumerate(ranked, 1):
        candidate["rank"] = place
    return ranked


def _judge(row: Mapping[str, Any], labels: Mapping[str, str],
           overall: float | None) -> dict[str, Any]:
    own = _ratio(row["offered_and_resolved"], row["self_service_offered"])
    success = own if own is not None else (overall or 0.0)
    false_rate = _ratio(row["false_deflections"], row["self_service_resolved"]) or 0.0
    csat_self = _ratio(row["csat_self_points"], row["csat_self_responses"])
    csat_agent = _ratio(row["csat_agent_points"], row["csat_agent_responses"])
    gap = None if csat_self is None or csat_agent is None else csat_agent - csat_self
    risk = min(1.0, false_rate + max(0.0, gap or 0.0) / 4)
    minutes = row["agent_seconds"] / 60
    return {"contact_type": row["contact_type"],
            "label": labels.get(row["contact_type"], row["contact_type"]),
            "contacts": row["contacts"], "agent_handled": row["agent_handled"],
            "agent_minutes": round(minutes, 3),
            "agent_minutes_per_contact": round(minutes / row["agent_timed"], 3)
            if row["agent_timed"] else None,
            "self_service_offered": row["self_service_offered"],
            "success": round(success, 6), "success_estimated": own is None,
            "false_deflection": round(false_rate, 6),
            "csat_self_service": csat_self, "csat_agent": csat_agent,
            "csat_gap": None if gap is None else round(gap, 6),
            "risk": round(risk, 6), "score": round(minutes * success * (1 - risk), 3)}


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None
