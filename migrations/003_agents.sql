-- Agents who take escalated contacts. Only a hash of each agent's token is stored.
CREATE TABLE agents (
    id              uuid PRIMARY KEY,
    name            text NOT NULL,
    skills          text[] NOT NULL DEFAULT '{}',
    capacity        jsonb NOT NULL DEFAULT '{"voice": 1, "chat": 3, "sms": 3}'::jsonb,
    phone           text,             -- where accepted calls are bridged, when set
    client_identity text,             -- or a Twilio Client identity
    token_hash      text NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    disabled_at     timestamptz
);
