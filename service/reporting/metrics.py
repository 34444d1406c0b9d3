"""Live Prometheus counters. Reports come from the event log; these are for alerting."""

import functools

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

TURNS = Counter("switchboard_turns_total", "Inbound turns handled", ["channel", "result"],
                registry=REGISTRY)
TURN_SECONDS = Histogram("switchboard_turn_seconds", "Time to answer one inbound turn",
                         ["channel"], registry=REGISTRY,
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5))
RULES_RELOAD_OK = Gauge("switchboard_rules_last_reload_successful",
                        "1 when the last rules (re)load succeeded, 0 when it failed and the "
                        "previous rules stayed in force", registry=REGISTRY)
RULES_RELOAD_TIME = Gauge("switchboard_rules_last_reload_success_timestamp_seconds",
                          "When rules last loaded successfully", registry=REGISTRY)
EVENTS_WRITTEN = Gauge("switchboard_events_written", "Events written to PostgreSQL by this "
                       "process", registry=REGISTRY)
REPORT_SECONDS = Histogram("switchboard_report_query_seconds", "Time to compute one report "
                           "from the event log", ["report"], registry=REGISTRY,
                           buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
OPS_API_REQUESTS = Counter("switchboard_ops_api_requests_total", "Requests to the ops report "
                           "API, by endpoint and HTTP status", ["endpoint", "status"],
                           registry=REGISTRY)

QUEUE_WAITING = Gauge("switchboard_queue_waiting", "Contacts waiting in each agent queue, as of "
                      "this instance's last look (every second)", ["queue"], registry=REGISTRY)

# The outbox (service/conversations/outbox.py): depth and age are of the shared table, so every
# instance reports the same figures; attempts and failures are this process's.
OUTBOX_DEPTH = Gauge("switchboard_outbox_depth", "Outbound messages and call bridges recorded "
                     "and not yet taken by the channel (all instances)", registry=REGISTRY)
OUTBOX_OLDEST = Gauge("switchboard_outbox_oldest_queued_seconds", "Age of the oldest outbound "
                      "request still queued, 0 when none is", registry=REGISTRY)
OUTBOX_ATTEMPTS = Counter("switchboard_outbox_attempts_total", "Outbound attempts by channel "
                          "and result (sent, adopted after a lost answer, retry)",
                          ["channel", "result"], registry=REGISTRY)
OUTBOX_FAILED = Counter("switchboard_outbox_failed_total", "Outbound requests that failed for "
                        "good, by channel and reason", ["channel", "reason"], registry=REGISTRY)

# The supervisor view's figures (service/reporting/supervisor.py): shared state, the same on
# every instance, refreshed every few seconds.
AGENTS = Gauge("switchboard_agents", "Agents by state: available, busy (holding contacts), "
               "away, offline", ["state"], registry=REGISTRY)
QUEUE_LONGEST_WAIT = Gauge("switchboard_queue_longest_wait_seconds", "How long the contact "
                           "waiting longest in each queue has waited (0 when none waits)",
                           ["queue"], registry=REGISTRY)
QUEUE_SERVICE_LEVEL = Gauge("switchboard_queue_service_level", "Last hour: accepted within the "
                            "queue's target / (accepted + abandoned + waiting past the target); "
                            "NaN when there is none", ["queue"], registry=REGISTRY)
QUEUE_SERVICE_LEVEL_GOAL = Gauge("switchboard_queue_service_level_goal", "The queue's "
                                 "service-level goal (routes.yaml)", ["queue"], registry=REGISTRY)
QUEUE_ABANDONED_LAST_HOUR = Gauge("switchboard_queue_abandoned_last_hour", "Contacts that ended "
                                  "while waiting in the queue, in the last hour", ["queue"],
                                  registry=REGISTRY)
SUPERVISOR_QUEUE_GAUGES = (QUEUE_LONGEST_WAIT, QUEUE_SERVICE_LEVEL, QUEUE_SERVICE_LEVEL_GOAL,
                           QUEUE_ABANDONED_LAST_HOUR)

# Live counters of what contacts do, for alerting (reports stay computed from the event log).
CONTACT_EVENTS = Counter("switchboard_contact_events_total", "Contact events recorded, by "
                         "kind and channel", ["kind", "channel"], registry=REGISTRY)
CONTACTS_ENDED = Counter("switchboard_contacts_ended_total", "Contacts ended, by channel and "
                         "outcome", ["channel", "outcome"], registry=REGISTRY)
ESCALATIONS = Counter("switchboard_escalations_total", "Contacts that entered an agent queue, "
                      "by channel and reason code", ["channel", "reason"], registry=REGISTRY)


def observe_events(events) -> None:
    """Count the events being recorded; called where events are emitted (EventWriter.emit)."""
    for event in events:
        channel = event.channel or "none"
        child(CONTACT_EVENTS, event.kind, channel).inc()
        if event.kind == "ended":
            child(CONTACTS_ENDED, channel, str(event.data.get("outcome"))).inc()
        elif event.kind == "escalated":
            child(ESCALATIONS, channel, event.reason or "none").inc()


@functools.lru_cache(maxsize=4096)  # labels() takes a lock and builds a tuple on every call
def child(metric, *label_values: str):
    """metric.labels(*label_values), kept: for the labels every turn uses."""
    return metric.labels(*label_values)
