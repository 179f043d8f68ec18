"""The engine round trips of a converge, counted through a pass-through proxy (real engine).

A release of N services needs, per service, one create and one start on the critical path:
no look-up of the name before the create (the engine refuses a taken name), no network
look-up per service once the release's network is made, no inspect of a container this
process has just created before starting it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiodocker
import pytest
from docker_env import TestImages
from engineproxy import EngineProxy

from edge_agent.executor import Reconciler
from edge_agent.models import Release, Service, Target
from edge_agent.runtime import DockerRuntime

pytestmark = pytest.mark.docker


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[EngineProxy]:
    engine = await EngineProxy(tmp_path / "engine.sock").start()
    try:
        yield engine
    finally:
        await engine.close()


def _target(runtime: DockerRuntime, image: str, n: int, version: str = "1") -> Target:
    services = [
        Service(name=f"s{i}", image=image, environment={"I": str(i), "V": version})
        for i in range(n)
    ]
    release = Release(name="app", version=version, services=services)
    return Target(device_id=runtime.device_id, revision=int(version), release=release)


def _count(calls: list[tuple[str, str]], method: str, pattern: Callable[[str], bool]) -> int:
    return sum(1 for m, p in calls if m == method and pattern(p))


async def test_a_fresh_release_costs_one_create_and_one_start_per_service_and_no_lookups(
    runtime_factory: Callable[..., DockerRuntime],
    device_id: str,
    proxy: EngineProxy,
    images: TestImages,
) -> None:
    runtime = runtime_factory(device_id, docker_url=proxy.url)
    reconciler = Reconciler(runtime)
    reconciler.request(_target(runtime, images.local("good"), 4))
    assert await reconciler.converge()
    calls = proxy.calls
    assert _count(calls, "POST", lambda p: p == "/containers/create") == 4
    assert _count(calls, "POST", lambda p: p.endswith("/start")) == 4
    assert _count(calls, "POST", lambda p: p == "/networks/create") == 1
    # The release's network is looked up once (before it is made), not once per service.
    # The release's network is never looked up on its own: each of the two iterations
    # lists the device's networks once, and the first listing is the look before create.
    assert _count(calls, "GET", lambda p: p == "/networks") == 2, calls
    # The whole converge, pinned: a change that adds a round trip fails here.
    assert len(calls) <= 22, "\n".join(f"{m} {p}" for m, p in calls)
    # Inspects: only the listings of the two iterations (4 containers, after they exist).
    inspects = _count(
        calls,
        "GET",
        lambda p: p.startswith("/containers/") and p.endswith("/json") and p != "/containers/json",
    )
    assert inspects == 4, "\n".join(f"{m} {p}" for m, p in calls)
    running = [s for s in await runtime.list_services() if s.is_running]
    assert len(running) == 4


async def test_a_network_removed_behind_the_agents_back_is_made_again(
    runtime_factory: Callable[..., DockerRuntime],
    device_id: str,
    docker: aiodocker.Docker,
    images: TestImages,
) -> None:
    runtime = runtime_factory(device_id)
    reconciler = Reconciler(runtime)
    reconciler.request(_target(runtime, images.local("good"), 1))
    assert await reconciler.converge()
    for c in await runtime.list_services():  # free the network, then remove it
        await runtime.stop(c.container_id, 1)
        await runtime.remove(c.container_id)
    name = runtime.network_name("app")
    await (await docker.networks.get(name)).delete()
    reconciler.request(_target(runtime, images.local("good"), 1, version="2"))
    assert await reconciler.converge()  # the runtime did not trust its memory of it
    assert await runtime.list_networks() == ["app"]
    assert [s.is_running for s in await runtime.list_services()] == [True]


async def test_create_still_refuses_a_name_held_by_a_container_that_is_not_ours(
    runtime_factory: Callable[..., DockerRuntime],
    device_id: str,
    docker: aiodocker.Docker,
    images: TestImages,
) -> None:
    runtime = runtime_factory(device_id)
    target = _target(runtime, images.local("good"), 1)
    squatter = await docker.containers.create(
        {"Image": images.local("good")}, name=runtime.object_name("s0")
    )
    try:
        reconciler = Reconciler(runtime, max_iterations=1)
        reconciler.request(target)
        assert not await reconciler.converge()
        assert reconciler.last_error is not None
        assert "not managed by edgefleet" in reconciler.last_error.message
    finally:
        await squatter.delete(force=True)
