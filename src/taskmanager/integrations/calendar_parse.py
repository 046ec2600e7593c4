"""An iCalendar body (RFC 5545) as the occurrences of its events within a horizon.

Parsed with `icalendar`; recurring events (RRULE, RDATE, EXDATE, moved occurrences) are
expanded with `recurring-ical-events`, one series (one UID) at a time, from the horizon's
start, and no further than its end or `max_events` occurrences, whichever comes first. What
is kept of an occurrence is what an agenda shows (JSON-ready, each text cut to a bounded
length), never the raw body; an error never quotes the body either (a feed's URL may point
at a service that answers with secrets: its bytes must not come back to the members).

The work is bounded before it is done. Expanding a rule steps through every candidate from
its DTSTART, not from the horizon's start (dateutil has no other way), so a three-line
`FREQ=SECONDLY` from years ago is hundreds of millions of steps. Each series' steps up to
the horizon's end are estimated first (its FREQ and INTERVAL, times the sizes of the BYxxx
lists that multiply the candidates; for a rule whose day filters may never match, the days
scanned until the next match after the end, or to the year 9999), and a series past
`max_steps` is skipped: the calendar says `truncated` and how many series were skipped.
A `deadline` (time.monotonic()) is checked between series and between occurrences; past it
the rest is cut and the calendar says `truncated`.

Call it off the event loop, on an executor of its own (SubscribedCalendars does): it is CPU
work, and the default executor is the one that resolves host names.

Times: a date-time with a time zone is kept in UTC; a floating one (no zone) is read as UTC;
an all-day event (a DATE) starts at 00:00 UTC of its day and says `all_day`.
"""

from __future__ import annotations

import functools
import math
import time as monotonic_time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import icalendar
import recurring_ical_events
from dateutil import rrule as dateutil_rrule  # type: ignore[import-untyped]

# Longest text kept of an event's summary, location and uid.
TEXT_MAX_LENGTH = 200
# How far back and ahead of the fetch the occurrences are kept: an agenda's window is at
# most 92 days, and may lie anywhere within this.
HORIZON_BEFORE = timedelta(days=366)
HORIZON_AFTER = timedelta(days=731)
# The steps one series may take to expand (TASKMANAGER_CALENDAR_MAX_RECURRENCE_STEPS).
MAX_STEPS = 100_000
# Seconds one step of each FREQ spans (a month and a year on average).
FREQ_SECONDS = {
    "SECONDLY": 1,
    "MINUTELY": 60,
    "HOURLY": 3600,
    "DAILY": 86_400,
    "WEEKLY": 7 * 86_400,
    "MONTHLY": 2_629_746,
    "YEARLY": 31_556_952,
}
# The BYxxx lists that multiply a rule's candidates in each period, by FREQ (RFC 5545
# 3.3.10's table: a list that "expands" there; one that only "limits" adds no step).
EXPANDING = {
    "SECONDLY": (),
    "MINUTELY": ("BYSECOND",),
    "HOURLY": ("BYSECOND", "BYMINUTE"),
    "DAILY": ("BYSECOND", "BYMINUTE", "BYHOUR"),
    "WEEKLY": ("BYSECOND", "BYMINUTE", "BYHOUR", "BYDAY"),
    "MONTHLY": ("BYSECOND", "BYMINUTE", "BYHOUR", "BYDAY", "BYMONTHDAY"),
    "YEARLY": (
        "BYSECOND",
        "BYMINUTE",
        "BYHOUR",
        "BYDAY",
        "BYMONTHDAY",
        "BYYEARDAY",
        "BYWEEKNO",
        "BYMONTH",
    ),
}
# Day filters that may match no day at all (BYMONTH=2;BYMONTHDAY=30): dateutil then scans
# day after day (a period at a time) until the year 9999, whatever the UNTIL.
DAY_FILTERS = ("BYMONTH", "BYMONTHDAY", "BYYEARDAY", "BYWEEKNO")
LAST_DAY = datetime(9999, 12, 31)
# How one series is expanded: windows of about CHUNK_STEPS steps, at most CHUNKS of them.
CHUNK_STEPS = 5000
CHUNKS = 64
WEEKDAYS = {"MO": 0, "TU": 1, "WE": 2, "TH": 3, "FR": 4, "SA": 5, "SU": 6}
# What an error says: never a byte of the body.
NOT_ICALENDAR = "not an iCalendar document"
UNREADABLE = "the calendar could not be parsed"


class MalformedCalendarError(ValueError):
    """The body is not an iCalendar document this service can read; the message says why."""


