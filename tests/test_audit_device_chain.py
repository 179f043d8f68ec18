"""Device audit chains verified at the hub: records tampered with in the agent's store
before they sync are flagged on that device, naming the record; an honest device, and
records delivered twice, are not. Records that arrive ahead of a gap (an older agent's
later batch stored first) are held until the records before them arrive; a gap that stays
open past ``audit.device_gap_grace_s`` is flagged as before. The real store and syncer
against a real hub process."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hubproc import HubProcess
from synckit import enroll_device, open_device

from edge_agent.outbox import AuditRow
from edge_agent.protocol import SyncResponse
from edge_agent.sync import SyncLimits
from hub.device_audit import ChainState, DeviceRecord, chain_hash, judge

UNSWEPT_GRACE_S = 0.05


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    proc = HubProcess(tmp_path_factory.mktemp("hub") / "data").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def swept_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """A hub whose gap grace is short and whose sweep runs often."""
    audit = {"device_gap_grace_s": 0.3, "gap_sweep_interval_s": 0.1}
    proc = HubProcess(tmp_path_factory.mktemp("hub") / "data", sections={"audit": audit})
    yield proc.start()
    proc.stop()


@pytest.fixture(scope="module")
def unswept_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """A hub whose gap grace is short, whose sweep ran once (at start), holding 3 records
    per device at most: only a device's next batch declares a gap, or the bound."""
    audit = {
        "device_gap_grace_s": UNSWEPT_GRACE_S,
        "gap_sweep_interval_s": 3600,
        "device_max_held": 3,
    }
    proc = HubProcess(tmp_path_factory.mktemp("hub") / "data", sections={"audit": audit})
    yield proc.start()
    proc.stop()


async def _device_with_records(hub: HubProcess, data: Path, n: int = 5) -> str:
    """Enroll a device and have its store write ``n`` audit records; return its id."""
    identity = await enroll_device(hub, data)
    dev = await open_device(data)
    try:
        await dev.syncer.sync_once()  # the store's epoch, so a copy of it is the same store
        for i in range(n):
            await dev.store.append_audit(
                AuditRow("tech:ana", "service.restart", f"web{i}", "ok", {"n": i})
            )
    finally:
        await dev.close()
    return identity.device_id


def _audit_rows(data: Path) -> list[tuple[int, dict[str, Any]]]:
    import json

    db = sqlite3.connect(data / "agent.db")
    rows = db.execute(
        "SELECT seq, payload FROM outbox WHERE kind = 'audit' ORDER BY seq"
    ).fetchall()
    db.close()
    return [(s, json.loads(p)) for s, p in rows]


