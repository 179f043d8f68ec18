"""One named background task of a hub part: started once, cancelled and awaited at stop.

The hub's periodic parts (rollout engine, retention, refusal-audit flush, WAL
checkpointer) each own one of these instead of repeating the start/cancel/await dance;
``run_passes`` is the loop of those that repeat one pass at an interval (retention, fleet
history, the audit gap sweep).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol


class BackgroundTask:
    """A task made by ``factory`` on ``start``; ``stop`` cancels it and waits for it."""

    def __init__(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.name = name
        self._factory = factory
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the task was started and has not ended."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the task (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._factory(), name=self.name)

    async def stop(self) -> None:
        """Cancel the task and wait until it has ended."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class PassStats(Protocol):
    """The failure counters a periodic part shows on /healthz."""

    failures: int
    last_error: str | None
    failing: bool


async def run_passes(
    what: str,
    once: Callable[[], Awaitable[object]],
    interval_s: Callable[[], float],
    stats: PassStats,
    log: logging.Logger,
) -> None:
    """Run ``once`` now and then every ``interval_s()`` seconds, forever. A failing pass is
    counted in ``stats`` (visible on /healthz), logged once when passes start failing and
    once when they succeed again, and retried at the next interval."""
    while True:
        try:
            await once()
        except Exception as exc:
            stats.failures += 1
            stats.last_error = str(exc)[:300]
            if not stats.failing:
                log.warning("%s failed (retrying): %s", what, exc)
            stats.failing = True
        else:
            if stats.failing:
                log.info("%s succeeds again", what)
            stats.failing = False
        await asyncio.sleep(interval_s())
