"""Bad input: a value the client sent that cannot be used, found where the fact is known.

Pydantic refuses most bad input before a route runs. What only the caller's scope, a
repository or a cursor can tell (a workspace the caller is not in, a label of another
workspace, a search without words, a cursor of another list) is raised as a
`BadInputError`, which knows nothing of HTTP: errors.py answers every one the same way, a
422 validation problem naming the field.
"""

from __future__ import annotations


class BadInputError(ValueError):
    """`field` holds a value that cannot be used; `message` says why, for the client.

    `field` names the value as the request holds it, the way validation problems name
    fields (`body.label_ids`, `query.sort`, `header.Idempotency-Key`)."""

    def __init__(self, field: str, message: str, error_type: str = "value_error") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.error_type = error_type
