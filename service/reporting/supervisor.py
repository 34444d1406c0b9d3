"""The supervisor view: every agent's state and every queue's service level, now.

    GET /api/supervisor     agents (with the contacts each holds, an away agent's reason
                            and whether it is over the reason's limit), queues, counts by
                            state and away agents by reason (ops or supervisor token)
    GET /supervisor         the page that polls it, and whispers on a held contact through
                            POST /api/contacts/{id}/notes (notes_api.py)

Agents' states come from Redis (service/agents/activity.py), so every instance sees the same;
waiting contacts from the queues in Redis; what was accepted and abandoned in the last hour
from the event log. The contacts each agent holds come from the router's assignments and
the contacts' open conversations: three batched Redis round trips however many there are
(the assignments beside the agents' states, then the contacts' conversation keys, then the
conversations). Service level of a queue, over the last hour:

    accepted within the queue's target_s
    / (accepted + abandoned + waiting now for longer than target_s)

A contact counts for the queue it was accepted from, or waiting in when it ended. The same
figures are Prometheus gauges on /metrics, refreshed every few seconds by each instance (every
instance reports the same shared figures: aggregate them with max, not sum).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

import asyncpg
from aiohttp import web

from service.agents.activity import STATES, AgentActivity
from service.agents.queues import Dispatcher
from service.appkeys import ACTIVITY, PG, ROUTER, RULES
from service.conversations.context import conversations_of
from service.infra.redis_batch import CommandBatcher
from service.reporting import metrics
from service.reporting.ops_api import _static, ops_report
from service.reporting.reports import iso
from service.rules.away_reasons import AwayReasons
from service.rules.catalog import Catalog
from service.rules.routing import Queue

WINDOW_S = 3600
GAUGE_REFRESH_S = 5

# Per queue, over the window: contacts accepted (and within the target), and contacts that
# ended while waiting (their latest queue event is an escalation or an overflow, not an
# accept); the facts leave out, cheaply, the many contacts that never entered a queue.
LAST_HOUR = """
WITH targets AS (SELECT * FROM unnest($2::text[], $3::float8[]) AS t(queue, target_s)),
outcomes AS (
    SELECT e.data->>'queue' AS queue, true AS accepted, (e.data->>'waited_s')::float8 AS waited_s
    FROM contact_events e
    WHERE e.occurred_at >= $1 AND e.kind = 'agent_accepted'
    UNION ALL
    SELECT last.queue, false, NULL
    FROM contact_events e
    JOIN contact_facts f ON f.contact_id = e.contact_id AND f.escalation IS NOT NULL
    CROSS JOIN LATERAL (
        SELECT p.kind, p.data->>'queue' AS queue FROM contact_events p
        WHERE p.contact_id = e.contact_id AND p.occurred_at <= e.occurred_at
          AND p.kind IN ('escalated', 'overflowed', 'agent_accepted')
        ORDER BY p.occurred_at DESC, p.seq DESC LIMIT 1) last
    WHERE e.occurred_at >= $1 AND e.kind = 'ended' AND last.kind <> 'agent_accepted'
)
SELECT o.queue, count(*) FILTER (WHERE o.accepted) AS accepted,
       count(*) FILTER (WHERE o.accepted AND o.waited_s <= t.target_s) AS within_target,
       count(*) FILTER (WHERE NOT o.accepted) AS abandoned
