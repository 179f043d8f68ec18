"""Many quiet connections read in one event-loop turn per tick instead of one per message.

A connection that is *held* is paused (its socket wakes no one); every ``interval_s``
(aligned, so every pacer of the process ticks together) one callback resumes every held
connection for exactly one turn of the loop — the turn's poll reads what each socket got
meanwhile — and pauses them again. What arrives between ticks waits in the kernel's socket
buffer (and, when that is full, in the sender). A reader waiting on a held connection is
woken only if its connection had data, so ten containers writing a line a second cost
one wake-up a second, not ten. A connection that flows is *released* and read as usual.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass(eq=False)
class ReadPacer:
    """Opens a one-turn read window for every held transport once per tick."""

    interval_s: float
    _held: set[asyncio.Transport] = field(default_factory=set)
    _timer: asyncio.TimerHandle | None = None

    def hold(self, transport: asyncio.Transport) -> None:
        """Pause ``transport``; it is read at each tick from now on."""
        if transport.is_closing():
            return
        self._held.add(transport)
        transport.pause_reading()
        self._schedule()

    def release(self, transport: asyncio.Transport) -> None:
        """Read ``transport`` as data arrives again (it flows, or it is being closed)."""
        self._held.discard(transport)
        if not transport.is_closing():
            transport.resume_reading()

    def held(self) -> int:
        """Return how many transports are held."""
        return len(self._held)

    def _schedule(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            when = (loop.time() // self.interval_s + 1) * self.interval_s
            self._timer = loop.call_at(when, self._open)

    def _open(self) -> None:
        self._timer = None
        self._held = {t for t in self._held if not t.is_closing()}
        for transport in self._held:
            transport.resume_reading()
        # Called soon twice: after the next turn's poll and the reads it queued have run.
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, self._close)

    def _close(self) -> None:
        self._held = {t for t in self._held if not t.is_closing()}
        for transport in self._held:
            transport.pause_reading()
        if self._held:
            self._schedule()
