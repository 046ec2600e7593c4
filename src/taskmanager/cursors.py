"""Cursors: where the next page of a list starts, as an opaque string the client hands back.

A cursor is `<payload>.<tag>`, both base64url without padding. The payload is compact JSON:
`{"s": sort, "f": fingerprint of the filters, "k": the last row's sort keys}`. The tag is
HMAC-SHA256 (its first 16 bytes) of the payload, keyed with the app's signing key and bound
to the user it was issued to: a cursor cannot be forged or altered, and another user's is
refused (it would reveal nothing they cannot see, but it is not theirs to replay). It is not
encrypted: it holds the sort keys of a row its holder has already seen.

Nothing here knows HTTP: a cursor that cannot be used raises InvalidCursorError, a
BadInputError about `query.cursor` whose message says why (errors.py answers it, a 422).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Enum, SmallInteger
from sqlalchemy.types import TypeEngine

from taskmanager.bad_input import BadInputError

# Enough for the longest key there is (a 200-character title) with room to spare; longer
# input is refused before any decoding work.
MAX_CURSOR_LENGTH = 2048
_TAG_BYTES = 16
_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# Separates a cursor's tag from any other use of the signing key (access tokens).
_PURPOSE = b"taskmanager task-list cursor\x00"


class InvalidCursorError(BadInputError):
    """This cursor cannot continue this list; the message says why, for the client."""

    def __init__(self, message: str) -> None:
        super().__init__("query.cursor", message)


def fingerprint(filters: object) -> str:
    """A short digest of a filters dataclass: equal filters, equal fingerprints. A cursor
    carries it, so one used with other filters is refused instead of continuing a list it
    was not made for."""
    if not dataclasses.is_dataclass(filters) or isinstance(filters, type):
        raise TypeError("fingerprint() takes a dataclass instance")
    canonical = json.dumps(dataclasses.asdict(filters), sort_keys=True, default=_canonical)
    return _b64encode(hashlib.sha256(canonical.encode()).digest()[:9])


def _canonical(value: object) -> object:
    """A filter value JSON cannot hold, as one that always reads the same: a set in order
    (its iteration order is not), anything else (a moment) as text."""
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return str(value)


@dataclasses.dataclass(frozen=True, slots=True)
class CursorCodec:
    """Issues and reads the cursors of one user, with the app's signing key."""

    signing_key: str
    user_id: int

    def issue(self, sort: str, filters_fingerprint: str, keys: Sequence[Any]) -> str:
        payload = json.dumps(
            {"s": sort, "f": filters_fingerprint, "k": [_json_value(key) for key in keys]},
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        return f"{_b64encode(payload)}.{_b64encode(self._tag(payload))}"

    def read(
        self,
        cursor: str,
        *,
        sort: str,
        filters_fingerprint: str,
        key_types: Sequence[TypeEngine[Any]],
    ) -> tuple[Any, ...]:
        """The sort keys `cursor` continues after, typed as `key_types`; InvalidCursorError if it
        is not one this codec issued, or was issued for another sort or other filters."""
        if len(cursor) > MAX_CURSOR_LENGTH or not _SHAPE.fullmatch(cursor):
            raise InvalidCursorError(
                "is not a cursor: use the one a Link header gave you, unchanged"
            )
        encoded_payload, encoded_tag = cursor.split(".")
        try:
            payload = _b64decode(encoded_payload)
            tag = _b64decode(encoded_tag)
        except (binascii.Error, ValueError):
            raise InvalidCursorError("is not a cursor: it is not base64url") from None
        if not hmac.compare_digest(tag, self._tag(payload)):
            raise InvalidCursorError("was not issued to you by this server, or was altered")
        try:
            content = json.loads(payload)
        except ValueError:  # also UnicodeDecodeError
            raise InvalidCursorError("is not a cursor: its content is unreadable") from None
        if not (
            isinstance(content, dict)
            and isinstance(content.get("s"), str)
            and isinstance(content.get("f"), str)
            and isinstance(content.get("k"), list)
        ):
            raise InvalidCursorError("is not a cursor: its content is incomplete")
        if content["s"] != sort:
            raise InvalidCursorError(
                f"was issued for sort={content['s']}, not sort={sort}: a cursor continues "
                "the list it came from; start again without one to change the order"
            )
        if content["f"] != filters_fingerprint:
            raise InvalidCursorError(
                "was issued for other filters: a cursor continues the list it came from; "
                "start again without one to change the filters"
            )
        keys: list[Any] = content["k"]
        if len(keys) != len(key_types):
            raise InvalidCursorError("is not a cursor for this order: it has the wrong keys")
        return tuple(
            _typed(value, key_type) for value, key_type in zip(keys, key_types, strict=True)
        )

    def _tag(self, payload: bytes) -> bytes:
        message = _PURPOSE + str(self.user_id).encode() + b"\x00" + payload
        mac = hmac.new(self.signing_key.encode(), message, hashlib.sha256)
        return mac.digest()[:_TAG_BYTES]


# asyncpg reads PostgreSQL's infinite timestamps as these naive datetimes, and binds them
# back as infinite (the "due" order sorts a task without a due date at 'infinity'). As an
# ISO string with a zone they would come back finite, before every task without a due date.
_INFINITE_MOMENTS = {"infinity": datetime.max, "-infinity": datetime.min}


def _json_value(value: Any) -> Any:
    if not isinstance(value, datetime):
        return value
    for name, moment in _INFINITE_MOMENTS.items():
        if value.tzinfo is None and value == moment:
            return name
    return value.isoformat()


def _typed(value: Any, key_type: TypeEngine[Any]) -> Any:
    """A key value from a cursor's JSON as the Python value its SQL type binds: only what
    that type accepts, so nothing strange ever reaches the database (its error would be a
    500, not the client's 422)."""
    typed = _read_as(value, key_type)
    if typed is None:  # never a key: every sort key is NOT NULL
        raise InvalidCursorError("is not a cursor: a key has the wrong type")
    return typed


def _read_as(value: Any, key_type: TypeEngine[Any]) -> Any:
    """`value` as `key_type` binds it, or None if it is not one."""
    if isinstance(value, bool):  # JSON true/false: no sort key is a boolean
        return None
    try:
        python_type: type | None = key_type.python_type
    except NotImplementedError:
        python_type = None
    if python_type is object:  # an expression whose type SQLAlchemy does not know (NullType)
        python_type = None
    if isinstance(key_type, Enum):
        return value if isinstance(value, str) and value in key_type.enums else None
    if python_type is datetime:
        return _moment(value)
    if python_type is int:
        bound = (
            2**63
            if isinstance(key_type, BigInteger)
            else 2**15
            if isinstance(key_type, SmallInteger)
            else 2**31
        )
        return value if isinstance(value, int) and -bound <= value < bound else None
    if python_type is float:
        return float(value) if isinstance(value, int | float) else None
    if isinstance(value, str):  # str, or an untyped expression
        return value if _storable(value) else None
    return value if python_type is None and isinstance(value, int | float) else None


def _moment(value: Any) -> datetime | None:
    """An ISO 8601 moment with a time zone, or None."""
    if not isinstance(value, str):
        return None
    if value in _INFINITE_MOMENTS:
        return _INFINITE_MOMENTS[value]
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _storable(text: str) -> bool:
    """Text PostgreSQL can take as a parameter: no NUL, no lone surrogate."""
    return "\x00" not in text and not any("\ud800" <= char <= "\udfff" for char in text)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """The bytes `text` encodes; a ValueError unless it is their one canonical encoding
    (the last character's unused bits could otherwise make several cursors of one)."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64encode(data) != text:
        raise ValueError("not canonical base64url")
    return data
