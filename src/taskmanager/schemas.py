"""Pydantic models: the catalog cards patrons see.

Request models reject unknown fields and text PostgreSQL cannot store (NUL characters,
lone surrogates) with a 422 naming the field, so such input never reaches the database.
They are strict: a value of another JSON type than documented (`"completed": 0`,
`"category_id": "3"`) is a 422 too, not silently coerced.
Response models read ORM objects directly (`from_attributes=True`).
"""

from __future__ import annotations

import unicodedata
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    computed_field,
    field_validator,
    model_validator,
)

from taskmanager.models import (
    ACCESS_TOKEN_NAME_MAX_LENGTH,
    CALENDAR_NAME_MAX_LENGTH,
    CALENDAR_URL_MAX_LENGTH,
    CATEGORY_NAME_MAX_LENGTH,
    DISPLAY_NAME_MAX_LENGTH,
    EMAIL_MAX_LENGTH,
    LABEL_NAME_MAX_LENGTH,
    TITLE_MAX_LENGTH,
    WORKSPACE_NAME_MAX_LENGTH,
)
from taskmanager.security.passwords import PASSWORD_MAX_LENGTH, PASSWORD_MIN_LENGTH

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
CalendarName = Annotated[
    str,
    Field(min_length=1, max_length=CALENDAR_NAME_MAX_LENGTH, examples=["Team holidays"]),
    AfterValidator(_storable_text),
    AfterValidator(_not_blank),
]
LabelName = Annotated[
    str,
    Field(min_length=1, max_length=LABEL_NAME_MAX_LENGTH, examples=["urgent"]),
    AfterValidator(_storable_text),
    AfterValidator(_not_blank),
]
# Any case in, lower case stored and shown: "#FFAA00" and "#ffaa00" are one colour.
Colour = Annotated[
    str,
    Field(
        pattern="^#[0-9a-fA-F]{6}$",
        description="#RRGGBB (hexadecimal, any case; answered in lower case).",
        examples=["#ff8800"],
    ),
    AfterValidator(str.lower),
]
Description = Annotated[str, Field(max_length=10_000), AfterValidator(_storable_text)]
DatabaseId = Annotated[int, Field(ge=1, le=INT4_MAX)]
Priority = Literal["low", "normal", "high", "urgent"]
# A role in a workspace (taskmanager.security.roles.Role; a test checks they agree).
RoleName = Literal["owner", "admin", "member", "viewer"]
MAX_LABELS_PER_TASK = 20


def _unique_ids(value: list[int] | None) -> list[int] | None:
    if value is not None and len(set(value)) != len(value):
        raise ValueError("must not name a label twice")
    return value


LabelIds = Annotated[
    list[DatabaseId],
    Field(
        max_length=MAX_LABELS_PER_TASK,
        description="The task's labels (ids of labels in the task's workspace), at most "
        f"{MAX_LABELS_PER_TASK}, each once.",
        examples=[[1, 2]],
        json_schema_extra={"uniqueItems": True},
    ),
    AfterValidator(_unique_ids),
]
TaskSort = Literal["newest", "oldest", "due", "priority", "title", "relevance"]


def _storable_moment(value: datetime) -> datetime:
    """The moment in UTC, as PostgreSQL gives it back: what a create or an update answers
    is then what a GET answers (`Z`, not the offset it was sent with). It must exist in UTC
    too: 0001-01-01T00:00+14:00 would be in year 0."""
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("is outside the range of dates that can be stored") from None


