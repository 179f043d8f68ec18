"""The store's core on each backend (SQLite and PostgreSQL; the ``store`` fixture of
tests/pgkit.py): exactly-once ingest, the audit chain, target revisions, certificate
lineage, tags/groups/overrides; PostgreSQL's migrations and its selection by config."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from pgkit import ADMIN_URL, fresh_database

from edge_agent.protocol import OutboxEntry, ServiceReport, SignedTarget, StatusSnapshot
from hub import audit_chain
from hub.config import build_config
from hub.errors import ConfigError, Conflict, Forbidden, InvalidRequest, NotFound
from hub.store import (
    AuditRecord,
    EnrollmentTokenRecord,
    NewDevice,
    SyncBatch,
    open_store,
)
from hub.store import sqlite_rows as rows
from hub.store.pg_schema import MIGRATIONS as PG_MIGRATIONS
from hub.store.postgres import PostgresStore, missing_methods
from hub.store.records import EnvChange, GroupRecord, RenewedCert, entry_row

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _audit(action: str, target: str = "x", **detail: Any) -> AuditRecord:
    return AuditRecord("admin", action, target, "ok", NOW, detail)


async def _enrolled(store: Any, *ids: str) -> None:
    token = EnrollmentTokenRecord("et_1", "h", 100, 100, NOW + timedelta(hours=1), {}, NOW, "a")
    await store.create_enrollment_token(token, _audit("token.create", "et_1"))
    for device_id in ids:
        device = NewDevice(device_id, "h", "1", f"s-{device_id}", "sha256:x", NOW + timedelta(1))
        await store.enroll_device("et_1", "h", device, NOW)


def _batch(seqs: range | list[int], epoch: str = "") -> SyncBatch:
    entries = [
        entry_row(OutboxEntry(seq=s, kind="event", created_at=NOW, payload={"n": s})) for s in seqs
    ]
    return SyncBatch(entries, None, 0, 0, epoch=epoch, protocol=3)


def _target(revision: int) -> SignedTarget:
    payload = base64.b64encode(f'{{"revision":{revision}}}'.encode()).decode()
    return SignedTarget(payload=payload, signature="sig")


async def test_duplicate_and_overlapping_batches_are_stored_exactly_once(store: Any):
    await _enrolled(store, "dev-1")
    batches = [range(1, 51), range(25, 76), range(1, 51), range(60, 101), range(1, 101)]
    results = await asyncio.gather(
        *(store.ingest_sync("dev-1", _batch(b), NOW) for b in batches * 4)
    )
    events = await store.list_events("dev-1", 0, 1000)
    assert [e.seq for e in events] == list(range(1, 101))
    assert [e.payload for e in events] == [{"n": s} for s in range(1, 101)]
    assert sum(r.inserted for r in results) == 100
    assert (await store.get_device("dev-1")).acked_seq == 100
    # Paging by seq: every entry once, in order.
    seen, after = [], 0
    while page := await store.list_events("dev-1", after, 7):
        seen += [e.seq for e in page]
        after = page[-1].seq
    assert seen == list(range(1, 101))


async def test_acked_seq_never_goes_back_under_concurrent_batches(store: Any):
    await _enrolled(store, "dev-1")
    for round_ in range(5):
        top = (round_ + 1) * 100
        batches = [range(1, top + 1)] + [range(1, top // 2 + 1)] * 9
        await asyncio.gather(*(store.ingest_sync("dev-1", _batch(b), NOW) for b in batches))
        device = await store.get_device("dev-1")
        assert device.acked_seq == top, f"round {round_}: acked {device.acked_seq}, not {top}"


async def test_a_new_store_generation_gets_seqs_above_the_old_one(store: Any):
    await _enrolled(store, "dev-1")
    assert (await store.ingest_sync("dev-1", _batch(range(1, 11), "A"), NOW)).inserted == 10
    second = await store.ingest_sync("dev-1", _batch(range(1, 4), "B"), NOW)
    assert (second.inserted, second.acked_seq) == (3, 3)
    again = await store.ingest_sync("dev-1", _batch(range(1, 11), "A"), NOW)
    assert again.inserted == 0  # the old generation's entries are held already
    assert [e.seq for e in await store.list_events("dev-1", 0, 100)] == list(range(1, 14))


async def test_sync_of_an_unknown_or_disabled_device_stores_nothing(store: Any):
    await _enrolled(store, "dev-1")
    with pytest.raises(Forbidden):
        await store.ingest_sync("dev-9", _batch([1]), NOW)
    await store.set_device_disabled("dev-1", True, _audit("device.disable", "dev-1"))
    with pytest.raises(Forbidden):
        await store.ingest_sync("dev-1", _batch([1]), NOW)
    assert await store.list_events("dev-1", 0, 10) == []


async def _chain_rows(store: Any) -> list[tuple[Any, ...]]:
    records = await store.list_audit(0, 100_000)
    return [
        (
            r.id,
            rows.ts(r.at),
            r.actor,
            r.action,
            r.target,
            r.outcome,
            rows.dumps(r.detail),
            r.source_addr,
            r.prev_hash,
            r.hash,
        )
        for r in records
    ]


def _verify(chain: list[tuple[Any, ...]]) -> audit_chain.Verdict:
    by_hash = {row[9]: row[0] for row in chain}
    return audit_chain.verify(chain, by_hash.get)


async def test_audit_chain_verifies_after_concurrent_audited_writes(store: Any):
    await _enrolled(store, "dev-1", "dev-2", "dev-3")
    writes = [store.record_audit(_audit("op.note", f"n{i}", password="p")) for i in range(30)]
    writes += [
        store.put_target(d, _target, _audit("target.set", d), NOW)
        for d in ("dev-1", "dev-2")
        for _ in range(10)
    ]
    writes += [
        store.set_device_disabled("dev-3", i % 2 == 0, _audit("device.disable", "dev-3"))
        for i in range(10)
    ]
    await asyncio.gather(*writes)
    chain = await _chain_rows(store)
    assert len(chain) == 1 + 3 + 30 + 20 + 10  # token, enrollments, the writes
    verdict = _verify(chain)
    assert verdict.ok, verdict.reason
    assert verdict.count == len(chain) and verdict.head == chain[-1][9]
    assert all(
        r.detail.get("password") in (None, "[redacted]") for r in await store.list_audit(0, 999)
    )
    # The check can fail: one altered record breaks it there.
    await _alter_audit_row(store, 5)
    broken = _verify(await _chain_rows(store))
    assert broken.broken_id == 5 and "altered" in broken.reason


async def _alter_audit_row(store: Any, audit_id: int) -> None:
    if isinstance(store, PostgresStore):
        conn = await asyncpg.connect(store.url)
        try:
            await conn.execute("UPDATE audit SET actor = 'mallory' WHERE id = $1", audit_id)
        finally:
            await conn.close()
        return
    db = sqlite3.connect(store.path)
    try:
        db.execute("UPDATE audit SET actor = 'mallory' WHERE id = ?", (audit_id,))
        db.commit()
    finally:
        db.close()


async def test_target_revisions_grow_by_one_under_concurrent_puts(store: Any):
    await _enrolled(store, "dev-1")
    done = await asyncio.gather(
        *(store.put_target("dev-1", _target, _audit("target.set", "dev-1"), NOW) for _ in range(25))
    )
    assert sorted(t.revision for t in done) == list(range(1, 26))
    listed = await store.list_targets("dev-1", 100)
    assert [t.revision for t in listed] == list(range(25, 0, -1))
    assert listed[0].signed == _target(25)
    assert (await store.get_device("dev-1")).target_revision == 25
    with pytest.raises(NotFound):
        await store.put_target("dev-9", _target, _audit("target.set", "dev-9"), NOW)
    await store.set_device_disabled("dev-1", True, _audit("device.disable", "dev-1"))
    with pytest.raises(Conflict):
        await store.put_target("dev-1", _target, _audit("target.set", "dev-1"), NOW)
    assert (await store.get_target("dev-1")).revision == 25


async def test_cert_lineage_follows_renewals(store: Any):
    await _enrolled(store, "dev-1")
    lineage = await store.get_cert_lineage("dev-1")
    assert (lineage.serial, lineage.previous_serial) == ("s-dev-1", "")

    def renewed(serial: str, renewed_from: str, from_previous: bool) -> RenewedCert:
        return RenewedCert(
            serial, "sha256:y", NOW + timedelta(2), "k", renewed_from, from_previous, "tls"
        )

    await store.replace_device_cert("dev-1", renewed("s2", "s-dev-1", False), NOW)
    lineage = await store.get_cert_lineage("dev-1")
    assert (lineage.serial, lineage.previous_serial, lineage.key_sha256) == ("s2", "s-dev-1", "k")
    # The answer was lost; the device renews again from its previous certificate.
    await store.replace_device_cert("dev-1", renewed("s3", "s-dev-1", True), NOW)
    lineage = await store.get_cert_lineage("dev-1")
    assert (lineage.serial, lineage.previous_serial) == ("s3", "s-dev-1")
    with pytest.raises(Forbidden):
        await store.replace_device_cert("dev-1", renewed("s4", "s-unknown", False), NOW)
    assert await store.get_cert_lineage("dev-9") is None


async def test_tags_groups_and_overrides(store: Any):
    await _enrolled(store, "dev-1")
    device = await store.update_device_tags("dev-1", {"site": "a", "hw": "pi"}, [], 4, _audit("t"))
    assert device.tags == {"site": "a", "hw": "pi"}
    device = await store.update_device_tags("dev-1", {"x": "1"}, ["hw"], 4, _audit("t"))
    assert device.tags == {"site": "a", "x": "1"}
    with pytest.raises(InvalidRequest):
        await store.update_device_tags(
            "dev-1", {f"k{i}": "v" for i in range(5)}, [], 4, _audit("t")
        )
    with pytest.raises(NotFound):
        await store.update_device_tags("dev-9", {}, [], 4, _audit("t"))
    group = GroupRecord("lab", "site=a", {}, NOW, "admin")
    await store.create_group(group, 2, _audit("group.create"))
    with pytest.raises(Conflict):
        await store.create_group(group, 2, _audit("group.create"))
    await store.create_group(GroupRecord("b", "site=b", {}, NOW, "admin"), 2, _audit("g"))
    with pytest.raises(Conflict):
        await store.create_group(GroupRecord("c", "site=c", {}, NOW, "admin"), 2, _audit("g"))
    changed = await store.change_group_env(
        "lab", EnvChange("web", {"A": "1"}, (), 10), _audit("group.env")
    )
    assert changed.overrides == {"web": {"A": "1"}}
    assert await store.get_group("lab") == changed
    own = await store.change_device_env("dev-1", EnvChange("web", {"B": "2"}, (), 10), _audit("e"))
    assert own == {"web": {"B": "2"}} == await store.get_device_overrides("dev-1")
    await store.delete_group("b", _audit("group.delete"))
    assert [g.name for g in await store.list_groups()] == ["lab"]
    with pytest.raises(NotFound):
        await store.delete_group("b", _audit("group.delete"))


async def test_pg_migrations_apply_once_with_their_record(pg_url: str):
    stores = [PostgresStore(pg_url, pool_max=2) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))  # three hub processes starting at once
    try:
        applied = sorted(v for s in stores for v in s.applied_migrations)
        conn = await asyncpg.connect(pg_url)
        try:
            recorded = [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        finally:
            await conn.close()
        assert applied == sorted(recorded) == [n for n, _, _ in PG_MIGRATIONS]
    finally:
        await asyncio.gather(*(s.close() for s in stores))


def test_database_url_selects_postgres_and_open_store_builds_the_whole_store(tmp_path):
    url = "postgresql://postgres@127.0.0.1:55432/edgefleet_test"
    server = {"server": {"data_dir": str(tmp_path)}}
    config = build_config(server, {"EDGE_HUB_DATABASE_URL": url})
    assert config.postgres_url == url
    assert build_config({**server, "store": {"url": url}}, {}).postgres_url == url
    assert build_config(server, {}).postgres_url is None
    with pytest.raises(ConfigError, match="EDGE_HUB_DATABASE_URL"):
        build_config(server, {"EDGE_HUB_DATABASE_URL": url, "EDGE_HUB_STORE_URL": "sqlite:///x"})
    assert missing_methods() == []
    limits = {"metrics": {"history_per_device": 7}, "actions": {"max_result_bytes": 4096}}
    store = open_store(build_config({**server, **limits, "store": {"url": url}}, {}))
    assert isinstance(store, PostgresStore)
    assert store._metrics_bound.history_per_device == 7 and store.action_result_max_bytes == 4096


async def test_pg_fixture_fails_when_the_server_is_not_there(monkeypatch: pytest.MonkeyPatch):
    import pgkit

    monkeypatch.setattr(pgkit, "ADMIN_URL", ADMIN_URL.replace(":55432", ":1"))
    with pytest.raises(pytest.fail.Exception, match=r"testenv-postgres\.sh"):
        async for _ in fresh_database():
            pass


async def test_status_snapshots_merge_into_the_device_row(store: Any):
    await _enrolled(store, "dev-1")
    full = StatusSnapshot(
        full=True,
        agent_version="2.0",
        state="waiting_window",
        services=[ServiceReport(name="web", state="running")],
        counters={"restarts": 3},
        running_revision=4,
        running_local_seq=1,
        applying_revision=5,
        rollout_state="waiting_window",
        window_opens_at=NOW + timedelta(hours=2),
    )
    batch = SyncBatch([], full, 4, 0, features=("b", "a"))
    first = await store.ingest_sync("dev-1", batch, NOW)
    assert first.want_full_status is False
    delta = SyncBatch([], StatusSnapshot(full=False, last_error="boom"), 4, 0)
    await store.ingest_sync("dev-1", delta, NOW)
    device = await store.get_device("dev-1")
    assert (device.state, device.last_error, device.agent_version) == (
        "waiting_window",
        "boom",
        "2.0",
    )
    assert device.services[0]["name"] == "web" and device.counters == {"restarts": 3}
    assert (device.running_revision, device.running_local_seq, device.applying_revision) == (
        4,
        1,
        5,
    )
    assert device.window_opens_at == NOW + timedelta(hours=2)
    assert device.applied_revision == 4 and device.has_full_status
    assert await store.device_features("dev-1") == frozenset({"a", "b"})


async def test_batches_alternating_between_two_hub_processes_are_stored_once_in_order(
    pg_url: str,
):
    """Two PostgresStores on one database stand for two hub processes."""
    one, two = PostgresStore(pg_url, pool_max=4), PostgresStore(pg_url, pool_max=4)
    await one.open()
    await two.open()
    try:
        await _enrolled(one, "dev-1")
        # The agent resends a batch when an answer is lost: each batch goes to both.
        sends = []
        for b in range(20):
            seqs = range(b * 10 + 1, b * 10 + 11)
            sends += [one.ingest_sync("dev-1", _batch(seqs), NOW)]
            sends += [two.ingest_sync("dev-1", _batch(seqs), NOW)]
        results = await asyncio.gather(*sends)
        assert sum(r.inserted for r in results) == 200
        assert [e.seq for e in await two.list_events("dev-1", 0, 500)] == list(range(1, 201))
        assert (await one.get_device("dev-1")).acked_seq == 200
        await asyncio.gather(
            *(s.record_audit(_audit("op.note", str(i))) for i in range(20) for s in (one, two))
        )
        verdict = _verify(await _chain_rows(one))
        assert verdict.ok and verdict.count == 1 + 1 + 40
    finally:
        await one.close()
        await two.close()
