"""Issue 10 (Logs 1): a real container's log, collected into a real store with a small
per-container quota: the oldest lines give way to one "N lines dropped" marker, the
newest are kept in order and readable, and the hub's share (the outbox) is untouched.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from docker_env import TestImages, make_release, make_service, wait_for

from edge_agent.logs import LogCollector
from edge_agent.runtime import DockerRuntime
from edge_agent.store import LogLimits, Store, StoreLimits

pytestmark = pytest.mark.docker

BURST = 'for i in $(seq 3000); do echo "seq $i"; done; while true; do sleep 1 & wait $!; done'
QUOTA = 64 * 1024


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    limits = StoreLimits(log_disk_reserve_bytes=0, logs=LogLimits(max_bytes_per_container=QUOTA))
    s = await Store(tmp_path / "agent.db", limits=limits).open()
    try:
        yield s
    finally:
        await s.close()


async def test_container_over_its_local_quota_keeps_newest_lines_behind_a_drop_marker(
    runtime: DockerRuntime, images: TestImages, store: Store
) -> None:
    service = make_service("burst", images.local("good"), command=["sh", "-c", BURST])
    cid = await runtime.create(service, release=make_release([service]), revision=1)
    await runtime.start(cid)
    collector = LogCollector(runtime, store, max_lines_per_read=500)

    async def all_read() -> bool:
        await collector.collect_once()
        batch = await store.read_logs(service="burst", tail=1)
        return bool(batch.lines) and batch.lines[-1]["line"] == "seq 3000"

    await wait_for(all_read, timeout_s=30, interval_s=0.2)
    rows = []
    after = 0
    while True:  # paged in bounded batches
        batch = await store.read_logs(service="burst", limit=200, after=after)
        rows += batch.lines
        after = batch.next_after
        if not batch.more:
            break
    marker, kept = rows[0], rows[1:]
    assert re.match(r"^\d+ lines dropped", marker["line"]) and marker["stream"] == "agent"
    seqs = [int(r["line"].split()[1]) for r in kept]
    assert seqs == list(range(marker["dropped"] + 1, 3001))  # newest kept, none twice
    assert sum(1 for r in rows if r.get("dropped")) == 1
    async with store.db.execute("SELECT SUM(bytes) FROM logs WHERE service = 'burst'") as cur:
        assert (await cur.fetchone())[0] <= QUOTA  # type: ignore[index]
    counters = await store.counters()
    assert counters["log_lines_dropped_quota"] == marker["dropped"]
    assert (await store.outbox_stats())["log"]["entries"] == 3000  # shipping is apart
