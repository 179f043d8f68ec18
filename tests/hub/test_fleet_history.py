"""Fleet history and device contact spans on a real store of each backend
(SQLite migrations 23, 24; PostgreSQL 7):
samples count the fleet as the monitoring counts do, with "never heard from" apart;
contact spans split at a silence over the gap and stay within their per-device bound
(counted); trimming by age deletes at most a batch per write."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from hub.store import AuditRecord, EnrollmentTokenRecord, NewDevice, SyncBatch
from hub.store.sqlite import SqliteStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)
GAP_S = 90.0


@pytest.fixture
async def store(store: Any) -> AsyncIterator[Any]:
    """Each backend in turn (tests/pgkit.py), with a small gap and span bound."""
    store.contact_gap_s, store.contact_max_spans = GAP_S, 3
    token = EnrollmentTokenRecord("et_1", "h", 100, 100, NOW + timedelta(hours=1), {}, NOW, "a")
    await store.create_enrollment_token(
        token, AuditRecord("admin", "token.create", "et_1", "ok", NOW)
    )
    yield store


async def _enroll(store: Any, device_id: str, at: datetime = NOW) -> None:
    device = NewDevice(device_id, "h", "1", f"s-{device_id}", "sha256:x", NOW + timedelta(days=9))
    await store.enroll_device("et_1", "h", device, at)


async def _sync(store: Any, device_id: str, at: datetime) -> None:
    await store.ingest_sync(device_id, SyncBatch([], None, 0, 0, protocol=3), at)


async def _never_heard_from(store: Any, device_id: str) -> None:
    """Clear the device's last contact in the database itself (no store method does)."""
    forget = "UPDATE devices SET last_contact = NULL WHERE id = "
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as db:
            db.execute(forget + "?", (device_id,))
        return
    conn = await asyncpg.connect(store.url)
    try:
        await conn.execute(forget + "$1", device_id)
    finally:
        await conn.close()


async def test_a_sample_counts_the_fleet_like_the_monitoring_counts(
    store: Any,
) -> None:
    for d in ("dev-a", "dev-b", "dev-c", "dev-d"):
        await _enroll(store, d)  # enrollment is a contact
    await _sync(store, "dev-b", NOW - timedelta(hours=2))
    await _sync(store, "dev-c", NOW - timedelta(days=2))
    await _never_heard_from(store, "dev-d")
    at = NOW + timedelta(seconds=10)
    online, stale = at - timedelta(seconds=GAP_S), at - timedelta(days=1)
    sample = await store.record_fleet_sample(at, online, stale)
    by_connectivity: dict[str, int] = {}
    for (c, _), (n, _) in (await store.fleet_counts(online, stale)).items():
        by_connectivity[c] = by_connectivity.get(c, 0) + n
    assert (sample.online, sample.offline, sample.stale, sample.never) == (1, 1, 1, 1)
    assert sample.online == by_connectivity["online"]
    assert sample.offline == by_connectivity["offline"]
    assert sample.stale + sample.never == by_connectivity["stale"]  # apart here
    assert (sample.total, sample.no_target, sample.in_sync) == (4, 4, 0)
    assert await store.fleet_samples(NOW, 10) == [sample]


async def test_contact_spans_split_at_a_silence_and_stay_within_their_bound(
    store: Any,
) -> None:
    await _enroll(store, "dev-a")
    await _sync(store, "dev-a", NOW)
    await _sync(store, "dev-a", NOW + timedelta(seconds=60))  # within the gap: same span
    spans = await store.contact_spans("dev-a", NOW - timedelta(days=1))
    assert [(s.started_at, s.last_at) for s in spans] == [(NOW, NOW + timedelta(seconds=60))]
    starts = [NOW + timedelta(minutes=m) for m in (10, 20, 30, 40)]  # each after a silence
    for at in starts:
        await _sync(store, "dev-a", at)
    spans = await store.contact_spans("dev-a", NOW - timedelta(days=1))
    assert [s.started_at for s in spans] == starts[-3:]  # the bound: 3 spans, oldest gone
    assert store.contact_spans_trimmed == 2


async def test_trimming_by_age_deletes_at_most_a_batch_per_write(store: Any) -> None:
    await _enroll(store, "dev-a")
    for minutes in range(5):
        at = NOW + timedelta(minutes=minutes)
        await store.record_fleet_sample(at, at, at)
    before = NOW + timedelta(minutes=3)
    assert await store.trim_fleet_history(before, 2) == 2
    assert await store.trim_fleet_history(before, 2) == 1
    assert await store.trim_fleet_history(before, 2) == 0
    assert [s.at for s in await store.fleet_samples(NOW, 10)] == [
        NOW + timedelta(minutes=3),
        NOW + timedelta(minutes=4),
    ]
