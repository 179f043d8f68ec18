"""Background tasks under one supervisor: restarted with backoff, counted, watched.

Every long-running loop of the agent (reconciler, engine events, logs, sync, long-poll,
renewal, watchdog) runs under ``TaskSupervisor.spawn``. A loop that raises (or returns,
which a loop never should) is logged once per failure streak, counted and restarted
after a capped exponential backoff; a loop that stayed up ``stable_after_s`` starts a new
streak. A loop that fails ``max_failures`` times in one streak is *fatal*: the supervisor
sets ``fatal`` and the process exits with ``EXIT_TASK_FAILED`` so that systemd restarts
it. Cancellation is never swallowed.

Loops report progress with ``beat(name)``; a task spawned with ``stale_after_s`` that has
not beaten for that long is stale, and ``is_healthy`` (which gates the systemd watchdog
ping) is then false.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from edge_agent.errors import ConfigError, TaskFailed

log = logging.getLogger(__name__)

# sysexits EX_SOFTWARE: not 2 (bad configuration), which the unit does not restart on.
EXIT_TASK_FAILED = 70
WATCHDOG_TASK = "watchdog"

TaskState = Literal["running", "backoff", "failed", "stopped"]
FailureHook = Callable[[str, BaseException, int], None]


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a task and wait for it to end, without swallowing our own cancellation."""
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


@dataclass(frozen=True)
class TaskPolicy:
    """Restart backoff of supervised tasks and when repeated failure becomes fatal."""

    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    # a task that ran this long before failing starts a new streak
    stable_after_s: float = 60.0
    # this many failures in one streak end the process (for systemd to restart it)
    max_failures: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.backoff_base_s <= self.backoff_cap_s:
            raise ConfigError("tasks: need 0 < backoff_base_s <= backoff_cap_s")
        if self.stable_after_s <= 0 or self.max_failures < 1:
            raise ConfigError("tasks: need stable_after_s > 0 and max_failures >= 1")

    def delay_s(self, failures: int) -> float:
        """Return the wait before the restart after ``failures`` failures in a streak."""
        return min(self.backoff_cap_s, self.backoff_base_s * 2 ** min(max(failures - 1, 0), 30))


@dataclass
class _Entry:
    """One supervised task and what is known about it."""

    name: str
    factory: Callable[[], Awaitable[Any]]
    stale_after_s: float | None
    state: TaskState = "running"
    restarts: int = 0
    failures: int = 0  # in the current streak
    last_error: str | None = None
    started: float = 0.0
    last_beat: float = 0.0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class TaskSupervisor:
    """Run named background loops; restart them on failure; report their health."""

    def __init__(
        self,
        policy: TaskPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_failure: FailureHook | None = None,
    ) -> None:
        self.policy = policy or TaskPolicy()
        self.clock = clock
        self.on_failure = on_failure
        self.fatal = asyncio.Event()
        self.fatal_error: TaskFailed | None = None
        self._entries: dict[str, _Entry] = {}

    def spawn(
        self,
        name: str,
        factory: Callable[[], Awaitable[Any]],
        *,
        stale_after_s: float | None = None,
    ) -> None:
        """Run ``factory()`` as task ``name`` and again after each failure."""
        if name in self._entries:
            raise ValueError(f"task {name!r} is already supervised")
        now = self.clock()
        entry = _Entry(name, factory, stale_after_s, started=now, last_beat=now)
        self._entries[name] = entry
        entry.task = asyncio.create_task(self._supervise(entry), name=name)

    def beat(self, name: str) -> None:
        """Record that task ``name`` made progress."""
        entry = self._entries.get(name)
        if entry is None:
            return
        entry.last_beat = self.clock()
        if entry.failures and entry.last_beat - entry.started >= self.policy.stable_after_s:
            log.info("background task %s recovered after %d failures", name, entry.failures)
            entry.failures = 0

    def stale(self) -> list[str]:
        """Return the tasks that are not running or have not beaten within their bound."""
        now = self.clock()
        out = []
        for e in self._entries.values():
            late = e.stale_after_s is not None and now - e.last_beat > e.stale_after_s
            # A restart within the backoff is expected; only a stuck or dead task is stale.
            if e.state in ("failed", "stopped") or late:
                out.append(e.name)
        return out

    def is_healthy(self) -> bool:
        """Return whether every task is alive and on time (gates the watchdog ping)."""
        return not self.fatal.is_set() and not self.stale()

    def status(self) -> dict[str, dict[str, Any]]:
        """Return per task: state, restarts, failures in the streak, last error, beat age."""
        now = self.clock()
        return {
            e.name: {
                "state": e.state,
                "restarts": e.restarts,
                "failures": e.failures,
                "last_error": e.last_error,
                "last_beat_s_ago": round(now - e.last_beat, 1),
            }
            for e in self._entries.values()
        }

    async def stop(self) -> None:
        """Cancel every task (newest first) and wait for each to end."""
        for entry in reversed(list(self._entries.values())):
            log.debug("stopping task %s", entry.name)
            await cancel_and_wait(entry.task)
            entry.state = "stopped"

    async def _supervise(self, entry: _Entry) -> None:
        while True:
            entry.state = "running"
            entry.started = entry.last_beat = self.clock()
            try:
                await entry.factory()
                exc: BaseException = TaskFailed(f"background task {entry.name} returned")
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the class this supervisor exists for
                exc = err
            if not self._failed(entry, exc):
                return
            entry.state = "backoff"
            await asyncio.sleep(self.policy.delay_s(entry.failures))
            entry.restarts += 1

    def _failed(self, entry: _Entry, exc: BaseException) -> bool:
        """Count a failure; return whether to restart (False: the failure is fatal)."""
        p = self.policy
        if self.clock() - entry.started >= p.stable_after_s:
            entry.failures = 0
        entry.failures += 1
        entry.last_error = f"{type(exc).__name__}: {exc}"[:500]
        if entry.failures == 1:
            log.error("background task %s failed (restarting): %r", entry.name, exc, exc_info=exc)
        if self.on_failure is not None:
            self.on_failure(entry.name, exc, entry.failures)
        if entry.failures < p.max_failures:
            return True
        entry.state = "failed"
        msg = f"background task {entry.name} failed {entry.failures} times in a row: {exc!r}"
        log.critical("%s; exiting for the service manager to restart the agent", msg)
        self.fatal_error = TaskFailed(msg)
        self.fatal.set()
        return False


async def feed_watchdog(
    supervisor: TaskSupervisor, interval_s: float, notify: Callable[[str], bool]
) -> None:
    """Send ``WATCHDOG=1`` every ``interval_s`` while every supervised loop is on time."""
    withheld: list[str] = []
    while True:
        stale = supervisor.stale()
        if supervisor.is_healthy():
            if withheld:
                log.info("watchdog: loops on time again; pinging")
            notify("WATCHDOG=1")
        elif stale != withheld:
            log.error("watchdog: not pinging; stalled or dead: %s", ", ".join(stale))
        withheld = [] if supervisor.is_healthy() else stale
        supervisor.beat(WATCHDOG_TASK)
        await asyncio.sleep(interval_s)
