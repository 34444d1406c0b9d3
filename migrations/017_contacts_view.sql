-- `contacts` becomes a view over contact_facts: one projection of the events instead of two.
--
-- The table was kept by five UPDATE statements in every batch of the event writer (about 8% of
-- its PostgreSQL time) and duplicated what contact_facts already holds. The view reads the
-- facts, and the two values they do not carry from the contact's own events, by the
-- (contact_id, occurred_at) index: the address of its contact_started event and the confidence
-- of its latest classification. Differences from the table, by design: `contact_type` is the
-- facts' (an agent's wrap-up correction wins over the classifier), and `ended_at`, `outcome`
-- and `escalation_reason` are those of the first ended and escalated events, as the reports
-- count them.

DROP TABLE contacts;

CREATE VIEW contacts AS
SELECT f.contact_id               AS id,
       f.customer_id,
       (f.started).value          AS channel,
       started.data->>'address'   AS address,
       f.started_at,
       (f.ending).at              AS ended_at,
       (f.contact_type).value     AS contact_type,
       classified.confidence,
       (f.route).value            AS route_path,
       (f.queue).value            AS queue,
       (f.escalation).value       AS escalation_reason,
       (f.ending).value           AS outcome
FROM contact_facts f
LEFT JOIN LATERAL (
    SELECT e.data FROM contact_events e
    WHERE e.contact_id = f.contact_id AND e.occurred_at = f.started_at
      AND e.seq = (f.started).seq
) started ON true
LEFT JOIN LATERAL (
    SELECT (e.data->>'confidence')::real AS confidence FROM contact_events e
    WHERE e.contact_id = f.contact_id AND e.kind = 'classified'
    ORDER BY e.occurred_at DESC, e.seq DESC LIMIT 1
) classified ON true
WHERE f.started IS NOT NULL AND f.customer_id IS NOT NULL;
