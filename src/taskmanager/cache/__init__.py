"""The cache between routes and repositories (Redis, optional): see docs/cache.md."""
