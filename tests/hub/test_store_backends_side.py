"""The store's side records, actions, technicians, metrics, retention and dashboard reads on
each backend (SQLite and PostgreSQL; the ``store`` fixture of tests/pgkit.py): what a sync
batch derives besides its entries (device audit chain, metrics samples, action results and
parts, host reports) exactly once under duplicate and overlapping batches; the audit query;
the bounds; and, on PostgreSQL, two hub processes (two PostgresStores on one database)
taking actions and issuing bounded tokens at once."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_store_backends import _audit, _enrolled

from edge_agent.protocol import HostContainerReport, OutboxEntry, StatusSnapshot
from hub.device_audit import chain_hash
from hub.errors import Conflict, NotFound
from hub.store import (
    ActionRecord,
    AuditCursor,
    AuditQuery,
    AuditScope,
    PartsBound,
    SyncBatch,
    TechnicianRecord,
)
from hub.store import sqlite_rows as rows
from hub.store.postgres import PostgresStore
from hub.store.records import entry_row
from hub.store.sqlite_metrics import MetricsBound

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _entry(seq: int, kind: str, payload: dict[str, Any], at: datetime = NOW) -> Any:
    return entry_row(OutboxEntry(seq=seq, kind=kind, created_at=at, payload=payload))


def _sync(entries: list[Any], status: StatusSnapshot | None = None) -> SyncBatch:
    return SyncBatch(entries, status, 0, 0, protocol=3)


def _records(n: int, start: int = 1, prev: str = "") -> list[dict[str, Any]]:
    """Return ``n`` chained device audit records as the agent ships them."""
    out = []
    for i in range(start, start + n):
        fields = {
            "at": rows.ts(NOW + timedelta(seconds=i)),
            "actor": "tech:ann" if i % 2 else "agent",
            "action": f"local.op{i % 3}",
            "object": f"svc{i}",
            "outcome": "ok",
            "detail": {"i": i},
        }
        detail = json.dumps(fields["detail"], sort_keys=True, separators=(",", ":"))
        texts = [fields[k] for k in ("at", "actor", "action", "object", "outcome")]
        digest = chain_hash(prev, *texts, detail)
        out.append({"id": i, **fields, "prev_hash": prev, "hash": digest})
        prev = digest
    return out


# device audit chain and the audit query ---------------------------------------------


async def test_device_audit_records_are_verified_and_stored_once(store: Any):
    await _enrolled(store, "dev-1")
    recs = _records(8)
    entries = [_entry(i + 1, "audit", r) for i, r in enumerate(recs)]
    slices = [entries[0:4], entries[2:6], entries[0:8], entries[4:8]]
    await asyncio.gather(*(store.ingest_sync("dev-1", _sync(s), NOW) for s in slices * 3))
    chain = await store.device_audit_chain("dev-1")
    assert (chain.last_id, chain.verified, chain.unverifiable, chain.breaks) == (8, 8, 0, 0)
    assert chain.broken_id is None
    page = await store.query_audit(AuditQuery(AuditCursor(), 100, source="device"))
    assert [e.record_id for e in page] == list(range(1, 9))
    assert (page[0].detail, page[0].actor, page[0].target) == ({"i": 1}, "tech:ann", "svc1")
    assert page[0].chain_broken is None and page[0].hash == recs[0]["hash"]
    # An altered record, then a gap: the first break is kept; counts grow. The record
    # after the gap is held (not judged) until the gap's grace is over.
    altered = dict(_records(1, start=9, prev=recs[-1]["hash"])[0], outcome="failed")
    gap = _records(1, start=11, prev="x")[0]
    legacy = {"note": "an older agent: no chain"}
    more = [_entry(9, "audit", altered), _entry(10, "audit", gap), _entry(11, "audit", legacy)]
    await store.ingest_sync("dev-1", _sync(more), NOW)
    await store.ingest_sync("dev-1", _sync(more), NOW)  # re-delivered: judged once
    chain = await store.device_audit_chain("dev-1")
    assert (chain.verified, chain.unverifiable, chain.breaks, chain.broken_id) == (9, 1, 1, 9)
    assert chain.broken_reason.startswith("altered") and chain.held == 1
    assert await store.settle_audit_gaps(NOW + timedelta(seconds=600), 600) == 1
    chain = await store.device_audit_chain("dev-1")
    assert (chain.verified, chain.unverifiable, chain.breaks, chain.broken_id) == (10, 1, 2, 9)
    assert chain.held == 0
    assert (await store.device_audit_chain("dev-9")).verified == 0


async def test_audit_query_pages_hub_and_device_records_once_in_feed_order(store: Any):
    await _enrolled(store, "dev-1", "dev-2")  # hub rows 1..3
    recs = {d: _records(6) for d in ("dev-1", "dev-2")}
    seq = {"dev-1": 0, "dev-2": 0}
    for step in range(6):
        await store.record_audit(_audit(f"op.step{step}", "dev-1" if step % 2 else "x"))
        for d in ("dev-1", "dev-2"):
            seq[d] += 1
            await store.ingest_sync(d, _sync([_entry(seq[d], "audit", recs[d][step])]), NOW)
    full = await store.query_audit(AuditQuery(AuditCursor(), 1000))
    keys = [(e.source, e.device_id, e.record_id if e.source == "device" else e.id) for e in full]
    assert len(keys) == len(set(keys)) == 3 + 6 + 12
    assert keys[:4] == [("hub", "", 1), ("hub", "", 2), ("hub", "", 3), ("hub", "", 4)]
    assert keys[4:6] == [("device", "dev-1", 1), ("device", "dev-2", 1)]
    paged, cursor = [], AuditCursor()
    while page := await store.query_audit(AuditQuery(cursor, 4)):
        paged += page
        cursor = page[-1].cursor
    assert paged == full
    # Filters and a scoped view.
    by_actor = await store.query_audit(AuditQuery(AuditCursor(), 100, actor="tech:ann"))
    assert {e.record_id for e in by_actor} == {1, 3, 5} and len(by_actor) == 6
    prefix = await store.query_audit(AuditQuery(AuditCursor(), 100, action="op.*"))
    assert [e.action for e in prefix] == [f"op.step{i}" for i in range(6)]
    exact = await store.query_audit(AuditQuery(AuditCursor(), 100, action="local.op0"))
    assert {e.record_id for e in exact} == {3, 6}
    dev2 = await store.query_audit(
        AuditQuery(AuditCursor(), 100, devices=frozenset({"dev-2"}), source="device")
    )
    assert [(e.device_id, e.record_id) for e in dev2] == [("dev-2", i) for i in range(1, 7)]
    window = await store.query_audit(
        AuditQuery(
            AuditCursor(),
            100,
            source="device",
            since=rows.ts(NOW + timedelta(seconds=2)),
            until=rows.ts(NOW + timedelta(seconds=4)),
        )
    )
    assert sorted(e.record_id for e in window) == [2, 2, 3, 3]
    hub_only = await store.query_audit(AuditQuery(AuditCursor(), 100, source="hub"))
    assert all(e.source == "hub" for e in hub_only) and len(hub_only) == 9
    scope = AuditScope("nobody", frozenset({"dev-1"}), frozenset({"dev-1"}))
    scoped = await store.query_audit(AuditQuery(AuditCursor(), 100, scope=scope))
    assert {e.device_id for e in scoped if e.source == "device"} == {"dev-1"}
    assert [e.target for e in scoped if e.source == "hub"] == ["dev-1"] * 4  # enroll + 3 steps


async def test_pg_device_audit_feed_stays_append_only_across_two_processes(pg_url: str):
    one, two = PostgresStore(pg_url, pool_max=4), PostgresStore(pg_url, pool_max=4)
    await one.open()
    await two.open()
    try:
        await _enrolled(one, "dev-1")
        recs = _records(30)
        seen: list[Any] = []
        cursor = AuditCursor()

        async def reader() -> None:
            nonlocal cursor
            for _ in range(40):
                page = await two.query_audit(AuditQuery(cursor, 5))
                seen.extend(page)
                if page:
                    cursor = page[-1].cursor
                await asyncio.sleep(0)

        writes = [one.record_audit(_audit("op.note", str(i))) for i in range(30)]
        writes += [
            two.ingest_sync("dev-1", _sync([_entry(i + 1, "audit", r)]), NOW)
            for i, r in enumerate(recs)
        ]
        await asyncio.gather(reader(), *writes)
        while page := await one.query_audit(AuditQuery(cursor, 50)):
            seen += page
            cursor = page[-1].cursor
        assert seen == await one.query_audit(AuditQuery(AuditCursor(), 1000))
        assert len(seen) == 2 + 30 + 30
    finally:
        await one.close()
        await two.close()


# metrics ------------------------------------------------------------------------------


def _metric(seq: int, cpu: float, pad: int = 0) -> Any:
    return _entry(seq, "metrics", {"cpu": cpu, "pad": "x" * pad}, NOW + timedelta(minutes=seq))


async def test_metrics_samples_are_kept_once_within_their_bounds(store: Any):
    await _enrolled(store, "dev-1")
    store._metrics_bound = MetricsBound(history_per_device=5, max_sample_bytes=200)
    batches = [[_metric(s, s / 10) for s in range(1, 5)], [_metric(s, s / 10) for s in range(3, 9)]]
    await asyncio.gather(*(store.ingest_sync("dev-1", _sync(b), NOW) for b in batches * 3))
    await store.ingest_sync("dev-1", _sync([_metric(9, 0.9, pad=500)]), NOW)  # oversize
    history = await store.list_metrics("dev-1", None, 100)
    assert [s.seq for s in history.samples] == [4, 5, 6, 7, 8]
    assert (history.held, history.trimmed, history.oversize) == (5, 3, 1)
    assert history.samples[0].sample == {"cpu": 0.4, "pad": ""}
    assert history.samples[0].at == NOW + timedelta(minutes=4)
    # A re-delivery of a trimmed sample is not stored again; metrics are not events.
    await store.ingest_sync("dev-1", _sync([_metric(2, 0.2)]), NOW)
    assert (await store.list_metrics("dev-1", None, 100)).samples[0].seq == 4
    assert await store.list_events("dev-1", 0, 100) == []
    newest = await store.list_metrics("dev-1", NOW + timedelta(minutes=5), 2)
    assert [s.seq for s in newest.samples] == [7, 8]
    assert (await store.latest_metrics("dev-1")).seq == 8
    assert await store.latest_metrics("dev-9") is None
    assert (await store.list_metrics("dev-9", None, 10)).held == 0
    # Retention by age: oldest first, in batches; held follows.
    later = NOW + timedelta(hours=1)
    await store.ingest_sync("dev-1", _sync([_metric(10, 1.0)]), later)
    assert await store.trim_metrics_by_age("dev-1", later, 2) == 2
    assert await store.trim_metrics_by_age("dev-1", later, 100) == 2
    assert await store.trim_metrics_by_age("dev-1", later, 100) == 0
    history = await store.list_metrics("dev-1", None, 100)
    assert [s.seq for s in history.samples] == [10] and history.held == 1


# queued actions -----------------------------------------------------------------------


def _action(i: int, device: str = "dev-1", *, ttl: int = 3600, at: datetime = NOW) -> ActionRecord:
    return ActionRecord(
        f"act-{i:03d}",
        device,
        "logs",
        {"service": "web", "lines": 10},
        "admin",
        at + timedelta(seconds=i),
        at + timedelta(seconds=i + ttl),
        f'{{"signed":{i}}}',
        group="lab" if i % 2 else None,
    )


def _action_event(seq: int, action_id: str, state: str, **more: Any) -> Any:
    return _entry(seq, "event", {"type": "action", "id": action_id, "state": state, **more})


async def test_actions_queue_deliver_and_take_results_once(store: Any):
    await _enrolled(store, "dev-1", "dev-2")
    audits = [_audit("action.create", "dev-1")]
    await store.add_actions([_action(i) for i in range(1, 4)], 3, audits, forget_before=NOW)
    with pytest.raises(Conflict, match="max_queued_per_device"):  # all or none
        await store.add_actions([_action(4, "dev-2"), _action(5)], 3, audits, forget_before=NOW)
    assert await store.list_actions(NOW, device_id="dev-2", state=None, limit=10) == []
    await store.add_actions([_action(6, "dev-2", ttl=5)], 3, audits, forget_before=NOW)
    listed = await store.list_actions(NOW, device_id=None, state=None, limit=10)
    assert [a.id for a in listed] == ["act-006", "act-003", "act-002", "act-001"]
    assert listed[1].args == {"service": "web", "lines": 10} and listed[0].group is None
    scoped = await store.list_actions(
        NOW, device_id=None, state="queued", limit=2, device_ids=frozenset({"dev-1"})
    )
    assert [a.id for a in scoped] == ["act-003", "act-002"]
    assert await store.has_queued_actions("dev-1", NOW)
    # Taking: oldest first, at most ``limit``, once; re-delivered without a receipt.
    later = NOW + timedelta(seconds=30)
    first = await store.take_actions("dev-1", later, redeliver_before=NOW, limit=2)
    assert [a.id for a in first] == ["act-001", "act-002"]
    assert first[0].signed == '{"signed":1}'  # the rows as picked (state before delivery)
    marked = await store.get_action("act-001", later)
    assert (marked.state, marked.delivered_at, marked.state_at) == ("delivered", later, later)
    second = await store.take_actions("dev-1", later, redeliver_before=NOW, limit=5)
    assert [a.id for a in second] == ["act-003"]
    assert await store.take_actions("dev-1", later, redeliver_before=NOW, limit=5) == []
    assert not await store.has_queued_actions("dev-1", later)
    # Past its expiry without a result: expired (read paths and take).
    expired = await store.get_action("act-006", later)
    assert expired.state == "expired" and expired.state_at == later
    assert await store.take_actions("dev-2", later, redeliver_before=later, limit=5) == []
    assert await store.get_action("act-999", later) is None
    # The device's receipt, parts and result arrive by sync, each taken once.
    store.action_result_max_bytes = 64
    store.action_parts_bound = PartsBound(max_lines=5, max_bytes=1000)
    events = [
        _action_event(1, "act-001", "received"),
        _action_event(2, "act-001", "part", part=1, lines=["a", "b", "c"]),
        _action_event(3, "act-001", "part", part=2, lines=["d", "e", "f", "g"]),
        _action_event(4, "act-001", "succeeded", result={"logs": ["ok"]}),
        _action_event(5, "act-002", "failed", result={"logs": ["x" * 100]}, reason="boom"),
        _action_event(6, "act-006", "succeeded", result={}),  # another device's action
        _action_event(7, "act-001", "part", part=1, lines=["again"]),
    ]
    batches = [events[:3], events[1:], events]
    await asyncio.gather(*(store.ingest_sync("dev-1", _sync(b), later) for b in batches * 2))
    done = await store.get_action("act-001", later)
    assert (done.state, done.result, done.received_at) == ("succeeded", {"logs": ["ok"]}, later)
    failed = await store.get_action("act-002", later)
    assert failed.state == "failed" and failed.reason == "boom"
    assert failed.result == {
        "truncated": True,
        "original_bytes": len('{"logs":["' + "x" * 100 + '"]}'),
    }
    assert (await store.get_action("act-006", later)).state == "expired"
    parts, totals = await store.list_action_parts("act-001", after=0, limit=10)
    assert [(p.part, p.lines) for p in parts] == [(1, ["a", "b", "c"]), (2, ["d", "e"])]
    assert (totals.parts, totals.lines, totals.bytes, totals.cut_lines) == (2, 5, 10, 2)
    parts, _ = await store.list_action_parts("act-001", after=1, limit=10)
    assert [p.part for p in parts] == [2]
    assert (await store.list_action_parts("act-404", after=0, limit=10))[1].parts == 0
    # Finished actions (and their parts) are forgotten when new ones are queued.
    await store.add_actions([_action(7)], 3, audits, forget_before=later + timedelta(seconds=1))
    assert await store.get_action("act-001", later) is None
    assert (await store.list_action_parts("act-001", after=0, limit=10))[0] == []
    assert (await store.get_action("act-003", later)).state == "delivered"


async def test_a_delivered_action_without_a_receipt_is_delivered_again(store: Any):
    await _enrolled(store, "dev-1")
    await store.add_actions([_action(1), _action(2)], 5, [], forget_before=NOW)
    t1 = NOW + timedelta(seconds=10)
    assert len(await store.take_actions("dev-1", t1, redeliver_before=NOW, limit=5)) == 2
    await store.ingest_sync("dev-1", _sync([_action_event(1, "act-001", "received")]), t1)
    t2 = t1 + timedelta(seconds=60)
    again = await store.take_actions("dev-1", t2, redeliver_before=t1, limit=5)
    assert [a.id for a in again] == ["act-002"]
    assert (await store.get_action("act-002", t2)).delivered_at == t2
    assert (await store.get_action("act-001", t2)).delivered_at == t1


async def test_pg_two_processes_taking_for_one_device_deliver_each_action_once(pg_url: str):
    one, two = PostgresStore(pg_url, pool_max=5), PostgresStore(pg_url, pool_max=5)
    await one.open()
    await two.open()
    try:
        await _enrolled(one, "dev-1")
        await one.add_actions([_action(i) for i in range(40)], 100, [], forget_before=NOW)
        later = NOW + timedelta(minutes=5)
        takes = [
            s.take_actions("dev-1", later, redeliver_before=NOW, limit=3)
            for _ in range(20)
            for s in (one, two)
        ]
        taken = [a.id for got in await asyncio.gather(*takes) for a in got]
        assert sorted(taken) == [f"act-{i:03d}" for i in range(40)]  # each once, none lost
        listed = await two.list_actions(later, device_id="dev-1", state="delivered", limit=100)
        assert len(listed) == 40
    finally:
        await one.close()
        await two.close()


async def test_pg_the_queued_actions_bound_holds_across_two_processes(pg_url: str):
    one, two = PostgresStore(pg_url, pool_max=5), PostgresStore(pg_url, pool_max=5)
    await one.open()
    await two.open()
    try:
        await _enrolled(one, "dev-1")
        adds = [
            s.add_actions([_action(i * 2 + n)], 5, [], forget_before=NOW)
            for i in range(10)
            for n, s in enumerate((one, two))
        ]
        outcomes = await asyncio.gather(*adds, return_exceptions=True)
        assert sum(o is None for o in outcomes) == 5
        assert all(isinstance(o, Conflict) for o in outcomes if o is not None)
        assert len(await one.list_actions(NOW, device_id=None, state=None, limit=100)) == 5
    finally:
        await one.close()
        await two.close()


# technician tokens --------------------------------------------------------------------


def _tech(i: int, *, hours: int = 8, at: datetime = NOW) -> TechnicianRecord:
    return TechnicianRecord(
        f"tt-{i}", f"ann{i}", "operator", "device:dev-1", at, at + timedelta(hours=hours), "admin"
    )


async def test_technician_tokens_bounded_listed_and_revoked(store: Any):
    await store.add_technician(_tech(1, hours=1), 2, _audit("tech.issue"))
    await store.add_technician(_tech(2), 2, _audit("tech.issue"))
    with pytest.raises(Conflict, match=r"technicians\.max_active"):
        await store.add_technician(_tech(3), 2, _audit("tech.issue"))
    later = NOW + timedelta(hours=2)  # tt-1 expired: deleted when the next is issued
    await store.add_technician(_tech(3, at=later), 2, _audit("tech.issue"))
    assert [t.id for t in await store.list_technicians(later)] == ["tt-2", "tt-3"]
    revoked = await store.revoke_technician("tt-2", _audit("tech.revoke", "tt-2"))
    assert revoked.revoked_at == NOW and revoked.revoked_by == "admin"
    again = await store.revoke_technician("tt-2", _audit("tech.revoke", "tt-2", n=2))
    assert again.revoked_at == NOW  # idempotent: the first revocation stands
    with pytest.raises(NotFound):
        await store.revoke_technician("tt-9", _audit("tech.revoke", "tt-9"))
    assert await store.revoked_technicians(later) == [("tt-2", NOW + timedelta(hours=8))]
    assert await store.revoked_technicians(NOW + timedelta(hours=9)) == []
    actions = [a.action for a in await store.list_audit(0, 100)]
    assert actions == ["tech.issue"] * 3 + ["tech.revoke"] * 2


async def test_pg_the_technician_bound_holds_across_two_processes(pg_url: str):
    one, two = PostgresStore(pg_url, pool_max=5), PostgresStore(pg_url, pool_max=5)
    await one.open()
    await two.open()
    try:
        adds = [
            s.add_technician(_tech(i * 2 + n), 3, _audit("tech.issue"))
            for i in range(6)
            for n, s in enumerate((one, two))
        ]
        outcomes = await asyncio.gather(*adds, return_exceptions=True)
        assert sum(o is None for o in outcomes) == 3
        assert len(await two.list_technicians(NOW)) == 3
        assert len(await two.list_audit(0, 100)) == 3  # a refused issue writes nothing
    finally:
        await one.close()
        await two.close()


# retention ----------------------------------------------------------------------------


async def test_retention_trims_by_age_and_size_never_audit_records(store: Any):
    await _enrolled(store, "dev-2", "dev-1")
    assert await store.retention_devices() == ["dev-1", "dev-2"]
    old, young = NOW, NOW + timedelta(days=2)
    first = [_entry(s, "log", {"line": "x" * s}) for s in range(1, 7)]
    first[2] = _entry(3, "audit", _records(1)[0])
    await store.ingest_sync("dev-1", _sync(first), old)
    await store.ingest_sync("dev-1", _sync([_entry(s, "event", {"n": s}) for s in (7, 8)]), young)
    assert await store.device_data_size("dev-1") == (
        7,
        sum(len(json.dumps({"line": "x" * s}).replace(" ", "")) for s in (1, 2, 4, 5, 6))
        + 2 * len('{"n":7}'),
    )
    cutoff = NOW + timedelta(days=1)
    assert await store.trim_device_by_age("dev-1", cutoff, 2) == 2
    assert await store.trim_device_by_age("dev-1", cutoff, 100) == 3
    assert await store.trim_device_by_age("dev-1", cutoff, 100) == 0  # stops at young rows
    assert [e.seq for e in await store.list_events("dev-1", 0, 100)] == [3, 7, 8]
    rows_, size = await store.device_data_size("dev-1")
    assert (rows_, size) == (2, 2 * len('{"n":7}'))
    assert await store.device_data_cut("dev-1", size) is None
    assert await store.device_data_cut("dev-1", size - 1) == 7
    assert await store.trim_device_upto("dev-1", 7, 10) == 1
    assert [e.seq for e in await store.list_events("dev-1", 0, 100)] == [3, 8]
    assert await store.trim_device_upto("dev-1", 8, 0) == 0
    assert await store.device_data_size("dev-2") == (0, 0)


# dashboard and monitoring reads, host reports ----------------------------------------


async def test_status_reports_events_and_hourly_activity(store: Any):
    await _enrolled(store, "dev-1", "dev-2")
    assert await store.latest_status_report("dev-1") is None
    entries = [
        _entry(1, "status", {"hold": None, "n": 1}),
        _entry(2, "event", {"type": "error", "step": "pull"}),
        _entry(3, "event", {"type": "container", "action": "die"}),
        _entry(4, "status", {"hold": {"by": "ann"}, "n": 2}),
        _entry(5, "event", {"type": "info"}),
        _entry(6, "log", {"line": "x"}),
    ]
    await store.ingest_sync("dev-1", _sync(entries), NOW)
    await store.ingest_sync("dev-2", _sync([_entry(1, "event", {"type": "info"})]), NOW)
    await store.ingest_sync(
        "dev-1", _sync([_entry(7, "event", {"n": 7})]), NOW + timedelta(hours=1)
    )
    assert await store.latest_status_report("dev-1") == {"hold": {"by": "ann"}, "n": 2}
    assert [e.seq for e in await store.recent_events("dev-1", 3)] == [7, 5, 3]
    hourly = sorted(await store.events_per_hour(NOW))
    assert [(d, h, n, bad or 0) for d, h, n, bad in hourly] == [
        ("dev-1", "2026-01-01T00", 3, 2),
        ("dev-1", "2026-01-01T01", 1, 0),
        ("dev-2", "2026-01-01T00", 1, 0),
    ]
    assert await store.events_per_hour(NOW + timedelta(hours=2)) == []


async def test_fleet_counts_by_connectivity_and_drift(store: Any):
    await _enrolled(store, "dev-1", "dev-2", "dev-3")  # enrolled (last contact) at NOW
    await store.put_target("dev-1", _signed, _audit("target.set", "dev-1"), NOW)
    await store.put_target("dev-2", _signed, _audit("target.set", "dev-2"), NOW)
    batch = SyncBatch([], None, 1, 0, protocol=3)  # dev-1 applied its target
    await store.ingest_sync("dev-1", batch, NOW + timedelta(minutes=10))
    await store.set_device_disabled("dev-3", True, _audit("device.disable", "dev-3"))
    counts = await store.fleet_counts(NOW + timedelta(minutes=5), NOW - timedelta(hours=1))
    assert counts == {
        ("online", "in_sync"): (1, 0),
        ("offline", "drifted"): (1, 0),
        ("offline", "no_target"): (1, 1),
    }
    stale = await store.fleet_counts(NOW + timedelta(days=1), NOW + timedelta(hours=1))
    assert sum(n for n, _ in stale.values()) == 3 and {c for c, _ in stale} == {"stale"}


def _signed(revision: int) -> Any:
    from test_store_backends import _target

    return _target(revision)


def _host(*digests: str, managed: bool = True) -> list[HostContainerReport]:
    return [
        HostContainerReport(name=f"c{i}", digest=d, state="running", managed=managed)
        for i, d in enumerate(digests)
    ]


async def test_host_reports_replace_the_last_and_keep_first_sightings(store: Any):
    await _enrolled(store, "dev-1", "dev-2")
    assert await store.device_host_report("dev-1") is None
    first = StatusSnapshot(
        full=True, release="app@1", host_containers=_host("sha256:a", "sha256:b")
    )
    batches = [_sync([_entry(1, "event", {"n": 1})], first)] * 3
    await asyncio.gather(*(store.ingest_sync("dev-1", b, NOW) for b in batches))
    later = NOW + timedelta(minutes=5)
    second = StatusSnapshot(
        full=False, host_containers=_host("sha256:b", "sha256:c"), host_containers_total=7
    )
    await store.ingest_sync("dev-1", _sync([], second), later)
    report = await store.device_host_report("dev-1")
    assert [c.digest for c in report.containers] == ["sha256:b", "sha256:c"]
    assert (report.total, report.reported_at) == (7, later)
    assert report.sightings == {
        "digest:sha256:b": NOW,
        "digest:sha256:c": later,
        "release:app@1": NOW,
    }
    # A status without host containers leaves the report as it was.
    await store.ingest_sync("dev-1", _sync([], StatusSnapshot(full=False, last_error="x")), later)
    reports = await store.list_host_reports()
    assert set(reports) == {"dev-1"} and reports["dev-1"] == report
