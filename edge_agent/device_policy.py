"""What a release may do on a device: the policy document and the check of a release.

Pure: no I/O. The hub imports this module (a contract, like ``models`` and ``protocol``)
to check a release before it is accepted for a group; the agent checks every target
against the policy it carries (or, for a target without one, its configured local
policy) before applying it, even when the hub signed it.

Each option a service may ask for is refused unless a policy field allows it:

* bind mounts: the source must lie under one of ``bind_paths`` (compared after
  normalising ``..`` away, by whole path components). A relative source is the
  per-release data directory and is always allowed, unless it climbs out of it.
* the Docker socket (``/var/run/docker.sock``, ``/run/docker.sock``, or a directory
  holding one, such as ``/run`` or ``/``) only with ``docker_socket``, whatever
  ``bind_paths`` says: it is root on the device.
* ``privileged``, ``network_mode: host`` (``host_network``), host ``devices`` (by path,
  or a directory of them, by whole components like ``bind_paths``), ``cap_add`` (by name,
  ``CAP_`` prefix and case ignored; ``ALL`` only by name).
* published ports only on ``port_addresses`` (``*``: any address).
* ``max_mem_bytes`` / ``max_cpus`` bound what a service may ask for; with
  ``require_limits`` a service without a limit is refused where a maximum is set.
* ``security_opt`` entries only as listed (``seccomp=unconfined``, ``apparmor=...``,
  ``label=disable``, a seccomp profile; ``:`` read as ``=``; ``*``: any), except
  ``no-new-privileges``, which only hardens; ``sysctls`` by name (``*``: any); an
  explicit root ``user`` (uid ``0`` or ``root``) only with ``root_user``.
* ``tmpfs`` is not a policy field: it is memory inside the container's own mount
  namespace, charged to its memory limit, and reaches nothing on the host.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:  # models carries a policy in Target: no import cycle at run time
    from edge_agent.models import Release, Service

DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
ANY_ADDRESS = "*"
MAX_ENTRIES = 256  # entries in one list field of a policy


# security options that only take privileges away: never refused
HARDENING_OPTS = frozenset({"no-new-privileges", "no-new-privileges=true"})


def _security_opt(option: str) -> str:
    """Return a security option in one spelling (Docker reads ``key:value`` as ``key=value``)."""
    key, sep, value = option.strip().partition("=")
    if not sep:
        key, sep, value = option.strip().partition(":")
    return f"{key.strip().lower()}={value.strip()}" if sep else key.strip().lower()


def _is_root(user: str | None) -> bool:
    return user is not None and user.partition(":")[0].strip() in ("0", "root")


def _cap(name: str) -> str:
    upper = name.strip().upper()
    return upper[4:] if upper.startswith("CAP_") else upper


def _absolute_paths(v: list[str]) -> list[str]:
    bad = [p for p in v if not p.startswith("/")]
    if bad:
        raise ValueError(f"must be absolute host paths: {', '.join(bad)}")
    return [posixpath.normpath(p) for p in v]


class DevicePolicy(BaseModel):
    """What a release may do on a device; every field's default refuses (ports aside)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bind_paths: list[str] = Field(default_factory=list, max_length=MAX_ENTRIES)
    docker_socket: bool = False
    privileged: bool = False
    host_network: bool = False
    devices: list[str] = Field(default_factory=list, max_length=MAX_ENTRIES)
    cap_add: list[str] = Field(default_factory=list, max_length=MAX_ENTRIES)
    # Publishing ports is what apps do (a kiosk serves on 0.0.0.0): any address by default.
    port_addresses: list[str] = Field(default_factory=lambda: [ANY_ADDRESS], max_length=64)
    max_mem_bytes: int | None = Field(None, ge=4 * 1024 * 1024)
    max_cpus: float | None = Field(None, gt=0, le=1024)
    require_limits: bool = False
    security_opt: list[str] = Field(default_factory=list, max_length=MAX_ENTRIES)
    sysctls: list[str] = Field(default_factory=list, max_length=MAX_ENTRIES)
    root_user: bool = False

    @field_validator("security_opt")
    @classmethod
    def _opts(cls, v: list[str]) -> list[str]:
        return [_security_opt(o) for o in v]

    @field_validator("bind_paths", "devices")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        return _absolute_paths(v)

    @field_validator("cap_add")
    @classmethod
    def _caps(cls, v: list[str]) -> list[str]:
        return [_cap(c) for c in v]


# Today's behaviour: everything allowed. An agent holds a target without a policy to its
# configured local policy, and this is that default (upgrading never stops a release).
PERMISSIVE = DevicePolicy(
    bind_paths=["/"],
    docker_socket=True,
    privileged=True,
    host_network=True,
    devices=["/"],
    cap_add=["ALL"],
    security_opt=[ANY_ADDRESS],
    sysctls=[ANY_ADDRESS],
    root_user=True,
)
RESTRICTIVE = DevicePolicy()


