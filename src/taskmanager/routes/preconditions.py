"""Conditional requests (RFC 9110 13.1.1): ETag out, If-Match in, 412 when they differ.

The ETag is the row's version, bumped by every change. A PATCH, PUT or DELETE that sends
If-Match changes the row only if nobody changed it since the client read it; without
If-Match it behaves as before (last writer wins). Every such route reads its row with
`get_for_change`: 404 if the caller cannot see it, 412 if If-Match does not allow it.
"""

from __future__ import annotations

from typing import Annotated, Protocol, TypeVar

from fastapi import Header, HTTPException, Response

from taskmanager.problems import PRECONDITION_FAILED, ProblemError

IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='Change only if the current ETag is one of these, e.g. `"3"` (or `*`).',
    ),
]

IfNoneMatch = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        description='The ETag of the copy you have, e.g. `"3"`: 304 (no body) while it is '
        "still current.",
    ),
]


class Versioned(Protocol):
    """A row with a version (its ETag)."""

    @property
    def version(self) -> int: ...


Found = TypeVar("Found")
Row = TypeVar("Row", bound=Versioned)


def etag(version: int, shows: str | None = None) -> str:
    """The strong entity tag of a row at `version`; `shows`: a digest of the other rows its
    answer shows (a task's category and labels: views.shown_digest), after a hyphen."""
    return f'"{version}"' if shows is None else f'"{version}-{shows}"'


def set_etag(response: Response, version: int, shows: str | None = None) -> None:
    response.headers["ETag"] = etag(version, shows)


def _version_in(tag: str) -> str | None:
    """The version a strong entity tag names (`"3"` or `"3-ab12..."`); None for a weak one
    or anything else."""
    if len(tag) < 2 or not (tag.startswith('"') and tag.endswith('"')):
        return None
    return tag[1:-1].partition("-")[0]


def require_match(if_match: str | None, version: int) -> None:
    """Raise 412 unless If-Match is absent, `*`, or lists the current ETag.

    Comparison is strong: a weak tag (W/"3") never matches, as RFC 9110 requires for
    If-Match; a task's tag matches by its version (`"3-ab12..."` as `"3"`).
    """
    if if_match is None:
        return
    current = etag(version)
    candidates = [tag.strip() for tag in if_match.split(",")]
    # A change is about the row's own version: what else its answer showed (a task's
    # category's name) may have changed meanwhile without conflicting with it.
    if "*" in candidates or any(_version_in(tag) == str(version) for tag in candidates):
        return
    raise ProblemError(
        PRECONDITION_FAILED.problem(
            f"If-Match {if_match.strip()} does not match the current ETag {current}: "
            "someone changed it since you read it; read it again and retry"
        ),
        headers={"ETag": current},
    )


def get_or_404(found: Found | None, not_found: str) -> Found:
    """What a repository `found`, or a 404 saying `not_found` (not the caller's is the same
    answer as not there)."""
    if found is None:
        raise HTTPException(status_code=404, detail=not_found)
    return found


def get_for_change(found: Row | None, not_found: str, if_match: str | None) -> Row:
    """The row a repository `found` for a change (read locked, for this transaction), if it
    exists (else 404 saying `not_found`) and If-Match allows the change (else 412)."""
    row = get_or_404(found, not_found)
    require_match(if_match, row.version)
    return row


def none_match(if_none_match: str, etag: str) -> bool:
    """Whether If-None-Match names `etag` (RFC 9110 13.1.2: weak comparison, `*` matches
    any): the client's copy is current, the answer is 304."""

    def opaque(tag: str) -> str:
        tag = tag.strip()
        return tag[2:] if tag.startswith("W/") else tag

    tags = {opaque(tag) for tag in if_none_match.split(",")}
    return "*" in tags or opaque(etag) in tags