def _iso_8601(value: object) -> object:
    """Only what the schema documents (an ISO 8601 string): not a number, nor a numeric
    string, which Pydantic's lax mode would read as seconds since 1970."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError("must be an ISO 8601 date-time with a time zone, like 2026-12-24T18:00:00Z")


DueAt = Annotated[
    AwareDatetime,
    BeforeValidator(_iso_8601),
    AfterValidator(_storable_moment),
    Field(
        # Not strict: a JSON body carries a moment as an ISO 8601 string.
        strict=False,
        description="When the task is due, with its time zone (ISO 8601).",
        examples=["2026-12-24T18:00:00+01:00"],
    ),
]
WorkspaceId = Annotated[
    int,
    Field(ge=1, le=INT4_MAX, description="A workspace you belong to; default: your personal one."),
]
WorkspaceIdOfToken = Annotated[
    int,
    Field(
        ge=1,
        le=INT4_MAX,
        description="Bind the token to this workspace (one you belong to): it sees no other. "
        "Left out: it acts in all of yours.",
    ),
]
Expiry = Annotated[
    AwareDatetime,
    BeforeValidator(_iso_8601),
    AfterValidator(_storable_moment),
    Field(
        strict=False,
        description="When the token stops working, with its time zone (ISO 8601); in the "
        "future. Leave out both this and expires_in_days for a token that does not expire.",
        examples=["2027-06-30T00:00:00Z"],
    ),
]


def _whole_characters(value: str) -> str:
    if any("\ud800" <= char <= "\udfff" for char in value):
        raise ValueError("must not contain unpaired surrogate characters")
    return value


Email = Annotated[EmailStr, Field(max_length=EMAIL_MAX_LENGTH, examples=["ada@example.com"])]
# NIST SP 800-63B: any characters, 8 to 128 of them, never truncated or rewritten.
Password = Annotated[
    str,
    Field(
        min_length=PASSWORD_MIN_LENGTH,
        max_length=PASSWORD_MAX_LENGTH,
        examples=["correct horse battery staple"],
        json_schema_extra={"format": "password"},
    ),
    AfterValidator(_whole_characters),
]
DisplayName = Annotated[
    str,
    Field(min_length=1, max_length=DISPLAY_NAME_MAX_LENGTH, examples=["Ada"]),
    AfterValidator(_storable_text),
    AfterValidator(_not_blank),
]


def _one_line(value: str) -> str:
    # A workspace's name is a calendar feed's NAME: a one-line value (feeds/ics.py also
    # writes any control character as a space, for names stored before this check).
    if any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in value):
        raise ValueError("must be one line, without control characters")
    return value


WorkspaceName = Annotated[
    str,
    Field(min_length=1, max_length=WORKSPACE_NAME_MAX_LENGTH, examples=["Household"]),
    AfterValidator(_storable_text),
    AfterValidator(_not_blank),
    AfterValidator(_one_line),
]


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
    workspace_id: WorkspaceId | None = None
    due_at: DueAt | None = None
    priority: Priority = Field(default="low", description="low < normal < high < urgent.")
    label_ids: LabelIds = Field(default_factory=list)


class TaskUpdate(BaseModel):
    """For PATCH (and PUT) /tasks/{id}: only the fields sent change.

    An explicit null clears `description`, `category_id` or `due_at`; `title`,
    `completed`, `priority` and `label_ids` cannot be null. `label_ids` replaces the
    task's labels (`[]`: none).
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra=_not_nullable("title", "completed", "priority", "label_ids"),
    )

    title: Title | None = None
    description: Description | None = None
    completed: bool | None = None
    category_id: DatabaseId | None = None
    due_at: DueAt | None = None
    priority: Priority | None = None
    label_ids: LabelIds | None = None

    @field_validator("title", "completed", "priority", "label_ids")
    @classmethod
    def _reject_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("may be left out, but not set to null")
        return value


class CategoryCreate(BaseModel):
    """For POST /categories."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: CategoryName
    workspace_id: WorkspaceId | None = None


class CategoryUpdate(BaseModel):
    """For PATCH /categories/{id}: rename."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: CategoryName


class LabelCreate(BaseModel):
    """For POST /labels."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: LabelName
    colour: Colour | None = None
    workspace_id: WorkspaceId | None = None


class LabelUpdate(BaseModel):
    """For PATCH /labels/{id}: only the fields sent change; a null colour clears it."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_not_nullable("name"))

    name: LabelName | None = None
    colour: Colour | None = None

    @field_validator("name")
    @classmethod
    def _reject_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("may be left out, but not set to null")
        return value


# ─────────────────────────────────────────────
# RESPONSE MODELS (what the client RECEIVES)
# ─────────────────────────────────────────────


class InWorkspaceFields(BaseModel):
    """What the answer of a row a workspace owns (a category, a label) adds to its nested
    form: its workspace, when it was made, and its version."""

    model_config = ConfigDict(from_attributes=True)

    workspace_id: int
    created_at: datetime
    version: int  # also sent as the ETag header


class CategoryResponse(BaseModel):
    """A category as nested in a task."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str


class CategoryDetailResponse(InWorkspaceFields, CategoryResponse):
    """A category as returned by the /categories endpoints."""


class LabelResponse(BaseModel):
    """A label as nested in a task."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    colour: str | None


class LabelDetailResponse(InWorkspaceFields, LabelResponse):
    """A label as returned by the /labels endpoints."""


