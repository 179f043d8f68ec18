"""Group commit of sync batches on PostgreSQL (hub.store.pg_group_commit): batches that
queue while every pooled connection is busy share one transaction, each stored exactly as
alone; a group that fails is applied again batch by batch, so each caller gets its own
result or error."""

from __future__ import annotations

import asyncio

import pytest
from test_store_backends import NOW, _audit, _batch, _enrolled

from hub.errors import Forbidden
from hub.store.postgres import PostgresStore


async def _opened(url: str, **kwargs: int) -> PostgresStore:
    store = PostgresStore(url, pool_min=1, pool_max=1, **kwargs)
    await store.open()
    return store


async def test_batches_queued_behind_a_busy_pool_share_one_transaction(pg_url: str):
    store = await _opened(pg_url)
    try:
        ids = [f"dev-{i:02d}" for i in range(12)]
        await _enrolled(store, *ids)
        before = store.writer_stats()
        # Two batches per device, the second overlapping the first: exactly once each.
        results = await asyncio.gather(
            *(store.ingest_sync(d, _batch(range(1, 6)), NOW) for d in ids),
            *(store.ingest_sync(d, _batch(range(3, 9)), NOW) for d in ids),
        )
        after = store.writer_stats()
        assert [r.acked_seq for r in results] == [5] * 12 + [8] * 12
        assert sum(r.inserted for r in results) == 12 * 8
        for device_id in ids:
            events = await store.list_events(device_id, 0, 100)
            assert [e.seq for e in events] == list(range(1, 9))
            assert (await store.get_device(device_id)).acked_seq == 8
        # 24 writes, in fewer transactions: the pool's one connection was busy.
        assert after.jobs - before.jobs == 24
        assert after.groups - before.groups < 24
        assert store.ingest_groups.groups >= 1 and store.ingest_groups.fallbacks == 0
    finally:
        await store.close()


async def test_a_failing_batch_fails_alone_and_its_group_is_stored(pg_url: str):
    store = await _opened(pg_url)
    try:
        ids = [f"dev-{i:02d}" for i in range(6)]
        await _enrolled(store, *ids)
        await store.set_device_disabled("dev-03", True, _audit("device.disable", "dev-03"))
        results = await asyncio.gather(
            *(store.ingest_sync(d, _batch(range(1, 4)), NOW) for d in ids),
            return_exceptions=True,
        )
        failed = results[3]
        assert isinstance(failed, Forbidden) and "dev-03" in str(failed)
        assert "disabled" in str(failed)
        for i, device_id in enumerate(ids):
            events = await store.list_events(device_id, 0, 100)
            assert [e.seq for e in events] == ([] if i == 3 else [1, 2, 3])
        assert store.ingest_groups.fallbacks == 1
    finally:
        await store.close()


@pytest.mark.parametrize("group_max", [1, 2])
async def test_max_group_commit_bounds_a_group(pg_url: str, group_max: int):
    store = await _opened(pg_url, max_group_commit=group_max)
    try:
        ids = [f"dev-{i:02d}" for i in range(9)]
        await _enrolled(store, *ids)
        seen: list[int] = []
        store.watch_commits(lambda jobs, seconds: seen.append(jobs))
        await asyncio.gather(*(store.ingest_sync(d, _batch(range(1, 3)), NOW) for d in ids))
        assert sum(seen) == 9
        assert max(seen) <= group_max
        if group_max == 2:
            assert max(seen) == 2  # the queue was long enough to fill a group
        for device_id in ids:
            assert (await store.get_device(device_id)).acked_seq == 2
    finally:
        await store.close()
