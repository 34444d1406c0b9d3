-- The agent performance report (service/reporting/agent_report.py) reads the agent events of
-- a window. They are a small share of the log: this partial index finds them by time without
-- reading the window's other events (on each monthly partition, so the window still prunes).
CREATE INDEX contact_events_agent_time ON contact_events (occurred_at)
    WHERE kind IN ('offered', 'agent_accepted', 'offer_declined', 'offer_expired', 'wrap_up',
                   'transferred');
