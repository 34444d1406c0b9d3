-- Files uploaded to the service itself (service/infra/files.py): a web chat customer's photo
-- or receipt, a file an agent sends a customer. Keyed by a random id; the type is the one
-- sniffed from the bytes for images and PDFs, never the client's word alone. An erasure
-- deletes a customer's rows through the outbox (`delete_attachment`), as it deletes files
-- at a provider.
CREATE TABLE uploaded_files (
    id text PRIMARY KEY,
    content_type text NOT NULL,
    size integer NOT NULL CHECK (size > 0),
    data bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The key the signed file URLs (the chat widget's, Twilio's MediaUrl) and the chat's upload
-- credentials are signed with: one row, made by the first instance that starts, so every
-- instance signs and checks alike without configuration.
CREATE TABLE uploaded_files_key (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    key bytea NOT NULL CHECK (length(key) >= 32)
);

-- An agent's file is sent through the outbox like their texts (payload: content_type, ref).
ALTER TABLE outbox DROP CONSTRAINT outbox_action_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_action_check
    CHECK (action IN ('send', 'connect', 'join', 'release', 'drop', 'ask', 'call_back',
                      'delete_attachment', 'template', 'file'));
