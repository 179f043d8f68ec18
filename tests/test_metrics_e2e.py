"""Device metrics end to end: a real agent process, enrolled with a real hub, running a
release on the real engine, reports samples that reach the hub with plausible values."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiodocker
import docker_env
import pytest
from docker_env import TestImages
from fleetkit import device_of, hub_agent, running
from hubproc import HubProcess

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    proc = HubProcess(tmp_path / "hub").start()
    yield proc
    proc.stop()


def _plausible_host(sample: dict[str, Any]) -> None:
    assert 0 <= sample["cpu_percent"] <= 100
    mem = sample["memory"]
    assert 0 < mem["used_bytes"] < mem["total_bytes"]
    assert sample["uptime_s"] > 0
    disks = {d["name"]: d for d in sample["disks"]}
    assert 0 < disks["data"]["used_bytes"] <= disks["data"]["total_bytes"]


async def test_agent_metrics_reach_the_hub_with_containers_and_show_in_edgectl(
    hub: HubProcess, tmp_path: Path, docker: aiodocker.Docker, images: TestImages
) -> None:
    agent = hub_agent(
        tmp_path / "agent",
        hub.url,
        hub.ca_path,
        hub.create_token(),
        hub={"sync_interval_s": 0.5, "backoff_cap_s": 1.0, "long_poll_s": 1.0},
        metrics={"interval_s": 1.0},
    )
    async with running(docker, agent):
        device_id = device_of(agent)
        assert device_id is not None
        release = {
            "name": "app",
            "version": "1",
            "services": [
                {"name": "web", "image": images.ref("good")},
                {"name": "db", "image": images.ref("good")},
            ],
        }
        hub.set_target(device_id, release)

        async def with_containers() -> dict[str, Any] | None:
            history = hub._get(f"/api/v1/devices/{device_id}/metrics")
            for s in reversed(history["samples"]):
                containers = s["sample"].get("containers") or []
                if {c["service"] for c in containers} == {"web", "db"} and all(
                    "cpu_percent" in c for c in containers
                ):
                    return s
            return None

        newest = await docker_env.wait_for(with_containers, timeout_s=60, interval_s=0.5)
        sample = newest["sample"]
        _plausible_host(sample)
        for c in sample["containers"]:
            assert c["mem_bytes"] > 0 and c["cpu_percent"] >= 0, c
            assert c["source"] == "cgroup", c  # this host exposes the cgroup files
        assert sample["containers_total"] == 2
        assert hub.device(device_id)["metrics"]["seq"] >= newest["seq"]

        status, local = await agent.call("GET", "/v1/metrics")
        assert status == 200, local
        _plausible_host(local["sample"])
        assert local["queued"] >= 1  # (one taken before the first sync answer is held back)

        out = _edgectl(hub, "device", "metrics", device_id, "--since", "1h")
        assert "CPU" in out and "SERVICE" in out and "web" in out and "db" in out, out
        assert "0 older trimmed" in out, out


def _edgectl(hub: HubProcess, *args: str) -> str:
    token = (hub.data_dir / "admin.token").read_text().strip()
    env = {**os.environ, "EDGECTL_HUB": hub.url, "EDGECTL_TOKEN": token}
    env["EDGECTL_CA"] = str(hub.ca_path)
    done = subprocess.run(
        [sys.executable, "-m", "hub.edgectl", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
