"""The events a webhook endpoint may subscribe to, and their payloads (schema version 1).

Every change the activity log records (migration 0011) is an event of the same name
(`task.updated`, `member.added`, ...); `task.completed` is sent besides `task.updated` when
a task becomes completed; `webhook.test` is what POST .../test sends. The payload is built
by PostgreSQL (migration 0017's fan-out) from the activity row; these models describe it
for the OpenAPI document's `webhooks` section and for receivers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The version of the payload's shape (`version` in every payload): a change that could
# break a receiver comes as a new version, announced, never silently.
PAYLOAD_VERSION = 1

# What an endpoint may subscribe to, each with what it means.
EVENTS: dict[str, str] = {
    "task.created": "A task was created.",
    "task.updated": "A task's fields changed (`before`/`after`: only the changed ones).",
    "task.completed": "A task became completed (sent besides its task.updated).",
    "task.deleted": "A task was deleted (`before`: its last values).",
    "task.label_added": "A label was put on a task.",
    "task.label_removed": "A label was taken off a task.",
    "category.created": "A category was created.",
    "category.renamed": "A category was renamed.",
    "category.updated": "A category's other fields changed.",
    "category.deleted": "A category was deleted.",
    "label.created": "A label was created.",
    "label.updated": "A label was renamed or recoloured.",
    "label.deleted": "A label was deleted.",
    "member.added": "Someone joined the workspace.",
    "member.role_changed": "A member's role changed.",
    "member.removed": "A member left or was removed.",
    "workspace.renamed": "The workspace was renamed.",
    "workspace.updated": "The workspace's other fields changed.",
    "invitation.created": "An invitation was sent (its address is not in the payload).",
    "invitation.accepted": "An invitation was accepted.",
    "invitation.declined": "An invitation was declined.",
    "invitation.revoked": "An invitation was revoked.",
    "invitation.resent": "An invitation was mailed again.",
}
EVENT_TYPES: tuple[str, ...] = tuple(EVENTS)
TEST_EVENT = "webhook.test"


class ChangeData(BaseModel):
    """What changed: the activity log's entry for it."""

    model_config = ConfigDict(extra="allow")

    workspace_id: int
    object_type: str = Field(description="task, category, label, member, workspace, invitation")
    object_id: str = Field(description="The object's id (a member: their user id).")
    actor_id: int | None = Field(description="Who made the change (None: the service).")
    activity_id: int = Field(description="The entry's id in GET /workspaces/{id}/activity.")
    request_id: str | None = Field(description="The X-Request-ID of the request that made it.")
    before: dict[str, Any] | None = Field(
        description="The fields before (an update: the changed ones; a create: null)."
    )
    after: dict[str, Any] | None = Field(
        description="The fields after (an update: the changed ones; a delete: null)."
    )


class TestData(BaseModel):
    workspace_id: int
    endpoint_id: str
    actor_id: int | None
    message: str


class EventPayloadV1(BaseModel):
    """The body of every webhook request (Standard Webhooks' shape: type, timestamp,
    data), version 1."""

    type: str = Field(description="The event type, e.g. task.created.")
    timestamp: datetime = Field(description="When the change happened (UTC).")
    version: Literal[1] = Field(description="The payload's schema version.")
    data: ChangeData


class TestEventPayloadV1(BaseModel):
    """The body of a test event (POST /workspaces/{id}/webhooks/{webhook_id}/test)."""

    type: Literal["webhook.test"]
    timestamp: datetime
    version: Literal[1]
    data: TestData