class TaskResponse(BaseModel):
    """A task's own columns."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    workspace_id: int
    title: str
    description: str | None
    completed: bool
    due_at: datetime | None
    priority: Priority
    completed_at: datetime | None = Field(
        description="When the task was last completed; null while it is open."
    )
    created_at: datetime
    updated_at: datetime
    version: int  # also sent as the ETag header


class TaskWithCategoryResponse(TaskResponse):
    """Every task response: the task plus its category, eagerly loaded."""

    category: CategoryResponse | None
    labels: list[LabelResponse] = Field(description="By name (ignoring case), then id.")


# ─────────────────────────────────────────────
# ACCOUNTS AND WORKSPACES
# ─────────────────────────────────────────────


class RegisterRequest(BaseModel):
    """For POST /auth/register."""

    model_config = ConfigDict(extra="forbid", strict=True)

    email: Email
    password: Password
    display_name: DisplayName | None = None


class LoginForm(BaseModel):
    """For POST /auth/token: OAuth 2's password grant (RFC 6749 4.3.2), as a form. Fields an
    OAuth 2 client may add (scope, client_id, client_secret) are ignored: this service has
    no scopes and no clients."""

    grant_type: str | None = Field(
        default=None, pattern="^password$", description="`password`, if sent."
    )
    username: str = Field(description="Your email.", examples=["ada@example.com"])
    password: str = Field(json_schema_extra={"format": "password"})


class Accepted(BaseModel):
    """202: the request was taken; what follows comes by mail."""

    detail: str = Field(examples=["check your mail to go on"])


class VerifyEmailRequest(BaseModel):
    """For POST /auth/verify-email: the token of the mailed link."""

    model_config = ConfigDict(extra="forbid", strict=True)

    token: str = Field(min_length=1, max_length=200, description="The `token` of the link.")


class PasswordResetRequest(BaseModel):
    """For POST /auth/password-reset."""

    model_config = ConfigDict(extra="forbid", strict=True)

    email: Email


class PasswordResetConfirm(BaseModel):
    """For POST /auth/password-reset/confirm: the mailed token and the new password."""

    model_config = ConfigDict(extra="forbid", strict=True)

    token: str = Field(min_length=1, max_length=200, description="The `token` of the link.")
    new_password: Password


class UserResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    display_name: str
    personal_workspace_id: int | None
    created_at: datetime
    email_verified_at: datetime | None = Field(
        description="When the address was proven (the mailed link); null until then."
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def email_verified(self) -> bool:
        """Whether the owner of the address proved it."""
        return self.email_verified_at is not None


class UserUpdate(BaseModel):
    """For PATCH /users/me. A new `password` needs `current_password`, and ends every
    other login session."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra=_not_nullable("display_name", "password")
    )

    display_name: DisplayName | None = None
    password: Password | None = None
    current_password: str | None = Field(
        default=None, max_length=1024, json_schema_extra={"format": "password"}
    )

    @field_validator("display_name", "password")
    @classmethod
    def _reject_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("may be left out, but not set to null")
        return value

    @model_validator(mode="after")
    def _current_password_with_new_one(self) -> UserUpdate:
        if self.password is not None and not self.current_password:
            raise ValueError("current_password: needed to set a new password")
        return self


class TokenResponse(BaseModel):
    """RFC 6749 5.1: what POST /auth/token and POST /auth/refresh answer."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_token: str = Field(
        description="Single use: POST it to /auth/refresh for a new pair. Using one twice "
        "ends the login session."
    )


class LogoutAllRequest(BaseModel):
    """For POST /auth/logout-all (a body is optional)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    include_access_tokens: bool = Field(
        default=False,
        description="Also revoke every personal access token of the account (by default "
        "they keep working: they are for scripts, not logins).",
    )


# A personal access token's scope (taskmanager.security.access_tokens.TokenScope; a test
# checks they agree).
ScopeName = Literal[
    "tasks:read",
    "tasks:write",
    "members:write",
    "workspaces:write",
    "account:read",
    "account:write",
]
AccessTokenName = Annotated[
    str,
    Field(min_length=1, max_length=ACCESS_TOKEN_NAME_MAX_LENGTH, examples=["nightly backup"]),
    AfterValidator(_storable_text),
    AfterValidator(_not_blank),
]
MAX_ACCESS_TOKEN_DAYS = 3650


def _unique_scopes(value: list[str]) -> list[str]:
    if len(set(value)) != len(value):
        raise ValueError("must not name a scope twice")
    return value


