"""Device audit records that arrive ahead of a gap in their chain are held, on each
backend (the ``store`` fixture: SQLite and PostgreSQL): an older agent's later batch
stored before an earlier one is no break; a gap that stays open past the grace, past the
held bound, or until the sweep is declared with today's "gap" verdict; held records are
judged (altered, broken link) when their turn comes, and stored once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from test_store_backends import _enrolled
from test_store_backends_side import NOW, _entry, _records, _sync

from hub.store import AuditCursor, AuditGapBound, AuditQuery
from hub.store import sqlite_rows as rows

RECS = _records(20)


async def _send(store: Any, ids: list[int], at: Any = NOW, recs: list[Any] = RECS) -> None:
    """Ingest the device's records ``ids`` (hub seq = record id) as one batch."""
    batch = [_entry(i, "audit", recs[i - 1]) for i in ids]
    await store.ingest_sync("dev-1", _sync(batch), at)


async def _listed(store: Any) -> list[tuple[int, bool, str | None]]:
    page = await store.query_audit(AuditQuery(AuditCursor(), 1000, source="device"))
    return [(e.record_id, e.held, e.chain_broken) for e in page]


async def test_later_batch_stored_first_is_held_then_verified_not_broken(store: Any):
    await _enrolled(store, "dev-1")
    await _send(store, list(range(1, 11)))
    await _send(store, list(range(16, 21)))  # the later request stored first
    await _send(store, list(range(16, 21)))  # re-delivered while held: stored once
    chain = await store.device_audit_chain("dev-1")
    assert (chain.last_id, chain.verified, chain.breaks, chain.broken_id) == (10, 10, 0, None)
    assert chain.held == 5 and chain.held_since == rows.ts(NOW)
    assert chain.pending == f"held: waiting for record(s) 11..15 since {rows.ts(NOW)}"
    listed = await _listed(store)
    assert listed[10:] == [(i, True, None) for i in range(16, 21)]
    await _send(store, list(range(11, 16)), NOW + timedelta(seconds=5))
    await _send(store, list(range(11, 21)), NOW + timedelta(seconds=6))  # all again
    chain = await store.device_audit_chain("dev-1")
    assert (chain.last_id, chain.verified, chain.breaks, chain.broken_id) == (20, 20, 0, None)
    assert (chain.held, chain.held_since, chain.pending) == (0, None, None)
    assert sorted(await _listed(store)) == [(i, False, None) for i in range(1, 21)]


async def test_gap_open_past_the_grace_is_declared_by_the_next_batch(store: Any):
    store.audit_gap_bound = AuditGapBound(grace_s=60, max_held=100)
    await _enrolled(store, "dev-1")
    await _send(store, [1, 2])
    await _send(store, [5, 6])
    await _send(store, [7], NOW + timedelta(seconds=30))  # within the grace: held too
    chain = await store.device_audit_chain("dev-1")
    assert (chain.broken_id, chain.held, chain.last_id) == (None, 3, 2)
    await _send(store, [8], NOW + timedelta(seconds=60))
    chain = await store.device_audit_chain("dev-1")
    assert chain.broken_id == 5
    assert chain.broken_reason == "gap: record(s) 3..4 before it never arrived"
    assert chain.broken_at == rows.ts(NOW + timedelta(seconds=60))
    assert (chain.last_id, chain.verified, chain.breaks, chain.held) == (8, 6, 1, 0)
    listed = dict((i, b) for i, _h, b in await _listed(store))
    assert listed[5] == chain.broken_reason and listed[6] is None and listed[8] is None


async def test_sweep_declares_the_expired_gap_of_a_device_that_sends_nothing_more(store: Any):
    await _enrolled(store, "dev-1", "dev-2")
    await _send(store, [1, 2])
    await _send(store, [5, 6])
    assert await store.settle_audit_gaps(NOW + timedelta(seconds=59), 60) == 0
    assert (await store.device_audit_chain("dev-1")).held == 2
    later = NOW + timedelta(seconds=60)
    assert await store.settle_audit_gaps(later, 60) == 1
    chain = await store.device_audit_chain("dev-1")
    assert (chain.broken_id, chain.broken_at) == (5, rows.ts(later))
    assert chain.broken_reason == "gap: record(s) 3..4 before it never arrived"
    assert (chain.last_id, chain.verified, chain.breaks, chain.held) == (6, 4, 1, 0)
    assert await store.settle_audit_gaps(later + timedelta(days=1), 60) == 0
    await _send(store, [3, 4])  # too late: what it breaks is as today
    chain = await store.device_audit_chain("dev-1")
    assert (chain.broken_id, chain.breaks, chain.last_id) == (5, 3, 6)


async def test_held_bound_declares_the_gap_at_once_and_counts(store: Any):
    store.audit_gap_bound = AuditGapBound(grace_s=600, max_held=3)
    await _enrolled(store, "dev-1")
    await _send(store, [1, 2])
    await _send(store, [5, 6, 7])  # at the bound: held
    chain = await store.device_audit_chain("dev-1")
    assert (chain.held, chain.broken_id, chain.held_overflows) == (3, None, 0)
    await _send(store, [8])  # past it
    chain = await store.device_audit_chain("dev-1")
    assert chain.broken_id == 5
    assert chain.broken_reason == "gap: record(s) 3..4 before it never arrived"
    assert (chain.held, chain.held_overflows, chain.last_id, chain.verified) == (0, 1, 8, 6)
    assert len(await _listed(store)) == 6  # nothing dropped


async def test_held_record_altered_or_mislinked_is_broken_when_judged(store: Any):
    await _enrolled(store, "dev-1", "dev-2")
    altered = [*RECS[:3], dict(RECS[3], outcome="failed"), *RECS[4:]]
    await _send(store, [1, 2], recs=altered)
    await _send(store, [4, 5], recs=altered)
    assert (await store.device_audit_chain("dev-1")).broken_id is None  # held, not judged
    await _send(store, [3], recs=altered)
    chain = await store.device_audit_chain("dev-1")
    assert (chain.broken_id, chain.breaks, chain.last_id, chain.held) == (4, 1, 5, 0)
    assert chain.broken_reason.startswith("altered")
    # dev-2: record 4 chained to something else than record 3
    relinked = [*RECS[:3], _records(1, start=4, prev="f" * 64)[0]]
    for ids in ([1, 2], [4], [3]):
        batch = [_entry(i, "audit", relinked[i - 1]) for i in ids]
        await store.ingest_sync("dev-2", _sync(batch), NOW)
    chain = await store.device_audit_chain("dev-2")
    assert chain.broken_id == 4
    assert chain.broken_reason == "broken link: its prev_hash does not match record 3's hash"
    assert (chain.last_id, chain.breaks, chain.held) == (4, 1, 0)


async def test_new_store_chain_declares_the_old_chains_open_gap(store: Any):
    await _enrolled(store, "dev-1")
    await _send(store, [1, 2])
    await _send(store, [5])
    fresh = _records(1)[0]  # a new agent store: id 1, no predecessor
    await store.ingest_sync("dev-1", _sync([_entry(6, "audit", fresh)]), NOW)
    chain = await store.device_audit_chain("dev-1")
    assert (chain.broken_id, chain.held, chain.last_id) == (5, 0, 1)
    assert chain.broken_reason == "gap: record(s) 3..4 before it never arrived"
