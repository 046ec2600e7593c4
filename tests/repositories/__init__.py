"""Repositories against the real test database: the queries themselves."""
