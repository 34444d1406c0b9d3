-- What `switchboard simulate` replays of each contact, kept from the log as events land.
--
-- contact_replay holds one row per contact: when and where it started, the words or key that
-- decided its first step and the first decision recorded for it, so a replay reads one row per
-- contact, in the order of an index, instead of gathering every contact's events. A statement
-- trigger of its own on contact_events keeps it in the inserting transaction, like
-- contact_facts (whose trigger this leaves alone). Each piece is a fact_mark, the event's
-- (time, seq) and one value, with the event's other values in the columns after it:
--   decided    the first classified, classification_missed or escalated event; value: its kind
--   said       the latest received event before `decided` (before none: the latest of all);
--              value: its text
--   routed     the first routed event after `decided`; value: its data's route_path
--   step       the first self_service_started or escalated event after `decided`; value: kind
--   classified the latest classified event; value: its contact type (for repeat contacts)
--   latest     the latest event of the kinds above
--   started    the first contact_started event; value: its channel (customer_id: its customer)
-- `started`, `classified` and `latest` merge batch by batch like contact_facts' marks; `said`,
-- `routed` and `step` depend on where `decided` is, so they cannot. When a batch's events of a
-- contact all come after `latest` (events land in order: the usual case), the contact is
-- folded again from the stored pieces, which stand for all its earlier events, and the batch;
-- when a batch brings an earlier event (a replayed spool, two writers), it is folded from all
-- its events in contact_events. Either way the row is what folding every event gives.

CREATE TABLE contact_replay (
    contact_id      uuid PRIMARY KEY,
    said            fact_mark,
    said_input      text,              -- data->>'input': "message" or "digits"
    said_confidence double precision,  -- data->>'input_confidence': the speech recogniser's
    decided         fact_mark,
    decided_type    text,              -- the contact_type column
    decided_route   text,              -- the route_path column
    decided_reason  text,
    decided_queue   text,              -- data->>'queue'
    decided_via     text,              -- data->>'via' ("repeat_prompt": confirmed an earlier)
    routed          fact_mark,
    routed_queue    text,              -- data->>'queue'
    step            fact_mark,
    step_reason     text,
    classified      fact_mark,
    latest          fact_mark,
    started         fact_mark,
    customer_id     uuid,
    started_at      timestamptz GENERATED ALWAYS AS ((started).at) STORED
);
CREATE INDEX contact_replay_started ON contact_replay (started_at, contact_id);

-- One event as the fold reads it (route_path: the data's for routed, the column's otherwise).
CREATE TYPE replay_event AS (
    at timestamptz, seq bigint, kind text, contact_type text, route_path text, reason text,
    queue text, via text, input_text text, input text, input_confidence double precision
);

CREATE FUNCTION replay_event_of(e contact_events) RETURNS replay_event
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ROW(e.occurred_at, e.seq, e.kind, e.contact_type,
               CASE WHEN e.kind = 'routed' THEN e.data->>'route_path' ELSE e.route_path END,
               e.reason, e.data->>'queue', e.data->>'via', e.data->>'text', e.data->>'input',
               CASE WHEN jsonb_typeof(e.data->'input_confidence') = 'number'
                    THEN (e.data->>'input_confidence')::double precision END)::replay_event
$$;

-- The stored pieces of a contact as events again: what a later batch is folded with.
CREATE FUNCTION replay_events_of(r contact_replay) RETURNS replay_event[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(ev), '{}') FROM (VALUES
        (CASE WHEN (r.said).at IS NOT NULL THEN
             ROW((r.said).at, (r.said).seq, 'received', NULL, NULL, NULL, NULL, NULL,
                 (r.said).value, r.said_input, r.said_confidence)::replay_event END),
        (CASE WHEN (r.decided).at IS NOT NULL THEN
             ROW((r.decided).at, (r.decided).seq, (r.decided).value, r.decided_type,
                 r.decided_route, r.decided_reason, r.decided_queue, r.decided_via, NULL, NULL,
                 NULL)::replay_event END),
        (CASE WHEN (r.routed).at IS NOT NULL THEN
             ROW((r.routed).at, (r.routed).seq, 'routed', NULL, (r.routed).value, NULL,
                 r.routed_queue, NULL, NULL, NULL, NULL)::replay_event END),
        (CASE WHEN (r.step).at IS NOT NULL THEN
             ROW((r.step).at, (r.step).seq, (r.step).value, NULL, NULL, r.step_reason, NULL,
                 NULL, NULL, NULL, NULL)::replay_event END)) pieces (ev)
    WHERE (ev).at IS NOT NULL
$$;

-- A contact's events, oldest first, read as simulate.py's reference reader reads them.
CREATE FUNCTION contact_replay_fold(
    events replay_event[],
    OUT said fact_mark, OUT said_input text, OUT said_confidence double precision,
    OUT decided fact_mark, OUT decided_type text, OUT decided_route text,
    OUT decided_reason text, OUT decided_queue text, OUT decided_via text,
    OUT routed fact_mark, OUT routed_queue text, OUT step fact_mark, OUT step_reason text)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    e replay_event;
BEGIN
    FOR e IN SELECT * FROM unnest(events) ORDER BY at, seq LOOP
        IF decided IS NULL THEN
            IF e.kind = 'received' THEN
                said := ROW(e.at, e.seq, e.input_text);
                said_input := e.input;
                said_confidence := e.input_confidence;
            ELSIF e.kind IN ('classified', 'classification_missed', 'escalated') THEN
                decided := ROW(e.at, e.seq, e.kind);
                decided_type := e.contact_type;
                decided_route := e.route_path;
                decided_reason := e.reason;
                decided_queue := e.queue;
                decided_via := e.via;
            END IF;
        ELSIF e.kind = 'routed' AND routed IS NULL THEN
            routed := ROW(e.at, e.seq, e.route_path);
            routed_queue := e.queue;
        ELSIF e.kind IN ('self_service_started', 'escalated') AND step IS NULL THEN
            step := ROW(e.at, e.seq, e.kind);
            step_reason := e.reason;
        END IF;
    END LOOP;
