-- The bot's words (a `replied` event's `messages`, service/conversations/conversation.py):
-- templates and flows fill in the customer's name and looked-up values, so an erasure blanks
-- every message (to "", so the count of messages stays) as it blanks the customer's own
-- `text`. The choices offered (catalog labels) and the rest of erased_event_data are
-- migration 021's, unchanged.
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