FROM outcomes o JOIN targets t USING (queue)
GROUP BY o.queue
"""


@dataclass(frozen=True)
class QueueOutcomes:
    accepted: int = 0
    within_target: int = 0
    abandoned: int = 0


@dataclass(frozen=True)
class HeldContact:
    """A contact an agent holds now, as the supervisor view lists it under the agent."""
    contact_id: str
    agent_id: str
    channel: str
    contact_type: str | None
    contact_type_label: str
    customer_name: str | None  # from the customer directory, when it has one
    started_at: float  # epoch seconds: the contact opened
    accepted_at: float | None  # the agent accepted it (None: a record from before it was kept)

    def view(self) -> dict[str, Any]:
        """The contact as /api/supervisor shows it."""
        return {"contact_id": self.contact_id, "channel": self.channel,
                "contact_type": self.contact_type, "contact_type_label": self.contact_type_label,
                "customer_name": self.customer_name, "started_at": _iso(self.started_at),
                "accepted_at": _iso(self.accepted_at)}


def routes() -> list[web.RouteDef]:
    return [web.get("/supervisor", _static("supervisor.html")),
            web.get("/supervisor/supervisor.js", _static("supervisor.js")),
            web.get("/supervisor/supervisor.css", _static("supervisor.css")),
            web.get("/api/supervisor", supervisor_now)]


@ops_report("supervisor", source="the agents and queues", roles=("ops", "supervisor"),
            what="the supervisor view")
async def supervisor_now(request: web.Request) -> web.Response:
    """Agents and queues as they are now; the gauges on /metrics get the same figures."""
    view = await snapshot(request.app, with_contacts=True)
    publish_gauges(view)
    return web.json_response(view, headers={"Cache-Control": "no-store"})


async def refresh_gauges(app: web.Application) -> None:
    """Every few seconds on every instance, so alerts need nobody to have the page open."""
    publish_gauges(await snapshot(app))


async def snapshot(app: web.Application, with_contacts: bool = False) -> dict[str, Any]:
    """Everything the page shows, as of one moment; the contacts each agent holds only
    `with_contacts` (the page; the gauges need none)."""
    now = time.time()
    rules = app[RULES].current
    queues = rules.tree.queues
    directory = await _agents(app[PG])
    router = app[ROUTER]
    # one batch: the batcher writes what is queued in one loop iteration together
    activity, waits, assigned = await asyncio.gather(
        app[ACTIVITY].observe(directory, now), router.wait_times(queues, now),
        router.assignments() if with_contacts else _nothing())
    held = await held_contacts(router.batcher, assigned, rules.catalog)
    outcomes = await queue_outcomes(app[PG], now - WINDOW_S, queues)
    agents = [_agent_view(row, activity[agent_id], router, now, held.get(agent_id, []),
                          rules.away_reasons)
              for agent_id, row in directory.items()]
    return {"as_of": iso(datetime.fromtimestamp(now, timezone.utc)), "window_s": WINDOW_S,
            "agents_by_state": {s: sum(a["state"] == s for a in agents) for s in STATES},
            "away_by_reason": away_by_reason(agents, rules.away_reasons),
            "agents": agents,
            "queues": {name: _queue_view(queue, waits[name], outcomes.get(name, QueueOutcomes()))
                       for name, queue in queues.items()}}


async def _agents(pool: asyncpg.Pool) -> dict[str, dict[str, Any]]:
    rows = await pool.fetch("SELECT id, name, skills, capacity FROM agents "
                            "WHERE disabled_at IS NULL ORDER BY name, id", timeout=5)
    return {str(r["id"]): {"name": r["name"], "skills": sorted(r["skills"]),
                           "capacity": json.loads(r["capacity"])} for r in rows}


async def queue_outcomes(pool: asyncpg.Pool, since: float, queues: Mapping[str, Queue]
                         ) -> dict[str, QueueOutcomes]:
    """Accepted (within target) and abandoned contacts per queue since `since`."""
    names = list(queues)
    rows = await pool.fetch(LAST_HOUR, datetime.fromtimestamp(since, timezone.utc), names,
                            [float(queues[n].service_level.target_s) for n in names], timeout=10)
    return {r["queue"]: QueueOutcomes(r["accepted"], r["within_target"], r["abandoned"])
            for r in rows}


async def _nothing() -> dict[str, str]:
    return {}


async def held_contacts(batcher: CommandBatcher, assigned: Mapping[str, str],
                        catalog: Catalog) -> dict[str, list[HeldContact]]:
    """Per agent, the contacts they hold, longest held first, from their open conversations
    (a contact whose conversation has just closed is left out)."""
    held: dict[str, list[HeldContact]] = {}
    for contact_id, (_, conv) in (await conversations_of(batcher, list(assigned))).items():
        if conv.get("contact_id") != contact_id or conv.get("status") == "closed":
            continue
        agent_id = assigned[contact_id]
        held.setdefault(agent_id, []).append(HeldContact(
            contact_id, agent_id, conv["channel"], conv.get("contact_type"),
            catalog.label(conv.get("contact_type")), conv.get("customer_name"),
            conv["started_at"], conv.get("accepted_at")))
    for mine in held.values():
        mine.sort(key=lambda h: (h.accepted_at or h.started_at, h.contact_id))
    return held


def _iso(at: float | None) -> str | None:
    return iso(datetime.fromtimestamp(at, timezone.utc)) if at else None


def _agent_view(row: dict[str, Any], seen: AgentActivity, router: Dispatcher,
                now: float, held: list[HeldContact], reasons: AwayReasons) -> dict[str, Any]:
    in_state = seen.in_state_s(now)
    reason = reasons.get(seen.reason)  # a reason since dropped from the rules: its id alone
    limit_s = reason.limit_s if reason else None
    return {"id": seen.agent_id, "name": row["name"], "skills": row["skills"],
            "state": seen.state, "presence": seen.presence, "since": _iso(seen.since),
            "in_state_s": None if in_state is None else round(in_state, 1),
            "reason": seen.reason, "reason_label": reason.label if reason else seen.reason,
            "reason_limit_s": limit_s,
            "over_limit": bool(limit_s and in_state is not None and in_state > limit_s),
            "contacts": dict(seen.contacts), "offers": seen.offers,
            "capacity": router.capacity_of(row),
            "held": [h.view() for h in held]}


def away_by_reason(agents: list[dict[str, Any]], reasons: AwayReasons
                   ) -> list[dict[str, Any]]:
    """Away agents counted per reason (the rules' order; reasons no longer listed, then none
    given, last): the header's breakdown of "Away"."""
    counts = Counter(a["reason"] for a in agents if a["state"] == "away")
    order = {r.id: i for i, r in enumerate(reasons.reasons)}
    ranked = sorted(counts, key=lambda r: (r is None, order.get(r, len(order)), r or ""))
    return [{"reason": r, "label": reasons.label(r) or r or "No reason given",
             "count": counts[r]} for r in ranked]


