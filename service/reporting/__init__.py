"""The event log, the reports computed from it, the ops API and the replay of past traffic."""
