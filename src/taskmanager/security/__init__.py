"""Security: who the caller is and what proves it.

Below the repositories, and importing none of them: the caller's `Scope` (which workspaces a
request may see), access and refresh tokens, password hashing, the key tokens are signed
with, and the caller key the database checks every transaction's caller with.
"""
