"""Container options (feature "container_options") on the real Docker engine."""

from __future__ import annotations

import aiodocker
import pytest
from docker_env import TestImages, make_release, make_service, wait_for

from edge_agent.errors import InvalidDocument
from edge_agent.executor import Reconciler
from edge_agent.models import (
    DeviceMapping,
    LogLimits,
    PortMapping,
    Release,
    Service,
    Target,
    parse_document,
)
from edge_agent.protocol import AGENT_FEATURES, FEATURE_TESTS
from edge_agent.runtime import DockerRuntime

pytestmark = pytest.mark.docker

EVERY_OPTION = {
    "user": "1000:1000",
    "working_dir": "/tmp",
    "hostname": "kiosk-1",
    "aliases": ["legacy-name"],
    "expose": ["9000", "9001/udp"],
    "cap_add": ["NET_ADMIN"],
    "cap_drop": ["MKNOD"],
    "devices": [DeviceMapping(host="/dev/null", container="/dev/edge-null", permissions="rw")],
    "tmpfs": {"/www": "size=1m", "/scratch": ""},
    "read_only": True,
    "extra_hosts": ["hub.local:10.1.2.3"],
    "dns": ["10.0.0.53"],
    "sysctls": {"net.core.somaxconn": "1024"},
    "security_opt": ["no-new-privileges"],
    "stop_signal": "SIGUSR1",
    "init": True,
    "log_limits": LogLimits(max_size_bytes=2 * 2**20, max_files=3),
}


async def _show(docker: aiodocker.Docker, cid: str) -> dict:
    return await docker.containers.container(cid).show()


async def test_every_container_option_reaches_the_engine(
    runtime: DockerRuntime, docker: aiodocker.Docker, images: TestImages
) -> None:
    service = make_service("opts", images.local("good"), **EVERY_OPTION)
    cid = await runtime.create(service, release=make_release([service]), revision=1)
    await runtime.start(cid)
    raw = await _show(docker, cid)
    host, config = raw["HostConfig"], raw["Config"]
    assert config["User"] == "1000:1000" and config["WorkingDir"] == "/tmp"
    assert config["Hostname"] == "kiosk-1" and config["StopSignal"] == "SIGUSR1"
    assert {"9000/tcp", "9001/udp"} <= set(config["ExposedPorts"])
    assert host["CapAdd"] == ["NET_ADMIN"] and host["CapDrop"] == ["MKNOD"]
    assert host["Devices"] == [
        {"PathOnHost": "/dev/null", "PathInContainer": "/dev/edge-null", "CgroupPermissions": "rw"}
    ]
    assert host["Tmpfs"] == {"/www": "size=1m", "/scratch": ""}
    assert host["ReadonlyRootfs"] is True and host["Privileged"] is False
    assert host["ExtraHosts"] == ["hub.local:10.1.2.3"] and host["Dns"] == ["10.0.0.53"]
    assert host["Sysctls"] == {"net.core.somaxconn": "1024"}
    assert host["SecurityOpt"] == ["no-new-privileges"] and host["Init"] is True
    assert host["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": str(2 * 2**20), "max-file": "3"},
    }
    network = raw["NetworkSettings"]["Networks"][f"ef-{runtime.device_id}-app"]
    assert set(network["Aliases"]) >= {"opts", "legacy-name"}
    # The options hold inside the running container too.
    running = await wait_for(lambda: _running(runtime, cid), timeout_s=10)
    assert running.is_running, "read-only root with tmpfs /www: the service starts"


async def _running(runtime: DockerRuntime, cid: str):
    current = await runtime.inspect(cid)
    return current if current.is_running else None


async def test_privileged_service_is_privileged(
    runtime: DockerRuntime, docker: aiodocker.Docker, images: TestImages
) -> None:
    service = make_service("priv", images.local("good"), privileged=True)
    cid = await runtime.create(service, release=make_release([service]), revision=1)
    assert (await _show(docker, cid))["HostConfig"]["Privileged"] is True


async def test_host_network_service_joins_no_release_network(
    runtime: DockerRuntime, docker: aiodocker.Docker, images: TestImages
) -> None:
    service = make_service("hostnet", images.local("good"), network_mode="host", expose=["80"])
    cid = await runtime.create(service, release=make_release([service]), revision=1)
    raw = await _show(docker, cid)
    assert raw["HostConfig"]["NetworkMode"] == "host"
    assert raw["HostConfig"]["PortBindings"] in ({}, None)
    assert list(raw["NetworkSettings"]["Networks"]) == ["host"]
    assert await runtime.list_networks() == [], "no release network for a host-mode service"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ports": [PortMapping(container=80)]}, "network_mode host publishes no ports"),
        ({"networks": ["default"]}, "network_mode host joins no release network"),
        ({"aliases": ["x"]}, "network_mode host joins no release network"),
    ],
)
def test_host_network_with_ports_or_networks_refused(fields: dict, message: str) -> None:
    doc = {"name": "s", "image": "img", "network_mode": "host", **_json(fields)}
    with pytest.raises(InvalidDocument, match=message):
        parse_document(Service, doc)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"expose": ["80/sctp/x"]}, "expose"),
        ({"expose": ["http"]}, "expose"),
        ({"extra_hosts": ["no-address"]}, "extra_hosts"),
        ({"tmpfs": {"relative": ""}}, "tmpfs"),
        ({"log_limits": {"max_files": 3}}, "log_limits"),
    ],
)
def test_bad_container_options_refused_by_name(fields: dict, field: str) -> None:
    with pytest.raises(InvalidDocument) as err:
        parse_document(Service, {"name": "s", "image": "img", **fields})
    assert field in str(err.value)


def _json(fields: dict) -> dict:
    return {
        k: [v.model_dump() if hasattr(v, "model_dump") else v for v in vs]
        for k, vs in fields.items()
    }


async def test_changing_one_option_recreates_only_that_service(
    runtime: DockerRuntime, docker: aiodocker.Docker, images: TestImages
) -> None:
    a = make_service("a", images.local("good"), cap_drop=["MKNOD"])
    b = make_service("b", images.local("good"), user="1000")
    reconciler = Reconciler(runtime)
    reconciler.request(_target(runtime, [a, b], revision=1))
    assert await reconciler.converge()
    before = {c.name: c.container_id for c in await runtime.list_services()}

    b2 = b.model_copy(update={"user": "1001"})
    reconciler.request(_target(runtime, [a, b2], revision=2))
    assert await reconciler.converge()
    after = {c.name: c.container_id for c in await runtime.list_services()}
    assert after["a"] == before["a"], "an unchanged service keeps its container"
    assert after["b"] != before["b"], "a changed option recreates the container"
    assert (await _show(docker, after["b"]))["Config"]["User"] == "1001"


def _target(runtime: DockerRuntime, services: list[Service], revision: int) -> Target:
    release = Release(name="app", version=str(revision), services=services)
    return Target(device_id=runtime.device_id, revision=revision, release=release)


def test_agent_reports_the_container_options_feature() -> None:
    assert "container_options" in AGENT_FEATURES and "container_options" in FEATURE_TESTS
