-- The event log partitioned by month, and per-contact facts maintained as events land.
--
-- contact_events becomes a table partitioned by range of occurred_at: one partition per
-- calendar month (UTC), named contact_events_YYYY_MM, plus a default partition for events
-- outside every month created so far. The service creates months ahead and drops those older
-- than SWITCHBOARD_EVENT_RETENTION_DAYS (service/reporting/partitions.py).
--
-- contact_facts holds one row per contact: what reports need from its events (metric
-- version 1), kept by a statement trigger in the transaction that inserts the events, so it
-- can never disagree with the log. Reports read it instead of the events. Every value that
-- depends on the order of events is a fact_mark (the deciding event's time and seq, and its
-- value); merging keeps the earliest or the latest, so batches may land in any order.

ALTER TABLE contact_events RENAME TO contact_events_unpartitioned;
ALTER TABLE contact_events_unpartitioned DROP CONSTRAINT contact_events_pkey;
DROP INDEX contact_events_time, contact_events_contact, contact_events_customer,
    contact_events_started;
ALTER SEQUENCE contact_events_seq_seq OWNED BY NONE;

-- Append-only: every step of every contact. seq orders events that share a timestamp (the
-- steps of one turn) in the order emitted. An event id is unique with its time (a replayed
-- event carries the time it was emitted at).
CREATE TABLE contact_events (
    id           uuid NOT NULL,
    seq          bigint NOT NULL DEFAULT nextval('contact_events_seq_seq'),
    occurred_at  timestamptz NOT NULL,
    kind         text NOT NULL,
    contact_id   uuid,
    customer_id  uuid,
    channel      text,
    contact_type text,
    route_path   text,
    reason       text,
    data         jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);
ALTER SEQUENCE contact_events_seq_seq OWNED BY contact_events.seq;
CREATE TABLE contact_events_default PARTITION OF contact_events DEFAULT;
CREATE INDEX contact_events_time ON contact_events (occurred_at);
CREATE INDEX contact_events_contact ON contact_events (contact_id, occurred_at);
CREATE INDEX contact_events_customer ON contact_events (customer_id, occurred_at);
CREATE INDEX contact_events_started ON contact_events (customer_id, occurred_at)
    WHERE kind = 'contact_started';

