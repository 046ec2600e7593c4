"""The cache between routes and repositories (lecture Week 10: check cache -> miss ->
repository -> store), on Redis. Optional: without Redis every read takes the database path.
See docs/cache.md for what is cached, how it stays correct, and what is not cached."""
