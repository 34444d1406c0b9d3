-- Reports per UTC day, kept so that a report over months reads a row per day instead of a
-- row per contact (service/reporting/rollups.py; docs/architecture.md, "The event log and
-- reports at scale").
--
-- report_fact_changes: a row (day, weight) for each day whose contacts' facts a statement
-- changed (inserted, updated or deleted contact_facts rows, by the day of their started_at),
-- written by triggers on contact_facts in the same transaction as the change. A day's total
-- weight only grows: writers add rows (no row is ever updated, so concurrent writers never
-- wait on each other here) and report_fact_changes_compact() folds a day's rows into one of
-- the same weight.
--
-- report_rollups: the rows of one report query (`report`) for one day's contacts (or the
-- journeys that began that day), computed under the rules and the query text fingerprinted
-- by `rules`; it read the facts of the days first_day..last_day, whose total weight was
-- `changes` then. While that total is the same, no fact it read has changed and the rows are
-- exact; otherwise the report computes the day from contact_facts again.

CREATE TABLE report_fact_changes (
    day    date NOT NULL,
    weight bigint NOT NULL DEFAULT 1
);
CREATE INDEX report_fact_changes_day ON report_fact_changes (day) INCLUDE (weight);

CREATE TABLE report_rollups (
    rules       text NOT NULL,
    report      text NOT NULL,
    day         date NOT NULL,
    first_day   date NOT NULL,
    last_day    date NOT NULL,
    changes     bigint NOT NULL,
    rows        jsonb NOT NULL,
    computed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rules, report, day)
);

-- The days of the contacts a statement changed, from their rows after (INSERT, UPDATE) and
-- before (UPDATE, DELETE). PL/pgSQL plans a statement when it first runs, so each branch
-- names only a transition table its trigger has.
CREATE FUNCTION report_fact_days_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO report_fact_changes (day)
        SELECT DISTINCT (started_at AT TIME ZONE 'UTC')::date FROM changed_new
        WHERE started_at IS NOT NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO report_fact_changes (day)
        SELECT DISTINCT (started_at AT TIME ZONE 'UTC')::date FROM changed_old
        WHERE started_at IS NOT NULL;
    END IF;
    RETURN NULL;
END $$;

-- Emptied facts: every day known changes, and no roll-up is kept (one being computed from the
-- facts before the TRUNCATE is then stale the moment it is stored).
CREATE FUNCTION report_fact_days_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO report_fact_changes (day) SELECT DISTINCT day FROM report_fact_changes;
    TRUNCATE report_rollups;
    RETURN NULL;
END $$;

CREATE TRIGGER report_fact_days_added AFTER INSERT ON contact_facts
    REFERENCING NEW TABLE AS changed_new
    FOR EACH STATEMENT EXECUTE FUNCTION report_fact_days_changed();
CREATE TRIGGER report_fact_days_updated AFTER UPDATE ON contact_facts
    REFERENCING OLD TABLE AS changed_old NEW TABLE AS changed_new
    FOR EACH STATEMENT EXECUTE FUNCTION report_fact_days_changed();
CREATE TRIGGER report_fact_days_deleted AFTER DELETE ON contact_facts
    REFERENCING OLD TABLE AS changed_old
    FOR EACH STATEMENT EXECUTE FUNCTION report_fact_days_changed();
CREATE TRIGGER report_fact_days_truncated AFTER TRUNCATE ON contact_facts
    FOR EACH STATEMENT EXECUTE FUNCTION report_fact_days_truncated();

-- One row per day, each of the total weight of the rows it replaces (run hourly by the
-- partition maintenance); returns the days folded.
CREATE FUNCTION report_fact_changes_compact() RETURNS bigint LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM report_fact_changes RETURNING day, weight),
    folded AS (INSERT INTO report_fact_changes (day, weight)
               SELECT day, sum(weight) FROM gone GROUP BY day RETURNING 1)
    SELECT count(*) FROM folded
$$;

-- The facts already kept: each day counts as changed once.
INSERT INTO report_fact_changes (day)
SELECT DISTINCT (started_at AT TIME ZONE 'UTC')::date FROM contact_facts
WHERE started_at IS NOT NULL;
