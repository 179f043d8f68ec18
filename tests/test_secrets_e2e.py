"""Secrets end to end (issue 11): a real hub, two real agent processes, the real engine.

One device's release names a secret (an environment variable) and pulls from the registry
that needs credentials (its password moved into the hub's secret store); its container
sees the value. The other device's release names neither and never receives them. The
values are found only where they must be: sealed in the hub DB, in the device's stored
target, in the container's environment.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import docker_env
import pytest
from docker_env import TestImages
from fleetkit import FAST, device_of, hub_agent, running
from test_fleet_e2e import fleet_hub  # noqa: F401

from edge_agent.models import LABEL_DEVICE, LABEL_MANAGED, MANAGED_BY
from hub.testing import RunningHub

pytestmark = pytest.mark.docker

PASSWORD = "edgepass"  # the credentials registry's (tests/docker_env.py)


async def container_env(docker: aiodocker.Docker, device_id: str) -> list[str]:
    labels = [f"{LABEL_MANAGED}={MANAGED_BY}", f"{LABEL_DEVICE}={device_id}"]
    found = await docker.containers.list(all=True, filters=json.dumps({"label": labels}))
    env: list[str] = []
    for c in found:
        env += (await c.show())["Config"]["Env"] or []
    return env


def agent_rows(data_dir: Path, table: str) -> str:
    with sqlite3.connect(data_dir / "agent.db") as db:
        return json.dumps(db.execute(f"SELECT * FROM {table}").fetchall())


def hub_bytes(hub: RunningHub) -> bytes:
    files = [p for p in sorted(hub.data_dir.glob("hub.db*")) if p.is_file()]
    return b"".join(p.read_bytes() for p in files) + hub.log_path.read_bytes()


async def create_release(hub: RunningHub, images: TestImages, secret: str) -> dict[str, Any]:
    doc = {
        "name": "vault",
        "version": "1",
        "services": [
            {"name": "web", "image": images.auth_ref("good"), "secret_env": {"API_KEY": secret}}
        ],
        "registry_auth": [
            {"server": images.auth_registry, "username": "edge", "password": PASSWORD}
        ],
    }
    status, body = await hub.api("POST", "/api/v1/releases", {"release": doc})
    assert status == 201, body
    return dict(body["release"])


async def test_only_the_device_whose_release_names_a_secret_gets_it_in_its_container(
    fleet_hub: RunningHub,  # noqa: F811
    images: TestImages,
    docker: aiodocker.Docker,
    tmp_path: Path,
) -> None:
    hub = fleet_hub
    _, tok = await hub.api("POST", "/api/v1/enrollment-tokens", {"uses": 2, "tags": {}})
    named = hub_agent(tmp_path / "a", hub.url, hub.ca_path, tok["token"], hub=FAST)
    other = hub_agent(tmp_path / "b", hub.url, hub.ca_path, tok["token"], hub=FAST)
    secret, value = "api-key", "v-" + uuid.uuid4().hex
    assert (await hub.api("PUT", f"/api/v1/secrets/{secret}", {"value": value}))[0] == 201
    pinned = await create_release(hub, images, secret)
    async with running(docker, named, other):
        a, b = device_of(named), device_of(other)
        assert a and b
        await docker_env.wait_for(lambda: _reported(hub, a, b), timeout_s=30)
        plain = {
            "name": "plain",
            "version": "1",
            "services": [{"name": "web", "image": images.ref("good")}],
        }
        ra = await hub.set_target(a, pinned, min_ready_s=0)
        rb = await hub.set_target(b, plain, min_ready_s=0)
        await _wait_good(named, ra)
        await _wait_good(other, rb)
        assert f"API_KEY={value}" in await container_env(docker, a)
        assert not [e for e in await container_env(docker, b) if value in e]
        answers = await _api_answers(hub, named, other, a, b)
    assert value in agent_rows(named.data_dir, "targets")  # the device's stored target
    for agent in (named, other):
        for table in ("audit", "outbox"):
            assert value not in agent_rows(agent.data_dir, table), (agent.data_dir, table)
            assert PASSWORD not in agent_rows(agent.data_dir, table), (agent.data_dir, table)
        assert value not in agent.log()
    assert value not in agent_rows(other.data_dir, "targets")
    assert PASSWORD not in agent_rows(other.data_dir, "targets")
    assert value not in answers and PASSWORD not in answers
    hub.stop()
    held = hub_bytes(hub)
    assert value.encode() not in held and PASSWORD.encode() not in held


async def _reported(hub: RunningHub, *devices: str) -> bool:
    """Every device has sent a status (a sync, which tells the hub its agent's features)."""
    for d in devices:
        _, view = await hub.api("GET", f"/api/v1/devices/{d}")
        if not view.get("state"):
            return False
    return True


async def _wait_good(agent: Any, revision: int) -> None:
    try:
        await docker_env.wait_for(lambda: _good(agent, revision), timeout_s=90)
    except TimeoutError:
        raise AssertionError(f"{await agent.status()}\n{agent.log()[-4000:]}") from None


async def _good(agent: Any, revision: int) -> bool:
    st = await agent.status()
    return bool(st["running_revision"] == revision and st["rollout_state"] == "good")


async def _api_answers(hub: RunningHub, named: Any, other: Any, a: str, b: str) -> str:
    """Return every answer an operator or technician could read about these devices."""
    out = []
    for path in (
        "/api/v1/secrets",
        "/api/v1/releases/vault@1",
        "/api/v1/audit?limit=1000",
        f"/api/v1/devices/{a}",
        f"/api/v1/devices/{a}/target",
        f"/api/v1/devices/{a}/events?limit=1000",
        f"/api/v1/devices/{b}/target",
    ):
        out.append(await hub.api("GET", path))
    for agent in (named, other):
        for path in ("/v1/status", "/v1/targets", "/v1/audit", "/v1/containers"):
            out.append(await agent.call("GET", path))
    return json.dumps(out)