@dataclass(frozen=True, slots=True)
class ParsedCalendar:
    """The occurrences found (JSON-ready dicts, in order of start), and whether there were
    more than were kept (more than `max_events`, a series skipped, or the deadline met)."""

    events: list[dict[str, Any]]
    truncated: bool
    skipped_series: int = 0
    out_of_time: bool = False


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


def parse_calendar(
    body: bytes,
    *,
    now: datetime,
    max_events: int,
    max_steps: int = MAX_STEPS,
    deadline: float | None = None,
) -> ParsedCalendar:
    """The occurrences of `body`'s events between `now - HORIZON_BEFORE` and
    `now + HORIZON_AFTER`, at most `max_events` of them, skipping any series whose
    expansion would take more than `max_steps` steps and stopping at `deadline` (a
    time.monotonic() value); MalformedCalendarError when `body` is not a readable
    VCALENDAR (its message quotes nothing of the body)."""
    try:
        calendar = icalendar.Calendar.from_ical(body)
    except (ValueError, IndexError, KeyError, TypeError):
        raise MalformedCalendarError(_where_it_fails(body)) from None
    if getattr(calendar, "name", None) != "VCALENDAR":
        raise MalformedCalendarError(f"{NOT_ICALENDAR}: it does not start with VCALENDAR")
    earliest = now - HORIZON_BEFORE
    latest = now + HORIZON_AFTER
    found: list[Any] = []
    skipped = 0
    out_of_time = False
    try:
        for series in _series(calendar):
            if _past(deadline):
                out_of_time = True
                break
            steps = max((_steps(event, latest) for event in series.walk("VEVENT")), default=1)
            if steps > max_steps:
                skipped += 1
                continue
            kept = _expand(series, steps, earliest, latest, max_events, deadline)
            found += kept
            if _past(deadline):
                out_of_time = True
                break
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        raise MalformedCalendarError(f"{UNREADABLE}: its events cannot be read") from None
    events = [event for component in found if (event := _occurrence(component))]
    events.sort(key=lambda event: (event["start"], event["uid"] or ""))
    truncated = len(events) > max_events or skipped > 0 or out_of_time
    return ParsedCalendar(
        events=events[:max_events],
        truncated=truncated,
        skipped_series=skipped,
        out_of_time=out_of_time,
    )


