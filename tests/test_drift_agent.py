"""A real agent's host report on a real hub: a container nobody manages, started by hand
from the image of a retired release, shows up under the hub's retired view."""

from __future__ import annotations

from typing import Any

import aiodocker
import docker_env
import pytest
from agentproc import AgentProcess
from docker_env import TestImages
from test_fleet_e2e import agent_device_id, enrolled_agent, fleet_hub  # noqa: F401

from hub.testing import RunningHub

pytestmark = pytest.mark.docker


async def retire_release(hub: RunningHub, image: str) -> str:
    """Create release drift-app@1 (pinned by the registry) and retire it; return its digest."""
    doc = {"name": "drift-app", "version": "1", "services": [{"name": "web", "image": image}]}
    code, body = await hub.api("POST", "/api/v1/releases", {"release": doc})
    assert code == 201, body
    code, _ = await hub.api("POST", "/api/v1/releases/drift-app@1/retire", {"reason": "CVE"})
    assert code == 200
    return str(body["images"][0]["digest"])


async def test_unmanaged_container_of_a_retired_release_is_listed(
    fleet_hub: RunningHub,  # noqa: F811
    enrolled_agent: AgentProcess,  # noqa: F811
    images: TestImages,
    docker: aiodocker.Docker,
) -> None:
    device_id = agent_device_id(enrolled_agent)
    digest = await retire_release(fleet_hub, images.ref("good"))
    assert digest == images.digests["good"]
    await docker.images.pull(images.digest_ref("good"))
    name = f"by-hand-{device_id}"
    container = await docker.containers.create({"Image": images.digest_ref("good")}, name=name)
    try:
        await container.start()

        async def listed() -> dict[str, Any] | None:
            code, body = await fleet_hub.api("GET", "/api/v1/retired")
            assert code == 200, body
            (row,) = [r for r in body["releases"] if r["ref"] == "drift-app@1"]
            mine = [d for d in row["devices"] if d["device_id"] == device_id]
            # The engine is shared: other containers of this image may be listed too.
            by_name = {c["name"]: c for d in mine for c in d["containers"]}
            return by_name.get(name)

        found = await docker_env.wait_for(listed, timeout_s=30, interval_s=0.3)
        assert (found["managed"], found["digest"], found["state"]) == (False, digest, "running")
    finally:
        await container.delete(force=True)
