"""container_config(): a Service as the engine's create body (pure, no engine)."""

from __future__ import annotations

from typing import Any

import pytest

from edge_agent.container_config import container_config
from edge_agent.models import LogLimits, PortMapping, Service


def body(**fields: Any) -> dict[str, Any]:
    """Return the create body of a service with ``fields``."""
    return container_config(Service(name="s", image="img", **fields), {"l": "v"}, [])


@pytest.mark.parametrize(
    ("fields", "path", "expected"),
    [
        ({}, ("HostConfig", "NetworkMode"), "none"),  # replaced by the first release network
        ({"network_mode": "host"}, ("HostConfig", "NetworkMode"), "host"),
        ({"expose": ["80", "53/udp"]}, ("ExposedPorts",), {"80/tcp": {}, "53/udp": {}}),
        (
            {"ports": [PortMapping(container=80)], "expose": ["80"]},
            ("ExposedPorts",),
            {"80/tcp": {}},
        ),
        ({"log_limits": LogLimits(max_size_bytes=4096)}, ("HostConfig", "LogConfig", "Config"),
         {"max-size": "4096"}),
        ({"init": True}, ("HostConfig", "Init"), True),
        ({"user": "app"}, ("User",), "app"),
        ({"stop_signal": "SIGINT"}, ("StopSignal",), "SIGINT"),
    ],
)  # fmt: skip
def test_create_body_table(fields: dict[str, Any], path: tuple[str, ...], expected: Any) -> None:
    value: Any = body(**fields)
    for key in path:
        value = value[key]
    assert value == expected


def test_unset_options_leave_the_engine_defaults() -> None:
    b = body()
    for key in ("User", "WorkingDir", "Hostname", "StopSignal", "Cmd", "Entrypoint"):
        assert key not in b
    for key in ("CapAdd", "CapDrop", "Devices", "Tmpfs", "ExtraHosts", "Dns", "Sysctls"):
        assert key not in b["HostConfig"]
    assert "LogConfig" not in b["HostConfig"], "the daemon's log driver unless limits are set"
