"""Observability: what operators read about a running service.

Log set-up (text or JSON lines, each with its request id; slow statements) and the
Prometheus metrics with their `/metrics` route.
"""
