"""The Docker Engine API create body of a service: a pure mapping, no I/O.

``runtime.DockerRuntime.create`` adds the networks (which it creates first) and sends it.
Every Service field that changes the container is mapped here, and is part of
``Service.config_hash`` (a change recreates the container).
"""

from __future__ import annotations

import math
from typing import Any

from edge_agent.models import Service

_NS = 1_000_000_000


def container_config(
    service: Service, labels: dict[str, str], mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    """Return the engine's create body for ``service`` (networks not yet attached)."""
    bindings = _port_bindings(service)
    config: dict[str, Any] = {
        "Image": service.image,
        "Labels": labels,
        "Env": [f"{k}={v}" for k, v in sorted(service.environment.items())],
        "ExposedPorts": {key: {} for key in [*bindings, *_exposed(service)]},
        "StopTimeout": math.ceil(service.stop_timeout_s),
        "HostConfig": _host_config(service, bindings, mounts),
    }
    optional = {
        "Cmd": service.command,
        "Entrypoint": service.entrypoint,
        "User": service.user,
        "WorkingDir": service.working_dir,
        "Hostname": service.hostname,
        "StopSignal": service.stop_signal,
    }
    config.update({k: v for k, v in optional.items() if v is not None})
    if (hc := service.healthcheck) is not None:
        config["Healthcheck"] = {
            "Test": hc.test,
            "Interval": int(hc.interval_s * _NS),
            "Timeout": int(hc.timeout_s * _NS),
            "Retries": hc.retries,
            "StartPeriod": int(hc.start_period_s * _NS),
        }
    return config


def _port_bindings(service: Service) -> dict[str, list[dict[str, str]]]:
    bindings: dict[str, list[dict[str, str]]] = {}
    for p in service.ports:
        bindings.setdefault(f"{p.container}/{p.protocol}", []).append(
            {"HostIp": p.host_ip, "HostPort": str(p.host or "")}
        )
    return bindings


def _exposed(service: Service) -> list[str]:
    return [p if "/" in p else f"{p}/tcp" for p in service.expose]


def _host_config(
    service: Service, bindings: dict[str, list[dict[str, str]]], mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    host: dict[str, Any] = {
        # The agent's supervisor restarts crashed containers with its own backoff
        # and crash-loop accounting, so the engine must never restart them itself.
        "RestartPolicy": {"Name": "no"},
        # "host", or replaced by the release network the container joins first.
        "NetworkMode": "host" if service.network_mode == "host" else "none",
        "PortBindings": bindings,
        "Mounts": mounts,
        "Privileged": service.privileged,
        "ReadonlyRootfs": service.read_only,
        "Init": service.init,
    }
    if service.mem_limit_bytes is not None:
        host["Memory"] = service.mem_limit_bytes
    if service.cpus is not None:
        host["NanoCpus"] = int(service.cpus * _NS)
    lists = {
        "CapAdd": service.cap_add,
        "CapDrop": service.cap_drop,
        "ExtraHosts": service.extra_hosts,
        "Dns": service.dns,
        "SecurityOpt": service.security_opt,
        "Devices": [
            {
                "PathOnHost": d.host,
                "PathInContainer": d.container,
                "CgroupPermissions": d.permissions,
            }
            for d in service.devices
        ],
    }
    host.update({k: v for k, v in lists.items() if v})
    if service.tmpfs:
        host["Tmpfs"] = dict(service.tmpfs)
    if service.sysctls:
        host["Sysctls"] = dict(service.sysctls)
    if service.log_limits is not None:
        host["LogConfig"] = _log_config(service)
    return host


def _log_config(service: Service) -> dict[str, Any]:
    limits = service.log_limits
    assert limits is not None
    opts: dict[str, str] = {}
    if limits.max_size_bytes is not None:
        opts["max-size"] = str(limits.max_size_bytes)
    if limits.max_files is not None:
        opts["max-file"] = str(limits.max_files)
    return {"Type": "json-file", "Config": opts}
