-- Day roll-ups of reports split by a customer attribute (service/reporting/rollups.py;
-- docs/architecture.md, "Day roll-ups").
--
-- A segmented roll-up keeps the rows of one report query for one day grouped by the value
-- of one customer attribute (`segment_by`), as the `customers` table held it when the
-- roll-up was computed; its `rows` are an object of one array per value ('' for customers
-- without the attribute). It is exact while neither the facts it read (report_fact_changes,
-- migration 016) nor that attribute of the customers of its contacts have changed:
--
-- report_attribute_changes: a row (attribute, day, weight) for each day with contacts of a
-- customer whose `attribute` a statement inserted, changed or deleted (attribute '': every
-- attribute, after a TRUNCATE of customers). Written by triggers on customers in the same
-- transaction; only a value that actually differs counts, so the event writer's new customers
-- (no attributes) and an update that leaves the attributes equal invalidate nothing. A
-- segmented roll-up's `changes` is the total weight of both tables over its days (the
-- attribute table: rows of its attribute and of ''); unsegmented roll-ups ignore the attribute
-- table, so a tier change leaves them fresh.

ALTER TABLE report_rollups ADD COLUMN segment_by text;  -- the attribute; NULL: every customer

CREATE TABLE report_attribute_changes (
    attribute text NOT NULL,
    day       date NOT NULL,
    weight    bigint NOT NULL DEFAULT 1
);
CREATE INDEX report_attribute_changes_day ON report_attribute_changes (attribute, day)
    INCLUDE (weight);

-- The attributes whose value (as reports read it: ->>) differs between two attribute sets,
-- with the days of the customer's contacts.
CREATE FUNCTION report_attribute_days(customer uuid, old_attributes jsonb, new_attributes jsonb)
RETURNS TABLE (attribute text, day date) LANGUAGE sql STABLE AS $$
    WITH sides AS (
        SELECT CASE WHEN jsonb_typeof(old_attributes) = 'object' THEN old_attributes ELSE '{}' END AS b,
               CASE WHEN jsonb_typeof(new_attributes) = 'object' THEN new_attributes
                    ELSE '{}' END AS a
    ),
    changed AS (
        SELECT k.key FROM sides,
            LATERAL (SELECT jsonb_object_keys(sides.b) UNION SELECT jsonb_object_keys(sides.a))
                AS k(key)
        WHERE sides.b->>k.key IS DISTINCT FROM sides.a->>k.key
    )
    SELECT DISTINCT changed.key, (f.started_at AT TIME ZONE 'UTC')::date
    FROM changed, contact_facts f
    WHERE f.customer_id = customer AND f.started_at IS NOT NULL
$$;

-- Each branch names only the transition tables its trigger has (see migration 016). An
-- update that changes a customer's id counts as a delete of the old and an insert of the new.
CREATE FUNCTION report_customer_days_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO report_attribute_changes (attribute, day)
        SELECT DISTINCT d.attribute, d.day
        FROM changed_new n, report_attribute_days(n.id, '{}', n.attributes) d
        WHERE n.attributes <> '{}';
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO report_attribute_changes (attribute, day)
        SELECT DISTINCT d.attribute, d.day
        FROM changed_old o, report_attribute_days(o.id, o.attributes, '{}') d
        WHERE o.attributes <> '{}';
    ELSE
        INSERT INTO report_attribute_changes (attribute, day)
        SELECT DISTINCT d.attribute, d.day
        FROM changed_old o FULL JOIN changed_new n ON n.id = o.id,
             report_attribute_days(COALESCE(n.id, o.id), COALESCE(o.attributes, '{}'),
                                   COALESCE(n.attributes, '{}')) d
        WHERE o.attributes IS DISTINCT FROM n.attributes;
    END IF;
    RETURN NULL;
END $$;

-- Emptied directory: every attribute of every day changed, and no segmented roll-up is kept.
CREATE FUNCTION report_customers_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO report_attribute_changes (attribute, day)
    SELECT DISTINCT '', day FROM report_fact_changes;
    DELETE FROM report_rollups WHERE segment_by IS NOT NULL;
    RETURN NULL;
END $$;

CREATE TRIGGER report_customers_added AFTER INSERT ON customers
    REFERENCING NEW TABLE AS changed_new
    FOR EACH STATEMENT EXECUTE FUNCTION report_customer_days_changed();
CREATE TRIGGER report_customers_updated AFTER UPDATE ON customers
    REFERENCING OLD TABLE AS changed_old NEW TABLE AS changed_new
    FOR EACH STATEMENT EXECUTE FUNCTION report_customer_days_changed();
CREATE TRIGGER report_customers_deleted AFTER DELETE ON customers
    REFERENCING OLD TABLE AS changed_old
    FOR EACH STATEMENT EXECUTE FUNCTION report_customer_days_changed();
CREATE TRIGGER report_customers_truncated AFTER TRUNCATE ON customers
    FOR EACH STATEMENT EXECUTE FUNCTION report_customers_truncated();

-- The hourly compaction (partitions.maintain) folds both records: one row per day (and
-- attribute), each of the total weight of the rows it replaces; returns the rows folded into.
CREATE OR REPLACE FUNCTION report_fact_changes_compact() RETURNS bigint LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM report_fact_changes RETURNING day, weight),
    folded AS (INSERT INTO report_fact_changes (day, weight)
               SELECT day, sum(weight) FROM gone GROUP BY day RETURNING 1),
    gone_attributes AS (DELETE FROM report_attribute_changes RETURNING attribute, day, weight),
    folded_attributes AS (
        INSERT INTO report_attribute_changes (attribute, day, weight)
        SELECT attribute, day, sum(weight) FROM gone_attributes GROUP BY attribute, day
        RETURNING 1)
    SELECT (SELECT count(*) FROM folded) + (SELECT count(*) FROM folded_attributes)
$$;
