"""Release networks (feature "networks") on the real Docker engine."""

from __future__ import annotations

import aiodocker
import pytest
from docker_env import TestImages, docker_exec, wait_for

from edge_agent.errors import RuntimeAdapterError
from edge_agent.executor import Reconciler
from edge_agent.models import LABEL_DEVICE, LABEL_RELEASE, NetworkSpec, Release, Service, Target
from edge_agent.protocol import AGENT_FEATURES
from edge_agent.runtime import LABEL_NETWORK, DockerRuntime

pytestmark = pytest.mark.docker


def _target(runtime: DockerRuntime, release: Release, revision: int = 1) -> Target:
    return Target(device_id=runtime.device_id, revision=revision, release=release)


def _release(image: str, version: str = "1", **networks: NetworkSpec) -> Release:
    def svc(name: str, *nets: str) -> Service:
        return Service(name=name, image=image, networks=list(nets), restart="always")

    return Release(
        name="app",
        version=version,
        networks=networks,
        services=[svc("web", "front"), svc("db", "back"), svc("both", "front", "back"),
                  svc("inner", "back"), svc("plain")],
    )  # fmt: skip


async def _fetch(runtime: DockerRuntime, source: str, peer: str) -> tuple[int, str]:
    url = f"http://{peer}:8080/"
    # (this busybox's wget -T crashes: bound it with timeout instead)
    return await docker_exec(runtime.object_name(source), "timeout", "3", "wget", "-q", "-O-", url)


async def _up(runtime: DockerRuntime, source: str, peer: str) -> bool:
    return (await _fetch(runtime, source, peer))[0] == 0


async def test_services_reach_peers_by_name_on_each_network_they_join(
    runtime: DockerRuntime, docker: aiodocker.Docker, images: TestImages
) -> None:
    release = _release(images.local("good"), front=NetworkSpec(), back=NetworkSpec(internal=True))
    reconciler = Reconciler(runtime)
    reconciler.request(_target(runtime, release))
    assert await reconciler.converge()
    assert await runtime.list_networks() == ["app", "app/back", "app/front"]

    # "both" joins front and back: it reaches the services of each by name.
    assert await wait_for(lambda: _up(runtime, "both", "web"), timeout_s=15)
    assert await wait_for(lambda: _up(runtime, "both", "db"), timeout_s=15)
    # "inner" joins only the internal back network: db yes, web (front) not even by name.
    assert await wait_for(lambda: _up(runtime, "inner", "db"), timeout_s=15)
    code, out = await _fetch(runtime, "inner", "web")
    assert code != 0, out
    code, out = await _fetch(runtime, "plain", "db")
    assert code != 0, "a service on default only does not see back: " + out

    # internal: the engine gives the back network no way out (no NAT, isolated).
    back = await (await docker.networks.get(runtime.network_name("app", "back"))).show()
    assert back["Internal"] is True
    assert back["Labels"][LABEL_DEVICE] == runtime.device_id
    assert (back["Labels"][LABEL_RELEASE], back["Labels"][LABEL_NETWORK]) == ("app", "back")

    # Version 2 drops the back network: it goes once no service joins it.
    v2 = Release(
        name="app",
        version="2",
        networks={"front": NetworkSpec()},
        services=[Service(name="web", image=images.local("good"), networks=["front"])],
    )
    reconciler.request(_target(runtime, v2, revision=2))
    assert await reconciler.converge()
    assert await runtime.list_networks() == ["app", "app/front"]
    assert [s.name for s in await runtime.list_services()] == ["web"]


async def test_network_spec_change_under_a_release_name_is_refused(
    runtime: DockerRuntime,
) -> None:
    await runtime.ensure_network("app", "back", internal=False)
    with pytest.raises(RuntimeAdapterError, match="internal=False; the release wants internal"):
        await runtime.ensure_network("app", "back", internal=True)


def test_agent_reports_the_networks_feature() -> None:
    assert "networks" in AGENT_FEATURES


async def test_a_stopped_service_whose_network_was_pruned_is_rebuilt_and_runs(
    runtime: DockerRuntime, docker: aiodocker.Docker, images: TestImages
) -> None:
    """`docker network prune` removed the network of a stopped container: starting it
    failed with "network ... not found" forever, and the device rolled back (seen in the
    demo after a prune). The agent now creates the network again and replaces the
    container."""
    release = Release(
        name="app",
        version="1",
        services=[Service(name="web", image=images.local("good"), restart="always")],
    )
    reconciler = Reconciler(runtime)
    reconciler.request(_target(runtime, release))
    assert await reconciler.converge()
    old = runtime.object_name("web")
    await (await docker.containers.get(old)).stop(t=1)
    old_id = (await (await docker.containers.get(old)).show())["Id"]
    await (await docker.networks.get(runtime.network_name("app"))).delete()  # the prune

    assert await reconciler.converge()
    now = await (await docker.containers.get(old)).show()
    assert now["Id"] != old_id and now["State"]["Running"], now["State"]
    assert await runtime.list_networks() == ["app"]