def _tamper(data: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    db = sqlite3.connect(data / "agent.db")
    with db:
        for sql, args in statements:
            db.execute(sql, args)
    db.close()


async def _sync(data: Path) -> None:
    dev = await open_device(data)
    try:
        result = await dev.syncer.sync_once()
        assert result is not None
    finally:
        await dev.close()


def _chain(hub: HubProcess, device_id: str) -> dict[str, Any]:
    return dict(hub.device(device_id)["audit_chain"])


async def _append(data: Path, n: int) -> None:
    """Have the device's store write ``n`` more audit records (not synced)."""
    dev = await open_device(data)
    try:
        for i in range(n):
            await dev.store.append_audit(AuditRow("agent", "service.check", f"db{i}", "ok", {}))
    finally:
        await dev.close()


async def _until_broken(hub: HubProcess, device_id: str, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while (chain := _chain(hub, device_id))["broken_id"] is None:
        assert time.monotonic() < deadline, f"no break recorded: {chain}"
        await asyncio.sleep(0.05)
    return chain


def _listed(hub: HubProcess, device_id: str) -> list[dict[str, Any]]:
    page = hub._get(f"/api/v1/audit?device={device_id}&source=device&limit=1000")
    return list(page["audit"])


async def test_honest_device_chain_not_flagged_even_when_redelivered(
    hub: HubProcess, tmp_path: Path
) -> None:
    data = tmp_path / "dev"
    device_id = await _device_with_records(hub, data)
    before = tmp_path / "before.db"
    shutil.copy(data / "agent.db", before)
    await _sync(data)
    # At-least-once: the agent lost the ack (its store as before the sync) and sends again.
    shutil.copy(before, data / "agent.db")
    await _sync(data)
    chain = _chain(hub, device_id)
    assert chain["broken_id"] is None and chain["breaks"] == 0, chain
    assert chain["verified"] == 5 and chain["last_id"] == 5
    listed = _listed(hub, device_id)
    assert [r["record_id"] for r in listed] == [1, 2, 3, 4, 5]
    assert all(r["chain_broken"] is None and r["source"] == "device" for r in listed)


async def test_audit_records_in_batches_on_the_wire_together_are_stored_in_order(
    hub: HubProcess, tmp_path: Path
) -> None:
    """Two requests on the wire may be stored in either order; a later batch of audit
    records stored first read as a gap in the chain (a false break). A batch holding
    audit records now leaves only once every earlier one is answered, and none after it
    before its answer."""
    data = tmp_path / "dev"
    device_id = await _device_with_records(hub, data, n=6)
    dev = await open_device(data, limits=SyncLimits(batch_max_entries=2, window=2))
    client_sync = dev.syncer.client.sync
    calls = 0
    second_answered = asyncio.Event()
    order: list[str] = []

    async def sync(body_gz: bytes, *, lines: bool = False) -> SyncResponse:
        nonlocal calls
        calls += 1
        mine = calls
        order.append(f"sent {mine}")
        if mine == 1:
            # The first batch is held back: a second request sent meanwhile (the defect)
            # would be answered, and stored, first. Waits for it up to 2 s.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(second_answered.wait(), 2.0)
        resp = await client_sync(body_gz, lines=lines)
        order.append(f"answered {mine}")
        if mine == 2:
            second_answered.set()
        return resp

    dev.syncer.client.sync = sync  # type: ignore[method-assign]
    try:
        result = await dev.syncer.sync_once()
    finally:
        await dev.close()
    assert result.drained and result.sent == 6 and calls >= 3
    chain = _chain(hub, device_id)
    assert chain["broken_id"] is None and chain["breaks"] == 0, chain
    assert chain["verified"] == 6 and chain["last_id"] == 6
    assert order.index("sent 2") > order.index("answered 1"), order


async def test_altered_device_record_flagged_at_hub(hub: HubProcess, tmp_path: Path) -> None:
    data = tmp_path / "dev"
    device_id = await _device_with_records(hub, data)
    seq, _ = _audit_rows(data)[2]
    _tamper(
        data,
        (
            "UPDATE outbox SET payload = json_set(payload, '$.outcome', 'refused') WHERE seq = ?",
            (seq,),
        ),
    )
    await _sync(data)
    chain = _chain(hub, device_id)
    assert chain["broken_id"] == 3 and chain["broken_reason"].startswith("altered"), chain
    flagged = [r["record_id"] for r in _listed(hub, device_id) if r["chain_broken"]]
    assert flagged == [3]


async def test_later_batch_stored_first_is_held_not_flagged(
    hub: HubProcess, tmp_path: Path
) -> None:
    """An older agent's two requests on the wire at once: the later audit batch stored
    first is held (pending), then verified when the earlier one arrives; the held
    records, sent again with it, are stored once."""
    data = tmp_path / "dev"
    device_id = await _device_with_records(hub, data, n=2)
    await _sync(data)
    await _append(data, 4)  # records 3..6
    before = tmp_path / "before.db"
    shutil.copy(data / "agent.db", before)
    earlier = [s for s, p in _audit_rows(data) if p["id"] in (3, 4)]
    _tamper(data, *(("DELETE FROM outbox WHERE seq = ?", (s,)) for s in earlier))
    await _sync(data)  # records 5, 6 only: the later request
    chain = _chain(hub, device_id)
    assert (chain["broken_id"], chain["last_id"], chain["held"]) == (None, 2, 2), chain
    assert chain["pending"].startswith("held: waiting for record(s) 3..4 since "), chain
    assert [(r["record_id"], r["held"]) for r in _listed(hub, device_id)][2:] == [
        (5, True),
        (6, True),
    ]
    shutil.copy(before, data / "agent.db")  # the earlier request: 3..6 (5, 6 again)
    await _sync(data)
    chain = _chain(hub, device_id)
    assert chain["broken_id"] is None and chain["breaks"] == 0, chain
    assert (chain["verified"], chain["last_id"], chain["held"]) == (6, 6, 0)
    assert chain["pending"] is None
    listed = _listed(hub, device_id)
    assert sorted(r["record_id"] for r in listed) == [1, 2, 3, 4, 5, 6]
    assert not any(r["held"] or r["chain_broken"] for r in listed)


async def test_deleted_device_record_flagged_as_gap_by_the_sweep(
    swept_hub: HubProcess, tmp_path: Path
) -> None:
    """Records deleted on the device before they shipped: the gap is declared after the
    grace by the sweep, though the device sends nothing more."""
    data = tmp_path / "dev"
    device_id = await _device_with_records(swept_hub, data)
    seq, _ = _audit_rows(data)[2]
    _tamper(data, ("DELETE FROM outbox WHERE seq = ?", (seq,)))
    await _sync(data)
    chain = await _until_broken(swept_hub, device_id)
    assert chain["broken_id"] == 4, chain
    assert chain["broken_reason"] == "gap: record(s) 3 before it never arrived"
    assert (chain["last_id"], chain["verified"], chain["breaks"], chain["held"]) == (5, 4, 1, 0)
    assert swept_hub._get("/healthz")["audit_gaps"]["declared"] >= 1


async def test_deleted_device_record_flagged_as_gap_by_the_next_batch(
    unswept_hub: HubProcess, tmp_path: Path
) -> None:
    data = tmp_path / "dev"
    device_id = await _device_with_records(unswept_hub, data)
    seq, _ = _audit_rows(data)[2]
    _tamper(data, ("DELETE FROM outbox WHERE seq = ?", (seq,)))
    await _sync(data)
    held_at = time.monotonic()
    chain = _chain(unswept_hub, device_id)
    assert chain["held"] == 2 and chain["broken_id"] is None  # 4, 5: no sweep declares it
    # The grace is a span of time: the next batch must come after it has passed (on a
    # fast machine the next sync can reach the hub within the 0.05 s grace, and a batch
    # after that would declare the gap by the bound instead).
    await asyncio.sleep(max(0.0, UNSWEPT_GRACE_S - (time.monotonic() - held_at)))
    await _append(data, 1)  # the device's next batch, past the grace
    await _sync(data)
    chain = _chain(unswept_hub, device_id)
    assert chain["broken_id"] == 4, chain
    assert chain["broken_reason"] == "gap: record(s) 3 before it never arrived"
    assert chain["held"] == 0 and chain["held_overflows"] == 0
    assert chain["breaks"] == 1 and chain["last_id"] == chain["verified"] + 1


async def test_held_records_past_the_bound_declare_the_gap_at_once(
    unswept_hub: HubProcess, tmp_path: Path
) -> None:
    data = tmp_path / "dev"
    device_id = await _device_with_records(unswept_hub, data, n=7)
    seq, _ = _audit_rows(data)[2]
    _tamper(data, ("DELETE FROM outbox WHERE seq = ?", (seq,)))
    await _sync(data)  # 4..7 ahead of the gap: one more than the bound of 3
    chain = _chain(unswept_hub, device_id)
    assert chain["broken_id"] == 4, chain
    assert chain["broken_reason"] == "gap: record(s) 3 before it never arrived"
    assert (chain["held_overflows"], chain["held"], chain["last_id"]) == (1, 0, 7)
    assert len(_listed(unswept_hub, device_id)) == 6  # stored, none dropped


async def test_reordered_device_records_flagged(hub: HubProcess, tmp_path: Path) -> None:
    data = tmp_path / "dev"
    device_id = await _device_with_records(hub, data)
    rows = _audit_rows(data)
    (s3, _), (s4, _) = rows[2], rows[3]
    _tamper(
        data,
        ("UPDATE outbox SET seq = -1 WHERE seq = ?", (s3,)),
        ("UPDATE outbox SET seq = ? WHERE seq = ?", (s3, s4)),
        ("UPDATE outbox SET seq = ? WHERE seq = -1", (s4,)),
    )
    await _sync(data)
    chain = _chain(hub, device_id)
    assert chain["broken_id"] == 4, chain
    assert chain["broken_reason"] == "reordered: it arrived before record 3"


def _rec(id_: int, prev: str, **kw: Any) -> DeviceRecord:
    fields = {"at": "t", "actor": "a", "action": "x", "object": "o", "outcome": "ok"}
    fields.update(kw)
    digest = chain_hash(
        prev, fields["at"], fields["actor"], fields["action"], fields["object"], "ok", "{}"
    )
    return DeviceRecord(id_, detail={}, prev_hash=prev, hash=digest, **fields)


R1 = _rec(1, "")
R2 = _rec(2, R1.hash)
R3 = _rec(3, R2.hash)


@pytest.mark.parametrize(
    ("state", "record", "pending", "expected"),
    [
        (None, R1, (), None),
        (None, R3, (), None),  # the first record the hub sees of a device anchors it
        (ChainState(1, R1.hash), R2, (), None),
        (ChainState(1, R1.hash), R3, (), "gap: record(s) 2 before it never arrived"),
        (ChainState(1, R1.hash), R3, (2,), "reordered: it arrived before record 2"),
        (ChainState(2, R2.hash), R2, (), "reordered: it arrived after record 2"),
        (
            ChainState(2, "f" * 64),
            R3,
            (),
            "broken link: its prev_hash does not match record 2's hash",
        ),
        (ChainState(5, "e" * 64), R1, (), None),  # a new store starts a new chain
        (ChainState(1, R1.hash), DeviceRecord(**{**R2.__dict__, "actor": "b"}), (), "altered"),
    ],
)
def test_device_chain_judgement(
    state: ChainState | None, record: DeviceRecord, pending: tuple[int, ...], expected: str | None
) -> None:
    got = judge(state, record, pending)
    if expected is None or got is None:
        assert got == expected
    else:
        assert got.startswith(expected)


def test_hub_device_hash_is_the_agents() -> None:
    from edge_agent.audit import chain_hash as agent_hash

    for fields in [("", "t"), ("p" * 64, "a", "b", "", "é\x1f")]:
        assert chain_hash(*fields) == agent_hash(*fields)


def test_older_agent_records_without_chain_are_unverifiable_not_flagged() -> None:
    assert DeviceRecord.parse({"action": "x", "actor": "a"}) is None
    assert DeviceRecord.parse({**R1.__dict__, "id": "1"}) is None
    assert DeviceRecord.parse(dict(R1.__dict__)) == R1
