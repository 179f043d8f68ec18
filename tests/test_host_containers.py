"""The read-only report of every container on the host, managed or not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest
from agentproc import AgentProcess
from docker_env import TestImages, cleanup_device, make_release, make_service, wait_for

from edge_agent.protocol import HOST_CONTAINERS_MAX, HostContainerReport, StatusSnapshot
from edge_agent.runtime import DockerRuntime, manifest_digest

pytestmark = pytest.mark.docker


@pytest.fixture
async def stranger(
    docker: aiodocker.Docker, images: TestImages, device_id: str
) -> AsyncIterator[str]:
    """Yield the name of a running container nobody manages, made from a digest ref."""
    await docker.images.pull(images.digest_ref("good"))
    name = f"stranger-{device_id}"
    config = {"Image": images.digest_ref("good"), "Labels": {"purpose": "not-edgefleet"}}
    container = await docker.containers.create(config, name=name)
    try:
        await container.start()
        yield name
    finally:
        await container.delete(force=True)


async def test_host_containers_lists_managed_and_unmanaged(
    runtime: DockerRuntime, images: TestImages, stranger: str
) -> None:
    service = make_service("web", images.local("good"))
    await runtime.create(service, release=make_release([service]), revision=1)
    found, total = await runtime.host_containers(limit=1000)
    by_name = {c.name: c for c in found}
    assert total == len(found) >= 2
    ours = by_name[runtime.object_name("web")]
    assert (ours.managed, ours.state, ours.image) == (True, "created", images.local("good"))
    other = by_name[stranger]
    assert (other.managed, other.state) == (False, "running")
    assert other.digest == images.digests["good"], "pulled by digest: the digest is known"
    assert other.image_id.startswith("sha256:")


async def test_host_containers_bound_is_visible(
    runtime: DockerRuntime, images: TestImages, stranger: str
) -> None:
    service = make_service("web", images.local("good"))
    await runtime.create(service, release=make_release([service]), revision=1)
    found, total = await runtime.host_containers(limit=1)
    assert len(found) == 1 and total >= 2, "over the bound: the list is cut, the total says so"


def test_status_snapshot_bounds_host_containers() -> None:
    one = HostContainerReport(name="x", image="i", state="running")
    StatusSnapshot(host_containers=[one] * HOST_CONTAINERS_MAX, host_containers_total=500)
    with pytest.raises(ValueError, match="host_containers"):
        StatusSnapshot(host_containers=[one] * (HOST_CONTAINERS_MAX + 1))


async def test_agent_status_reports_every_host_container(
    tmp_path: Path, device_id: str, docker: aiodocker.Docker, images: TestImages, stranger: str
) -> None:
    agent = await AgentProcess(device_id, tmp_path / "agent").start()
    try:
        web = {"name": "web", "image": images.local("good")}
        doc = {"name": "app", "version": "1", "services": [web]}
        code, body = await agent.call("POST", "/v1/apply", doc)
        assert code == 202, body

        async def reported() -> dict[str, Any] | None:
            st = await agent.status()
            names = {h["name"]: h for h in st.get("host_containers") or []}
            ours = names.get(f"ef-{device_id}-web")
            return names if ours and ours["state"] == "running" and stranger in names else None

        names = await wait_for(reported, timeout_s=30)
        assert names[f"ef-{device_id}-web"]["managed"] is True
        assert names[stranger]["managed"] is False
        assert names[stranger]["digest"] == images.digests["good"]
        st = await agent.status()
        assert st["host_containers_total"] >= len(st["host_containers"]) >= 2
        StatusSnapshot(host_containers=st["host_containers"])  # the wire form accepts it
    finally:
        await agent.stop()
        agent.cleanup()
        await cleanup_device(docker, device_id)


@pytest.mark.parametrize(
    ("image", "repo_digests", "expected"),
    [
        ("reg:5000/a/b@sha256:" + "1" * 64, [], "sha256:" + "1" * 64),
        ("reg:5000/a/b:1", ["other/x@sha256:2", "reg:5000/a/b@sha256:3"], "sha256:3"),
        ("reg:5000/a/b", ["reg:5000/a/b@sha256:4"], "sha256:4"),
        ("busybox:1.36", ["busybox@sha256:5"], "sha256:5"),
        ("local/built:1", [], ""),
        ("sha256:" + "6" * 64, ["some/repo@sha256:7"], "sha256:7"),
    ],
)
def test_manifest_digest(image: str, repo_digests: list[str], expected: str) -> None:
    assert manifest_digest(image, repo_digests) == expected
