"""Writer statistics and commit observers on each backend (the ``store`` fixture of
tests/pgkit.py): on SQLite the group-commit writer's, on PostgreSQL the pool's backlog and
this process's commits (docs/scaling.md)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from fleetkit import until
from test_store_backends import NOW, _audit

from hub.errors import Conflict
from hub.store.postgres import PostgresStore
from hub.store.records import UserRecord


async def test_commits_are_counted_and_observed_after_they_commit(store: Any):
    seen: list[tuple[int, float]] = []
    store.watch_commits(lambda jobs, seconds: seen.append((jobs, seconds)))
    before = store.writer_stats()
    for name in ("ann", "bob", "cid"):
        await store.add_user(UserRecord(name, NOW, "admin"), _audit("user.create", name))
    after = store.writer_stats()
    assert after.jobs - before.jobs == 3
    assert 1 <= after.groups - before.groups <= 3
    assert sum(jobs for jobs, _ in seen) == 3
    assert all(seconds >= 0 for _, seconds in seen)
    assert after.queue_depth == 0 and after.wal_truncations >= 0
    # reads commit nothing
    await store.list_users()
    assert store.writer_stats().jobs == after.jobs


async def test_pg_queue_depth_is_the_pool_backlog_and_a_rollback_is_no_commit(pg_url: str):
    store = PostgresStore(pg_url, pool_min=1, pool_max=1)
    await store.open()
    blocker = await asyncpg.connect(pg_url)
    try:
        observed: list[float] = []
        store.watch_commits(lambda jobs, seconds: observed.append(seconds))
        await store.add_user(UserRecord("ann", NOW, "admin"), _audit("user.create", "ann"))
        assert len(observed) == 1 and store.writer_stats().groups == 1
        # A write that waits on a row lock holds the pool's only connection...
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM users WHERE name = 'ann' FOR UPDATE")
        held = asyncio.create_task(
            store.set_user_disabled("ann", True, _audit("user.disable", "ann"))
        )
        async with asyncio.timeout(10):
            while not await blocker.fetchval(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            ):
                assert not held.done()
                await asyncio.sleep(0.01)
        assert store.writer_stats().queue_depth == 0
        # ...so the next writes and reads wait for it: the queue depth
        queued = [
            asyncio.create_task(store.add_user(UserRecord("bob", NOW, "a"), _audit("u"))),
            asyncio.create_task(store.add_user(UserRecord("ann", NOW, "a"), _audit("u"))),
            asyncio.create_task(store.list_users()),
        ]
        await until(lambda: store.writer_stats().queue_depth == 3, 10, "3 waiting for the pool")
        await tx.rollback()
        await held
        bob, ann, users = await asyncio.gather(*queued, return_exceptions=True)
        assert bob is None and isinstance(ann, Conflict)
        assert [u.name for u in users] in (["ann"], ["ann", "bob"])
        stats = store.writer_stats()
        # ann, the disable, bob; the refused add rolled back: not a commit, not observed
        assert (stats.queue_depth, stats.groups, stats.jobs) == (0, 3, 3)
        assert len(observed) == 3
        assert (stats.wal_truncations, stats.db_bytes, stats.wal_bytes) == (0, 0, 0)
    finally:
        await blocker.close()
        await store.close()


async def test_pg_an_observer_that_raises_does_not_fail_a_committed_write(
    pg_url: str, caplog: pytest.LogCaptureFixture
):
    store = PostgresStore(pg_url)
    await store.open()
    try:

        def broken(jobs: int, seconds: float) -> None:
            raise RuntimeError("observer bug")

        store.watch_commits(broken)
        await store.add_user(UserRecord("ann", NOW, "admin"), _audit("user.create", "ann"))
        assert await store.get_user("ann") is not None
        assert store.writer_stats().jobs == 1
        assert "store commit observer failed" in caplog.text
    finally:
        await store.close()
