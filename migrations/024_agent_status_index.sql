-- The agent report's time in status (service/reporting/agent_report.py) reads each agent's
-- agent_status_changed events: those of the window, and the latest one before its end (the
-- status an agent was in when the window began or ended). This partial index finds an agent's
-- latest without reading anyone else's (on each monthly partition, so a window still prunes).
CREATE INDEX contact_events_agent_status ON contact_events ((data->>'agent_id'), occurred_at)
    WHERE kind = 'agent_status_changed';
