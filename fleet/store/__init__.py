"""Persistence: the Store protocol, its records, and the sqlite and redis backends."""
