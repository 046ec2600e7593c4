"""A calendar feed's body: tasks with due dates as an iCalendar object (RFC 5545), built
with the `icalendar` package (which folds long lines and escapes commas, semicolons,
backslashes and newlines in text values).

Each task is a VTODO (`as_events=False`, the default): DUE, SUMMARY, DESCRIPTION, STATUS
(COMPLETED or NEEDS-ACTION; COMPLETED and PERCENT-COMPLETE:100 when done), PRIORITY (RFC
5545's 1 = highest ... 9 = lowest), CATEGORIES (the category, then the labels), a UID
stable per task (`task-<id>@<host>`), DTSTAMP and LAST-MODIFIED (the task's last change),
CREATED, SEQUENCE (the task's version, from 0), and for an open task a VALARM
`alarm_before` its due time. Calendar apps that show no to-dos in a subscribed calendar
(Google Calendar, Apple Calendar) get VEVENTs instead (`as_events=True`): a moment at the
due time, TRANSP:TRANSPARENT (it blocks no time), a done task's summary starting with
"✓ " (an event has no completed status).

Every task has a due moment, not a day (migration 0004: `due_at` is a timestamp with a
time zone), so none is an all-day entry; times are written in UTC.

DTSTAMP is the task's last change, not the moment of the request (RFC 5545 3.8.7.2: without
a METHOD, it is when the information was last revised): the same tasks give the same bytes,
so the feed's ETag stays the same until a task changes.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from icalendar import Alarm, Calendar, Event, Todo

PRODID = "-//taskmanager//calendar feed//EN"
# RFC 5545 PRIORITY: 1 is the highest, 9 the lowest (0: undefined).
PRIORITIES: Mapping[str, int] = {"urgent": 1, "high": 3, "normal": 5, "low": 9}
DONE_MARK = "✓ "


@dataclass(frozen=True, slots=True)
class FeedOptions:
    """How a feed is written."""

    host: str  # the UIDs' domain: task-<id>@<host>
    name: str  # X-WR-CALNAME and NAME: what the calendar app calls it
    refresh: timedelta  # REFRESH-INTERVAL and X-PUBLISHED-TTL: how often to fetch it again
    alarm_before: timedelta | None  # None: no alarms
    as_events: bool = False


def _duration(value: timedelta) -> str:
    """RFC 5545's DURATION for whole minutes (X-PUBLISHED-TTL takes it as text)."""
    minutes = int(value.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    return "PT" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes or not hours else "")


def one_line(text: str) -> str:
    """`text` with its control characters (CR, LF, TAB, NUL...) and line separators as
    spaces: NAME and X-WR-CALNAME are single-line values (icalendar asserts it, and under
    `python -O` would write a CR LF raw, starting a property of the writer's choosing)."""
    return "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)


def calendar_of(tasks: Sequence[Mapping[str, Any]], options: FeedOptions) -> bytes:
    """The feed of `tasks` (views as GET shows them, each with a due date)."""
    calendar = Calendar()
    name = one_line(options.name)
    calendar.add("prodid", PRODID)
    calendar.add("version", "2.0")
    calendar.add("calscale", "GREGORIAN")
    calendar.add("name", name)
    calendar.add("x-wr-calname", name)
    calendar.add("refresh-interval", options.refresh, parameters={"VALUE": "DURATION"})
    calendar.add("x-published-ttl", _duration(options.refresh))
    for task in tasks:
        calendar.add_component(_entry(task, options))
    return bytes(calendar.to_ical())


def _categories(task: Mapping[str, Any]) -> list[str]:
    category = task["category"]
    names = [] if category is None else [category["name"]]
    return names + [label["name"] for label in task["labels"]]


def _entry(task: Mapping[str, Any], options: FeedOptions) -> Todo | Event:
    done = bool(task["completed"])
    entry: Todo | Event = Event() if options.as_events else Todo()
    entry.add("uid", f"task-{task['id']}@{options.host}")
    entry.add("dtstamp", task["updated_at"])
    entry.add("created", task["created_at"])
    entry.add("last-modified", task["updated_at"])
    entry.add("sequence", max(int(task["version"]) - 1, 0))
    entry.add("summary", (DONE_MARK if done and options.as_events else "") + task["title"])
    if task["description"]:
        entry.add("description", task["description"])
    entry.add("priority", PRIORITIES.get(task["priority"], 0))
    categories = _categories(task)
    if categories:
        entry.add("categories", categories)
    if options.as_events:
        entry.add("dtstart", task["due_at"])
        entry.add("transp", "TRANSPARENT")
    else:
        entry.add("due", task["due_at"])
        entry.add("status", "COMPLETED" if done else "NEEDS-ACTION")
        if done:
            entry.add("percent-complete", 100)
            if task["completed_at"] is not None:
                entry.add("completed", task["completed_at"])
    if not done and options.alarm_before is not None:
        entry.add_component(_alarm(task["title"], options.alarm_before, options.as_events))
    return entry


def _alarm(title: str, before: timedelta, as_events: bool) -> Alarm:
    alarm = Alarm()
    alarm.add("action", "DISPLAY")
    alarm.add("description", title)
    # A to-do without DTSTART: its alarm is relative to DUE (RFC 5545 3.8.6.3: RELATED=END).
    related = {} if as_events else {"RELATED": "END"}
    alarm.add("trigger", -before, parameters=related)
    return alarm
