"""Wake long-polls when a device's target changes: one asyncio.Event per waited-on device.

Subscribe *before* reading the store, then wait: a notify that lands between the read
and the wait has already set the event, so no change is missed. ``notify`` is called
only after the write committed. In one process this is enough; a multi-process hub
(PostgreSQL) will feed ``notify`` from LISTEN/NOTIFY.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager


class _Entry:
    __slots__ = ("event", "waiters")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.waiters = 0


class TargetNotifier:
    """Per-device wake-ups for long-polls; entries exist only while someone waits."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self.closed = False

    @contextmanager
    def subscribe(self, device_id: str) -> Iterator[asyncio.Event]:
        """Yield an event that is set by the next ``notify(device_id)`` or ``close()``."""
        entry = self._entries.get(device_id)
        if entry is None:
            entry = self._entries[device_id] = _Entry()
        if self.closed:
            entry.event.set()
        entry.waiters += 1
        try:
            yield entry.event
        finally:
            entry.waiters -= 1
            if entry.waiters == 0 and self._entries.get(device_id) is entry:
                del self._entries[device_id]

    def notify(self, device_id: str) -> None:
        """Wake everyone waiting on the device."""
        entry = self._entries.pop(device_id, None)
        if entry is not None:
            entry.event.set()

    def close(self) -> None:
        """Wake every waiter (shutdown); later subscriptions return at once."""
        self.closed = True
        for entry in self._entries.values():
            entry.event.set()
        self._entries.clear()

    def waiting(self) -> int:
        """Return how many devices have a long-poll open."""
        return len(self._entries)
