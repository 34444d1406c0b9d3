"""One contact's turns, its context in Redis, and its hand-off to an agent."""
