"""Issue 11 (device policy): the agent refuses a target whose release its policy refuses,
even when the hub signed it. A real hub process, a real agent process, the real engine.

The hub itself would refuse such a target (it checks the same policy), so the test plays
a hub that did not: it builds the target, signs it with the hub's own key and stores it
in the hub's database directly; the hub then delivers it like any other.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import pytest
from agentproc import AgentProcess
from cryptography.hazmat.primitives import serialization
from docker_env import TestImages
from fleetkit import FAST, device_of, hub_agent, managed_containers, running, until
from hubproc import HubProcess

from edge_agent.device_policy import RESTRICTIVE, DevicePolicy
from edge_agent.errors import RuntimeAdapterError
from edge_agent.models import Release, Service, Target, VolumeMount
from edge_agent.runtime import DockerRuntime
from edge_agent.signing import sign_target
from hub.store import AuditRecord
from hub.store.sqlite import SqliteStore

pytestmark = pytest.mark.docker


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    proc = HubProcess(tmp_path / "hub").start()
    yield proc
    proc.stop()


@pytest.fixture
async def agent(
    hub: HubProcess, tmp_path: Path, docker: aiodocker.Docker
) -> AsyncIterator[AgentProcess]:
    token = hub.create_token(site="lab")
    proc = hub_agent(tmp_path / "agent", hub.url, hub.ca_path, token, hub=FAST)
    async with running(docker, proc):
        device_id = await until(lambda: device_of(proc), 20, "enrollment")
        await until(lambda: _features(hub, device_id), 20, "the agent's first sync")
        yield proc


def _features(hub: HubProcess, device_id: str) -> list[str] | None:
    db = sqlite3.connect(f"file:{hub.data_dir / 'hub.db'}?mode=ro", uri=True, timeout=10)
    try:
        row = db.execute("SELECT features FROM devices WHERE id = ?", (device_id,)).fetchone()
    finally:
        db.close()
    return json.loads(row[0]) if row and row[0] else None


def _agent_audit(agent: AgentProcess, action: str) -> list[dict[str, Any]]:
    db = sqlite3.connect(f"file:{agent.data_dir / 'agent.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT detail FROM audit WHERE action = ?", (action,)).fetchall()
    finally:
        db.close()
    return [json.loads(r[0]) for r in rows]


async def _store_signed(
    hub: HubProcess, device_id: str, release: Release, policy: DevicePolicy | None
) -> int:
    """Sign a target with the hub's key and store it behind the hub's API (no check)."""
    key = serialization.load_pem_private_key(
        (hub.data_dir / "signing.key").read_bytes(), password=None
    )
    now = datetime.now(UTC)

    def build(revision: int) -> Any:
        target = Target(
            device_id=device_id, revision=revision, release=release, issued_at=now, policy=policy
        )
        return sign_target(target, key)  # type: ignore[arg-type]

    store = SqliteStore(hub.data_dir / "hub.db")
    await store.open()
    try:
        audit = AuditRecord("test", "target.set", device_id, "ok", now, {})
        return (await store.put_target(device_id, build, audit, now)).revision
    finally:
        await store.close()


def _release(images: TestImages, version: str, **options: Any) -> Release:
    web = Service(name="web", image=images.local("good"), **options)
    return Release(name="app", version=version, services=[web])


async def test_agent_refuses_a_hub_signed_target_its_policy_refuses(
    hub: HubProcess,
    agent: AgentProcess,
    docker: aiodocker.Docker,
    images: TestImages,
    tmp_path: Path,
) -> None:
    device_id = device_of(agent)
    assert device_id is not None and "device_policy" in (_features(hub, device_id) or [])
    host_dir = tmp_path / "host-data"
    host_dir.mkdir()
    bind = VolumeMount(type="bind", source=str(host_dir), target="/data")
    release = _release(images, "1", volumes=[bind])
    revision = await _store_signed(hub, device_id, release, RESTRICTIVE)

    refusals = await until(lambda: _agent_audit(agent, "target.reject"), 30, "the refusal")
    assert f"bind mount {host_dir} refused by policy bind_paths" in refusals[0]["reason"]
    events = await until(
        lambda: [p for _, kind, p in hub.events(device_id) if p.get("type") == "policy_refused"],
        30,
        "the policy_refused event at the hub",
    )
    assert events[0]["revision"] == revision
    assert events[0]["violations"][0]["field"] == "bind_paths"
    status_error = await until(lambda: hub.device(device_id).get("last_error"), 30, "the status")
    assert f"revision {revision} app@1: release refused by device policy" in status_error
    assert await managed_containers(docker, device_id) == []

    # The same release under a policy that allows the path runs.
    allowed = DevicePolicy(bind_paths=[str(tmp_path)])
    await _store_signed(hub, device_id, release.model_copy(update={"version": "2"}), allowed)
    await until(
        lambda: hub.device(device_id).get("running_revision") == revision + 1, 60, "the apply"
    )


async def test_target_without_policy_is_held_to_the_local_policy(
    hub: HubProcess, tmp_path: Path, docker: aiodocker.Docker, images: TestImages
) -> None:
    """A target from before the feature carries no policy: the agent's [policy] decides."""
    local = {"cap_add": ["NET_ADMIN"], "bind_paths": ["/srv"]}
    proc = hub_agent(
        tmp_path / "agent", hub.url, hub.ca_path, hub.create_token(), hub=FAST, policy=local
    )
    async with running(docker, proc):
        device_id = await until(lambda: device_of(proc), 20, "enrollment")
        await until(lambda: _features(hub, device_id), 20, "the agent's first sync")
        await _store_signed(hub, device_id, _release(images, "1", cap_add=["SYS_ADMIN"]), None)
        refusals = await until(lambda: _agent_audit(proc, "target.reject"), 30, "the refusal")
        assert "capability SYS_ADMIN refused by policy cap_add" in refusals[0]["reason"]


