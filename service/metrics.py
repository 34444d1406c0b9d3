"""Live Prometheus counters. Reports come from the event log; these are for alerting."""

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
