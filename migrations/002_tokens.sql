-- Ops reporting: API tokens, and an index the report queries need.
--
-- API tokens for people and programs that read or operate the service (ops dashboard and
-- reports; agents). Only a SHA-256 of each token is stored: the token is shown once.
CREATE TABLE api_tokens (
    id          uuid PRIMARY KEY,
    role        text NOT NULL CHECK (role IN ('ops', 'agent')),
    name        text NOT NULL DEFAULT '',
    token_hash  text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);


-- Reports start from the contacts that began in a window, and look for a customer's next
-- contact (false deflection, journeys): both read only contact_started events.
CREATE INDEX contact_events_started ON contact_events (customer_id, occurred_at)
    WHERE kind = 'contact_started';
