"""An iCalendar body (RFC 5545) as the occurrences of its events within a horizon.

Parsed with `icalendar`; recurring events (RRULE, RDATE, EXDATE, moved occurrences) are
expanded with `recurring-ical-events`, in order, from the horizon's start, and no further
than its end or `max_events` occurrences, whichever comes first: a feed with an event every
minute costs what any other does. What is kept of an occurrence is what an agenda shows
(JSON-ready, each text cut to a bounded length), never the raw body.

Times: a date-time with a time zone is kept in UTC; a floating one (no zone) is read as UTC;
an all-day event (a DATE) starts at 00:00 UTC of its day and says `all_day`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import islice
from typing import Any

import icalendar
import recurring_ical_events

# Longest text kept of an event's summary, location and uid.
TEXT_MAX_LENGTH = 200
# How far back and ahead of the fetch the occurrences are kept: an agenda's window is at
# most 92 days, and may lie anywhere within this.
HORIZON_BEFORE = timedelta(days=366)
HORIZON_AFTER = timedelta(days=731)


class MalformedCalendarError(ValueError):
    """The body is not an iCalendar document this service can read; the message says why."""


@dataclass(frozen=True, slots=True)
class ParsedCalendar:
    """The occurrences found (JSON-ready dicts, in order of start), and whether there were
    more than were kept."""

    events: list[dict[str, Any]]
    truncated: bool


def _text(component: Any, name: str) -> str | None:
    value = component.get(name)
    if value is None:
        return None
    return str(value)[:TEXT_MAX_LENGTH]


def _as_utc(value: date | datetime) -> tuple[datetime, bool]:
    """A DTSTART/DTEND value as an aware UTC datetime, and whether it was a whole day."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC), False
        return value.astimezone(UTC), False
    return datetime.combine(value, time(0, 0), tzinfo=UTC), True


def _occurrence(component: Any) -> dict[str, Any] | None:
    start_property = component.get("DTSTART")
    if start_property is None:
        return None
    start, all_day = _as_utc(start_property.dt)
    end_property = component.get("DTEND")
    end = _as_utc(end_property.dt)[0] if end_property is not None else None
    if end is None and all_day:
        end = start + timedelta(days=1)
    return {
        "uid": _text(component, "UID"),
        "summary": _text(component, "SUMMARY") or "",
        "location": _text(component, "LOCATION"),
        "start": start.isoformat(),
        "end": end.isoformat() if end is not None else None,
        "all_day": all_day,
    }


def parse_calendar(body: bytes, *, now: datetime, max_events: int) -> ParsedCalendar:
    """The occurrences of `body`'s events between `now - HORIZON_BEFORE` and
    `now + HORIZON_AFTER`, at most `max_events` of them; MalformedCalendarError when `body` is
    not a readable VCALENDAR."""
    try:
        calendar = icalendar.Calendar.from_ical(body)
    except (ValueError, IndexError, KeyError, TypeError) as error:
        raise MalformedCalendarError(f"not an iCalendar document: {error}"[:300]) from None
    if getattr(calendar, "name", None) != "VCALENDAR":
        raise MalformedCalendarError("not an iCalendar document: it does not start with VCALENDAR")
    earliest = now - HORIZON_BEFORE
    latest = now + HORIZON_AFTER
    try:
        # skip_bad_series: one broken recurrence loses that series, not the whole feed.
        query = recurring_ical_events.of(calendar, skip_bad_series=True)
        found = list(islice(_until(query.after(earliest), latest), max_events + 1))
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as error:
        raise MalformedCalendarError(f"its events cannot be read: {error}"[:300]) from None
    events = [event for component in found[:max_events] if (event := _occurrence(component))]
    return ParsedCalendar(events=events, truncated=len(found) > max_events)


def _until(components: Any, latest: datetime) -> Any:
    """The occurrences (in order of start) that start before `latest`."""
    for component in components:
        start = component.get("DTSTART")
        if start is not None and _as_utc(start.dt)[0] >= latest:
            return
        yield component
