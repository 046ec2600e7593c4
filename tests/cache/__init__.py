"""The cache: its Redis, settings, metrics and commands."""