class AccessTokenCreate(BaseModel):
    """For POST /users/me/tokens."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra=_not_nullable("workspace_id", "expires_at", "expires_in_days"),
    )

    name: AccessTokenName
    scopes: Annotated[
        list[ScopeName],
        Field(
            min_length=1,
            max_length=len(get_args(ScopeName)),
            description="What the token may do: tasks:read, tasks:write, members:write and "
            "workspaces:write (the roles' actions: in a workspace, the token may do what both "
            "its scopes and your role there allow), account:read (GET /users/me) and "
            "account:write (PATCH /users/me, not the password). A scope that writes includes "
            "the one that reads.",
            examples=[["tasks:read"]],
            json_schema_extra={"uniqueItems": True},
        ),
        AfterValidator(_unique_scopes),
    ]
    workspace_id: WorkspaceIdOfToken | None = None
    expires_at: Expiry | None = None
    expires_in_days: (
        Annotated[
            int,
            Field(
                ge=1, le=MAX_ACCESS_TOKEN_DAYS, description="Or: expires this many days from now."
            ),
        ]
        | None
    ) = None

    @field_validator("workspace_id", "expires_at", "expires_in_days")
    @classmethod
    def _reject_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("may be left out, but not set to null")
        return value


class AccessTokenResponse(BaseModel):
    """A personal access token, without its secret."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str = Field(
        description="The token's first characters, to recognise it by (not a secret).",
        examples=["tm_pat_4Fz9"],
    )
    scopes: list[ScopeName]
    workspace_id: int | None = Field(description="The one workspace it may act in; null: any.")
    created_at: datetime
    expires_at: datetime | None = Field(description="null: it does not expire.")
    last_used_at: datetime | None = Field(
        description="When it was last used (stamped at most once a minute); null: never."
    )


class AccessTokenCreated(AccessTokenResponse):
    """A token just made: `token` is shown this once, and never again."""

    token: str = Field(
        description="The token: send it as `Authorization: Bearer <token>`. Keep it secret; "
        "only its hash is stored, so it cannot be shown again.",
        examples=["tm_pat_4Fz9eXAmPLe0000000000000000000002cJ7Ab"],
    )


class CalendarFeedCreate(BaseModel):
    """For POST /calendar/feeds."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra=_not_nullable("workspace_id")
    )

    workspace_id: (
        Annotated[
            int,
            Field(
                ge=1,
                le=INT4_MAX,
                description="A feed of this workspace's tasks only (one you belong to); it "
                "stops when you leave it. Left out: the tasks of every workspace you belong "
                "to, as your memberships stand when the feed is read.",
            ),
        ]
        | None
    ) = None

    @field_validator("workspace_id")
    @classmethod
    def _reject_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("may be left out, but not set to null")
        return value


class CalendarFeedResponse(BaseModel):
    """A calendar feed, without its secret URL."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    workspace_id: int | None = Field(description="The one workspace it shows; null: all yours.")
    prefix: str = Field(
        description="The secret's first characters, to recognise its URL by (not a secret).",
        examples=["tm_cal_4Fz9"],
    )
    created_at: datetime
    regenerated_at: datetime = Field(description="When its current URL was made.")


class CalendarFeedCreated(CalendarFeedResponse):
    """A feed just made or regenerated: its `url` is shown this once, and never again."""

    url: str = Field(
        description="The feed's secret address: subscribe to it in a calendar app. Whoever "
        "has it reads the feed (and nothing else): keep it secret. Only a hash of it is "
        "stored, so it cannot be shown again; regenerate the feed for a new one.",
        examples=[
            "https://tasks.example.com/calendar/tm_cal_4Fz9eXAmPLe0000000000000000000002cJ7Ab.ics"
        ],
    )
    webcal_url: str = Field(
        description="The same address as `webcal://`, which opens the subscription in "
        "Apple Calendar and Thunderbird.",
    )


class RefreshRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    refresh_token: str = Field(min_length=1, max_length=200)


class WorkspaceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: WorkspaceName


class WorkspaceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: WorkspaceName


class WorkspaceResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    personal: bool
    role: RoleName = Field(description="Your role in this workspace.")
    created_at: datetime
    version: int


class MemberResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    user_id: int
    email: str
    display_name: str
    role: RoleName
    joined_at: datetime


class WorkspaceDetailResponse(WorkspaceResponse):
    members: list[MemberResponse]


