-- What an erasure blanks in events, for two new kinds of data (the rest of
-- erased_event_data is migration 019's, unchanged):
-- - Customers' files (service/conversations/attachments.py): a `received` event keeps each
--   file's number, type and the channel's reference (a provider media URL, which names the
--   account and the message). An erasure keeps the number and type (how many files, of what
--   kind, for the record) and drops the reference; a failed turn's files likewise.
-- - The bot's words (a `replied` event's `messages`, service/conversations/conversation.py):
--   templates and flows fill in the customer's name and looked-up values, so an erasure blanks
--   every message (to "", so the count of messages stays) as it blanks the customer's own
--   `text`; the choices offered (catalog labels) stay.
CREATE OR REPLACE FUNCTION erased_event_data(data jsonb, secrets text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(key, CASE
        WHEN jsonb_typeof(value) = 'null' THEN value
        WHEN key = 'attachments' THEN CASE WHEN jsonb_typeof(value) = 'array'
            THEN coalesce((SELECT jsonb_agg(CASE WHEN jsonb_typeof(a) = 'object'
                                                 THEN a - 'ref' ELSE '""'::jsonb END)
                           FROM jsonb_array_elements(value) a), '[]'::jsonb)
            ELSE '""'::jsonb END
        WHEN key = 'messages' THEN CASE WHEN jsonb_typeof(value) = 'array'
            THEN coalesce((SELECT jsonb_agg('""'::jsonb) FROM jsonb_array_elements(value)),
                          '[]'::jsonb)
            ELSE '""'::jsonb END
        WHEN key IN ('text', 'comment', 'note', 'address', 'identity_value', 'number',
                     'thread', 'dedupe_key', 'error', 'call_id') THEN '""'::jsonb
        WHEN key IN ('step', 'self_service', 'outcome', 'queue', 'kind', 'score',
                     'corrected_contact_type', 'contact_type', 'classified_as', 'confidence',
                     'canary', 'experiment', 'arm', 'waited_s', 'input', 'input_confidence',
                     'via', 'route_path') THEN value
        WHEN EXISTS (SELECT FROM unnest(secrets) s
                     WHERE length(s) > 0 AND strpos(value::text, s) > 0) THEN '""'::jsonb
        ELSE value END), '{}'::jsonb)
    FROM jsonb_each(data)
$$;

-- An erasure also asks the provider to delete the customer's files (outbox action
-- `delete_attachment`, payload {content_type, ref}: the channel's own reference), recorded in
-- the erasure's transaction and retried like every outbound request.
ALTER TABLE outbox DROP CONSTRAINT outbox_action_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_action_check
    CHECK (action IN ('send', 'connect', 'join', 'release', 'drop', 'ask', 'call_back',
                      'delete_attachment'));
-- The hourly upkeep forgets a deletion's reference once the provider answered: the few rows
-- still holding one, by index (the outbox keeps every message ever sent).
CREATE INDEX outbox_file_references ON outbox (seq)
    WHERE action = 'delete_attachment' AND payload ? 'ref';
