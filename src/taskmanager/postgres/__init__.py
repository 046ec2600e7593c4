"""Which PostgreSQL the service talks to, and as whom.

The logins to use (`DATABASE_URL` and `OWNER_DATABASE_URL`, or the embedded server's), the
embedded server itself, the roles of a deployment and whether they are safe to serve
requests with, and the migrations driven from code.
"""
