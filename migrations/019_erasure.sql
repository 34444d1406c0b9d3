-- Erasing a customer's personal data on request (service/conversations/erasure.py).
--
-- erased_customers is the record of every erasure (who, when, how much, by place) and the
-- tombstone the hourly upkeep re-applies: events of an erased customer that land later (an
-- instance's spool flushed after the erasure) are scrubbed then. It holds no personal data:
-- the customer's pseudonymous id, and, only between the erasure's PostgreSQL transaction and
-- its Redis deletes, the names of the Redis keys still to delete (a re-run finishes them).
CREATE TABLE erased_customers (
    customer_id uuid PRIMARY KEY,
    erased_at   timestamptz NOT NULL DEFAULT now(),
    erased_by   text NOT NULL,
    counts      jsonb NOT NULL,
    redis_keys  text[]          -- still to delete from Redis; NULL once done
);

-- The log stays append-only, except for an erasure's scrubbing of personal fields: it says so
-- with `SET LOCAL switchboard.erasing = 'on'` in its transaction. DELETE is still refused.
CREATE OR REPLACE FUNCTION contact_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND current_setting('switchboard.erasing', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'contact_events is append-only: % is refused (old months are dropped by '
                    'SWITCHBOARD_EVENT_RETENTION_DAYS)', TG_OP;
END $$;

-- An event's data with its personal fields blanked: the keys that carry what a customer or
-- agent wrote, addresses, provider ids and error texts, and any other value that contains
-- one of `secrets` (the customer's addresses and name), except the keys reports, facts,
-- replay and arms read (reports.py FACTS_OF_EVENTS, migrations 004-015), kept as they are.
CREATE FUNCTION erased_event_data(data jsonb, secrets text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(key, CASE
        WHEN jsonb_typeof(value) = 'null' THEN value
        WHEN key IN ('text', 'comment', 'note', 'address', 'identity_value', 'number',
                     'thread', 'dedupe_key', 'error', 'call_id') THEN '""'::jsonb
        WHEN key IN ('step', 'self_service', 'outcome', 'queue', 'kind', 'score',
                     'corrected_contact_type', 'contact_type', 'classified_as', 'confidence',
                     'canary', 'experiment', 'arm', 'waited_s', 'input', 'input_confidence',
                     'via', 'route_path') THEN value
        WHEN EXISTS (SELECT FROM unnest(secrets) s
                     WHERE length(s) > 0 AND strpos(value::text, s) > 0) THEN '""'::jsonb
        ELSE value END), '{}'::jsonb)
    FROM jsonb_each(data)
$$;
