-- Customers, their identities on every channel, contacts, the append-only event log,
-- and the routing-rule versions that were loaded.

CREATE TABLE customers (
    id          uuid PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    display_name text,
    attributes  jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- kind: phone | email | web (verified external id). A phone number identifies one customer.
CREATE TABLE customer_identities (
    kind        text NOT NULL,
    value       text NOT NULL,
    customer_id uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    verified    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, value)
);
CREATE INDEX customer_identities_customer ON customer_identities (customer_id);

-- One conversation of one customer on one channel (docs/interfaces.md, metric definitions).
CREATE TABLE contacts (
    id                uuid PRIMARY KEY,
    customer_id       uuid NOT NULL,
    channel           text NOT NULL,
    address           text,
    started_at        timestamptz NOT NULL,
    ended_at          timestamptz,
    contact_type      text,
    confidence        real,
    route_path        text,
    queue             text,
    escalation_reason text,
    outcome           text
);
CREATE INDEX contacts_started ON contacts (started_at);
CREATE INDEX contacts_customer ON contacts (customer_id, started_at);

-- Append-only: every step of every contact. Reports are computed from this table.
-- seq orders events that share a timestamp (the steps of one turn) in the order emitted.
CREATE TABLE contact_events (
    id           uuid PRIMARY KEY,
    seq          bigserial NOT NULL,
    occurred_at  timestamptz NOT NULL,
    kind         text NOT NULL,
    contact_id   uuid,
    customer_id  uuid,
    channel      text,
    contact_type text,
    route_path   text,
    reason       text,
    data         jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX contact_events_time ON contact_events (occurred_at);
CREATE INDEX contact_events_contact ON contact_events (contact_id, occurred_at);
CREATE INDEX contact_events_customer ON contact_events (customer_id, occurred_at);

CREATE TABLE rule_versions (
    id        bigserial PRIMARY KEY,
    digest    text NOT NULL UNIQUE,
    loaded_at timestamptz NOT NULL DEFAULT now(),
    files     jsonb NOT NULL
);
