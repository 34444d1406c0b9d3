"""Agents, their queues and assignment in Redis, and the bus between instances."""
