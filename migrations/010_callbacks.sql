-- Queued callbacks (metric version 2's callbacks_requested and callbacks_completed;
-- service/reporting/reports.py DEFINITIONS, service/conversations/callbacks.py).
--
--   callback_requested  true once a callback_requested event of the contact landed: the
--                       caller asked, while waiting for an agent, to be called back
--   callback_completed  true once a callback_completed event landed: a call placed back was
--                       answered by the customer, with the accepting agent joining
--
-- The facts trigger is redefined with both columns (everything else as in 007), and the
-- outbox takes the two new outbound actions: `drop` (a completed warm transfer drops the
-- first agent's line) and `call_back` (a call placed to a customer who asked for it).

ALTER TABLE contact_facts ADD COLUMN callback_requested boolean NOT NULL DEFAULT false,
                          ADD COLUMN callback_completed boolean NOT NULL DEFAULT false;

CREATE OR REPLACE FUNCTION contact_facts_add_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Two writers landing events of one customer at once would each miss the other's
    -- contacts when finding the next contact of a type: one customer, one writer at a time.
    PERFORM pg_advisory_xact_lock(6007421, k)
    FROM (SELECT DISTINCT hashtext(customer_id::text) AS k FROM landed
          WHERE customer_id IS NOT NULL ORDER BY 1) keys;

    INSERT INTO contact_facts AS f (contact_id, started, customer_id, contact_type, offered,
                                    last_step, missed, routed_to_agent, escalation,
                                    accepted_at, ending, queue, route, transferred, survey,
                                    survey_answer, callback_requested, callback_completed)
    SELECT contact_id,
        fact_first(ROW(occurred_at, seq, channel)::fact_mark)
            FILTER (WHERE kind = 'contact_started'),
        (array_agg(customer_id ORDER BY occurred_at, seq)
            FILTER (WHERE kind = 'contact_started'))[1],
        fact_latest(ROW(occurred_at, seq, assigned_type)::fact_mark)
            FILTER (WHERE assigned_type IS NOT NULL),
        COALESCE(bool_or(kind = 'self_service_started'), false),
        fact_latest(ROW(occurred_at, seq, data->>'step')::fact_mark)
            FILTER (WHERE kind = 'self_service_started'),
        COALESCE(bool_or(kind = 'classification_missed'), false),
        COALESCE(bool_or(kind = 'routed' AND data->>'self_service' = 'false'), false),
        fact_first(ROW(occurred_at, seq, reason)::fact_mark) FILTER (WHERE kind = 'escalated'),
        min(occurred_at) FILTER (WHERE kind = 'agent_accepted'),
        fact_first(ROW(occurred_at, seq, data->>'outcome')::fact_mark)
            FILTER (WHERE kind = 'ended'),
        fact_latest(ROW(occurred_at, seq, data->>'queue')::fact_mark)
            FILTER (WHERE kind IN ('routed', 'escalated')),
        fact_latest(ROW(occurred_at, seq, route_path)::fact_mark)
            FILTER (WHERE kind IN ('routed', 'escalated') AND route_path IS NOT NULL),
        COALESCE(bool_or(kind = 'transferred'), false),
        fact_first(ROW(occurred_at, seq, data->>'kind')::fact_mark)
            FILTER (WHERE kind = 'survey_sent'),
        fact_first(ROW(occurred_at, seq, data->>'score')::fact_mark)
            FILTER (WHERE kind = 'survey_answered'),
        COALESCE(bool_or(kind = 'callback_requested'), false),
        COALESCE(bool_or(kind = 'callback_completed'), false)
    FROM (SELECT *, CASE WHEN kind = 'classified' THEN contact_type
                         WHEN kind = 'wrap_up' THEN COALESCE(data->>'corrected_contact_type',
                                                             data->>'contact_type')
                    END AS assigned_type
          FROM landed WHERE contact_id IS NOT NULL) e
    GROUP BY contact_id
    ON CONFLICT (contact_id) DO UPDATE SET
        started = fact_earlier(f.started, EXCLUDED.started),
        customer_id = CASE WHEN fact_earlier(f.started, EXCLUDED.started)
                                IS NOT DISTINCT FROM f.started
                           THEN f.customer_id ELSE EXCLUDED.customer_id END,
        contact_type = fact_later(f.contact_type, EXCLUDED.contact_type),
        offered = f.offered OR EXCLUDED.offered,
        last_step = fact_later(f.last_step, EXCLUDED.last_step),
        missed = f.missed OR EXCLUDED.missed,
        routed_to_agent = f.routed_to_agent OR EXCLUDED.routed_to_agent,
        escalation = fact_earlier(f.escalation, EXCLUDED.escalation),
        accepted_at = LEAST(f.accepted_at, EXCLUDED.accepted_at),
        ending = fact_earlier(f.ending, EXCLUDED.ending),
        queue = fact_later(f.queue, EXCLUDED.queue),
        route = fact_later(f.route, EXCLUDED.route),
        transferred = f.transferred OR EXCLUDED.transferred,
        survey = fact_earlier(f.survey, EXCLUDED.survey),
        survey_answer = fact_earlier(f.survey_answer, EXCLUDED.survey_answer),
        callback_requested = f.callback_requested OR EXCLUDED.callback_requested,
        callback_completed = f.callback_completed OR EXCLUDED.callback_completed;

    UPDATE contact_facts f SET next_same_type_at = n.next_at
    FROM (SELECT contact_id,
                 min(started_at) OVER (PARTITION BY customer_id, (contact_type).value
                                       ORDER BY started_at RANGE BETWEEN CURRENT ROW
                                       AND UNBOUNDED FOLLOWING EXCLUDE GROUP) AS next_at
          FROM contact_facts
          WHERE customer_id IN (SELECT customer_id FROM contact_facts
                                WHERE contact_id IN (SELECT contact_id FROM landed))
            AND started_at IS NOT NULL AND contact_type IS NOT NULL) n
    WHERE f.contact_id = n.contact_id AND f.next_same_type_at IS DISTINCT FROM n.next_at;
    RETURN NULL;
END $$;

-- Contacts whose callbacks landed before this migration (none unless events were replayed).
UPDATE contact_facts f SET callback_requested = true
WHERE EXISTS (SELECT 1 FROM contact_events e
              WHERE e.contact_id = f.contact_id AND e.kind = 'callback_requested');
UPDATE contact_facts f SET callback_completed = true
WHERE EXISTS (SELECT 1 FROM contact_events e
              WHERE e.contact_id = f.contact_id AND e.kind = 'callback_completed');

ALTER TABLE outbox DROP CONSTRAINT outbox_action_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_action_check
    CHECK (action IN ('send', 'connect', 'join', 'release', 'drop', 'ask', 'call_back'));
