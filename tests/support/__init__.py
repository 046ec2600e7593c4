"""Helpers shared by the tests: server processes, faults, PgBouncer, the live app, problems."""
