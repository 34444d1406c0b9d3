-- A `supervisor` role for API tokens: it reads the supervisor view (/api/supervisor), not
-- the reports. The constraint is replaced rather than altered (PostgreSQL cannot alter a CHECK).
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_role_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_role_check
    CHECK (role IN ('ops', 'agent', 'supervisor'));
