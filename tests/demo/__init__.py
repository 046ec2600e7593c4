"""The demonstrations of the lecture's claims: `taskmanager demo ...`."""
