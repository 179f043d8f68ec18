"""Fleet activity for the overview's plots: events and errors per hour, last contacts.

The hub keeps no history of fleet counts, so "online over time" is drawn from what the
store holds: when each device was last heard from. Events per hour come from one
grouped read of the event entries of the last ``HOURS`` hours, shared by every viewer
for ``TTL_S`` seconds (then filtered to each viewer's devices), so a page view never
scans the events table.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from aiohttp import web

from hub.dashboard.plots import Series
from hub.store import HubStore

HOURS = 24
TTL_S = 60.0
Rows = list[tuple[str, str, int, int]]


class ActivityCache:
    """The fleet's events per device and hour, re-read at most every ``TTL_S``."""

    def __init__(self) -> None:
        self._rows: Rows = []
        self._read_at = float("-inf")

    async def rows(self, store: HubStore, now: datetime) -> Rows:
        """Return (device_id, hour, events, errors) of the last ``HOURS`` hours."""
        if time.monotonic() - self._read_at >= TTL_S:
            self._rows = list(await store.events_per_hour(now - timedelta(hours=HOURS)))
            self._read_at = time.monotonic()
        return self._rows


ACTIVITY = web.AppKey("dashboard_activity", ActivityCache)


def hour_labels(now: datetime) -> list[str]:
    """Return the store's hour keys (``YYYY-MM-DDTHH``) of the last ``HOURS`` hours."""
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS - 1)
    return [(start + timedelta(hours=i)).strftime("%Y-%m-%dT%H") for i in range(HOURS)]


def events_series(rows: Rows, devices: set[str], hours: list[str]) -> list[Series]:
    """Return events and errors per hour of ``devices``."""
    index = {h: i for i, h in enumerate(hours)}
    events, errors = [0.0] * len(hours), [0.0] * len(hours)
    for device_id, hour, n, bad in rows:
        i = index.get(hour)
        if i is not None and device_id in devices:
            events[i] += n
            errors[i] += bad or 0
    return [Series("events", events), Series("errors", errors)]


def contact_series(last_contacts: Iterable[str | None], hours: list[str]) -> list[Series]:
    """Return how many devices were last heard from in each hour."""
    index = {h: i for i, h in enumerate(hours)}
    seen = [0.0] * len(hours)
    for at in last_contacts:
        i = index.get(_hour_utc(at)) if at else None
        if i is not None:
            seen[i] += 1
    return [Series("devices last heard from", seen)]


def _hour_utc(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%dT%H")