async def test_relative_bind_is_placed_under_the_release_data_directory(
    hub: HubProcess, agent: AgentProcess, images: TestImages
) -> None:
    """./data from the hub lands in <data_dir>/releases/<release>/data, created 0750."""
    device_id = device_of(agent)
    assert device_id is not None
    write = "echo written > /data/out; sleep 3600"
    web = {
        "name": "web",
        "image": images.local("good"),
        "command": ["sh", "-c", write],
        "volumes": [{"type": "bind", "source": "./data", "target": "/data"}],
    }
    hub.set_target(device_id, {"name": "notes", "version": "1", "services": [web]})
    out = agent.data_dir / "releases" / "notes" / "data" / "out"
    await until(out.exists, 60, "the file the container wrote")
    assert out.read_text() == "written\n"
    for d in (out.parent, out.parent.parent, out.parent.parent.parent):
        assert d.stat().st_mode & 0o777 == 0o750, d


async def test_relative_bind_through_a_planted_symlink_refused(tmp_path: Path) -> None:
    """A container may plant a symlink in its data directory: a later mount must not follow it."""
    runtime = DockerRuntime("t-policy", docker_url=f"unix://{tmp_path}/no.sock", data_dir=tmp_path)
    try:
        assert runtime.release_data_path("app", "./data") == str(
            tmp_path / "releases" / "app" / "data"
        )
        outside = tmp_path / "outside"
        outside.mkdir()
        (tmp_path / "releases" / "app" / "data" / "link").symlink_to(outside)
        with pytest.raises(RuntimeAdapterError, match="outside the release's data directory"):
            runtime.release_data_path("app", "data/link/etc")
        assert not (outside / "etc").exists(), "created through the symlink"
    finally:
        await runtime.close()


async def _apply_as(agent: AgentProcess, token: str, body: dict[str, Any]) -> tuple[int, Any]:
    """POST /v1/apply on the agent's unix socket with a technician's Bearer token."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(agent.socket))) as s,
        s.post(
            "http://agent/v1/apply", json=body, headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def test_technician_apply_is_held_to_the_policy_of_the_hub_target(
    hub: HubProcess, agent: AgentProcess, images: TestImages
) -> None:
    """A local apply meets the policy the current hub target carries, and needs operate."""
    device_id = device_of(agent)
    assert device_id is not None
    web = {"name": "web", "image": images.local("good")}
    hub.set_target(device_id, {"name": "app", "version": "1", "services": [web]})
    await until(lambda: hub.device(device_id).get("running_revision") == 1, 60, "the hub target")

    def issue(name: str, role: str) -> str:
        body = {"name": name, "role": role, "scope": "site=lab", "expires_in_s": 3600}
        return str(hub._call("POST", "/api/v1/technicians", body)["token"])

    operator, reader = issue("olga", "operate"), issue("rita", "read")
    privileged = {"name": "app", "version": "2", "services": [{**web, "cap_add": ["SYS_ADMIN"]}]}
    code, body = await _apply_as(agent, reader, {**privileged, "force": True})
    assert (code, body["error"]) == (403, "wrong_role"), body
    # A policy in the technician's own body counts for nothing: the hub target's decides.
    forged = {"release": privileged, "policy": {"cap_add": ["ALL"]}, "force": True}
    code, body = await _apply_as(agent, operator, forged)
    assert code == 409, body
    assert "capability SYS_ADMIN refused by policy cap_add" in body["message"], body
    audit = _agent_audit(agent, "target.reject")
    assert any("refused by policy cap_add" in a["reason"] for a in audit), audit
    plain = {"name": "app", "version": "3", "services": [web], "force": True}
    code, body = await _apply_as(agent, operator, plain)
    assert code == 202, body