class Violation(BaseModel):
    """One option of one service that the policy refuses."""

    model_config = ConfigDict(frozen=True)

    service: str
    option: str
    field: str
    message: str


def _under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def _allowed(values: list[str]) -> str:
    return ", ".join(values) if values else "none"


def violations(policy: DevicePolicy, release: Release) -> list[Violation]:
    """Return every option of ``release`` that ``policy`` refuses (empty: allowed)."""
    out: list[Violation] = []
    for service in release.services:
        out += service_violations(policy, service)
    return out


def service_violations(policy: DevicePolicy, service: Service) -> list[Violation]:
    """Return every option of one service that ``policy`` refuses."""
    found: list[tuple[str, str, str]] = []  # (option, field, what)
    found += _bind_violations(policy, service)
    if service.privileged and not policy.privileged:
        found.append(("privileged", "privileged", "privileged mode"))
    if service.network_mode == "host" and not policy.host_network:
        found.append(("network_mode", "host_network", "host network"))
    for d in service.devices:
        host = posixpath.normpath(d.host)
        if not any(_under(host, p) for p in policy.devices):
            found.append(("devices", "devices", f"device {host}"))
    caps = set(policy.cap_add)
    for c in service.cap_add:
        if "ALL" not in caps and _cap(c) not in caps:
            found.append(("cap_add", "cap_add", f"capability {_cap(c)}"))
    if ANY_ADDRESS not in policy.port_addresses:
        for p in service.ports:
            if p.host_ip not in policy.port_addresses:
                found.append(("ports", "port_addresses", f"port {p.container} on {p.host_ip}"))
    found += _limit_violations(policy, service)
    found += _security_violations(policy, service)
    return [
        Violation(
            service=service.name,
            option=option,
            field=field,
            message=f"service {service.name}: {what} refused by policy {field}"
            f"{_allowed_note(policy, field)}",
        )
        for option, field, what in found
    ]


def _allowed_note(policy: DevicePolicy, field: str) -> str:
    value = getattr(policy, field)
    if isinstance(value, list):
        return f" (allowed: {_allowed(value)})"
    if field in ("max_mem_bytes", "max_cpus") and value is not None:
        return f" (at most {value})"
    return ""


def _bind_violations(policy: DevicePolicy, service: Service) -> list[tuple[str, str, str]]:
    found = []
    for v in service.volumes:
        if v.type != "bind":
            continue
        if not v.source.startswith("/"):
            rel = posixpath.normpath(v.source)
            if rel == ".." or rel.startswith("../"):
                found.append(("volumes", "bind_paths", f"bind mount {v.source} (outside the "
                              "release data directory)"))  # fmt: skip
            continue
        source = posixpath.normpath(v.source)
        if any(_under(s, source) for s in DOCKER_SOCKETS):
            if not policy.docker_socket:
                found.append(("volumes", "docker_socket", f"bind mount {source} (Docker socket)"))
                continue
            if source in DOCKER_SOCKETS:
                continue  # allowed by name
        if not any(_under(source, p) for p in policy.bind_paths):
            found.append(("volumes", "bind_paths", f"bind mount {source}"))
    return found


def _limit_violations(policy: DevicePolicy, service: Service) -> list[tuple[str, str, str]]:
    found = []
    mem, cpus = service.mem_limit_bytes, service.cpus
    if policy.max_mem_bytes is not None:
        if mem is None and policy.require_limits:
            found.append(("mem_limit_bytes", "max_mem_bytes", "no memory limit"))
        elif mem is not None and mem > policy.max_mem_bytes:
            found.append(("mem_limit_bytes", "max_mem_bytes", f"memory limit {mem}"))
    if policy.max_cpus is not None:
        if cpus is None and policy.require_limits:
            found.append(("cpus", "max_cpus", "no CPU limit"))
        elif cpus is not None and cpus > policy.max_cpus:
            found.append(("cpus", "max_cpus", f"CPU limit {cpus}"))
    return found


def _security_violations(policy: DevicePolicy, service: Service) -> list[tuple[str, str, str]]:
    found = []
    allowed_opts = set(policy.security_opt)
    for raw in service.security_opt:
        opt = _security_opt(raw)
        if (
            opt not in HARDENING_OPTS
            and ANY_ADDRESS not in allowed_opts
            and opt not in allowed_opts
        ):
            found.append(("security_opt", "security_opt", f"security option {opt}"))
    if ANY_ADDRESS not in policy.sysctls:
        for name in service.sysctls:
            if name not in policy.sysctls:
                found.append(("sysctls", "sysctls", f"sysctl {name}"))
    if _is_root(service.user) and not policy.root_user:
        found.append(("user", "root_user", f"user {service.user} (root)"))
    return found


def describe(found: list[Violation], limit: int = 5) -> str:
    """Return the violations as one line (the first ``limit``, then how many more)."""
    text = "; ".join(v.message for v in found[:limit])
    more = len(found) - limit
    return f"{text}; and {more} more" if more > 0 else text
