"""Staged rollouts through a real hub to real agent processes on the real engine.

Three agents (distinct device ids; their containers kept apart by label) enroll with a
token that tags them; a group selects them. A healthy release walks every stage; a
crashing release halts at its first stage, the device it touched rolls back (on the
device, then by the hub's fleet rollback) and the others never receive it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import docker_env
import pytest
from agentproc import AgentProcess
from docker_env import TestImages

from hub.testing import RunningHub, start_hub

pytestmark = pytest.mark.docker

AGENTS = 3


@pytest.fixture
def hub(tmp_path: Path) -> Any:
    running = start_hub(tmp_path / "hub", sections={"rollouts": {"tick_s": 0.2}})
    yield running
    running.stop()


@pytest.fixture
async def fleet(
    hub: RunningHub, tmp_path: Path, docker: aiodocker.Docker
) -> AsyncIterator[tuple[str, list[AgentProcess]]]:
    tag = "f" + uuid.uuid4().hex[:8]
    token = await hub.create_token(uses=AGENTS, tags={"fleet": tag})
    agents = [
        AgentProcess(
            None,
            tmp_path / f"agent{i}",
            hub={
                "url": hub.url,
                "enrollment_token": token,
                "ca_file": str(hub.ca_path),
                "sync_interval_s": 0.5,
                "long_poll_s": 10.0,
                "backoff_cap_s": 1.0,
            },
            supervisor={
                "backoff_base_s": 0.2,
                "backoff_cap_s": 0.5,
                "crash_loop_exits": 2,
                "crash_loop_window_s": 300.0,
            },
            logs={"enabled": False},
        )
        for i in range(AGENTS)
    ]
    try:
        await asyncio.gather(*(a.start() for a in agents))
        yield tag, agents
    finally:
        await asyncio.gather(*(a.stop() for a in agents))
        for a in agents:
            a.cleanup()
            identity = a.data_dir / "identity.json"
            if identity.exists():
                device = json.loads(identity.read_text())["device_id"]
                await docker_env.cleanup_device(docker, device)


async def _release(hub: RunningHub, name: str, version: str, image: str, **svc: Any) -> str:
    doc = {"name": name, "version": version, "services": [{"name": "web", "image": image, **svc}]}
    status, body = await hub.api("POST", "/api/v1/releases", {"release": doc})
    assert status == 201, body
    return f"{name}@{version}"


async def _rollout(hub: RunningHub, want: str, timeout_s: float = 90, **spec: Any) -> dict:
    status, body = await hub.api("POST", "/api/v1/rollouts", spec)
    assert status == 201, body
    deadline = time.monotonic() + timeout_s
    while True:
        status, view = await hub.api("GET", f"/api/v1/rollouts/{body['id']}")
        assert status == 200, view
        if view["status"] == want:
            return view
        assert view["status"] in ("running", "rolling_back"), view
        assert time.monotonic() < deadline, f"rollout never became {want}: {view}"
        await asyncio.sleep(0.2)


async def _releases_running(agents: list[AgentProcess]) -> list[str | None]:
    return [(await a.status())["release"] for a in agents]


async def test_rollout_walks_stages_then_a_crashing_release_halts_and_rolls_back(
    hub: RunningHub, fleet: tuple[str, list[AgentProcess]], images: TestImages
) -> None:
    tag, agents = fleet
    status, body = await hub.api(
        "POST", "/api/v1/groups", {"name": tag, "selector": f"fleet={tag}"}
    )
    assert status == 201 and len(body["members"]) == AGENTS, body
    good = await _release(hub, tag, "1", images.ref("good"))
    done = await _rollout(hub, "completed", release=good, group=tag, stages="1,100%", soak_s=1)
    assert [p["healthy"] for p in done["progress"]] == [1, AGENTS - 1]
    assert await _releases_running(agents) == [good] * AGENTS

    bad = await _release(hub, tag, "2", images.ref("crash"), environment={"CRASH_AFTER": "0"})
    halted = await _rollout(
        hub, "rolled_back", release=bad, group=tag, stages="1,100%", soak_s=1, max_failed=0
    )
    assert halted["failed_stage"] == 0
    (touched,) = halted["devices"]

    # Every device ends on the good release: the touched one rolled back, the rest untouched.
    async def all_good() -> bool:
        return await _releases_running(agents) == [good] * AGENTS

    await docker_env.wait_for(all_good, timeout_s=60, interval_s=0.3)
    for agent in agents:
        targets = await agent.status()
        assert targets["rollout_state"] in ("good", "rolled_back"), targets
    status, view = await hub.api("GET", f"/api/v1/devices/{touched}")
    assert status == 200 and view["release"] == good, view
