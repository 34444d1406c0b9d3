-- The durable outbox: every message and call bridge the service sends a contact through a
-- provider, recorded before the first attempt and kept after it with its state. One row per
-- request: a retry updates the row, so a request is never recorded twice.
CREATE TABLE outbox (
    id               uuid PRIMARY KEY,            -- the message id agents and callbacks see
    seq              bigserial UNIQUE,            -- recording order: per contact, sends go in it
    contact_id       text NOT NULL,
    channel          text NOT NULL,               -- a channel value; the channel performs it
    action           text NOT NULL
                     CHECK (action IN ('send', 'connect', 'join', 'release', 'ask')),
    destination      jsonb NOT NULL,              -- service.model.Destination
    payload          jsonb NOT NULL,              -- send: {text}; connect, join: {agent, hello};
                                                  -- release: {agent}; ask: {text, choices}
    agent_id         text,                        -- who is told the message's state
    event_context    jsonb NOT NULL DEFAULT '{}', -- customer, contact type, route for events
    state            text NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'sent', 'delivered', 'failed')),
    provider_id      text,                        -- Twilio's MessageSid once known
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease            text,                        -- the claim of the worker attempting it
    lease_until      timestamptz,
    maybe_sent_since timestamptz,                 -- an attempt may have reached the provider
    retry_not_before timestamptz,                 -- the provider's Retry-After, honoured
    failure          text,                        -- why it failed, or why it is being retried
    failure_code     text,                        -- the provider's error code
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'queued';
CREATE INDEX outbox_contact_queued ON outbox (contact_id, seq) WHERE state = 'queued';
CREATE INDEX outbox_provider_id ON outbox (provider_id) WHERE provider_id IS NOT NULL;
CREATE INDEX outbox_failed ON outbox (updated_at DESC) WHERE state = 'failed';
