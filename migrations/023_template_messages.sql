-- Message templates (replies.yaml `templates`, docs/agents.md "Message templates"): an agent
-- reaches a customer past the channel's reply window with a template the provider approved.
-- The outbox takes it as a new action, `template`, payload {text, template_id, ref,
-- variables}: `text` is the filled text (what the agent sees, what a lost answer is looked up
-- by), `ref` the provider's template id, `variables` its numbered values. An erasure blanks
-- the payload like any other (erased_event_data: `text`, and `variables` holding the name).
ALTER TABLE outbox DROP CONSTRAINT outbox_action_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_action_check
    CHECK (action IN ('send', 'connect', 'join', 'release', 'drop', 'ask', 'call_back',
                      'delete_attachment', 'template'));