class MemberUpdate(BaseModel):
    """For PATCH /workspaces/{id}/members/{user_id}."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: RoleName


class WorkspaceTransfer(BaseModel):
    """For POST /workspaces/{id}/transfer."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: DatabaseId = Field(description="The member who becomes an owner; you become admin.")


# ─────────────────────────────────────────────
# INVITATIONS
# ─────────────────────────────────────────────

InvitationStatusName = Literal["pending", "expired", "accepted", "declined", "revoked"]


class InvitationCreate(BaseModel):
    """For POST /workspaces/{id}/invitations."""

    model_config = ConfigDict(extra="forbid", strict=True)

    email: Email
    role: RoleName = Field(
        default="member",
        description="What accepting makes the invitee: viewer (reads), member (also changes "
        "tasks, categories and labels), admin (also manages members) or owner (also renames, "
        "deletes and transfers the workspace). Only an owner invites an owner.",
    )


class InvitationResponse(BaseModel):
    """An invitation, as the workspace's admins and owners see it."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    workspace_id: int
    email: str
    role: RoleName
    status: InvitationStatusName = Field(
        description="pending (can be accepted), expired, accepted, declined or revoked."
    )
    invited_by: int | None = Field(description="The user id of who invited.")
    created_at: datetime
    expires_at: datetime
    send_count: int = Field(description="How many times it was mailed.")
    last_sent_at: datetime


class ReceivedInvitationResponse(BaseModel):
    """An open invitation to your address."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    workspace_id: int
    workspace_name: str
    role: RoleName = Field(description="Your role once you accept.")
    invited_by: str | None = Field(description="The display name of who invited you.")
    created_at: datetime
    expires_at: datetime


class InvitationToken(BaseModel):
    """For POST /invitations/accept: the token of the mailed link."""

    model_config = ConfigDict(extra="forbid", strict=True)

    token: str = Field(min_length=1, max_length=200)


# ─────────────────────────────────────────────
# ACTIVITY
# ─────────────────────────────────────────────


class ActivityResponse(BaseModel):
    """One change in a workspace, as the database recorded it in the change's transaction."""

    model_config = ConfigDict(from_attributes=True)

    id: int = Field(description="Increasing: a larger id is a later change.")
    workspace_id: int
    actor_id: int | None = Field(
        description="The user who made the change; null for one made by the database's "
        "owner (a migration, an operator's SQL)."
    )
    kind: str = Field(
        description="`<object_type>.<verb>`: task.created, task.updated, task.deleted, "
        "task.label_added, task.label_removed, category.created, category.renamed, "
        "category.deleted, label.created, label.updated, label.deleted, member.added, "
        "member.role_changed, member.removed, workspace.created, workspace.renamed, "
        "workspace.deleted, invitation.created, invitation.resent, invitation.revoked, "
        "invitation.accepted, invitation.declined.",
        examples=["task.updated"],
    )
    object_type: str = Field(examples=["task"])
    object_id: str = Field(
        description="The object's id, as text (a member: their user id).", examples=["42"]
    )
    before: dict[str, Any] | None = Field(
        description="The fields the change changed, as they were (an update: only those "
        "that changed; a create: null; a delete: every field).",
        examples=[{"title": "Buy milk"}],
    )
    after: dict[str, Any] | None = Field(
        description="The same fields as they became (a delete: null; a create: every field).",
        examples=[{"title": "Buy oat milk"}],
    )
    request_id: str | None = Field(
        description="The X-Request-ID of the request that made the change (null outside a request)."
    )
    created_at: datetime = Field(description="When the change's transaction began.")


class HealthResponse(BaseModel):
    status: str


# ─── Calendars in, and the agenda


class CalendarCreate(BaseModel):
    """For POST /workspaces/{id}/calendars: an iCalendar feed's URL (https://; checked
    before it is stored and before every connection) and a name for it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: Annotated[
        str,
        Field(
            min_length=1,
            max_length=CALENDAR_URL_MAX_LENGTH,
            examples=["https://calendar.example.com/team-holidays.ics"],
        ),
        AfterValidator(_storable_text),
    ]
    name: CalendarName


FeedStatusName = Literal["fresh", "stale", "failing"]


class CalendarStatus(BaseModel):
    """How a subscribed feed stands: `fresh` (fetched within the refresh interval),
    `stale` (the copy served is as of `as_of`: not fetched yet, or a fetch under way took
    longer than the agenda waits) or `failing` (the last fetch failed: `error` says why;
    after several failures in a row it is not fetched again until `skipped_until`). A
    failing feed's last good copy, if any, is still served."""

    calendar_id: int
    workspace_id: int
    name: str
    status: FeedStatusName
    as_of: datetime | None
    error: str | None
    consecutive_failures: int
    skipped_until: datetime | None
    event_count: int
    truncated: bool = False


