"""One named background task of a hub part: started once, cancelled and awaited at stop.

The hub's periodic parts (rollout engine, retention, refusal-audit flush, WAL
checkpointer) each own one of these instead of repeating the start/cancel/await dance.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any


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
