"""Daily maintenance windows in a device's local time: parsing and the next opening. Pure.

A window is ``start``-``end`` in ``HH:MM`` (or ``HH:MM:SS``) wall-clock time of an IANA
zone; it may wrap past midnight (``22:00``-``02:00``). Wall-clock times are resolved by
``zoneinfo``: on the day clocks go forward, a start inside the skipped hour falls one hour
later in UTC terms (02:30 CET is 03:30 CEST); on the day clocks go back, an ambiguous time
is its first occurrence, so a window spanning the repeated hour lasts an hour longer.
A contract module: the hub's rollout window uses the same rules.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

HHMM_RE = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2}))?$")


class WindowLike(Protocol):
    """A window as the target carries it: start, end (``HH:MM``) and a zone name."""

    @property
    def start(self) -> str: ...

    @property
    def end(self) -> str: ...

    @property
    def tz(self) -> str: ...


def parse_hhmm(value: str) -> time:
    """Return the wall-clock time of ``HH:MM`` (00:00-23:59), seconds optional (``HH:MM:SS``)."""
    match = HHMM_RE.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a time like '01:00'")
    hour, minute, second = (int(g or 0) for g in match.groups())
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"{value!r} has a time outside 00:00-23:59")
    return time(hour, minute, second)


def parse_window(value: str) -> tuple[time, time]:
    """Return (start, end) of ``HH:MM-HH:MM``; the window may wrap past midnight."""
    start, sep, end = value.strip().partition("-")
    if not sep:
        raise ValueError(f"{value!r} is not a window like '01:00-04:00'")
    try:
        opens, closes = parse_hhmm(start), parse_hhmm(end)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a window like '01:00-04:00': {exc}") from None
    if opens == closes:
        raise ValueError(f"{value!r} is empty (start equals end)")
    return opens, closes


def zone(name: str) -> ZoneInfo:
    """Return the IANA time zone ``name``; ValueError if there is none of that name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone") from None


def opens_at(start: time, end: time, tz: ZoneInfo, t: datetime) -> datetime:
    """Return ``t`` if inside the daily window (local time in ``tz``), else the next start (UTC)."""
    day = t.astimezone(tz).date()
    starts = []
    for offset in (-1, 0, 1):
        d = day + timedelta(days=offset)
        opens = datetime.combine(d, start, tzinfo=tz)
        closes = datetime.combine(d if end > start else d + timedelta(days=1), end, tzinfo=tz)
        if opens <= t < closes:
            return t
        starts.append(opens)
    # In UTC: a wall-clock time in a gap or fold never compares equal across zones (PEP 495).
    return min(s for s in starts if s > t).astimezone(UTC)


def window_opens_at(window: str, tz: str, t: datetime) -> datetime:
    """Return ``t`` if inside ``window`` (``HH:MM-HH:MM`` in ``tz``), else the next start."""
    start, end = parse_window(window)
    return opens_at(start, end, zone(tz), t)


def next_opening(window: WindowLike, now: datetime) -> datetime | None:
    """Return when ``window`` next opens, None if ``now`` (aware) is inside it."""
    at = opens_at(parse_hhmm(window.start), parse_hhmm(window.end), zone(window.tz), now)
    return None if at == now else at
