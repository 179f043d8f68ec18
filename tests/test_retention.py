"""Issue 10 (Logs 4): the hub's retention bounds what each device's data takes, by size and
by age, in bounded batches; audit records are never deleted. A real hub process; a device
with a real store and syncer (tests/synckit.py), no Docker.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hubproc import HubProcess
from synckit import enroll_device, open_device, until

from edge_agent.store import AuditRow

CAP = 20_000


def _held(hub: HubProcess, device_id: str) -> dict[str, tuple[int, int]]:
    """Return (rows, payload bytes) per kind the hub holds for the device."""
    db = sqlite3.connect(f"file:{hub.data_dir / 'hub.db'}?mode=ro", uri=True, timeout=10)
    try:
        found = db.execute(
            "SELECT kind, COUNT(*), SUM(length(CAST(payload AS BLOB))) FROM events"
            " WHERE device_id = ? GROUP BY kind",
            (device_id,),
        ).fetchall()
        audit = db.execute(
            "SELECT COUNT(*) FROM device_audit WHERE device_id = ?", (device_id,)
        ).fetchone()[0]
    finally:
        db.close()
    return {k: (n, b) for k, n, b in found} | {"device_audit": (audit, 0)}


def _retention(hub: HubProcess) -> dict[str, Any]:
    return dict(hub._get("/healthz")["retention"])


@pytest.fixture
def sized_hub(tmp_path: Path) -> Iterator[HubProcess]:
    proc = HubProcess(
        tmp_path / "hub",
        EDGE_HUB_RETENTION_MAX_BYTES_PER_DEVICE=str(CAP),
        EDGE_HUB_RETENTION_MAX_AGE_S="0",
        EDGE_HUB_RETENTION_INTERVAL_S="0.2",
        EDGE_HUB_RETENTION_BATCH_ROWS="50",
    ).start()
    yield proc
    proc.stop()


@pytest.fixture
def aged_hub(tmp_path: Path) -> Iterator[HubProcess]:
    proc = HubProcess(
        tmp_path / "hub",
        EDGE_HUB_RETENTION_MAX_AGE_S="2",
        EDGE_HUB_RETENTION_INTERVAL_S="0.2",
    ).start()
    yield proc
    proc.stop()


async def test_size_cap_keeps_a_device_within_its_bound_and_every_audit_record(
    sized_hub: HubProcess, tmp_path: Path
) -> None:
    identity = await enroll_device(sized_hub, tmp_path / "dev")
    dev = await open_device(tmp_path / "dev")
    try:
        for round_ in range(4):  # ~4 x 25 kB of logs and events, over a 20 kB cap
            await dev.store.append_many(
                "event", [{"type": "x", "n": i, "pad": "e" * 100} for i in range(50)]
            )
            await dev.store.append_logs(
                [{"service": "web", "ts": 1.0, "stream": "stdout", "line": "l" * 100}] * 100
            )
            await dev.store.append_audit(AuditRow("tech", "restart", "web", "ok", {"r": round_}))
            await dev.syncer.sync_once()

        def deletable_bytes() -> int:
            held = _held(sized_hub, identity.device_id)
            return sum(b for k, (_, b) in held.items() if k not in ("audit", "device_audit"))

        async def within() -> bool:
            return deletable_bytes() <= CAP

        await until(within, timeout_s=20)
        held = _held(sized_hub, identity.device_id)
        assert held["audit"][0] == 4 and held["device_audit"][0] == 4  # never deleted
        assert deletable_bytes() > CAP // 2  # the newest data is kept, up to the bound
        assert "log" in held  # the newest rows survive: the oldest went first
        stats = _retention(sized_hub)
        assert stats["deleted_by_size"] > 0 and stats["batches"] >= 2  # bounded batches
        assert stats["deleted_by_age"] == 0 and stats["failures"] == 0
    finally:
        await dev.close()


async def test_rows_older_than_the_age_limit_go_and_audit_records_stay(
    aged_hub: HubProcess, tmp_path: Path
) -> None:
    identity = await enroll_device(aged_hub, tmp_path / "dev")
    dev = await open_device(tmp_path / "dev")
    try:
        await dev.store.append_many("event", [{"type": "old", "n": i} for i in range(30)])
        await dev.store.append_audit(AuditRow("tech", "restart", "web", "ok"))
        await dev.syncer.sync_once()
        assert _held(aged_hub, identity.device_id)["event"][0] == 30

        async def gone() -> bool:
            return "event" not in _held(aged_hub, identity.device_id)

        await until(gone, timeout_s=20)
        held = _held(aged_hub, identity.device_id)
        assert held["audit"][0] == 1 and held["device_audit"][0] == 1
        assert _retention(aged_hub)["deleted_by_age"] >= 30

        await dev.store.append_many("event", [{"type": "new"}])
        await dev.syncer.sync_once()
        assert _held(aged_hub, identity.device_id)["event"][0] == 1  # young: kept
    finally:
        await dev.close()


def _metrics_held(hub: HubProcess, device_id: str) -> tuple[int, int]:
    """Return (metrics rows, the held count of device_metrics_state) for the device."""
    db = sqlite3.connect(f"file:{hub.data_dir / 'hub.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute(
            "SELECT COUNT(*) FROM device_metrics WHERE device_id = ?", (device_id,)
        ).fetchone()[0]
        state = db.execute(
            "SELECT held FROM device_metrics_state WHERE device_id = ?", (device_id,)
        ).fetchone()
    finally:
        db.close()
    return rows, state[0] if state else 0


async def test_metrics_samples_older_than_the_age_limit_go_too(
    aged_hub: HubProcess, tmp_path: Path
) -> None:
    identity = await enroll_device(aged_hub, tmp_path / "dev")
    dev = await open_device(tmp_path / "dev")
    try:
        for i in range(5):
            await dev.store.append("metrics", {"cpu_percent": float(i)})
        await dev.syncer.sync_once()
        assert _metrics_held(aged_hub, identity.device_id) == (5, 5)

        async def gone() -> bool:
            return _metrics_held(aged_hub, identity.device_id) == (0, 0)

        await until(gone, timeout_s=20)
        assert _retention(aged_hub)["metrics_deleted_by_age"] == 5

        await dev.store.append("metrics", {"cpu_percent": 1.0})
        await dev.syncer.sync_once()
        assert _metrics_held(aged_hub, identity.device_id) == (1, 1)  # young: kept
    finally:
        await dev.close()
