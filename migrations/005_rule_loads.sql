-- Every load and reload of the rules: who or what caused it, the version it put in force
-- (NULL when it failed validation and changed nothing), and a diff against the version in
-- force before it on that instance.
CREATE TABLE rule_loads (
    id          bigserial PRIMARY KEY,
    loaded_at   timestamptz NOT NULL DEFAULT now(),
    cause       text NOT NULL,            -- start | signal | api | cli | rollback
    actor       text NOT NULL DEFAULT '', -- the token's name, the user at the command line
    instance    text NOT NULL,            -- host:pid of the instance that loaded
    version_id  bigint REFERENCES rule_versions (id),
    previous_id bigint REFERENCES rule_versions (id),
    diff        text NOT NULL DEFAULT '',
    errors      jsonb NOT NULL DEFAULT '[]'
);
CREATE INDEX rule_loads_loaded_at ON rule_loads (loaded_at DESC);
