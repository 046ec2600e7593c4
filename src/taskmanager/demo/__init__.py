"""Runnable demonstrations of the lecture's claims: the sync trap, measured and drawn, and
the Common Mistakes, each run against a real database next to its fix."""
