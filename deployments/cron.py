"""Calendar math for schedules: croniter over wall-clock time in an IANA zone.

A cron expression names wall-clock times ("30 2 * * *" is half past two on
the clock on the wall). Time zones with daylight-saving time make that
ambiguous twice a year, and Hangar decides it one way, everywhere:

* **repeated hour** (clocks go back: 02:30 happens twice): the occurrence
  fires **once**, at the first 02:30 (``fold=0``). Kubernetes CronJob and
  Nomad fire it twice (kubernetes#121594).
* **skipped hour** (clocks go forward: 02:30 never happens): the occurrence
  fires **once**, shifted forward by the gap (03:30 summer time), as
  ``zoneinfo`` reads a non-existent time with ``fold=0``; occurrences that
  land on the same instant after the shift fire once.

croniter iterates naive wall-clock times (so it never sees a transition);
each is mapped to an instant here, and occurrences are strictly increasing
instants. Seconds: with ``seconds=True`` the expression has six fields, the
first one the seconds (``*/10 * * * * *``), as Aegra and Quartz write it.
"""
from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
# A wall time that does not exist is shifted by at most this (the largest DST gap).
MAX_GAP = timedelta(hours=3)


class BadSchedule(ValueError):
    """The expression or the zone is unusable; the message says which and why."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise BadSchedule("timezone", f"unknown time zone {name!r} (use an IANA name such "
                                      "as Europe/Paris)") from None


def validate(expression: str, *, seconds: bool = False, timezone: str = "UTC") -> str:
    """The expression, stripped, if it parses and ever fires; else BadSchedule."""
    if not isinstance(expression, str) or not expression.strip():
        raise BadSchedule("cron", "give a cron expression, e.g. \"*/5 * * * *\"")
    expression = " ".join(expression.split())
    tz = zone(timezone)
    if expression not in MACROS:
        fields = len(expression.split())
        wanted = 6 if seconds else 5
        if fields != wanted:
            layout = ("six fields (second minute hour day month weekday)" if seconds
                      else "five fields (minute hour day month weekday); enable seconds "
                           "for a sixth, leading seconds field")
            raise BadSchedule("cron", f"a cron schedule has {layout}; this one has {fields}")
        if not croniter.is_valid(expression, second_at_beginning=seconds):
            raise BadSchedule("cron", f"{expression!r} is not a valid cron expression")
    try:
        next_after(expression, datetime.now(UTC), seconds=seconds, tz=tz)
    except BadSchedule:
        raise
    except (CroniterBadCronError, CroniterBadDateError, ValueError, KeyError) as exc:
        raise BadSchedule("cron", f"{expression!r} is not usable: {exc}") from None
    return expression


def _iterate(expression: str, start: datetime, *, seconds: bool) -> croniter:
    return croniter(expression, start, second_at_beginning=seconds)


def _instant(wall: datetime, tz: ZoneInfo) -> datetime:
    """The instant of a naive wall-clock time: the first of a repeated one, a
    non-existent one shifted forward by the gap."""
    return wall.replace(tzinfo=tz, fold=0).astimezone(UTC)


def next_after(expression: str, after: datetime, *, seconds: bool = False,
               tz: ZoneInfo | str = "UTC") -> datetime:
    """The first occurrence strictly after the instant ``after`` (UTC)."""
    return next(occurrences(expression, after, seconds=seconds, tz=tz))


def occurrences(expression: str, after: datetime, *, seconds: bool = False,
                tz: ZoneInfo | str = "UTC") -> Iterator[datetime]:
    """Occurrences strictly after ``after``, in order, as UTC instants."""
    if isinstance(tz, str):
        tz = zone(tz)
    after = after.astimezone(UTC)
    start = after
    # A gap (spring forward) just before ``after`` may have shifted an
    # occurrence past it: start the walk before the gap.
    if (after - MAX_GAP).astimezone(tz).utcoffset() != after.astimezone(tz).utcoffset():
        start = after - MAX_GAP
    walk = _iterate(expression, start.astimezone(tz).replace(tzinfo=None) -
                    timedelta(microseconds=1), seconds=seconds)
    last = after
    while True:
        wall = walk.get_next(datetime)
        instant = _instant(wall, tz)
        if instant > last:
            last = instant
            yield instant


def previous(expression: str, at: datetime, *, seconds: bool = False,
             tz: ZoneInfo | str = "UTC") -> datetime:
    """The latest occurrence at or before ``at`` (approximate across a DST
    change; used only to jump over a very long outage)."""
    if isinstance(tz, str):
        tz = zone(tz)
    wall = at.astimezone(tz).replace(tzinfo=None) + timedelta(microseconds=1)
    walk = croniter(expression, wall, is_prev=True, second_at_beginning=seconds)
    while True:
        instant = _instant(walk.get_prev(datetime), tz)
        if instant <= at:
            return instant


def upcoming(expression: str, after: datetime, count: int, *, seconds: bool = False,
             tz: ZoneInfo | str = "UTC") -> list[datetime]:
    """The next ``count`` occurrences after ``after`` (for the schedules panel)."""
    found = []
    for instant in occurrences(expression, after, seconds=seconds, tz=tz):
        found.append(instant)
        if len(found) >= count:
            break
    return found
