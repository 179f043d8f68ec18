"""Fleet history and device contact spans on a real SQLite store (hub migrations 23, 24):
samples count the fleet as the monitoring counts do, with "never heard from" apart;
contact spans split at a silence over the gap and stay within their per-device bound
(counted); trimming by age deletes at most a batch per write."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hub.store import AuditRecord, EnrollmentTokenRecord, NewDevice, SyncBatch
from hub.store.sqlite import SqliteStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)
GAP_S = 90.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    found = SqliteStore(tmp_path / "hub.db")
    found.contact_gap_s, found.contact_max_spans = GAP_S, 3
    await found.open()
    token = EnrollmentTokenRecord("et_1", "h", 100, 100, NOW + timedelta(hours=1), {}, NOW, "a")
    await found.create_enrollment_token(
        token, AuditRecord("admin", "token.create", "et_1", "ok", NOW)
    )
    try:
        yield found
    finally:
        await found.close()


async def _enroll(store: SqliteStore, device_id: str, at: datetime = NOW) -> None:
    device = NewDevice(device_id, "h", "1", f"s-{device_id}", "sha256:x", NOW + timedelta(days=9))
    await store.enroll_device("et_1", "h", device, at)


async def _sync(store: SqliteStore, device_id: str, at: datetime) -> None:
    await store.ingest_sync(device_id, SyncBatch([], None, 0, 0, protocol=3), at)


async def test_a_sample_counts_the_fleet_like_the_monitoring_counts(
    store: SqliteStore, tmp_path: Path
) -> None:
    for d in ("dev-a", "dev-b", "dev-c", "dev-d"):
        await _enroll(store, d)  # enrollment is a contact
    await _sync(store, "dev-b", NOW - timedelta(hours=2))
    await _sync(store, "dev-c", NOW - timedelta(days=2))
    with sqlite3.connect(tmp_path / "hub.db") as db:  # a device row never heard from
        db.execute("UPDATE devices SET last_contact = NULL WHERE id = 'dev-d'")
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
    store: SqliteStore,
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


async def test_trimming_by_age_deletes_at_most_a_batch_per_write(store: SqliteStore) -> None:
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
