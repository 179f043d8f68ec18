"""The background task supervisor: restart with backoff, count, fatal bound, cancellation.

Issue 7 item 4: a background task (sync, long-poll) died for good while the process kept
running. No I/O here: loops are small coroutines, time a settable clock where it matters.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import ConfigError
from edge_agent.tasks import EXIT_TASK_FAILED, TaskPolicy, TaskSupervisor, feed_watchdog

FAST = TaskPolicy(backoff_base_s=0.01, backoff_cap_s=0.04, stable_after_s=60, max_failures=5)


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def until(predicate: object, timeout_s: float = 5.0) -> None:
    """Wait until ``predicate()`` is true."""
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():  # type: ignore[operator]
                return
            await asyncio.sleep(0.005)


def test_backoff_doubles_to_the_cap() -> None:
    p = TaskPolicy(backoff_base_s=1, backoff_cap_s=10)
    assert [p.delay_s(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert p.delay_s(10**6) == 10


@pytest.mark.parametrize(
    "kw", [{"backoff_base_s": 0}, {"backoff_base_s": 5, "backoff_cap_s": 1}, {"max_failures": 0}]
)
def test_policy_rejects_nonsense(kw: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        TaskPolicy(**kw)


async def test_sync_task_that_raises_is_restarted_with_backoff_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures: list[tuple[str, int]] = []
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError("File descriptor 18 is used by transport")
        await asyncio.Event().wait()

    sup = TaskSupervisor(FAST, on_failure=lambda n, _e, k: failures.append((n, k)))
    with caplog.at_level(logging.ERROR, logger="edge_agent.tasks"):
        sup.spawn("sync", flaky)
        await until(lambda: runs == 4)
    st = sup.status()["sync"]
    assert st["state"] == "running" and st["restarts"] == 3 and st["failures"] == 3
    assert "File descriptor 18" in st["last_error"]
    assert failures == [("sync", 1), ("sync", 2), ("sync", 3)]
    # Logged once per streak, not once per restart.
    assert len([r for r in caplog.records if "sync failed" in r.getMessage()]) == 1
    assert sup.is_healthy() and not sup.fatal.is_set()
    await sup.stop()
    assert sup.status()["sync"]["state"] == "stopped"


async def test_task_that_keeps_dying_ends_the_process_with_the_documented_code() -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    sup = TaskSupervisor(FAST)
    sup.spawn("long-poll", broken)
    await asyncio.wait_for(sup.fatal.wait(), 5)
    assert EXIT_TASK_FAILED == 70
    assert sup.status()["long-poll"]["state"] == "failed"
    assert sup.status()["long-poll"]["failures"] == FAST.max_failures
    assert sup.fatal_error is not None and "long-poll" in sup.fatal_error.message
    assert sup.stale() == ["long-poll"] and not sup.is_healthy()
    await sup.stop()


async def test_a_loop_that_returns_is_a_failure_too() -> None:
    async def returns() -> None:
        return None

    sup = TaskSupervisor(FAST)
    sup.spawn("events", returns)
    await asyncio.wait_for(sup.fatal.wait(), 5)
    assert "returned" in (sup.status()["events"]["last_error"] or "")


async def test_failures_spread_wider_than_stable_after_start_a_new_streak() -> None:
    clock = Clock()
    fail = asyncio.Event()
    runs = 0

    async def sometimes() -> None:
        nonlocal runs
        runs += 1
        await fail.wait()
        fail.clear()
        raise RuntimeError("transient")

    policy = TaskPolicy(backoff_base_s=0.01, backoff_cap_s=0.01, stable_after_s=60, max_failures=2)
    sup = TaskSupervisor(policy, clock=clock)
    sup.spawn("logs", sometimes)
    for n in range(2, 6):
        await until(lambda n=n: runs == n - 1)
        clock.now += 61  # up for longer than stable_after_s each time
        fail.set()
        await until(lambda n=n: runs == n)
    assert not sup.fatal.is_set()
    assert sup.status()["logs"]["restarts"] == 4 and sup.status()["logs"]["failures"] == 1
    await sup.stop()


async def test_cancellation_propagates_and_is_not_counted() -> None:
    cancelled = asyncio.Event()

    async def loop() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    sup = TaskSupervisor(FAST)
    sup.spawn("reconciler", loop)
    await asyncio.sleep(0)
    await sup.stop()
    assert cancelled.is_set()
    assert sup.status()["reconciler"]["restarts"] == 0

    async def owner() -> None:
        await sup.stop()
        await asyncio.Event().wait()

    outer = asyncio.create_task(owner())
    await asyncio.sleep(0)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer


async def test_a_task_without_beats_within_its_bound_is_stale() -> None:
    clock = Clock()
    sup = TaskSupervisor(FAST, clock=clock)
    sup.spawn("sync", lambda: asyncio.Event().wait(), stale_after_s=30)
    sup.spawn("renew", lambda: asyncio.Event().wait())  # liveness only
    await asyncio.sleep(0)
    clock.now += 20
    sup.beat("sync")
    clock.now += 25
    assert sup.is_healthy()
    clock.now += 10
    assert sup.stale() == ["sync"] and not sup.is_healthy()
    sup.beat("sync")
    assert sup.is_healthy()
    await sup.stop()


async def test_spawning_one_name_twice_is_refused() -> None:
    sup = TaskSupervisor(FAST)
    sup.spawn("sync", lambda: asyncio.Event().wait())
    with pytest.raises(ValueError, match="already"):
        sup.spawn("sync", lambda: asyncio.Event().wait())
    await sup.stop()


async def test_watchdog_is_fed_only_while_every_loop_is_on_time() -> None:
    clock = Clock()
    pings: list[str] = []
    sup = TaskSupervisor(FAST, clock=clock)
    sup.spawn("sync", lambda: asyncio.Event().wait(), stale_after_s=30)
    sup.spawn("watchdog", lambda: feed_watchdog(sup, 0.01, lambda s: pings.append(s) or True))
    await until(lambda: len(pings) >= 2)
    clock.now += 31  # sync stalls
    await asyncio.sleep(0.03)
    stalled_at = len(pings)
    await asyncio.sleep(0.1)
    assert len(pings) == stalled_at  # no ping while sync is stale
    sup.beat("sync")
    await until(lambda: len(pings) > stalled_at)
    assert set(pings) == {"WATCHDOG=1"}
    await sup.stop()


def test_status_shows_restarted_and_dead_tasks_only() -> None:
    from edge_agent.cli import format_status

    tasks = {
        "sync": {"state": "running", "restarts": 2, "last_error": "RuntimeError: fd 18"},
        "events": {"state": "running", "restarts": 0, "last_error": None},
        "long-poll": {"state": "failed", "restarts": 9, "last_error": "OSError: x"},
    }
    st = {"device_id": "d", "agent_version": "1", "state": "converged", "tasks": tasks}
    text = format_status(st)
    assert "task      sync: running, 2 restarts, last error RuntimeError: fd 18" in text
    assert "long-poll: failed" in text and "events" not in text


class DyingEvents:
    """A runtime (our adapter's boundary) whose event stream always breaks: no containers."""

    def __init__(self) -> None:
        self.streams = 0

    async def list_services(self) -> list[Any]:
        return []

    async def list_networks(self) -> list[str]:
        return []

    async def events(self) -> AsyncIterator[Any]:
        self.streams += 1
        raise RuntimeError("File descriptor 18 is used by transport")
        yield  # pragma: no cover - makes this an async generator

    async def close(self) -> None:
        return None


async def test_agent_exits_70_when_a_loop_keeps_dying(tmp_path: Path) -> None:
    from edge_agent.agent import run_agent
    from edge_agent.config import AgentConfig

    sock_dir = Path(tempfile.mkdtemp(prefix="ea-"))
    config = AgentConfig.model_validate(
        {
            "device_id": "t-dying",
            "data_dir": str(tmp_path),
            "api": {"socket": str(sock_dir / "api.sock")},
            "logs": {"enabled": False},
            "image_gc": {"enabled": False},
            "tasks": {"max_failures": 3, "backoff_base_s": 0.01, "backoff_cap_s": 0.01},
        }
    )
    runtime = DyingEvents()
    try:
        code = await asyncio.wait_for(run_agent(config, runtime=runtime), 20)
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert code == EXIT_TASK_FAILED and runtime.streams == 3
