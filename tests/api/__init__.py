"""The HTTP API: status, headers and bodies of every route, and its OpenAPI document."""