class CalendarResponse(BaseModel):
    """A workspace's calendar subscription, and how its feed stands."""

    id: int
    workspace_id: int
    url: str
    name: str
    created_by: int | None
    created_at: datetime
    feed: CalendarStatus


class AgendaItem(BaseModel):
    """One thing in an agenda: a task of yours that is due (`source` "task": `task_id`,
    its due time as `start`) or an event of a subscribed calendar (`source` "calendar":
    `calendar_id`, the event's `uid`, `start` and `end`)."""

    source: Literal["task", "calendar"]
    start: datetime
    end: datetime | None
    all_day: bool
    title: str
    workspace_id: int
    task_id: int | None = None
    completed: bool | None = None
    calendar_id: int | None = None
    uid: str | None = None
    location: str | None = None


class AgendaResponse(BaseModel):
    """GET /agenda: the items between `from` and `to` by start time, and how each
    subscribed feed stands (an item of a `stale` or `failing` feed is its last good
    copy)."""

    model_config = ConfigDict(populate_by_name=True)

    from_: datetime = Field(alias="from")
    to: datetime
    items: list[AgendaItem]
    calendars: list[CalendarStatus]
    # More tasks were due in the window than an agenda lists.
    tasks_truncated: bool


# ─────────────────────────────── webhooks (routes/webhooks.py)

WebhookUrl = Annotated[
    str,
    Field(
        min_length=1,
        max_length=2048,
        description="Where events are POSTed: https:// (http:// only where the service "
        "allows it, in development); no user name or password, no private address.",
        examples=["https://hooks.example.com/taskmanager"],
    ),
]
WebhookEvents = Annotated[
    list[str],
    Field(
        min_length=1,
        max_length=50,
        description="The event types to send (docs/webhooks.md lists them; an unknown one is "
        "422 naming the known ones).",
        examples=[["task.created", "task.completed"]],
    ),
]
WebhookDescription = Annotated[str, Field(max_length=500, description="What it is for.")]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: WebhookUrl
    events: WebhookEvents
    description: WebhookDescription = ""


class WebhookUpdate(BaseModel):
    """The fields to change; enabling an endpoint clears why it was disabled."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: WebhookUrl | None = None
    events: WebhookEvents | None = None
    description: WebhookDescription | None = None
    enabled: bool | None = None


class WebhookResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    workspace_id: int
    url: str
    description: str
    events: list[str]
    enabled: bool
    disabled_reason: str | None = Field(description="Why it is disabled (None: enabled).")
    disabled_at: datetime | None
    failing_since: datetime | None = Field(
        description="Since when every attempt failed (None: the last one succeeded)."
    )
    previous_secret_valid_until: datetime | None = Field(
        description="After a rotation: until when the previous secret signs too."
    )
    version: int
    created_at: datetime
    updated_at: datetime


class WebhookSecret(BaseModel):
    secret: str = Field(
        description="The signing secret (Standard Webhooks: whsec_ + base64), shown this "
        "once: it is not stored, and cannot be shown again (rotate it for a new one).",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )


class WebhookCreated(WebhookResponse, WebhookSecret):
    """An endpoint just registered, with its secret (shown this once)."""


class WebhookRotated(WebhookSecret):
    previous_secret_valid_until: datetime | None = Field(
        description="Until when the previous secret still signs (both signatures are sent)."
    )


class WebhookAttemptResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    attempted_at: datetime
    status_code: int | None = Field(description="The endpoint's answer (None: no answer).")
    latency_ms: int
    response_excerpt: str | None = Field(description="The answer's first 1000 characters.")
    error: str | None


class WebhookDeliveryResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    endpoint_id: uuid.UUID
    message_id: str = Field(description="The webhook-id header: the same on every retry.")
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts_made: int
    next_attempt_at: datetime | None
    replay_of: uuid.UUID | None
    created_at: datetime
    finished_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    payload: dict[str, Any]
    attempts: list[WebhookAttemptResponse]


class WebhookDeliveryQueued(BaseModel):
    """A delivery just recorded (sent after the commit)."""

    delivery_id: uuid.UUID


class WebhookEventType(BaseModel):
    type: str
    description: str
