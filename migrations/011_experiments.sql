-- Experiments and canaries (docs/experiments.md).
--
-- contact_arms: which arm of which experiment each contact was in, one row per contact and
-- experiment, kept from the log like contact_facts (a trigger of its own on the inserts): an
-- `experiment_assigned` event puts the contact in an experiment of experiments.yaml, a
-- `canary_assigned` event in the experiment `canary:<id>` with the arm `canary` or `stable`.
-- The first assignment of a contact to an experiment stands.
CREATE TABLE contact_arms (
    contact_id  uuid NOT NULL,
    experiment  text NOT NULL,
    arm         text NOT NULL,
    assigned_at timestamptz NOT NULL,
    PRIMARY KEY (contact_id, experiment)
);
CREATE INDEX contact_arms_experiment ON contact_arms (experiment, assigned_at);

CREATE FUNCTION contact_arms_add_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO contact_arms AS a (contact_id, experiment, arm, assigned_at)
    SELECT DISTINCT ON (contact_id, experiment) contact_id, experiment, arm, occurred_at
    FROM (SELECT contact_id, occurred_at, seq,
                 CASE WHEN kind = 'canary_assigned' THEN 'canary:' || (data->>'canary')
                      ELSE data->>'experiment' END AS experiment,
                 data->>'arm' AS arm
          FROM landed
          WHERE kind IN ('experiment_assigned', 'canary_assigned') AND contact_id IS NOT NULL)
         e
    WHERE experiment IS NOT NULL AND arm IS NOT NULL
    ORDER BY contact_id, experiment, occurred_at, seq
    ON CONFLICT (contact_id, experiment) DO UPDATE SET
        arm = EXCLUDED.arm, assigned_at = EXCLUDED.assigned_at
        WHERE EXCLUDED.assigned_at < a.assigned_at;
    RETURN NULL;
END $$;

CREATE TRIGGER contact_arms_add_events AFTER INSERT ON contact_events
    REFERENCING NEW TABLE AS landed FOR EACH STATEMENT EXECUTE FUNCTION contact_arms_add_events();

CREATE FUNCTION contact_arms_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE contact_arms;
    RETURN NULL;
END $$;

CREATE TRIGGER contact_arms_truncate AFTER TRUNCATE ON contact_events
    FOR EACH STATEMENT EXECUTE FUNCTION contact_arms_truncate();

INSERT INTO contact_arms (contact_id, experiment, arm, assigned_at)
SELECT DISTINCT ON (contact_id, experiment) contact_id, experiment, arm, occurred_at
FROM (SELECT contact_id, occurred_at, seq,
             CASE WHEN kind = 'canary_assigned' THEN 'canary:' || (data->>'canary')
                  ELSE data->>'experiment' END AS experiment,
             data->>'arm' AS arm
      FROM contact_events
      WHERE kind IN ('experiment_assigned', 'canary_assigned') AND contact_id IS NOT NULL) e
WHERE experiment IS NOT NULL AND arm IS NOT NULL
ORDER BY contact_id, experiment, occurred_at, seq;

-- A canary: a rules version deciding a share of new contacts, next to the rules in force,
-- until it is promoted, aborted or rolled back by a guardrail. At most one runs at a time.
CREATE TABLE rule_canaries (
    id                bigserial PRIMARY KEY,
    version_id        bigint NOT NULL REFERENCES rule_versions (id) ON DELETE CASCADE,
    stable_version_id bigint REFERENCES rule_versions (id) ON DELETE SET NULL,
    share             double precision NOT NULL CHECK (share > 0 AND share < 1),
    guardrails        jsonb NOT NULL DEFAULT '[]',  -- [{"metric", "max_drop"}]
    min_contacts      integer NOT NULL CHECK (min_contacts >= 1),
    state             text NOT NULL DEFAULT 'running'
                      CHECK (state IN ('running', 'rolled_back', 'promoted', 'aborted')),
    started_at        timestamptz NOT NULL DEFAULT now(),
    started_by        text NOT NULL DEFAULT '',
    ended_at          timestamptz,
    ended_by          text,
    end_reason        text,
    figures           jsonb  -- the canary and stable figures when it ended
);
CREATE UNIQUE INDEX rule_canaries_one_running ON rule_canaries ((true)) WHERE state = 'running';

-- Loads of a canary's rules (cause canary) are in rule_loads too, with the canary's number;
-- "the version in force" is of the other loads only.
ALTER TABLE rule_loads ADD COLUMN canary_id bigint REFERENCES rule_canaries (id)
    ON DELETE SET NULL;
