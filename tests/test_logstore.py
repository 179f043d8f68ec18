"""Issue 10 (Logs 1, 2): container logs kept in the agent store, bounded, readable; the
shipping policy decides what is queued for the hub. The store is a real SQLite file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import InvalidLogQuery
from edge_agent.logpolicy import ShipPolicy
from edge_agent.protocol import DEFAULT_LOG_PATTERN, LogPolicy, SyncResponse
from edge_agent.store import LogLimits, Store, StoreLimits

LINE_BYTES = 100 + 32  # a 100-character line and the row overhead


async def _open(path: Path, **logs: Any) -> Store:
    limits = StoreLimits(log_disk_reserve_bytes=0, logs=LogLimits(**logs))
    return await Store(path / "agent.db", limits=limits).open()


def _lines(service: str, start: int, n: int, *, ts: float | None = None) -> list[dict[str, Any]]:
    now = time.time() if ts is None else ts
    return [
        {"service": service, "ts": now, "stream": "stdout", "line": f"{i:06d}".ljust(100, ".")}
        for i in range(start, start + n)
    ]


async def _local(store: Store, service: str) -> list[tuple[str, int]]:
    async with store.db.execute(
        "SELECT line, dropped FROM logs WHERE service = ? ORDER BY id", (service,)
    ) as cur:
        return [(line, dropped) for line, dropped in await cur.fetchall()]


async def _shipped(store: Store) -> list[str]:
    async with store.db.execute("SELECT payload FROM outbox WHERE kind = 'log' ORDER BY seq") as c:
        return [json.loads(p)["line"] for (p,) in await c.fetchall()]


async def _bytes(store: Store, service: str) -> int:
    async with store.db.execute(
        "SELECT COALESCE(SUM(bytes), 0) FROM logs WHERE service = ?", (service,)
    ) as cur:
        return int((await cur.fetchone())[0])  # type: ignore[index]


async def test_container_quota_drops_oldest_lines_behind_one_growing_marker(
    tmp_path: Path,
) -> None:
    store = await _open(tmp_path, max_bytes_per_container=10 * LINE_BYTES)
    await store.append_logs(_lines("web", 0, 10))
    await store.append_logs(_lines("db", 0, 3))
    assert len(await _local(store, "web")) == 10  # at the quota, nothing dropped

    await store.append_logs(_lines("web", 10, 4))
    web = await _local(store, "web")
    # The first dropped line's row is the marker, in the place of the dropped lines.
    first = web[0][1]
    assert first >= 4 and web[0][0].startswith(f"{first} lines dropped")
    assert [line[:6] for line, _ in web[1:]] == [f"{i:06d}" for i in range(first, 14)]
    assert await _bytes(store, "web") <= 10 * LINE_BYTES  # the marker fits in the quota

    await store.append_logs(_lines("web", 14, 3))
    web = await _local(store, "web")
    total = web[0][1]
    assert total > first and web[0][0].startswith(f"{total} lines dropped")  # grown
    assert sum(1 for _, d in web if d) == 1  # not another marker
    assert [line[:6] for line, _ in web[1:]] == [f"{i:06d}" for i in range(total, 17)]
    assert await _bytes(store, "web") <= 10 * LINE_BYTES
    assert len(await _local(store, "db")) == 3  # another container's quota is its own
    assert (await store.counters())["log_lines_dropped_quota"] == total

    # The totals the quota uses survive a restart (reloaded from the table).
    await store.close()
    store = await _open(tmp_path, max_bytes_per_container=10 * LINE_BYTES)
    await store.append_logs(_lines("web", 17, 1))
    web = await _local(store, "web")
    assert web[0][1] == total + 1 and web[1][0][:6] == f"{total + 1:06d}"
    await store.close()


async def test_lines_older_than_the_age_limit_are_deleted_and_counted(tmp_path: Path) -> None:
    store = await _open(tmp_path, max_age_s=3600, prune_interval_s=0)
    old = time.time() - 7200
    await store.append_logs(_lines("web", 0, 5, ts=old))  # kept a moment, pruned next write
    await store.append_logs(_lines("web", 5, 2))
    await store.append_logs(_lines("web", 7, 1))
    assert [line[:6] for line, _ in await _local(store, "web")] == ["000005", "000006", "000007"]
    assert (await store.counters())["log_lines_expired"] == 5
    await store.close()


async def test_age_pass_that_finds_more_than_its_batch_runs_again_at_the_next_write(
    tmp_path: Path,
) -> None:
    store = await _open(tmp_path, max_age_s=3600, prune_interval_s=3600, prune_batch=3)
    await store.append_logs(_lines("web", 0, 7, ts=time.time() - 7200))  # a pass: 3 of 7
    await store.append_logs(_lines("web", 7, 1))  # 3 more, despite the hour between passes
    await store.append_logs(_lines("web", 8, 1))  # the last old one
    await store.append_logs(_lines("web", 9, 1))
    assert [line[:6] for line, _ in await _local(store, "web")] == ["000007", "000008", "000009"]
    assert (await store.counters())["log_lines_expired"] == 7
    await store.close()


async def test_read_logs_filters_and_pages_in_bounded_batches(tmp_path: Path) -> None:
    store = await _open(tmp_path, max_bytes_per_container=10 * LINE_BYTES)
    t0 = time.time() - 100
    for i in range(14):
        row = _lines("web", i, 1, ts=t0 + i)[0]
        if i % 3 == 0:
            row["line"] = f"ERROR {i}"
        await store.append_logs([row])
    await store.append_logs(_lines("db", 0, 2, ts=t0 + 50))

    first = await store.read_logs(service="web", limit=5)
    assert first.more and len(first.lines) == 5
    dropped = first.lines[0]["dropped"]  # the marker says where lines are missing
    assert dropped > 0 and first.lines[1]["line"][:6] == f"{dropped:06d}"
    second = await store.read_logs(service="web", limit=100, after=first.next_after)
    assert [r["id"] for r in first.lines + second.lines] == sorted(
        r["id"] for r in first.lines + second.lines
    )
    assert len(first.lines) + len(second.lines) == len(await _local(store, "web"))
    assert not second.more

    grep = await store.read_logs(service="web", grep="^ERROR")
    assert [r["line"] for r in grep.lines] == [
        f"{dropped} lines dropped (local log quota of 1320 bytes for web)",
        *[f"ERROR {i}" for i in (6, 9, 12) if i >= dropped],
    ]
    tail = await store.read_logs(service="web", tail=2)
    assert [r["line"][:8] for r in tail.lines] == ["ERROR 12", "000013.."]
    window = await store.read_logs(since=t0 + 10, until=t0 + 12)
    assert [r["line"][:6] for r in window.lines] == ["000010", "000011"]
    assert len((await store.read_logs(service="db")).lines) == 2
    bounded = await store.read_logs(service="db", max_scan=1, grep="nothing matches")
    assert bounded.lines == [] and bounded.more and bounded.next_after > 0
    rest = await store.read_logs(service="db", after=bounded.next_after)
    assert len(rest.lines) == 1
    with pytest.raises(InvalidLogQuery, match="grep"):
        await store.read_logs(grep="(")
    await store.close()


@pytest.mark.parametrize(
    ("mode", "shipped"),
    [
        ("all", ["starting", "ERROR disk", "warning: slow", "log gap"]),
        ("errors", ["ERROR disk", "warning: slow", "log gap"]),
        ("none", []),
    ],
)
async def test_policy_decides_what_is_queued_while_every_line_is_kept(
    tmp_path: Path, mode: str, shipped: list[str]
) -> None:
    store = await _open(tmp_path)
    assert store.log_policy.mode == "all"  # until a hub says otherwise: as before
    await store.set_log_policy(ShipPolicy.of(mode, [DEFAULT_LOG_PATTERN]))
    now = time.time()
    rows = [
        {"service": "web", "ts": now, "stream": "stdout", "line": line}
        for line in ("starting", "ERROR disk", "warning: slow")
    ] + [{"service": "web", "ts": now, "stream": "agent", "line": "log gap"}]
    await store.append_logs(rows)
    assert await _shipped(store) == shipped
    assert len(await _local(store, "web")) == 4
    assert (await store.counters()).get("log_lines_not_shipped", 0) == 4 - len(shipped)
    await store.close()
    store = await _open(tmp_path)
    assert store.log_policy.mode == mode  # kept across a restart (offline)
    await store.close()


def test_policy_wire_field_is_validated_and_left_out_when_absent() -> None:
    assert "log_policy" not in SyncResponse(acked_seq=1).model_dump(mode="json")
    with pytest.raises(ValueError, match="patterns"):
        LogPolicy(mode="errors", patterns=["("])
    with pytest.raises(ValueError, match="patterns"):
        LogPolicy(mode="errors", patterns=["x" * 513])
    with pytest.raises(ValueError, match="mode"):
        LogPolicy(mode="some")  # type: ignore[arg-type]
    assert ShipPolicy.of("errors", ["(?i)oops"]).ships({"line": "OOPS"})
    assert not ShipPolicy.of("errors").ships({"line": "fine"})  # default pattern
