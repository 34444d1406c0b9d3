"""Training examples learned from live contacts, kept apart from the catalog's own.

Two sources, both from the event log: an agent's contact-type correction at wrap-up (the
customer's words, labelled with the corrected type), and self-service answers the customer
confirmed helped (their words, labelled with the type that was answered). They join the
catalog's examples on the next rules load; `switchboard learned` shows them to ops.
"""

from __future__ import annotations

import asyncpg

MAX_EXAMPLES = 5000

# The customer's words that the classifier judged: the last typed or spoken message before
# the contact was classified, or, when it never was (straight to an agent), their first
# message. Keypad presses carry no words.
LEARNED_SQL = """
WITH classified AS (
    SELECT DISTINCT ON (contact_id) contact_id, seq
    FROM contact_events WHERE kind = 'classified' ORDER BY contact_id, seq DESC
), labelled AS (
    SELECT contact_id, data->>'corrected_contact_type' AS label, 'agent_correction' AS source,
           occurred_at
    FROM contact_events
    WHERE kind = 'wrap_up' AND data->>'corrected_contact_type' IS NOT NULL
    UNION ALL
    SELECT contact_id, contact_type, 'confirmed_self_service', occurred_at
    FROM contact_events WHERE kind = 'self_service_resolved' AND contact_type IS NOT NULL
)
SELECT l.label, l.source, l.occurred_at, words.text
FROM labelled l
LEFT JOIN classified c ON c.contact_id = l.contact_id
JOIN LATERAL (
    SELECT data->>'text' AS text FROM contact_events r
    WHERE r.contact_id = l.contact_id AND r.kind = 'received'
      AND (c.seq IS NULL OR r.seq < c.seq)
      AND coalesce(r.data->>'input', 'message') = 'message'
    ORDER BY CASE WHEN c.seq IS NULL THEN r.seq ELSE -r.seq END LIMIT 1
) words ON words.text IS NOT NULL AND length(trim(words.text)) > 0
ORDER BY l.occurred_at DESC
LIMIT $1
"""


async def learned_examples(pool: asyncpg.Pool) -> list[dict]:
    rows = await pool.fetch(LEARNED_SQL, MAX_EXAMPLES, timeout=30)
    return [dict(r) for r in rows]