def _queue_view(queue: Queue, waited: list[float], done: QueueOutcomes) -> dict[str, Any]:
    target = queue.service_level
    over_target = sum(w > target.target_s for w in waited)
    judged = done.accepted + done.abandoned + over_target
    level = done.within_target / judged if judged else None
    return {"label": queue.label, "waiting": len(waited),
            "longest_wait_s": round(max(waited), 1) if waited else None,
            "waiting_over_target": over_target, "accepted": done.accepted,
            "accepted_within_target": done.within_target, "abandoned": done.abandoned,
            "service_level": level, "target_s": target.target_s, "goal": target.goal,
            "below_goal": level is not None and level < target.goal}


def publish_gauges(view: dict[str, Any]) -> None:
    """The view's figures as Prometheus gauges (queues no longer in the rules disappear);
    contacts waiting per queue are `switchboard_queue_waiting`, refreshed every second."""
    for state, count in view["agents_by_state"].items():
        metrics.AGENTS.labels(state).set(count)
    for gauge in metrics.SUPERVISOR_QUEUE_GAUGES:
        gauge.clear()
    for name, queue in view["queues"].items():
        metrics.QUEUE_LONGEST_WAIT.labels(name).set(queue["longest_wait_s"] or 0)
        level = queue["service_level"]
        metrics.QUEUE_SERVICE_LEVEL.labels(name).set(float("nan") if level is None else level)
        metrics.QUEUE_SERVICE_LEVEL_GOAL.labels(name).set(queue["goal"])
        metrics.QUEUE_ABANDONED_LAST_HOUR.labels(name).set(queue["abandoned"])
