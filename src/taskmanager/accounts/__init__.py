"""Accounts: the flows that open, enter and guard an account, using the repositories.

Registration (an account and its personal workspace), login sessions (logging in,
refreshing, changing a password), entering a transaction as a caller (the one place a
`Scope` is minted, from what the database answered), and the limits on password attempts
and registrations. What proves who a caller is lives below, in `taskmanager.security`.
"""
