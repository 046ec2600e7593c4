"""Pydantic models: the catalog cards patrons see.

Request models reject unknown fields and text PostgreSQL cannot store (NUL characters,
lone surrogates) with a 422 naming the field, so such input never reaches the database.
They are strict: a value of another JSON type than documented (`"completed": 0`,
`"category_id": "3"`) is a 422 too, not silently coerced.
Response models read ORM objects directly (`from_attributes=True`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from taskmanager.models import CATEGORY_NAME_MAX_LENGTH, TITLE_MAX_LENGTH

# PostgreSQL's `integer` range: ids and foreign keys outside it can never exist.
INT4_MAX = 2_147_483_647


def _storable_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    if any("\ud800" <= char <= "\udfff" for char in value):
        raise ValueError("must not contain unpaired surrogate characters")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


StorableText = Annotated[str, AfterValidator(_storable_text)]
Title = Annotated[
    str,
    Field(min_length=1, max_length=TITLE_MAX_LENGTH, examples=["Buy milk"]),
    AfterValidator(_storable_text),
    AfterValidator(_not_blank),
]
CategoryName = Annotated[
    str,
    Field(min_length=1, max_length=CATEGORY_NAME_MAX_LENGTH, examples=["Errands"]),
    AfterValidator(_storable_text),
    AfterValidator(_not_blank),
]
Description = Annotated[str, Field(max_length=10_000), AfterValidator(_storable_text)]
DatabaseId = Annotated[int, Field(ge=1, le=INT4_MAX)]


def without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` without the `anyOf: [X, {"type": "null"}]` Pydantic writes for `X | None`:
    for a value that may be left out but never be null."""
    alternatives = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    if len(alternatives) != 1:
        return schema
    rest = {key: value for key, value in schema.items() if key != "anyOf"}
    return {**alternatives[0], **rest}


def _not_nullable(*fields: str) -> Any:
    """Drop `null` (and the default) from the JSON schema of these body fields."""

    def edit(schema: dict[str, Any]) -> None:
        properties = schema.get("properties", {})
        for name in fields:
            if name in properties:
                properties[name] = without_null(properties[name])
                properties[name].pop("default", None)

    return edit


# ─────────────────────────────────────────────
# REQUEST MODELS (what the client SENDS)
# ─────────────────────────────────────────────


class TaskCreate(BaseModel):
    """For POST /tasks: creating a new task."""

    model_config = ConfigDict(extra="forbid", strict=True)

    title: Title
    description: Description | None = None
    completed: bool = False
    category_id: DatabaseId | None = None


class TaskUpdate(BaseModel):
    """For PATCH (and PUT) /tasks/{id}: only the fields sent change.

    An explicit null clears `description` or `category_id`; `title` and `completed`
    cannot be null.
    """

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra=_not_nullable("title", "completed")
    )

    title: Title | None = None
    description: Description | None = None
    completed: bool | None = None
    category_id: DatabaseId | None = None

    @field_validator("title", "completed")
    @classmethod
    def _reject_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("may be left out, but not set to null")
        return value


class CategoryCreate(BaseModel):
    """For POST /categories."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: CategoryName


class CategoryUpdate(BaseModel):
    """For PATCH /categories/{id}: rename."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: CategoryName


# ─────────────────────────────────────────────
# RESPONSE MODELS (what the client RECEIVES)
# ─────────────────────────────────────────────


class CategoryResponse(BaseModel):
    """A category as nested in a task."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str


class CategoryDetailResponse(CategoryResponse):
    """A category as returned by the /categories endpoints."""

    created_at: datetime
    version: int  # also sent as the ETag header


class TaskResponse(BaseModel):
    """A task's own columns."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    description: str | None
    completed: bool
    created_at: datetime
    updated_at: datetime
    version: int  # also sent as the ETag header


class TaskWithCategoryResponse(TaskResponse):
    """Every task response: the task plus its category, eagerly loaded."""

    category: CategoryResponse | None


class HealthResponse(BaseModel):
    status: str
