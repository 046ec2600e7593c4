"""Accounts, tokens and authorization: who may call, and what each caller may see."""
