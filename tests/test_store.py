"""The agent store's outbox: migrations, quotas with drop markers, audit, ack, disk limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.errors import StoreError, StoreFull
from edge_agent.store import MIGRATIONS, AuditRow, Quota, Store, StoreLimits


def _limits(**quotas: Quota) -> StoreLimits:
    return StoreLimits(quotas=dict(quotas), log_disk_reserve_bytes=0)


async def _open(path: Path, limits: StoreLimits | None = None, **kw: object) -> Store:
    return await Store(path / "agent.db", limits=limits or _limits(), **kw).open()  # type: ignore[arg-type]


async def _rows(store: Store) -> list[tuple[int, str, dict]]:
    """Return the queued entries: rows above the acknowledged position (``acked_upto``)."""
    async with store.db.execute(
        "SELECT seq, kind, payload FROM outbox WHERE seq > ? ORDER BY seq", (store.acked_upto,)
    ) as cur:
        return [(s, k, json.loads(p)) for s, k, p in await cur.fetchall()]


async def _all_rows(store: Store) -> list[int]:
    async with store.db.execute("SELECT seq FROM outbox ORDER BY seq") as cur:
        return [s for (s,) in await cur.fetchall()]


async def _totals_match(store: Store) -> None:
    async with store.db.execute(
        "SELECT kind, COUNT(*), SUM(bytes) FROM outbox WHERE seq > ? GROUP BY kind",
        (store.acked_upto,),
    ) as cur:
        truth = {k: {"entries": n, "bytes": b} for k, n, b in await cur.fetchall()}
    assert await store.outbox_stats() == truth


async def test_migrations_idempotent_on_reopen(tmp_path: Path) -> None:
    store = await _open(tmp_path)
    await store.append("event", {"a": 1})
    await store.close()
    store = await _open(tmp_path)
    async with store.db.execute("SELECT version FROM schema_migrations") as cur:
        assert [r[0] for r in await cur.fetchall()] == [v for v, _ in MIGRATIONS]
    assert [r[2] for r in await _rows(store)] == [{"a": 1}]
    await _totals_match(store)
    await store.close()


async def test_append_many_returns_consecutive_seqs_after_ack(tmp_path: Path) -> None:
    store = await _open(tmp_path)
    assert await store.append_many("event", [{"i": i} for i in range(3)]) == [1, 2, 3]
    await store.ack(3)
    # AUTOINCREMENT never reuses a seq, even when the table is empty.
    assert await store.append_many("event", [{"i": 3}, {"i": 4}]) == [4, 5]
    await store.close()


async def test_quota_drops_oldest_and_coalesces_marker(tmp_path: Path) -> None:
    store = await _open(tmp_path, _limits(log=Quota(max_entries=5)))
    await store.append_many("log", [{"line": f"l{i}"} for i in range(5)])
    await store.append_many("log", [{"line": "l5"}, {"line": "l6"}])
    await store.append("log", {"line": "l7"})
    rows = await _rows(store)
    logs = [p["line"] for _, k, p in rows if k == "log"]
    assert logs == ["l3", "l4", "l5", "l6", "l7"]
    markers = [(s, p) for s, k, p in rows if k == "dropped"]
    assert len(markers) == 1, "consecutive drops coalesce into one marker"
    assert markers[0][1] == {"kind": "log", "count": 3, "first_seq": 1, "last_seq": 3}
    assert (await store.counters())["dropped_log"] == 3
    await _totals_match(store)
    await store.close()


async def test_marker_in_flight_is_not_rewritten(tmp_path: Path) -> None:
    store = await _open(tmp_path, _limits(log=Quota(max_entries=2)))
    await store.append_many("log", [{"i": i} for i in range(3)])  # drops 1, marker seq 4
    store.inflight_upto = 4  # the marker has been handed to the sync client
    await store.append("log", {"i": 3})
    markers = [p for _, k, p in await _rows(store) if k == "dropped"]
    assert [m["count"] for m in markers] == [1, 1]
    await store.close()


async def test_quota_by_bytes(tmp_path: Path) -> None:
    store = await _open(tmp_path, _limits(log=Quota(max_bytes=100)))
    for i in range(20):
        await store.append("log", {"line": f"{i:02d}" * 5})
    stats = await store.outbox_stats()
    assert stats["log"]["bytes"] <= 100
    assert (await store.counters())["dropped_log"] == 20 - stats["log"]["entries"]
    await _totals_match(store)
    await store.close()


async def test_audit_never_dropped_even_with_tiny_quotas(tmp_path: Path) -> None:
    tiny = Quota(max_entries=1, max_bytes=1)
    store = await _open(tmp_path, _limits(audit=tiny, log=tiny, event=tiny, dropped=tiny))
    for i in range(10):
        await store.append_audit(AuditRow("tech", "restart", f"svc{i}", "ok"))
        await store.append("log", {"line": "x" * 50})
    rows = await _rows(store)
    assert [p["object"] for _, k, p in rows if k == "audit"] == [f"svc{i}" for i in range(10)]
    with pytest.raises(StoreError):
        await store.append("audit", {"forged": True})
    await store.close()


async def test_ack_deletes_only_up_to_seq(tmp_path: Path) -> None:
    store = await _open(tmp_path)
    await store.append_many("event", [{"i": i} for i in range(10)])
    assert await store.ack(4) == 4
    assert [s for s, _, _ in await _rows(store)] == [5, 6, 7, 8, 9, 10]
    assert await store.ack(2) == 0
    assert await store.get_meta("acked_seq") == "4"
    await _totals_match(store)
    await store.close()


async def test_pending_bounded_by_count_and_bytes(tmp_path: Path) -> None:
    store = await _open(tmp_path)
    await store.append_many("log", [{"line": "y" * 90} for _ in range(10)])
    assert len(await store.pending(max_entries=3, max_bytes=10**6)) == 3
    assert len(await store.pending(max_entries=100, max_bytes=250)) == 2
    # One entry larger than max_bytes still comes out alone, so it can be dealt with.
    assert len(await store.pending(max_entries=100, max_bytes=1)) == 1
    await store.close()


async def test_replace_with_marker_keeps_seq(tmp_path: Path) -> None:
    store = await _open(tmp_path)
    await store.append_many("event", [{"i": 1}, {"big": "z" * 1000}, {"i": 3}])
    assert await store.replace_with_marker(2, "too_large")
    rows = await _rows(store)
    assert [(s, k) for s, k, _ in rows] == [(1, "event"), (2, "dropped"), (3, "event")]
    assert rows[1][2]["reason"] == "too_large"
    assert rows[1][2]["kind"] == "event"
    await _totals_match(store)
    await store.close()


async def test_disk_full_raises_store_full_and_writes_nothing(tmp_path: Path) -> None:
    """Simulate a full disk with PRAGMA max_page_count: SQLite then fails with SQLITE_FULL."""
    store = await _open(tmp_path)
    await store.append("event", {"i": 0})
    async with store.db.execute("PRAGMA page_count") as cur:
        pages = (await cur.fetchone())[0]  # type: ignore[index]
    await store.db.execute(f"PRAGMA max_page_count = {pages + 2}")
    before = await _rows(store)
    stats = await store.outbox_stats()
    with pytest.raises(StoreFull):
        await store.append_many("event", [{"blob": "q" * 4000} for _ in range(50)])
    with pytest.raises(StoreFull):
        await store.append_audit(AuditRow("tech", "x", "y", "ok", {"pad": "p" * 20000}))
    assert await _rows(store) == before
    assert await store.outbox_stats() == stats
    assert await store.audit_log() == []
    # After space is freed the store works again.
    await store.db.execute("PRAGMA max_page_count = 1073741823")
    assert await store.append("event", {"i": 1}) is not None
    await _totals_match(store)
    await store.close()


async def test_log_refused_below_disk_reserve(tmp_path: Path) -> None:
    free = [10**9]
    limits = StoreLimits(quotas={}, log_disk_reserve_bytes=100 * 2**20)
    store = await _open(tmp_path, limits, free_bytes=lambda: free[0])
    assert await store.append("log", {"line": "ok"}) is not None
    free[0] = 50 * 2**20
    store._free_cache = (0.0, 0)  # the store caches statvfs for 5 s
    assert await store.append_many("log", [{"line": "a"}, {"line": "b"}]) == [None, None]
    # Events and audit are still queued below the reserve: logs go first.
    assert await store.append("event", {"e": 1}) is not None
    await store.append_audit(AuditRow("tech", "x", "y", "ok"))
    assert (await store.counters())["log_refused_disk_reserve"] == 2
    assert [k for _, k, _ in await _rows(store)] == ["log", "event", "audit"]
    await store.close()


async def test_totals_survive_reopen(tmp_path: Path) -> None:
    store = await _open(tmp_path, _limits(log=Quota(max_entries=3)))
    await store.append_many("log", [{"i": i} for i in range(7)])
    await store.close()
    store = await _open(tmp_path, _limits(log=Quota(max_entries=3)))
    await _totals_match(store)
    await store.append("log", {"i": 7})
    assert (await store.outbox_stats())["log"]["entries"] == 3
    await store.close()


async def test_acked_rows_wait_for_a_purge_and_are_never_read_again(tmp_path: Path) -> None:
    store = await _open(tmp_path)
    await store.append_many("event", [{"i": i} for i in range(10)])
    assert await store.ack(6) == 6
    assert await _all_rows(store) == list(range(1, 11))  # no DELETE on the ack's path
    assert [r[0] for r in await store.pending_raw(max_entries=100, max_bytes=2**30)] == [
        7,
        8,
        9,
        10,
    ]
    assert await store.outbox_stats() == {"event": {"entries": 4, "bytes": 4 * len('{"i":0}')}}
    await store.close()
    store = await _open(tmp_path)  # after a restart: still never sent again
    assert [r[0] for r in await store.pending_raw(max_entries=100, max_bytes=2**30)] == [
        7,
        8,
        9,
        10,
    ]
    await _totals_match(store)
    assert await store.purge_acked() == 6
    assert await _all_rows(store) == [7, 8, 9, 10]
    assert (await store.counters())["outbox_acked_purges"] == 1
    assert await store.purge_acked() == 0
    await store.close()


async def test_acked_rows_over_the_bound_are_deleted_at_the_ack(tmp_path: Path) -> None:
    limits = StoreLimits(quotas={}, log_disk_reserve_bytes=0, acked_keep_max_entries=5)
    store = await _open(tmp_path, limits)
    await store.append_many("event", [{"i": i} for i in range(20)])
    await store.ack(4)
    assert len(await _all_rows(store)) == 20  # 4 waiting: within the bound
    await store.ack(8)
    assert await _all_rows(store) == list(range(9, 21))  # 8 > 5: all deleted at once
    await _totals_match(store)
    await store.close()
    store = await _open(tmp_path, StoreLimits(quotas={}, acked_keep_max_entries=0))
    await store.ack(9)
    assert await _all_rows(store) == list(range(10, 21))  # 0: deleted at each ack
    await store.close()


async def test_quota_and_drop_markers_skip_acked_rows(tmp_path: Path) -> None:
    store = await _open(tmp_path, _limits(event=Quota(max_entries=5)))
    await store.append_many("event", [{"i": i} for i in range(5)])
    await store.append_many("event", [{"i": 5}])  # over: seq 1 dropped, a marker (seq 7)
    await store.ack(7)  # the hub holds the marker
    await store.append_many("event", [{"i": i} for i in range(6, 12)])
    rows = await _rows(store)
    markers = [p for _, k, p in rows if k == "dropped"]
    # A new marker above the acknowledged one: the hub never misses a count.
    assert len(markers) == 1 and markers[0]["first_seq"] == 8
    assert [p["i"] for _, k, p in rows if k == "event"] == [7, 8, 9, 10, 11]
    await _totals_match(store)
    await store.close()


async def test_renumbering_moves_only_what_waits(tmp_path: Path) -> None:
    store = await _open(tmp_path)
    await store.append_many("event", [{"i": i} for i in range(6)])
    await store.ack(3)
    assert await store.renumber_after(100) == 3
    assert await _all_rows(store) == [104, 105, 106]
    await store.close()
