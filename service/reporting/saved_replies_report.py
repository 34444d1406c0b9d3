"""Which saved replies agents send: per reply over a window, how often, by how many agents, and
how often the agent edited the words before sending (the replies that carry the load as sent
are the best candidates for self-service).

    GET /api/reports/saved-replies?from=&to=       (ops token)

Read from the `agent_message` events that name a saved reply (`data.saved_reply`, recorded by
service/conversations/handoff.py with `data.saved_reply_edited`: the text sent differed from
the reply filled in for the contact). Each message counts in the window it was sent in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import asyncpg
from aiohttp import web

from service.appkeys import PG, RULES
from service.reporting.ops_api import _json, _window, ops_report
from service.reporting.reports import Window, _run, ratio
from service.rules.replies import reply_titles

DEFINITIONS = {
    "window": "Agents' messages sent in [from, to) whose text came from a saved reply.",
    "uses": "Messages sent from the reply (agent_message events naming it).",
    "agents": "Distinct agents who sent it.",
    "edited_share": "edited / uses: the share of those messages whose words the agent changed "
                    "(spacing aside) from the reply as filled in for the contact.",
    "replies": "Every reply of replies.yaml (unused ones with 0 uses), each contact type's "
               "self-service answer that was used, and any reply used in the window but no "
               "longer in the rules (title null); most used first.",
}

QUERY = """
SELECT data->>'saved_reply' AS reply_id, count(*) AS uses,
       count(DISTINCT data->>'agent_id') AS agents,
       count(*) FILTER (WHERE (data->>'saved_reply_edited')::boolean) AS edited
FROM contact_events
WHERE kind = 'agent_message' AND occurred_at >= $1 AND occurred_at < $2
  AND data ? 'saved_reply'
GROUP BY 1
"""


@dataclass(frozen=True)
class ReplyUse:
    id: str
    title: str | None  # None: no longer in the rules
    uses: int
    agents: int
    edited: int

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "edited_share": ratio(self.edited, self.uses)}


async def saved_replies_report(conn: asyncpg.Connection | asyncpg.Pool, window: Window,
                               titles: Mapping[str, str], configured: tuple[str, ...]
                               ) -> dict[str, Any]:
    """Each saved reply's uses over the window (DEFINITIONS); `configured`: replies.yaml's
    ids, listed even when unused."""
    rows = await _run(conn, "saved_replies", QUERY, (window.start, window.end))
    used = {r["reply_id"]: ReplyUse(r["reply_id"], titles.get(r["reply_id"]), r["uses"],
                                    r["agents"], r["edited"]) for r in rows}
    unused = [ReplyUse(reply_id, titles[reply_id], 0, 0, 0) for reply_id in configured
              if reply_id not in used]
    listed = sorted(used.values(), key=lambda u: (-u.uses, u.id)) + unused
    return {**window.as_dict(), "replies": [u.as_dict() for u in listed],
            "definitions": DEFINITIONS}


def routes() -> list[web.RouteDef]:
    return [web.get("/api/reports/saved-replies", saved_replies_over_window)]


@ops_report("saved_replies")
async def saved_replies_over_window(request: web.Request) -> web.Response:
    """The saved replies report over the request's window (from/to as every report)."""
    rules = request.app[RULES].current
    configured = tuple(reply.id for reply in rules.replies.replies)
    return _json(await saved_replies_report(request.app[PG], _window(request),
                                            reply_titles(rules.replies, rules.catalog),
                                            configured))
