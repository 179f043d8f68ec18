"""Revision authority (issue 7 item 8), end to end with a real hub, agent and engine.

A technician's local apply gets its own sequence on top of the hub revision it is based
on; it never consumes the hub's revision space, so the hub's next target always applies
and the fleet view tells the truth.
"""

from __future__ import annotations

from typing import Any

import docker_env
import pytest
from agentproc import AgentProcess
from docker_env import TestImages
from test_fleet_e2e import agent_device_id, enrolled_agent, fleet_hub, hub_device

from hub.testing import RunningHub, start_hub

pytestmark = pytest.mark.docker
__all__ = ["enrolled_agent", "fleet_hub"]  # fixtures used by the tests below

MAX = 2**63 - 1


def release(images: TestImages, version: str) -> dict[str, Any]:
    """Return a one-service release."""
    return {
        "name": "app",
        "version": version,
        "services": [{"name": "web", "image": images.ref("good"), "environment": {"V": version}}],
    }


async def runs(agent: AgentProcess, revision: int, release_ref: str) -> dict[str, Any] | None:
    """Return the status once the agent runs hub revision ``revision`` and it proved good."""
    st = await agent.status()
    ok = (
        st["running_revision"] == revision
        and not st["running_local_seq"]
        and st["rollout_state"] == "good"
        and st["release"] == release_ref
    )
    return st if ok else None


async def in_sync(hub: RunningHub, device_id: str, revision: int) -> dict[str, Any] | None:
    """Return the hub's view once it shows the device in sync at ``revision``."""
    dev = await hub_device(hub, device_id)
    return dev if dev["drift"] == "in_sync" and dev["running_revision"] == revision else None


async def test_forced_local_apply_with_the_largest_revision_then_a_hub_target_applies(
    fleet_hub: RunningHub, enrolled_agent: AgentProcess, images: TestImages
) -> None:
    agent = enrolled_agent
    device_id = agent_device_id(agent)
    code, body = await agent.call(
        "POST", "/v1/apply", {"force": True, "revision": MAX, "release": release(images, "tech")}
    )
    assert code == 202, body
    assert (body["revision"], body["local_seq"]) == (0, 1), body
    await docker_env.wait_for(lambda: _local_good(agent, 1), timeout_s=30, interval_s=0.3)
    revision = await fleet_hub.set_target(device_id, release(images, "hub"))
    assert revision < 1000, "the hub's revision must not follow the technician's number"
    await docker_env.wait_for(lambda: runs(agent, revision, "app@hub"), timeout_s=40)
    dev = await docker_env.wait_for(lambda: in_sync(fleet_hub, device_id, revision), 20)
    assert dev["running_local_seq"] in (0, None)


async def _local_good(agent: AgentProcess, local_seq: int) -> bool:
    st = await agent.status()
    return st["running_local_seq"] == local_seq and st["rollout_state"] == "good"


async def test_offline_technician_apply_then_hub_target_runs_and_fleet_view_is_true(
    fleet_hub: RunningHub, enrolled_agent: AgentProcess, images: TestImages
) -> None:
    """Technician applies while the device is offline; the hub's next target wins on reconnect."""
    agent = enrolled_agent
    device_id = agent_device_id(agent)
    first = await fleet_hub.set_target(device_id, release(images, "1"))
    await docker_env.wait_for(lambda: runs(agent, first, "app@1"), timeout_s=40)
    await docker_env.wait_for(lambda: in_sync(fleet_hub, device_id, first), 20)

    fleet_hub.kill()  # the device is offline from here on
    code, body = await agent.call(
        "POST", "/v1/apply", {"force": True, "revision": first + 1, "release": release(images, "t")}
    )
    assert code == 202, body
    assert (body["revision"], body["local_seq"]) == (first, 1), body
    await docker_env.wait_for(lambda: _local_good(agent, 1), timeout_s=30, interval_s=0.3)
    await agent.stop()

    hub2 = start_hub(fleet_hub.work_dir, port=fleet_hub.port)
    try:
        second = await hub2.set_target(device_id, release(images, "2"))
        assert second == first + 1  # the number the technician asked for: no collision now
        await agent.start()
        await docker_env.wait_for(lambda: runs(agent, second, "app@2"), timeout_s=40)
        dev = await docker_env.wait_for(lambda: in_sync(hub2, device_id, second), 20)
        assert dev["release"] == "app@2"
    finally:
        hub2.stop()
