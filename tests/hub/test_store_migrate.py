"""``edge-hub store migrate``: a populated SQLite hub copied into PostgreSQL serves the same
fleet (devices keep syncing with their certificates, the audit chain verifies); a non-empty
target is refused and a copy whose audit chain does not verify is rolled back."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hubproc import free_port
from pgkit import fresh_database
from test_hub_sync import entries, stored, sync
from test_secrets import FEATURES, release

from hub.testing import REPO_ROOT, DeviceIdentity, RunningHub, start_hub


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )


def _sqlite_hub(work: Path, port: int = 0) -> RunningHub:
    """A hub on SQLite whatever EDGEFLEET_TEST_STORE says (the migration's source)."""
    url = f"sqlite:///{work / 'data' / 'hub.db'}"
    return start_hub(work, port=port, sections={"store": {"url": url}})


async def _ok(hub: RunningHub, method: str, path: str, body: Any = None) -> Any:
    status, answer = await hub.api(method, path, body)
    assert status in (200, 201), f"{method} {path}: {status} {answer}"
    return answer


async def _populate(hub: RunningHub, tmp: Path) -> list[DeviceIdentity]:
    token = await hub.create_token(uses=5, tags={"site": "lab"})
    devices = [await hub.enroll(token, tmp / f"dev{n}") for n in range(3)]
    for n, device in enumerate(devices):
        body = {"protocol": 3, "epoch": "e1", "features": FEATURES, "entries": entries(1, 2, 3)}
        assert (await sync(hub, device, body))[0] == 200, n
    await _ok(hub, "POST", "/api/v1/groups", {"name": "lab", "selector": "site=lab"})
    await _ok(hub, "PUT", "/api/v1/secrets/db.pw", {"value": "hunter2"})
    await _ok(
        hub, "POST", "/api/v1/releases", {"release": release("app", secret_env={"DB": "db.pw"})}
    )
    await _ok(hub, "POST", "/api/v1/releases", {"release": release("app", "2")})
    await hub.set_target(devices[0].device_id, release("app"))
    rollout = await _ok(hub, "POST", "/api/v1/rollouts", {"release": "app@2", "group": "lab"})
    await _ok(hub, "POST", f"/api/v1/rollouts/{rollout['id']}/pause", {})  # holds still
    await _ok(hub, "POST", f"/api/v1/devices/{devices[1].device_id}/actions", {"kind": "selftest"})
    await _ok(hub, "POST", "/api/v1/users", {"name": "hana"})
    await _ok(hub, "POST", "/api/v1/teams", {"name": "ops"})
    await _ok(hub, "PUT", "/api/v1/teams/ops/members/hana")
    await _ok(hub, "POST", "/api/v1/users/hana/tokens", {})
    await _ok(hub, "POST", f"/api/v1/devices/{devices[2].device_id}/disable", {})
    return devices


async def _fleet(hub: RunningHub) -> dict[str, Any]:
    """What an operator sees of the fleet (without the fields that move with time)."""
    devices = (await _ok(hub, "GET", "/api/v1/devices"))["devices"]
    view: dict[str, Any] = {"devices": [(d["id"], d["disabled"]) for d in devices]}
    for d in devices:
        target = await hub.api("GET", f"/api/v1/devices/{d['id']}/target")
        view[d["id"]] = (target[0], target[1] if target[0] == 200 else None)
        view[f"events {d['id']}"] = await stored(hub, d["id"])
    view["audit"] = (await _ok(hub, "GET", "/api/v1/audit?limit=1000"))["audit"]
    for path in ("groups", "releases", "rollouts", "users", "teams", "secrets", "actions"):
        view[path] = await _ok(hub, "GET", f"/api/v1/{path}")
    return view


@pytest.fixture
async def target_url() -> AsyncIterator[str]:
    async for url in fresh_database():
        yield url


async def test_a_migrated_hub_serves_the_same_fleet_on_postgresql(tmp_path: Path, target_url: str):
    work = tmp_path / "hub"
    hub = _sqlite_hub(work)
    try:
        devices = await _populate(hub, tmp_path)
        before = await _fleet(hub)
    finally:
        assert hub.stop() == 0, hub.log()[-3000:]
    config = str(work / "hub.toml")
    done = _cli("store", "migrate", "--to", target_url, "--config", config, "--batch", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    table_lines = [line.split() for line in done.stdout.splitlines()]
    lines = {t[0]: t for t in table_lines if len(t) >= 4 and t[1].isdigit()}
    db = sqlite3.connect(work / "data" / "hub.db")
    for table in ("devices", "events", "audit", "releases", "secrets", "users", "actions"):
        (count,) = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        assert lines[table][1:3] == [str(count), str(count)] and lines[table][-1] == "ok", table
        assert count > 0, table
    db.close()
    assert "audit chain ok" in done.stdout

    on_pg = start_hub(work, port=hub.port, sections={"store": {"url": target_url}})
    try:
        verified = _cli("audit", "verify", "--config", config)
        assert verified.returncode == 0 and "records verified" in verified.stdout, verified
        after = await _fleet(on_pg)
        assert {k: v for k, v in after.items() if k != "audit"} == {
            k: v for k, v in before.items() if k != "audit"
        }
        assert after["audit"][: len(before["audit"])] == before["audit"]
        # The same certificate keeps syncing: no re-enrollment, acks continue.
        body = {"protocol": 3, "epoch": "e1", "features": FEATURES, "entries": entries(4, 5)}
        status, answer = await sync(on_pg, devices[0], body)
        assert status == 200 and answer["acked_seq"] == 5, answer
        assert await stored(on_pg, devices[0].device_id) == [1, 2, 3, 4, 5]
        # New ids continue after the copied ones.
        created = await _ok(on_pg, "POST", "/api/v1/releases", {"release": release("app", "3")})
        assert created["id"] == 3, created
        verified = _cli("audit", "verify", "--config", config)
        assert verified.returncode == 0, verified
    finally:
        assert on_pg.stop() == 0, on_pg.log()[-3000:]


async def test_a_non_empty_target_is_refused_and_a_broken_chain_is_not_committed(
    tmp_path: Path, target_url: str
):
    work = tmp_path / "hub"
    hub = _sqlite_hub(work)
    try:
        await hub.create_token(uses=1)
        await _ok(hub, "POST", "/api/v1/groups", {"name": "lab", "selector": "site=lab"})
    finally:
        assert hub.stop() == 0, hub.log()[-3000:]
    config = str(work / "hub.toml")
    with sqlite3.connect(work / "data" / "hub.db") as db:
        db.execute("UPDATE audit SET actor = 'mallory' WHERE id = 1")
    done = _cli("store", "migrate", "--to", target_url, "--config", config)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "audit chain BROKEN at record 1" in done.stdout
    assert "nothing was committed" in done.stderr
    conn = await asyncpg.connect(target_url)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == []
        await conn.execute("CREATE TABLE somebody_elses (x int)")
    finally:
        await conn.close()
    done = _cli("store", "migrate", "--to", target_url, "--config", config)
    assert done.returncode == 2
    assert "is not empty (1 tables: somebody_elses)" in done.stderr, done.stderr
    bad = _cli("store", "migrate", "--to", "mysql://x/y", "--config", config)
    assert bad.returncode == 2 and "--to: expected a postgresql:// URL" in bad.stderr


async def test_a_running_hub_is_not_migrated(tmp_path: Path, target_url: str):
    hub = _sqlite_hub(tmp_path / "hub", port=free_port())
    try:
        config = tmp_path / "hub" / "hub.toml"
        done = _cli("store", "migrate", "--to", target_url, "--config", str(config))
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"something listens on 127.0.0.1:{hub.port}" in done.stderr
        assert "stop the hub before migrating" in done.stderr
    finally:
        assert hub.stop() == 0, hub.log()[-3000:]
    conn = await asyncpg.connect(target_url)
    try:
        assert (
            await conn.fetch(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = 'public'"
            )
            == []
        )
    finally:
        await conn.close()