-- The month of `moment` as a partition, if missing. Rows of that month the default partition
-- caught move into it (they are already in contact_facts: nothing is counted twice).
CREATE FUNCTION contact_events_add_month(moment timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    lower_bound timestamptz := date_trunc('month', moment, 'UTC');
    upper_bound timestamptz := date_trunc('month', lower_bound + interval '32 days', 'UTC');
    name text := 'contact_events_' || to_char(lower_bound AT TIME ZONE 'UTC', 'YYYY_MM');
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    CREATE TEMP TABLE contact_events_moving ON COMMIT DROP AS
        WITH moved AS (DELETE FROM contact_events_default
                       WHERE occurred_at >= lower_bound AND occurred_at < upper_bound
                       RETURNING *)
        SELECT * FROM moved;
    EXECUTE format('CREATE TABLE %I PARTITION OF contact_events FOR VALUES FROM (%L) TO (%L)',
                   name, lower_bound, upper_bound);
    EXECUTE format('INSERT INTO %I SELECT * FROM contact_events_moving', name);
    DROP TABLE contact_events_moving;
    RETURN name;
END $$;

CREATE TYPE fact_mark AS (at timestamptz, seq bigint, value text);

CREATE FUNCTION fact_later(a fact_mark, b fact_mark) RETURNS fact_mark
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN a IS NULL THEN b WHEN b IS NULL THEN a
                WHEN ((b).at, (b).seq) > ((a).at, (a).seq) THEN b ELSE a END
$$;

CREATE FUNCTION fact_earlier(a fact_mark, b fact_mark) RETURNS fact_mark
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN a IS NULL THEN b WHEN b IS NULL THEN a
                WHEN ((b).at, (b).seq) < ((a).at, (a).seq) THEN b ELSE a END
$$;

CREATE AGGREGATE fact_latest(fact_mark) (SFUNC = fact_later, STYPE = fact_mark,
                                         COMBINEFUNC = fact_later, PARALLEL = SAFE);
CREATE AGGREGATE fact_first(fact_mark) (SFUNC = fact_earlier, STYPE = fact_mark,
                                        COMBINEFUNC = fact_earlier, PARALLEL = SAFE);

-- One row per contact. Column by column, the definitions of metric version 1
-- (service/reporting/reports.py DEFINITIONS); docs/architecture.md says how to add one.
CREATE TABLE contact_facts (
    contact_id        uuid PRIMARY KEY,
    started           fact_mark,   -- the contact_started event; value: its channel
    customer_id       uuid,        -- of the contact_started event
    contact_type      fact_mark,   -- latest classification or wrap-up correction
    offered           boolean NOT NULL DEFAULT false,  -- a self_service_started event
    last_step         fact_mark,   -- the latest self_service_started event's step
    missed            boolean NOT NULL DEFAULT false,  -- a classification_missed event
    routed_to_agent   boolean NOT NULL DEFAULT false,  -- routed with self_service false
    escalation        fact_mark,   -- the first escalated event; value: its reason
    accepted_at       timestamptz, -- the first agent_accepted event
    ending            fact_mark,   -- the first ended event; value: its outcome
    queue             fact_mark,   -- the latest routed/escalated event's queue
    route             fact_mark,   -- the latest routed/escalated event with a route path
    -- the start of the customer's next contact (strictly later) of the same contact type
    next_same_type_at timestamptz,
    started_at        timestamptz GENERATED ALWAYS AS ((started).at) STORED
);
CREATE INDEX contact_facts_started ON contact_facts (started_at);
CREATE INDEX contact_facts_customer ON contact_facts (customer_id, started_at);

CREATE FUNCTION contact_facts_add_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Two writers landing events of one customer at once would each miss the other's
    -- contacts when finding the next contact of a type: one customer, one writer at a time.
    PERFORM pg_advisory_xact_lock(6007421, k)
    FROM (SELECT DISTINCT hashtext(customer_id::text) AS k FROM landed
          WHERE customer_id IS NOT NULL ORDER BY 1) keys;

    INSERT INTO contact_facts AS f (contact_id, started, customer_id, contact_type, offered,
                                    last_step, missed, routed_to_agent, escalation,
                                    accepted_at, ending, queue, route)
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
            FILTER (WHERE kind IN ('routed', 'escalated') AND route_path IS NOT NULL)
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
        route = fact_later(f.route, EXCLUDED.route);

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

CREATE TRIGGER contact_facts_add_events AFTER INSERT ON contact_events
    REFERENCING NEW TABLE AS landed FOR EACH STATEMENT EXECUTE FUNCTION contact_facts_add_events();

CREATE FUNCTION contact_facts_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE contact_facts;
    RETURN NULL;
END $$;

CREATE TRIGGER contact_facts_truncate AFTER TRUNCATE ON contact_events
    FOR EACH STATEMENT EXECUTE FUNCTION contact_facts_truncate();

-- The facts follow inserts only: the log is append-only (old months are dropped whole).
CREATE FUNCTION contact_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'contact_events is append-only: % is refused (old months are dropped by '
                    'SWITCHBOARD_EVENT_RETENTION_DAYS)', TG_OP;
END $$;

CREATE TRIGGER contact_events_append_only BEFORE UPDATE OR DELETE ON contact_events
    FOR EACH STATEMENT EXECUTE FUNCTION contact_events_append_only();

-- The existing log: a partition for each month it covers, and the current and next month.
-- (Months counted in UTC, whatever the session's time zone.)
SELECT contact_events_add_month(month AT TIME ZONE 'UTC')
FROM generate_series(
    date_trunc('month', LEAST(now(), (SELECT min(occurred_at)
                                      FROM contact_events_unpartitioned)) AT TIME ZONE 'UTC'),
    (now() + interval '1 month') AT TIME ZONE 'UTC', interval '1 month') AS month;

INSERT INTO contact_events SELECT * FROM contact_events_unpartitioned ORDER BY seq;
DROP TABLE contact_events_unpartitioned;