END $$;

CREATE FUNCTION contact_replay_add_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- A contact is folded from its stored row: two writers folding one contact at once would
    -- each miss the other's events. One contact, one writer at a time.
    PERFORM pg_advisory_xact_lock(6007423, k)
    FROM (SELECT DISTINCT hashtext(contact_id::text) AS k FROM landed
          WHERE contact_id IS NOT NULL ORDER BY 1) keys;

    INSERT INTO contact_replay AS r
    SELECT t.contact_id, f.*, t.classified, t.latest, t.started, t.customer_id
    FROM (SELECT b.*,
                 CASE WHEN r.contact_id IS NULL THEN b.events
                      WHEN b.earliest IS NULL THEN replay_events_of(r)  -- nothing to fold
                      WHEN r.latest IS NULL
                           OR ((b.earliest).at, (b.earliest).seq) > ((r.latest).at, (r.latest).seq)
                      THEN b.events || replay_events_of(r)
                      ELSE (SELECT array_agg(replay_event_of(e)) FROM contact_events e
                            WHERE e.contact_id = b.contact_id
                              AND e.kind IN ('received', 'classified', 'classification_missed',
                                             'escalated', 'routed', 'self_service_started'))
                 END AS folded
          FROM (SELECT contact_id,
                       array_agg(ev) FILTER (WHERE folds) AS events,
                       fact_latest(ROW(occurred_at, seq, contact_type)::fact_mark)
                           FILTER (WHERE kind = 'classified') AS classified,
                       fact_latest(ROW(occurred_at, seq, NULL)::fact_mark) FILTER (WHERE folds)
                           AS latest,
                       fact_first(ROW(occurred_at, seq, NULL)::fact_mark) FILTER (WHERE folds)
                           AS earliest,
                       fact_first(ROW(occurred_at, seq, channel)::fact_mark)
                           FILTER (WHERE kind = 'contact_started') AS started,
                       (array_agg(customer_id ORDER BY occurred_at, seq)
                           FILTER (WHERE kind = 'contact_started'))[1] AS customer_id
                FROM (SELECT l.*, replay_event_of(l) AS ev,
                             kind IN ('received', 'classified', 'classification_missed',
                                      'escalated', 'routed', 'self_service_started') AS folds
                      FROM landed l WHERE contact_id IS NOT NULL) e
                WHERE folds OR kind = 'contact_started'
                GROUP BY contact_id) b
               LEFT JOIN contact_replay r USING (contact_id)) t,
         LATERAL contact_replay_fold(t.folded) f
    ON CONFLICT (contact_id) DO UPDATE SET
        said = EXCLUDED.said, said_input = EXCLUDED.said_input,
        said_confidence = EXCLUDED.said_confidence,
        decided = EXCLUDED.decided, decided_type = EXCLUDED.decided_type,
        decided_route = EXCLUDED.decided_route, decided_reason = EXCLUDED.decided_reason,
        decided_queue = EXCLUDED.decided_queue, decided_via = EXCLUDED.decided_via,
        routed = EXCLUDED.routed, routed_queue = EXCLUDED.routed_queue,
        step = EXCLUDED.step, step_reason = EXCLUDED.step_reason,
        classified = fact_later(r.classified, EXCLUDED.classified),
        latest = fact_later(r.latest, EXCLUDED.latest),
        started = fact_earlier(r.started, EXCLUDED.started),
        customer_id = CASE WHEN fact_earlier(r.started, EXCLUDED.started)
                                IS NOT DISTINCT FROM r.started
                           THEN r.customer_id ELSE EXCLUDED.customer_id END;
    RETURN NULL;
END $$;

CREATE TRIGGER contact_replay_add_events AFTER INSERT ON contact_events
    REFERENCING NEW TABLE AS landed FOR EACH STATEMENT EXECUTE FUNCTION contact_replay_add_events();

CREATE FUNCTION contact_replay_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE contact_replay;
    RETURN NULL;
END $$;

CREATE TRIGGER contact_replay_truncate AFTER TRUNCATE ON contact_events
    FOR EACH STATEMENT EXECUTE FUNCTION contact_replay_truncate();

-- The contacts already in the log.
INSERT INTO contact_replay
SELECT g.contact_id, f.*, g.classified, g.latest, g.started, g.customer_id
FROM (SELECT contact_id,
             array_agg(ev) FILTER (WHERE folds) AS events,
             fact_latest(ROW(occurred_at, seq, contact_type)::fact_mark)
                 FILTER (WHERE kind = 'classified') AS classified,
             fact_latest(ROW(occurred_at, seq, NULL)::fact_mark) FILTER (WHERE folds) AS latest,
             fact_first(ROW(occurred_at, seq, channel)::fact_mark)
                 FILTER (WHERE kind = 'contact_started') AS started,
             (array_agg(customer_id ORDER BY occurred_at, seq)
                 FILTER (WHERE kind = 'contact_started'))[1] AS customer_id
      FROM (SELECT e.*, replay_event_of(e) AS ev,
                   kind IN ('received', 'classified', 'classification_missed', 'escalated',
                            'routed', 'self_service_started') AS folds
            FROM contact_events e WHERE contact_id IS NOT NULL) e
      WHERE folds OR kind = 'contact_started'
      GROUP BY contact_id) g,
     LATERAL contact_replay_fold(g.events) f;
