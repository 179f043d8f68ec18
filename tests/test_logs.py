"""Log collection: positions, bounds and failures, with a real store and a source of our own.

The source stands in for the runtime (a boundary we own); the store is real SQLite.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import EngineUnavailable, StoreError
from edge_agent.logs import LogCollector
from edge_agent.logstream import LogLine
from edge_agent.models import ContainerStatus, CurrentService
from edge_agent.store import LogPosition, Store, StoreLimits

S = 1_000_000_000


def svc(cid: str, name: str = "web", running: bool = True) -> CurrentService:
    status = ContainerStatus.RUNNING if running else ContainerStatus.EXITED
    return CurrentService(
        name=name, container_id=cid, config_hash="h", status=status, started_at=datetime.now(UTC)
    )


def line(ts_s: float, text: str, stream: str = "stdout", **kw: Any) -> LogLine:
    return LogLine(int(ts_s * S), 0, stream, text, **kw)


class Source:
    """The engine as the collector sees it: containers and their lines (since is inclusive)."""

    def __init__(self, lines: dict[str, list[LogLine]], services: list[CurrentService]) -> None:
        self.lines = lines
        self.services = services
        self.calls: list[tuple[str, int | None]] = []
        self.broken: set[str] = set()

    async def list_services(self) -> list[CurrentService]:
        return list(self.services)

    async def log_lines(
        self, container_id: str, *, since_ns: int | None, max_line_bytes: int
    ) -> AsyncIterator[LogLine]:
        self.calls.append((container_id, since_ns))
        if container_id in self.broken:
            raise EngineUnavailable("read logs: engine unreachable")
        for item in self.lines.get(container_id, []):
            if since_ns is None or item.ts_ns is None or item.ts_ns >= since_ns:
                yield item


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store(tmp_path / "agent.db", limits=StoreLimits(log_disk_reserve_bytes=0)).open()
    # Every test's lines are after the epoch.
    await s.set_meta("log_epoch_ns", "0")
    try:
        yield s
    finally:
        await s.close()


async def rows(store: Store) -> list[dict[str, Any]]:
    async with store.db.execute("SELECT payload FROM outbox WHERE kind='log' ORDER BY seq") as cur:
        return [json.loads(p) for (p,) in await cur.fetchall()]


async def texts(store: Store) -> list[str]:
    return [r["line"] for r in await rows(store)]


async def test_reads_from_the_stored_position_only(store: Store) -> None:
    src = Source({"c1": [line(1, "a"), line(2, "b")]}, [svc("c1")])
    c = LogCollector(src, store, clock=lambda: 0.0)
    assert await c.collect_once() == 2
    src.lines["c1"].append(line(3, "c", "stderr"))
    assert await c.collect_once() == 1
    assert await texts(store) == ["a", "b", "c"]
    assert src.calls == [("c1", 0), ("c1", 2 * S)]
    assert await store.log_positions() == {"c1": LogPosition("c1", "web", 3 * S, 1)}


async def test_lines_sharing_the_position_time_are_skipped_exactly(store: Store) -> None:
    """Three lines with one engine time: two stored before a restart, the third after."""
    src = Source({"c1": [line(1, "a"), line(1, "b")]}, [svc("c1")])
    await LogCollector(src, store, clock=lambda: 0.0).collect_once()
    src.lines["c1"] += [line(1, "c"), line(2, "d")]
    restarted = LogCollector(src, store, clock=lambda: 0.0)  # positions come from the store
    await restarted.collect_once()
    assert await texts(store) == ["a", "b", "c", "d"]
    assert src.calls[-1] == ("c1", 1 * S)


async def test_position_never_moves_back_for_a_late_stamped_line(store: Store) -> None:
    src = Source({"c1": [line(2, "out"), line(1, "err", "stderr")]}, [svc("c1")])
    await LogCollector(src, store).collect_once()
    assert (await store.log_positions())["c1"].ts_ns == 2 * S
    assert await texts(store) == ["out", "err"]


async def test_unfinished_line_of_a_running_container_waits_to_be_whole(store: Store) -> None:
    src = Source({"c1": [line(1, "a"), line(2, "par", complete=False)]}, [svc("c1")])
    c = LogCollector(src, store)
    await c.collect_once()
    src.lines["c1"][1] = line(2, "partial done")
    await c.collect_once()
    assert await texts(store) == ["a", "partial done"]


async def test_stopped_container_read_to_its_end_is_not_read_again(store: Store) -> None:
    src = Source({"c1": [line(1, "last words", complete=False)]}, [svc("c1", running=False)])
    c = LogCollector(src, store)
    await c.collect_once()
    await c.collect_once()
    assert await texts(store) == ["last words"]
    assert len(src.calls) == 1 and (await store.log_positions())["c1"].drained


async def test_long_lines_are_marked_and_counted(store: Store) -> None:
    src = Source({"c1": [line(1, "x" * 100, truncated_bytes=400)]}, [svc("c1")])
    await LogCollector(src, store, max_line_bytes=100).collect_once()
    (row,) = await rows(store)
    assert row["line"] == "x" * 100 + " [truncated]" and row["truncated_bytes"] == 400
    assert (await store.counters())["log_lines_truncated"] == 1


async def test_a_flood_is_suppressed_and_the_count_reported(store: Store) -> None:
    flood = [line(i / 100, f"line {i}") for i in range(1, 251)]
    # 250 lines within the first 2.5 s, then one line a minute later.
    flood.append(line(100.0, "after"))
    src = Source({"c1": flood}, [svc("c1")])
    c = LogCollector(src, store, max_lines_per_minute=100, clock=lambda: 0.0)
    await c.collect_once()
    lines = await texts(store)
    assert lines[:100] == [f"line {i}" for i in range(1, 101)]
    assert "suppressed 150 lines (limit 100/min)" in lines
    assert lines[-1] == "after"
    marker = next(r for r in await rows(store) if r.get("suppressed"))
    assert marker["suppressed"] == 150 and marker["stream"] == "agent"
    assert (await store.counters())["log_lines_suppressed"] == 150


async def test_a_burst_larger_than_the_read_bound_is_cut_counted_and_finished_later(
    store: Store,
) -> None:
    src = Source({"c1": [line(1 + i / 1000, f"l{i}") for i in range(25)]}, [svc("c1")])
    c = LogCollector(src, store, max_lines_per_read=10)
    assert [await c.collect_once() for _ in range(4)] == [10, 10, 5, 0]
    assert await texts(store) == [f"l{i}" for i in range(25)]
    assert (await store.counters())["log_reads_cut"] == 2


async def test_one_unreadable_container_never_stops_the_others(store: Store) -> None:
    src = Source({"c1": [line(1, "a")], "c2": [line(1, "b")]}, [svc("c1"), svc("c2", "db")])
    src.broken.add("c1")
    c = LogCollector(src, store)
    assert await c.collect_once() == 1
    assert await texts(store) == ["b"]
    src.broken.clear()
    await c.collect_once()
    assert sorted(await texts(store)) == ["a", "b"]


async def test_state_of_a_removed_container_is_forgotten(store: Store) -> None:
    src = Source({"c1": [line(1, "a")]}, [svc("c1")])
    c = LogCollector(src, store, services=lambda: src.services)
    await c.collect_once()
    assert c.tracked() == {"c1"}
    src.services = []
    await c.collect_once()
    assert c.tracked() == set() and await store.log_positions() == {}
    gap = (await rows(store))[-1]["gap"]
    assert gap["container_id"] == "c1" and gap["lines"] is None
    assert (await store.counters())["log_gaps"] == 1


async def test_a_stale_view_never_forgets_a_container_the_engine_still_has(store: Store) -> None:
    src = Source({"c1": [line(1, "a")]}, [svc("c1")])
    await LogCollector(src, store).collect_once()
    c = LogCollector(src, store, services=lambda: [])  # e.g. right after a restart
    await c.collect_once()
    assert set(await store.log_positions()) == {"c1"}
    assert "log_gaps" not in await store.counters()


async def test_lines_and_position_commit_together_or_not_at_all(store: Store) -> None:
    """Issue 7.12: the position is written in the transaction of the lines it covers."""
    good = LogPosition("c1", "web", 5 * S, 1)
    await store.append_logs([{"service": "web", "line": "a"}], position=good)
    bad = LogPosition("c1", None, 6 * S, 1)  # type: ignore[arg-type]  # NOT NULL fails
    with pytest.raises(StoreError):
        await store.append_logs([{"service": "web", "line": "b"}], position=bad)
    assert await texts(store) == ["a"]
    assert await store.log_positions() == {"c1": good}


async def test_a_new_store_sets_its_log_epoch_at_creation(tmp_path: Path) -> None:
    before = time.time_ns()
    s = await Store(tmp_path / "agent.db").open()
    try:
        epoch = await s.log_epoch_ns()
    finally:
        await s.close()
    assert before - 10**9 < epoch < time.time_ns() + 10**9


async def test_state_of_a_container_gone_before_its_first_read_is_forgotten(store: Store) -> None:
    src = Source({}, [svc("c1")])
    src.broken.add("c1")
    c = LogCollector(src, store)
    await c.collect_once()
    assert c.tracked() == {"c1"}
    src.services = []
    await c.collect_once()
    assert c.tracked() == set()
