"""Clients of external services (the lecture's Week 8), each behind a class of its own."""
