"""Accounts: the flows that open, enter and guard an account, using the repositories.

Registration (an account and its personal workspace) and the limits on password attempts
and registrations. What proves who a caller is lives below, in `taskmanager.security`.
"""
