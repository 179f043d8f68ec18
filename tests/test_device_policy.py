"""The device policy check (edge_agent/device_policy.py): a pure table, no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from edge_agent.config import AgentConfig
from edge_agent.device_policy import (
    MAX_ENTRIES,
    PERMISSIVE,
    RESTRICTIVE,
    DevicePolicy,
    describe,
    service_violations,
    violations,
)
from edge_agent.models import DeviceMapping, PortMapping, Release, Service, VolumeMount


def _release(**service: Any) -> Release:
    return Release(
        name="app", version="1", services=[Service(name="web", image="img:1", **service)]
    )


def _bind(source: str) -> dict[str, Any]:
    return {"volumes": [VolumeMount(type="bind", source=source, target="/data")]}


# (options of service web, policy field that refuses it under the default policy)
REFUSED_BY_DEFAULT = [
    (_bind("/etc"), "bind_paths"),
    (_bind("/srv/data/../../etc"), "bind_paths"),
    (_bind("/var/run/docker.sock"), "docker_socket"),
    (_bind("/run/docker.sock"), "docker_socket"),
    (_bind("/run"), "docker_socket"),
    (_bind("/"), "docker_socket"),
    ({"privileged": True}, "privileged"),
    ({"network_mode": "host"}, "host_network"),
    ({"devices": [DeviceMapping(host="/dev/ttyUSB0", container="/dev/ttyUSB0")]}, "devices"),
    ({"cap_add": ["NET_ADMIN"]}, "cap_add"),
]


@pytest.mark.parametrize(("options", "field"), REFUSED_BY_DEFAULT)
def test_each_option_refused_by_default_names_the_policy_field(
    options: dict[str, Any], field: str
) -> None:
    [v] = violations(RESTRICTIVE, _release(**options))
    assert v.service == "web"
    assert v.field == field
    assert v.message.startswith("service web: ")
    assert f"refused by policy {field}" in v.message


# (options, a policy that allows them)
ALLOWED = [
    (_bind("/srv/data/x"), DevicePolicy(bind_paths=["/srv/data"])),
    (_bind("/srv/data"), DevicePolicy(bind_paths=["/srv/data/"])),
    (_bind("/var/run/docker.sock"), DevicePolicy(docker_socket=True)),
    ({"privileged": True}, DevicePolicy(privileged=True)),
    ({"network_mode": "host"}, DevicePolicy(host_network=True)),
    (
        {"devices": [DeviceMapping(host="/dev/ttyUSB0", container="/dev/x")]},
        DevicePolicy(devices=["/dev/ttyUSB0"]),
    ),
    ({"cap_add": ["cap_net_admin"]}, DevicePolicy(cap_add=["NET_ADMIN"])),
    ({"cap_add": ["SYS_TIME"]}, DevicePolicy(cap_add=["ALL"])),
    ({"ports": [PortMapping(container=80, host_ip="127.0.0.1")]}, DevicePolicy()),
    ({"mem_limit_bytes": 64 * 2**20}, DevicePolicy(max_mem_bytes=64 * 2**20)),
    ({"cpus": 0.5}, DevicePolicy(max_cpus=1)),
    ({}, DevicePolicy(max_mem_bytes=64 * 2**20, max_cpus=1)),  # no limit: allowed
]


@pytest.mark.parametrize(("options", "policy"), ALLOWED)
def test_option_allowed_when_the_policy_allows_it(
    options: dict[str, Any], policy: DevicePolicy
) -> None:
    assert violations(policy, _release(**options)) == []


@pytest.mark.parametrize(("options", "policy"), ALLOWED)
def test_permissive_policy_allows_everything(options: dict[str, Any], policy: DevicePolicy) -> None:
    assert violations(PERMISSIVE, _release(**options)) == []


def test_bind_prefix_matches_whole_path_components() -> None:
    found = violations(DevicePolicy(bind_paths=["/srv/data"]), _release(**_bind("/srv/database")))
    assert [v.field for v in found] == ["bind_paths"]
    assert "bind mount /srv/database refused by policy bind_paths (allowed: /srv/data)" in (
        found[0].message
    )


def test_docker_socket_refused_even_when_a_prefix_allows_it() -> None:
    policy = DevicePolicy(bind_paths=["/var/run", "/"])
    found = violations(policy, _release(**_bind("/var/run/docker.sock")))
    assert [v.field for v in found] == ["docker_socket"]


def test_relative_bind_is_the_release_data_directory_and_always_allowed() -> None:
    assert service_violations(RESTRICTIVE, _relative_bind("data/x")) == []
    assert service_violations(RESTRICTIVE, _relative_bind("./x")) == []
    [v] = service_violations(RESTRICTIVE, _relative_bind("x/../../etc"))
    assert v.field == "bind_paths"


def _relative_bind(source: str) -> Service:
    # Built without validation: the check must hold whatever the model accepts.
    mount = VolumeMount.model_construct(type="bind", source=source, target="/d", read_only=False)
    return Service(name="web", image="img:1").model_copy(update={"volumes": [mount]})


def test_devices_by_path_or_directory_by_whole_components() -> None:
    policy = DevicePolicy(devices=["/dev/serial/by-id", "/dev/ttyUSB0"])
    allowed = ["/dev/serial/by-id/usb-1", "/dev/ttyUSB0"]
    refused = ["/dev/ttyUSB1", "/dev/serial/by-idx", "/dev/sda"]
    mappings = [DeviceMapping(host=h, container="/dev/x") for h in allowed + refused]
    found = violations(policy, _release(devices=mappings))
    assert [v.message.split(": ")[1].split(" refused")[0] for v in found] == [
        f"device {h}" for h in refused
    ]


def test_ports_only_on_the_allowed_addresses() -> None:
    policy = DevicePolicy(port_addresses=["127.0.0.1"])
    ports = [PortMapping(container=80, host=8080), PortMapping(container=81, host_ip="127.0.0.1")]
    [v] = violations(policy, _release(ports=ports))
    assert v.message == (
        "service web: port 80 on 0.0.0.0 refused by policy port_addresses (allowed: 127.0.0.1)"
    )


def test_limits_above_the_maximum_refused() -> None:
    policy = DevicePolicy(max_mem_bytes=64 * 2**20, max_cpus=1)
    found = violations(policy, _release(mem_limit_bytes=128 * 2**20, cpus=2))
    assert [v.field for v in found] == ["max_mem_bytes", "max_cpus"]


def test_require_limits_refuses_a_service_without_one() -> None:
    policy = DevicePolicy(max_mem_bytes=64 * 2**20, max_cpus=1, require_limits=True)
    found = violations(policy, _release())
    assert [v.option for v in found] == ["mem_limit_bytes", "cpus"]


def test_policy_is_strict_and_paths_absolute() -> None:
    with pytest.raises(ValueError, match="bind_paths"):
        DevicePolicy(bind_paths=["etc"])
    with pytest.raises(ValueError, match="extra"):
        DevicePolicy.model_validate({"bind_path": ["/x"]})


def test_describe_bounds_the_line() -> None:
    found = violations(RESTRICTIVE, _release(cap_add=[f"CAP{i}" for i in range(8)]))
    assert describe(found, limit=2).endswith("; and 6 more")


def test_policy_lists_are_bounded() -> None:
    with pytest.raises(ValueError, match="bind_paths"):
        DevicePolicy(bind_paths=[f"/srv/{i}" for i in range(MAX_ENTRIES + 1)])


def test_agent_local_policy_is_permissive_by_default_and_strict_when_written() -> None:
    """Upgrading an agent never stops a release; a written [policy] is exactly what it says."""
    assert AgentConfig().policy == PERMISSIVE
    written = AgentConfig.model_validate({"policy": {"bind_paths": ["/srv"]}}).policy
    assert written == DevicePolicy(bind_paths=["/srv"]) and not written.privileged
    with pytest.raises(ValueError, match="bind_path"):
        AgentConfig.model_validate({"policy": {"bind_path": ["/srv"]}})
