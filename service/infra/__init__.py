"""Servers, connections, logging, ids, tokens and migrations: what every part stands on."""
