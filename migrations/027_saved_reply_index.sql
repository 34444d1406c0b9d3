-- The saved-replies report (service/reporting/saved_replies_report.py) counts the agents'
-- messages that name a saved reply in a window. They are a small share of the log: this
-- partial index finds them by time without reading the window's other events (on each monthly
-- partition, so the window still prunes), as the agent report's index does (migration 020).
CREATE INDEX contact_events_saved_reply ON contact_events (occurred_at)
    WHERE kind = 'agent_message' AND data ? 'saved_reply';
