"""Wake long-polls when a device's target changes: one future and one timer per held poll.

Subscribe *before* reading the store, then wait: a notify that lands between the read
and the wait has already resolved the waiter, so no change is missed. ``notify`` is
called only after the write committed. In one process this is enough; on PostgreSQL
``relay`` sends each notify to every other hub process (``hub.store.pg_notify``), which
wakes its own polls with ``wake``. While that signal path is down ``recheck_s`` makes
held polls re-read the database that often, so no poll waits out a change it missed.

A held poll costs one future and one ``loop.call_at`` timer, awaited by the request's
own task (no ``wait_for`` task, no ``asyncio.Event`` per device): at 10,000 held polls
the per-poll state is what the hub's memory and timer heap pay for. ``granted_wait``
jitters the wait the hub grants, so polls opened together (a fleet reconnecting after a
hub restart) do not all expire, and come back, together.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def granted_wait(requested_s: float, max_wait_s: float, jitter: float, draw: float) -> float:
    """Return the wait granted: ``min(requested, max)`` shortened by up to ``jitter`` of it.

    ``draw`` is uniform in [0, 1) (``random.random()``); the result lies in
    ``[w * (1 - jitter), w]`` for ``w = min(requested_s, max_wait_s)``.
    """
    wait = min(requested_s, max_wait_s)
    return wait * (1.0 - jitter * draw)


def retry_after_s(low_s: float, high_s: float, draw: float) -> int:
    """Return a whole number of seconds in [low, high] for a Retry-After header."""
    return max(1, round(low_s + (high_s - low_s) * draw))


class Waiter:
    """One held poll's wake-up: resolved True by ``notify``/``close``, False at its deadline."""

    __slots__ = ("_future",)

    def __init__(self, future: asyncio.Future[bool]) -> None:
        self._future = future

    def is_set(self) -> bool:
        """Return whether the poll was woken (a notify or close landed)."""
        future = self._future
        return future.done() and not future.cancelled() and future.result()

    async def wait_until(self, deadline: float) -> bool:
        """Wait until woken (True) or the loop time ``deadline`` (False)."""
        future = self._future
        if future.done():
            return future.result()
        timer = asyncio.get_running_loop().call_at(deadline, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _wake(self) -> None:
        if not self._future.done():
            self._future.set_result(True)


def _expire(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)


class TargetNotifier:
    """Per-device wake-ups for long-polls; entries exist only while someone waits."""

    def __init__(self, max_held: int = 0, rng: random.Random | None = None) -> None:
        self._waiters: dict[str, list[Waiter]] = {}
        self._held = 0
        self.max_held = max_held  # 0: unbounded
        self.refused = 0  # polls refused because max_held were held
        self.closed = False
        self.rng = rng or random.Random()
        # set on PostgreSQL: called with each notified device id (other processes wake it)
        self.relay: Callable[[str], None] | None = None
        self.recheck_s = 0.0  # > 0: held polls re-check the store this often (signals down)

    def is_full(self) -> bool:
        """Return whether a new poll would exceed ``max_held`` (and count the refusal)."""
        if self.max_held and self._held >= self.max_held:
            self.refused += 1
            return True
        return False

    @contextmanager
    def subscribe(self, device_id: str) -> Iterator[Waiter]:
        """Yield a waiter woken by the next ``notify(device_id)`` or ``close()``."""
        waiter = Waiter(asyncio.get_running_loop().create_future())
        if self.closed:
            waiter._wake()
        self._waiters.setdefault(device_id, []).append(waiter)
        self._held += 1
        try:
            yield waiter
        finally:
            self._held -= 1
            self._forget(device_id, waiter)

    def _forget(self, device_id: str, waiter: Waiter) -> None:
        waiters = self._waiters.get(device_id)
        if waiters is None or waiter not in waiters:
            return  # already woken by notify, which dropped the device's list
        waiters.remove(waiter)
        if not waiters:
            del self._waiters[device_id]

    def notify(self, device_id: str) -> None:
        """Wake everyone waiting on the device (and only them), in every hub process."""
        self.wake(device_id)
        if self.relay is not None:
            self.relay(device_id)

    def wake(self, device_id: str) -> None:
        """Wake everyone waiting on the device in this process only."""
        for waiter in self._waiters.pop(device_id, ()):
            waiter._wake()

    def wake_all(self) -> None:
        """Wake every held poll of this process: each re-reads the store and waits again."""
        waiters, self._waiters = self._waiters, {}
        for device_waiters in waiters.values():
            for waiter in device_waiters:
                waiter._wake()

    def recheck_at(self, now: float, deadline: float) -> float:
        """Return when a held poll re-reads the store: its deadline, sooner while degraded."""
        return min(deadline, now + self.recheck_s) if self.recheck_s > 0 else deadline

    def close(self) -> None:
        """Wake every waiter (shutdown); later subscriptions return at once."""
        self.closed = True
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter._wake()
        self._waiters.clear()

    def waiting(self) -> int:
        """Return how many devices have a long-poll open."""
        return len(self._waiters)

    def stats(self) -> dict[str, int]:
        """Return held polls, devices waiting, the bound and refusals at it."""
        return {
            "held": self._held,
            "devices": len(self._waiters),
            "max_held": self.max_held,
            "refused": self.refused,
        }
