"""What customers said that the catalog did not cover, grouped into clusters for catalog work.

From the event log (already redacted), for messages in the window:

    refused      the classifier judged the message out of scope (a clarifying question followed)
    clarified    its confidence was under the threshold (a "did you mean" question followed)
    escalated    a miss that sent the contact to an agent (the second in a row)
    corrected    an agent changed the classified contact type at wrap-up: the words the
                 classifier judged, as `learning.py` takes them

Each message carries the contact type the agent chose at wrap-up, if any. Messages are
clustered by similarity (service/understanding/clusters.py); per cluster: how often each way,
a few examples and the agents' types. `switchboard unrecognised adopt` turns one into training
examples (service/rules/adopt.py).
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from service.reporting.reports import Window, iso
from service.understanding.clusters import Cluster, Method, best_method, cluster, normal

HOW = ("refused", "clarified", "escalated", "corrected")
EXAMPLES = 5
DEFAULT_LIMIT = 50  # clusters shown, largest first; `clusters_total` counts them all
MAX_MESSAGES = 20_000  # the newest, per report

# The customer's words before each miss (typed or spoken, not keys), how it went on, and
# the type an agent chose at wrap-up for the contact, if one did.
MISSED_SQL = """
SELECT words.text, m.contact_id, m.occurred_at,
       CASE WHEN next.kind = 'escalated' AND next.reason = 'low_confidence' THEN 'escalated'
            WHEN m.reason = 'out_of_scope' THEN 'refused' ELSE 'clarified' END AS how,
       wrap.agent_type
FROM contact_events m
JOIN LATERAL (
    SELECT r.data->>'text' AS text FROM contact_events r
    WHERE r.contact_id = m.contact_id AND r.kind = 'received' AND r.seq < m.seq
      AND coalesce(r.data->>'input', 'message') = 'message'
    ORDER BY r.seq DESC LIMIT 1
) words ON true
LEFT JOIN LATERAL (
    SELECT n.kind, n.reason FROM contact_events n
    WHERE n.contact_id = m.contact_id AND n.seq > m.seq ORDER BY n.seq LIMIT 1
) next ON true
LEFT JOIN LATERAL (
    SELECT w.data->>'corrected_contact_type' AS agent_type FROM contact_events w
    WHERE w.contact_id = m.contact_id AND w.kind = 'wrap_up'
      AND w.data->>'corrected_contact_type' IS NOT NULL
    ORDER BY w.seq DESC LIMIT 1
) wrap ON true
WHERE m.kind = 'classification_missed' AND m.reason IN ('out_of_scope', 'low_confidence')
  AND m.occurred_at >= $1 AND m.occurred_at < $2
  AND words.text IS NOT NULL AND length(trim(words.text)) > 0
ORDER BY m.occurred_at DESC
LIMIT $3
"""

# Wrap-ups that changed the classified type: the words the classifier judged (the last
# message before it classified the contact), as learning.py reads them.
CORRECTED_SQL = """
WITH corrections AS (
    SELECT contact_id, occurred_at, data->>'corrected_contact_type' AS agent_type
    FROM contact_events
    WHERE kind = 'wrap_up' AND data->>'corrected_contact_type' IS NOT NULL
      AND data->>'classified_as' IS NOT NULL
      AND data->>'corrected_contact_type' <> data->>'classified_as'
      AND occurred_at >= $1 AND occurred_at < $2
)
SELECT words.text, c.contact_id, c.occurred_at, 'corrected' AS how, c.agent_type
FROM corrections c
JOIN LATERAL (
    SELECT seq FROM contact_events k
    WHERE k.contact_id = c.contact_id AND k.kind = 'classified' ORDER BY k.seq DESC LIMIT 1
) classified ON true
JOIN LATERAL (
    SELECT r.data->>'text' AS text FROM contact_events r
    WHERE r.contact_id = c.contact_id AND r.kind = 'received' AND r.seq < classified.seq
      AND coalesce(r.data->>'input', 'message') = 'message'
    ORDER BY r.seq DESC LIMIT 1
) words ON words.text IS NOT NULL AND length(trim(words.text)) > 0
ORDER BY c.occurred_at DESC
LIMIT $3
"""


@dataclass(frozen=True)
class Unrecognised:
    """One message the catalog did not cover, and what became of it."""

    text: str
    contact_id: str
    at: datetime
    how: str  # one of HOW
    agent_type: str | None  # the type an agent chose at wrap-up


async def unrecognised_messages(conn, window: Window) -> list[Unrecognised]:
    """The window's refused, clarified, escalated and corrected messages, newest first."""
    rows = [*await conn.fetch(MISSED_SQL, window.start, window.end, MAX_MESSAGES, timeout=60),
            *await conn.fetch(CORRECTED_SQL, window.start, window.end, MAX_MESSAGES,
                              timeout=60)]
    messages = [Unrecognised(r["text"], str(r["contact_id"]), r["occurred_at"], r["how"],
                             r["agent_type"]) for r in rows]
    messages.sort(key=lambda m: (m.at, m.contact_id), reverse=True)
    return messages[:MAX_MESSAGES]


async def unrecognised(conn, window: Window, labels: Mapping[str, str],
                       method: Method | None = None, limit: int = DEFAULT_LIMIT
                       ) -> dict[str, Any]:
    """The report: the `limit` largest clusters of unrecognised messages (`method`: how texts
    are compared; the encoder's when installed)."""
    messages = await unrecognised_messages(conn, window)
    method = method or best_method()
    clusters = await asyncio.to_thread(cluster, [m.text for m in messages], method)
    said: dict[str, list[Unrecognised]] = defaultdict(list)
    for message in messages:
        said[normal(message.text)].append(message)
    return {**window.as_dict(), "as_of": iso(datetime.now(timezone.utc)),
            "similarity": {"method": method.name, "threshold": method.threshold,
                           "rule": "leader clustering, most said first: a message joins the "
                                   "cluster whose centroid is most similar (cosine) if at "
                                   "least the threshold, else starts one"},
            "messages": len(messages), "clusters_total": len(clusters),
            "clusters": [describe(c, said, labels) for c in clusters[:limit]]}


def describe(found: Cluster, said: Mapping[str, Sequence[Unrecognised]],
             labels: Mapping[str, str]) -> dict[str, Any]:
    """One cluster's counts, examples and the types agents chose for its contacts (`said`:
    the messages under each distinct text)."""
    mine = [m for text in found.texts for m in said[normal(text)]]
    how = Counter(m.how for m in mine)
    chosen = {(m.contact_id, m.agent_type) for m in mine if m.agent_type}
    agent_types = Counter(agent_type for _, agent_type in chosen)
    return {"id": found.id, "messages": len(mine),
            "contacts": len({m.contact_id for m in mine}),
            "how": {name: how.get(name, 0) for name in HOW},
            "examples": list(found.texts[:EXAMPLES]), "distinct_texts": len(found.texts),
            "agent_types": [{"contact_type": t, "label": labels.get(t, t), "contacts": n}
                            for t, n in sorted(agent_types.items(), key=lambda i: (-i[1], i[0]))],
            "last_seen": iso(max(m.at for m in mine))}


def find_cluster(clusters: Sequence[Cluster], cluster_id: str) -> Cluster | None:
    """The cluster with this id, if the clustering has one."""
    return next((c for c in clusters if c.id == cluster_id), None)
