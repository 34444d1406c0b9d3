-- The supervisor view.
--
-- A `supervisor` role for API tokens: it reads the supervisor view (/api/supervisor), not
-- the reports. The constraint is replaced (PostgreSQL cannot alter a CHECK).
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_role_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_role_check
    CHECK (role IN ('ops', 'agent', 'supervisor'));

-- Every few seconds the view reads the last hour's accepted and ended contacts
-- (service/reporting/supervisor.py): only those events, not the whole hour's log.
CREATE INDEX contact_events_queue_outcomes ON contact_events (occurred_at)
    WHERE kind IN ('agent_accepted', 'ended');
