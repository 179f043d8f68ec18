"""DockerRuntime on the real engine and the loopback registries."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import aiodocker
import pytest
from docker_env import TestImages, make_release, make_service, wait_for

from edge_agent.errors import (
    DiskReserveError,
    EngineUnavailable,
    ImageNotFound,
    NotManaged,
    RegistryAuthError,
    RuntimeAdapterError,
)
from edge_agent.models import (
    LABEL_CONFIG_HASH,
    LABEL_DEVICE,
    LABEL_MANAGED,
    LABEL_RELEASE,
    LABEL_REVISION,
    LABEL_SERVICE,
    ContainerStatus,
    Health,
    HealthCheck,
    PortMapping,
    RegistryAuth,
    VolumeMount,
)
from edge_agent.runtime import DockerRuntime, RuntimeEvent

pytestmark = pytest.mark.docker


async def first_event(
    runtime: DockerRuntime,
    match: Callable[[RuntimeEvent], bool],
    *,
    since: float,
    timeout_s: float = 15.0,
) -> RuntimeEvent:
    """Return the first event from ``since`` on that ``match`` accepts."""
    async with asyncio.timeout(timeout_s):
        async with contextlib.aclosing(runtime.events(since=since)) as stream:
            async for event in stream:
                if match(event):
                    return event
    raise AssertionError("unreachable: events() ends by raising")


async def run_service(runtime: DockerRuntime, image: str, name: str = "svc", **fields) -> str:
    """Create and start one service in release "app" and return its container id."""
    service = make_service(name, image, **fields)
    cid = await runtime.create(service, release=make_release([service]), revision=1)
    await runtime.start(cid)
    return cid


@pytest.fixture
async def plain_container(
    docker: aiodocker.Docker, images: TestImages, device_id: str
) -> AsyncIterator[str]:
    """Yield the id of a running container without edgefleet labels."""
    config = {"Image": images.local("good"), "Labels": {"purpose": "not-edgefleet"}}
    container = await docker.containers.create(config, name=f"plain-{device_id}")
    try:
        await container.start()
        yield container.id
    finally:
        await container.delete(force=True)


async def test_lifecycle_by_digest(
    runtime: DockerRuntime, docker: aiodocker.Docker, images: TestImages
) -> None:
    ref = images.digest_ref("good")
    image_id = await runtime.pull(ref)
    assert image_id.startswith("sha256:")
    assert await runtime.has_image(ref)
    service = make_service(
        "web",
        ref,
        environment={"MESSAGE": "hi"},
        labels={"team": "edge"},
        ports=[PortMapping(container=8080, host_ip="127.0.0.1")],
        volumes=[VolumeMount(source="data", target="/data")],
        healthcheck=HealthCheck(test=["CMD-SHELL", "true"], interval_s=0.5, retries=1),
        mem_limit_bytes=64 * 2**20,
        cpus=0.5,
        stop_timeout_s=2,
    )
    release = make_release([service], version="7")
    cid = await runtime.create(service, release=release, revision=3)
    await runtime.start(cid)

    current = await wait_for(
        lambda: _healthy(runtime, cid), timeout_s=10
    )  # the service's healthcheck overrides none in the image, in ns
    assert current.name == "web" and current.container_id == cid
    assert current.status is ContainerStatus.RUNNING and current.is_running
    assert current.config_hash == service.config_hash()
    assert (current.release, current.revision) == ("app", 3)  # the name; the label has @7
    assert current.image == ref and current.image_id == image_id
    assert current.started_at is not None and current.exit_code is None
    assert [s.container_id for s in await runtime.list_services()] == [cid]

    raw = await docker.containers.container(cid).show()
    labels = raw["Config"]["Labels"]
    assert labels[LABEL_MANAGED] == "edgefleet" and labels[LABEL_DEVICE] == runtime.device_id
    assert labels[LABEL_SERVICE] == "web" and labels[LABEL_RELEASE] == "app@7"
    assert labels[LABEL_REVISION] == "3" and labels[LABEL_CONFIG_HASH] == service.config_hash()
    assert labels["team"] == "edge"
    assert raw["Name"] == f"/ef-{runtime.device_id}-web"
    host = raw["HostConfig"]
    assert host["RestartPolicy"]["Name"] == "no"
    assert host["Memory"] == 64 * 2**20 and host["NanoCpus"] == 500_000_000
    assert raw["Config"]["Healthcheck"]["Interval"] == 500_000_000
    assert "MESSAGE=hi" in raw["Config"]["Env"]
    assert raw["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostIp"] == "127.0.0.1"
    [mount] = raw["Mounts"]
    assert (mount["Name"], mount["Destination"]) == (f"ef-{runtime.device_id}-data", "/data")
    network = raw["NetworkSettings"]["Networks"][f"ef-{runtime.device_id}-app"]
    assert "web" in network["Aliases"]
    volume = await docker.volumes.get(mount["Name"])
    assert (await volume.show())["Labels"][LABEL_DEVICE] == runtime.device_id

    started = time.monotonic()
    await runtime.stop(cid, 5)
    assert time.monotonic() - started < 4, "the image stops on SIGTERM"
    stopped = await runtime.inspect(cid)
    assert stopped.status is ContainerStatus.EXITED and stopped.finished_at is not None
    assert stopped.exit_code == 0

    await runtime.remove(cid)
    await runtime.remove(cid)  # already gone: fine
    assert await runtime.list_services() == []
    assert await runtime.list_networks() == ["app"]
    await runtime.remove_network("app")
    await runtime.remove_network("app")
    assert not await docker.networks.list(filters={"name": f"ef-{runtime.device_id}-app"})
    assert await runtime.list_networks() == []


async def _healthy(runtime: DockerRuntime, cid: str):
    current = await runtime.inspect(cid)
    return current if current.health is Health.HEALTHY else None


async def test_unlabelled_container_is_never_touched(
    runtime: DockerRuntime, docker: aiodocker.Docker, plain_container: str
) -> None:
    assert await runtime.list_services() == []
    for action in (runtime.start, runtime.stop, runtime.remove, runtime.inspect):
        with pytest.raises(NotManaged, match="not managed by edgefleet"):
            await action(plain_container)
    with pytest.raises(NotManaged):
        await anext(runtime.logs(plain_container))
    assert (await docker.containers.container(plain_container).show())["State"]["Running"]


async def test_other_devices_container_is_refused(
    runtime: DockerRuntime,
    runtime_factory: Callable[..., DockerRuntime],
    docker: aiodocker.Docker,
    images: TestImages,
) -> None:
    other = runtime_factory(runtime.device_id + "-other")
    cid = await run_service(other, images.local("good"))
    assert await runtime.list_services() == []
    for action in (runtime.start, runtime.stop, runtime.remove, runtime.inspect):
        with pytest.raises(NotManaged, match=runtime.device_id):
            await action(cid)
    assert (await docker.containers.container(cid).show())["State"]["Running"]
    assert [s.container_id for s in await other.list_services()] == [cid]


async def test_create_refuses_an_existing_name(
    runtime: DockerRuntime, docker: aiodocker.Docker, images: TestImages
) -> None:
    service = make_service("svc", images.local("good"))
    release = make_release([service])
    await runtime.create(service, release=release, revision=1)
    with pytest.raises(RuntimeAdapterError, match="already exists") as info:
        await runtime.create(service, release=release, revision=1)
    assert not isinstance(info.value, NotManaged)

    squatter = make_service("squat", images.local("good"))
    name = f"ef-{runtime.device_id}-squat"
    plain = await docker.containers.create({"Image": images.local("good")}, name=name)
    try:
        with pytest.raises(NotManaged, match="not managed"):
            await runtime.create(squatter, release=release, revision=1)
    finally:
        await plain.delete(force=True)


async def test_services_reach_each_other_by_name(
    runtime: DockerRuntime, images: TestImages
) -> None:
    web = make_service("web", images.local("good"), environment={"MESSAGE": "web-says-hi"})
    probe = "for i in $(seq 20); do wget -q -O- http://web:8080/ && exit 0; sleep 0.2; done; exit 1"
    client = make_service("client", images.local("good"), command=["sh", "-c", probe])
    release = make_release([web, client])
    for service in (web, client):
        await runtime.start(await runtime.create(service, release=release, revision=1))
    client_id = (await runtime.inspect(f"ef-{runtime.device_id}-client")).container_id

    async def exited():
        current = await runtime.inspect(client_id)
        return current if current.status is ContainerStatus.EXITED else None

    done = await wait_for(exited, timeout_s=10)
    lines = [line async for line in runtime.logs(client_id)]
    assert done.exit_code == 0, lines
    assert any(stream == "stdout" and text == "web-says-hi" for _, stream, text in lines)


async def test_logs_separate_streams(runtime: DockerRuntime, images: TestImages) -> None:
    cid = await run_service(runtime, images.local("crash"), environment={"CRASH_AFTER": "0"})
    await wait_for(lambda: _exited(runtime, cid))
    lines = [(stream, text) async for _, stream, text in runtime.logs(cid)]
    # Each line on its own stream. The engine reads stdout and stderr on two pipes, so two
    # lines written a moment apart on different streams may be logged in either order.
    assert sorted(lines) == [("stderr", "crashing"), ("stdout", "starting")]
    assert [text async for _, _, text in runtime.logs(cid, tail=1)] == [lines[-1][1]]
    assert [text async for _, _, text in runtime.logs(cid, since=time.time() + 60)] == []


async def _exited(runtime: DockerRuntime, cid: str) -> bool:
    return (await runtime.inspect(cid)).status is ContainerStatus.EXITED


async def test_pull_missing_image(runtime: DockerRuntime, registry: str) -> None:
    ref = f"{registry}/edgefleet/no-such-image:1"
    with pytest.raises(ImageNotFound, match="no-such-image") as info:
        await runtime.pull(ref)
    assert not info.value.retryable
    with pytest.raises(ImageNotFound, match="good@sha256:0000"):
        await runtime.pull(f"{registry}/edgefleet/good@sha256:{'0' * 64}")


async def test_create_without_image(runtime: DockerRuntime, registry: str) -> None:
    service = make_service("svc", f"{registry}/edgefleet/never-pulled:1")
    with pytest.raises(ImageNotFound, match="never-pulled"):
        await runtime.create(service, release=make_release([service]), revision=1)


async def test_create_with_bad_bind_mount(runtime: DockerRuntime, images: TestImages) -> None:
    mount = VolumeMount(type="bind", source="/nonexistent/edgefleet", target="/data")
    service = make_service("svc", images.local("good"), volumes=[mount])
    with pytest.raises(RuntimeAdapterError, match="/nonexistent/edgefleet") as info:
        await runtime.create(service, release=make_release([service]), revision=1)
    assert type(info.value) is RuntimeAdapterError and info.value.status == 400


async def test_pull_from_auth_registry(runtime: DockerRuntime, images: TestImages) -> None:
    ref = images.auth_ref("good")
    server = images.auth_registry
    good = RegistryAuth(server=server, username="edge", password="edgepass")
    assert (await runtime.pull(ref, good)).startswith("sha256:")

    bad = RegistryAuth(server=server, username="edge", password="wrong")
    with pytest.raises(RegistryAuthError, match=ref) as info:
        await runtime.pull(ref, bad)
    assert not info.value.retryable
    with pytest.raises(RegistryAuthError):
        await runtime.pull(ref)


async def test_disk_reserve_refuses_pull(
    runtime_factory: Callable[..., DockerRuntime],
    device_id: str,
    docker: aiodocker.Docker,
    images: TestImages,
) -> None:
    # A name no other test pulls, so "not pulled" is observable.
    ref = images.ref("crash").replace("127.0.0.1:", "localhost:")
    with contextlib.suppress(aiodocker.DockerError):
        await docker.images.delete(ref)
    runtime = runtime_factory(device_id, disk_reserve_bytes=2**60)
    with pytest.raises(DiskReserveError, match=r"MiB free .* reserve") as info:
        await runtime.pull(ref)
    assert info.value.retryable
    assert not await runtime.has_image(ref)


async def test_events_report_die(runtime: DockerRuntime, images: TestImages) -> None:
    since = time.time() - 1
    cid = await run_service(runtime, images.local("crash"), name="crasher")
    event = await first_event(runtime, lambda e: e.action == "die", since=since)
    assert (event.service, event.container_id, event.exit_code) == ("crasher", cid, 3)
    assert (await runtime.inspect(cid)).exit_code == 3


async def test_events_report_health_status(runtime: DockerRuntime, images: TestImages) -> None:
    since = time.time() - 1
    cid = await run_service(runtime, images.local("unhealthy"), name="sick")
    event = await first_event(
        runtime, lambda e: e.action == "health_status" and e.health is Health.UNHEALTHY, since=since
    )
    assert (event.service, event.container_id) == ("sick", cid)
    assert (await runtime.inspect(cid)).health is Health.UNHEALTHY


async def test_events_ignore_other_devices(
    runtime: DockerRuntime,
    runtime_factory: Callable[..., DockerRuntime],
    images: TestImages,
) -> None:
    since = time.time() - 1
    other = runtime_factory(runtime.device_id + "-other")
    await run_service(other, images.local("crash"), environment={"CRASH_AFTER": "0"})
    mine = await run_service(runtime, images.local("crash"), environment={"CRASH_AFTER": "0"})
    event = await first_event(runtime, lambda e: e.action == "die", since=since)
    assert event.container_id == mine


async def test_event_stream_cancels_cleanly(runtime: DockerRuntime, images: TestImages) -> None:
    streaming = asyncio.Event()

    async def consume() -> None:
        async for _ in runtime.events():
            streaming.set()

    task = asyncio.create_task(consume())
    # The stream is open once an event of ours has come through it.
    while not streaming.is_set():
        await run_service(runtime, images.local("crash"), environment={"CRASH_AFTER": "0"})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(streaming.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    await runtime.ping()  # the client is still usable


async def test_engine_unavailable(tmp_path) -> None:
    runtime = DockerRuntime("t-nowhere", docker_url=f"unix://{tmp_path}/no.sock")
    try:
        with pytest.raises(EngineUnavailable, match="unreachable") as info:
            await runtime.ping()
        assert info.value.retryable
        with pytest.raises(EngineUnavailable):
            await runtime.list_services()
    finally:
        await runtime.close()