def _where_it_fails(body: bytes) -> str:
    """The parse error as a line number: which line does not look like `NAME...:value`
    (an icalendar error quotes the line itself, which must not reach the members)."""
    for number, line in enumerate(body.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or line[:1] in (b" ", b"\t"):
            continue  # an empty line, or a folded line's continuation
        name = stripped.split(b":", 1)[0].split(b";", 1)[0]
        if b":" not in stripped or not name or not name.replace(b"-", b"").isalnum():
            return f"{NOT_ICALENDAR} (line {number})"
    return UNREADABLE


def _series(calendar: Any) -> Iterator[Any]:
    """The calendar cut into one calendar per series (the events sharing a UID: a rule and
    its moved occurrences), each with the calendar's time zones."""
    zones = list(calendar.walk("VTIMEZONE"))
    groups: dict[str, list[Any]] = {}
    for number, event in enumerate(calendar.walk("VEVENT")):
        uid = event.get("UID")
        groups.setdefault(str(uid) if uid is not None else f"\0{number}", []).append(event)
    for events in groups.values():
        part = icalendar.Calendar()
        for component in (*zones, *events):
            part.add_component(component)
        yield part


def _rules(event: Any) -> list[Any]:
    rules = event.get("RRULE")
    if rules is None:
        return []
    return list(rules) if isinstance(rules, list) else [rules]


def _steps(event: Any, latest: datetime) -> int:
    """An upper estimate of the steps dateutil takes to expand `event`'s rules up to
    `latest` (1 for an event that does not repeat)."""
    start_property = event.get("DTSTART")
    if start_property is None:
        return 1
    start, _ = _as_utc(start_property.dt)
    total = 1
    for rule in _rules(event):
        total += _rule_steps(rule, start, latest)
    return total


def _first(rule: Any, name: str) -> Any:
    values = rule.get(name)
    if not values:
        return None
    return values[0] if isinstance(values, list) else values


def _rule_steps(rule: Any, start: datetime, latest: datetime) -> int:
    freq = str(_first(rule, "FREQ") or "").upper()
    if freq not in FREQ_SECONDS:
        return 1  # dateutil refuses it: the series is skipped as a bad one
    try:
        interval = max(int(_first(rule, "INTERVAL") or 1), 1)
    except (TypeError, ValueError):
        interval = 1
    end = latest
    until = _first(rule, "UNTIL")
    if isinstance(until, date):
        end = min(end, _as_utc(until)[0])
    span = max((end - start).total_seconds(), 0.0)
    periods = math.ceil(span / (FREQ_SECONDS[freq] * interval)) + 1
    per_period = 1
    for name in EXPANDING[freq]:
        values = rule.get(name)
        if values:
            per_period *= len(values) if isinstance(values, list) else 1
    steps = periods * per_period
    count = _first(rule, "COUNT")
    if isinstance(count, int) and not any(str(name).startswith("BY") for name in rule):
        steps = min(steps, max(count, 1))  # nothing filters: each step is an occurrence
    if freq != "YEARLY" and any(rule.get(name) for name in DAY_FILTERS):
        # dateutil scans a day (or a period) at a time until a day matches after `end`.
        scan_to = _next_matching_day(rule, max(end, start)) or LAST_DAY.replace(tzinfo=UTC)
        steps = max(steps, math.ceil((scan_to - start).total_seconds() / 86_400))
    return steps


def _next_matching_day(rule: Any, after: datetime) -> datetime | None:
    """The first day after `after` that the rule's day filters let through, if any."""

    def numbers(name: str) -> tuple[int, ...] | None:
        values = rule.get(name)
        if not values:
            return None
        return tuple(int(value) for value in (values if isinstance(values, list) else [values]))

    days = rule.get("BYDAY") or []
    weekdays = tuple(
        sorted(
            {WEEKDAYS[str(day)[-2:].upper()] for day in days if str(day)[-2:].upper() in WEEKDAYS}
        )
    )
    try:
        filters = DayFilters(
            numbers("BYMONTH"),
            numbers("BYMONTHDAY"),
            numbers("BYYEARDAY"),
            numbers("BYWEEKNO"),
            weekdays or None,
        )
    except (TypeError, ValueError):
        return None
    return _search_day(filters, after.date())


@dataclass(frozen=True, slots=True)
class DayFilters:
    bymonth: tuple[int, ...] | None
    bymonthday: tuple[int, ...] | None
    byyearday: tuple[int, ...] | None
    byweekno: tuple[int, ...] | None
    byweekday: tuple[int, ...] | None


@functools.lru_cache(maxsize=256)
def _search_day(filters: DayFilters, after: date) -> datetime | None:
    """A yearly rule of the day filters alone: at most a step a year, about 0.1 s to the
    year 9999 when nothing matches; remembered, so a calendar repeating a rule pays once."""
    try:
        first = dateutil_rrule.rrule(
            dateutil_rrule.YEARLY,
            dtstart=datetime.combine(after, time(0, 0)) + timedelta(days=1),
            bymonth=filters.bymonth,
            bymonthday=filters.bymonthday,
            byyearday=filters.byyearday,
            byweekno=filters.byweekno,
            byweekday=filters.byweekday,
            count=1,
        )
        found = list(first)
    except (ValueError, TypeError, OverflowError):
        return None
    return found[0].replace(tzinfo=UTC) if found else None


def _past(deadline: float | None) -> bool:
    return deadline is not None and monotonic_time.monotonic() >= deadline


def _expand(
    series: Any,
    steps: int,
    earliest: datetime,
    latest: datetime,
    max_events: int,
    deadline: float | None,
) -> list[Any]:
    """The series' occurrences in [earliest, latest), at most `max_events` + 1 of them
    (one more says there were more), asked for a window at a time: each window holds about
    CHUNK_STEPS steps (at the series' density of steps), so what one call builds stays
    small, and at most CHUNKS windows, so the rule is stepped through a bounded number of
    times (dateutil starts each from DTSTART)."""
    # skip_bad_series: one broken recurrence loses that series, not the whole feed.
    query = recurring_ical_events.of(series, skip_bad_series=True)
    first = min(
        (_as_utc(event["DTSTART"].dt)[0] for event in series.walk("VEVENT") if "DTSTART" in event),
        default=earliest,
    )
    span = (latest - min(first, earliest)).total_seconds()
    density = steps / max(span, 1.0)  # steps a second
    whole = (latest - earliest).total_seconds()
    window = timedelta(seconds=min(max(whole / CHUNKS, CHUNK_STEPS / density), whole))
    found: list[Any] = []
    seen: set[tuple[str, str]] = set()
    start = earliest
    while start < latest and len(found) <= max_events and not _past(deadline):
        stop = min(start + window, latest)
        for component in query.between(start, stop):
            # An occurrence lasting across a window's edge is in both windows.
            key = (str(component.get("RECURRENCE-ID", "")), str(component.get("DTSTART").dt))
            if key not in seen:
                seen.add(key)
                found.append(component)
        start = stop
    return found[: max_events + 1]
