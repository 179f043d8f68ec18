"""Pydantic models of the agent's domain: releases, services, targets, current state.

Pure data: no I/O here. The runtime adapter turns ``Service`` into engine calls and
engine objects into ``CurrentService``; the planner compares the two.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_agent.device_policy import DevicePolicy
from edge_agent.errors import InvalidDocument
from edge_agent.release_trust import ReleaseTrust
from edge_agent.window import parse_hhmm, zone

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
# Any name Docker accepts in an environment: no "=", no NUL (dotted names included).
ENV_KEY_RE = re.compile(r"^[^=\x00]{1,1024}$")
EXPOSE_RE = re.compile(r"^[0-9]{1,5}(/(tcp|udp|sctp))?$")
EXTRA_HOST_RE = re.compile(r"^[^:\s]{1,253}:\S{1,64}$")  # name:address (IPv6 has colons)

# Labels on every object the agent creates. The agent never touches an object without
# LABEL_MANAGED == "edgefleet" and LABEL_DEVICE == its own device id.
LABEL_MANAGED = "io.edgefleet.managed-by"
LABEL_DEVICE = "io.edgefleet.device"
LABEL_SERVICE = "io.edgefleet.service"
LABEL_RELEASE = "io.edgefleet.release"
LABEL_REVISION = "io.edgefleet.revision"
LABEL_CONFIG_HASH = "io.edgefleet.config-hash"
MANAGED_BY = "edgefleet"


def _check_name(v: str) -> str:
    if not NAME_RE.match(v):
        raise ValueError("must match " + NAME_RE.pattern)
    return v


# A service or release name: lower-case, usable in container and network names.
Name = Annotated[str, AfterValidator(_check_name)]

# The name of a hub secret (feature "secrets"): what a release names instead of a value.
SECRET_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")


def _check_secret_name(v: str) -> str:
    if not SECRET_NAME_RE.match(v):
        raise ValueError("secret name must match " + SECRET_NAME_RE.pattern)
    return v


SecretName = Annotated[str, AfterValidator(_check_secret_name)]


class Strict(BaseModel):
    """Base for documents: unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class HealthCheck(Strict):
    """A container healthcheck, in Docker's terms."""

    test: list[str] = Field(min_length=1, description='e.g. ["CMD", "wget", "-q", "-O-", "..."]')
    interval_s: float = Field(5.0, gt=0, le=3600)
    timeout_s: float = Field(3.0, gt=0, le=3600)
    retries: int = Field(3, ge=1, le=100)
    start_period_s: float = Field(0.0, ge=0, le=3600)

    @field_validator("test")
    @classmethod
    def _test_kind(cls, v: list[str]) -> list[str]:
        if v[0] not in ("CMD", "CMD-SHELL", "NONE"):
            raise ValueError('first element must be "CMD", "CMD-SHELL" or "NONE"')
        return v


class PortMapping(Strict):
    """Publish a container port on the host."""

    container: int = Field(ge=1, le=65535)
    host: int | None = Field(None, ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"
    host_ip: str = "0.0.0.0"


class VolumeMount(Strict):
    """A named volume (owned by the agent) or a bind mount from the host."""

    type: Literal["volume", "bind"] = "volume"
    source: str = Field(min_length=1)
    target: str = Field(min_length=1)
    read_only: bool = False

    @field_validator("target")
    @classmethod
    def _absolute_target(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must be an absolute path inside the container")
        return v

    @model_validator(mode="after")
    def _source_form(self) -> VolumeMount:
        # A relative source (feature "device_policy") is under the release's data directory.
        relative = not self.source.startswith("/")
        if self.type == "bind" and relative and not is_release_data_path(self.source):
            raise ValueError(
                "source of a bind mount must be an absolute host path, or a path "
                "inside the release's data directory (./x or x, no ..)"
            )
        if self.type == "volume" and not NAME_RE.match(self.source):
            raise ValueError("source of a named volume must match " + NAME_RE.pattern)
        return self


def is_release_data_path(source: str) -> bool:
    """Return whether a relative bind source stays inside the release's data directory."""
    if source.startswith(("/", "~")) or "\x00" in source:
        return False
    parts = [p for p in source.split("/") if p not in ("", ".")]
    return bool(parts) and ".." not in parts


def is_relative_bind(mount: VolumeMount) -> bool:
    """Return whether ``mount`` binds a path of the release's data directory."""
    return mount.type == "bind" and not mount.source.startswith("/")


class RegistryAuth(Strict):
    """Credentials for one registry host (e.g. ``127.0.0.1:5000``)."""

    server: str = Field(min_length=1)
    username: str = Field(min_length=1)
    # Exactly one: the password itself, or the name of the hub secret holding it (the hub
    # moves a password given in clear into its secret store and keeps only the name).
    password: str | None = Field(None, min_length=1, repr=False)
    password_secret: SecretName | None = None

    @model_validator(mode="after")
    def _one_password(self) -> RegistryAuth:
        if (self.password is None) == (self.password_secret is None):
            raise ValueError('give exactly one of "password" or "password_secret"')
        return self


class Dependency(Strict):
    """Start after the named service is started, healthy, or has exited 0 (``completed``)."""

    condition: Literal["started", "healthy", "completed"] = "started"


class DeviceMapping(Strict):
    """A host device made available in the container (``/dev/ttyUSB0:/dev/ttyUSB0:rwm``)."""

    host: str = Field(min_length=2, max_length=4096, pattern=r"^/")
    container: str = Field(min_length=2, max_length=4096, pattern=r"^/")
    permissions: str = Field("rwm", pattern=r"^[rwm]{1,3}$")


class LogLimits(Strict):
    """Bounds of the engine's own log file of a container (json-file driver options)."""

    max_size_bytes: int | None = Field(None, ge=1024)
    max_files: int | None = Field(None, ge=1, le=1000)

    @model_validator(mode="after")
    def _files_need_size(self) -> LogLimits:
        if self.max_files is not None and self.max_files > 1 and self.max_size_bytes is None:
            raise ValueError("max_files above 1 needs max_size_bytes (files rotate by size)")
        return self


class Service(Strict):
    """One container of a release."""

    name: Name
    image: str = Field(min_length=1, description="tag or repo@sha256:digest")
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    environment: dict[str, str] = Field(default_factory=dict, repr=False)  # may hold secrets
    ports: list[PortMapping] = Field(default_factory=list)
    volumes: list[VolumeMount] = Field(default_factory=list)
    restart: Literal["always", "on-failure", "no", "unless-stopped"] = "always"
    healthcheck: HealthCheck | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    mem_limit_bytes: int | None = Field(None, ge=4 * 1024 * 1024)
    cpus: float | None = Field(None, gt=0, le=1024)
    depends_on: dict[str, Dependency] = Field(default_factory=dict)
    stop_timeout_s: float = Field(10.0, ge=0, le=600)
    # Container options (feature "container_options"; see protocol.FEATURE_TESTS). Each is
    # part of config_hash only when set, so a service using none keeps its old hash.
    user: str | None = Field(None, min_length=1, max_length=256)
    working_dir: str | None = Field(None, pattern=r"^/", max_length=4096)
    hostname: str | None = Field(None, min_length=1, max_length=253)
    aliases: list[str] = Field(default_factory=list, max_length=64)  # extra network aliases
    expose: list[str] = Field(default_factory=list)  # "8080" or "8080/udp"
    cap_add: list[str] = Field(default_factory=list)
    cap_drop: list[str] = Field(default_factory=list)
    devices: list[DeviceMapping] = Field(default_factory=list)
    privileged: bool = False
    network_mode: Literal["bridge", "host"] = "bridge"  # bridge: the release's networks
    networks: list[Name] = Field(default_factory=list)  # release networks; [] = ["default"]
    tmpfs: dict[str, str] = Field(default_factory=dict)  # container path -> mount options
    read_only: bool = False
    extra_hosts: list[str] = Field(default_factory=list)  # "name:address"
    dns: list[str] = Field(default_factory=list)
    sysctls: dict[str, str] = Field(default_factory=dict)
    security_opt: list[str] = Field(default_factory=list)
    stop_signal: str | None = Field(None, min_length=1, max_length=32)
    init: bool = False
    log_limits: LogLimits | None = None
    # Environment variables whose values are hub secrets: VAR -> secret name (feature
    # "secrets"). The target carries the values; the release only the names.
    secret_env: dict[str, SecretName] = Field(default_factory=dict, max_length=256)

    @field_validator("environment")
    @classmethod
    def _env_keys(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not ENV_KEY_RE.match(k)]
        if bad:
            raise ValueError(f"invalid variable name(s): {', '.join(sorted(bad))}")
        return v

    @model_validator(mode="after")
    def _secret_env_apart(self) -> Service:
        bad = sorted(k for k in self.secret_env if not ENV_KEY_RE.match(k))
        if bad:
            raise ValueError(f"secret_env: invalid variable name(s): {', '.join(bad)}")
        both = sorted(set(self.secret_env) & set(self.environment))
        if both:
            raise ValueError(
                f"variable(s) {', '.join(both)} in both environment and secret_env: give one"
            )
        return self

    @field_validator("expose")
    @classmethod
    def _expose_form(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if not EXPOSE_RE.match(p) or not 1 <= int(p.split("/")[0]) <= 65535]
        if bad:
            raise ValueError(f"must be PORT or PORT/tcp|udp|sctp: {', '.join(bad)}")
        return v

    @field_validator("extra_hosts")
    @classmethod
    def _extra_host_form(cls, v: list[str]) -> list[str]:
        bad = [h for h in v if not EXTRA_HOST_RE.match(h)]
        if bad:
            raise ValueError(f"must be NAME:ADDRESS: {', '.join(bad)}")
        return v

    @field_validator("tmpfs")
    @classmethod
    def _tmpfs_paths(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [p for p in v if not p.startswith("/")]
        if bad:
            raise ValueError(f"must be absolute container paths: {', '.join(bad)}")
        return v

    @model_validator(mode="after")
    def _host_network(self) -> Service:
        if self.network_mode != "host":
            return self
        if self.ports:
            raise ValueError("network_mode host publishes no ports: the service binds host ports")
        if self.networks or self.aliases:
            raise ValueError("network_mode host joins no release network (networks, aliases)")
        return self

    @field_validator("labels")
    @classmethod
    def _no_reserved_labels(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if k.startswith("io.edgefleet.")]
        if bad:
            raise ValueError(f"labels under io.edgefleet. are reserved: {', '.join(bad)}")
        return v

    def hashed_extras(self) -> set[str]:
        """Return which later-added options this service sets ({"container_options"} or {})."""
        extras = set(_HASHED_WHEN_SET) - {"networks", "secret_env"}
        doc = self.model_dump(mode="json", include=extras)
        used = any(doc[name] != _SERVICE_DEFAULTS[name] for name in doc)
        return {"container_options"} if used else set()

    def config_hash(self) -> str:
        """Return a stable hash of everything that requires recreating the container.

        Fields added after the first release count only when set (not at their default),
        so upgrading the agent never recreates a container whose service uses none.
        """
        doc = self.model_dump(mode="json", exclude={"depends_on"})
        for name in _HASHED_WHEN_SET:
            if doc.get(name) == _SERVICE_DEFAULTS[name]:
                del doc[name]
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()[:16]


# Service fields that joined after the first release: hashed only when not at default.
_HASHED_WHEN_SET = (
    "user", "working_dir", "hostname", "aliases", "expose", "cap_add", "cap_drop",
    "devices", "privileged", "network_mode", "networks", "tmpfs", "read_only",
    "extra_hosts", "dns", "sysctls", "security_opt", "stop_signal", "init", "log_limits",
    "secret_env",
)  # fmt: skip
_SERVICE_DEFAULTS = {
    name: Service.model_fields[name].get_default(call_default_factory=True)
    for name in _HASHED_WHEN_SET
}


class NetworkSpec(Strict):
    """A network of a release besides ``default`` (scoped to the device, like it)."""

    internal: bool = False


class Release(Strict):
    """A named, versioned set of services."""

    name: Name
    version: str = Field(min_length=1, max_length=128)
    services: list[Service] = Field(min_length=1, max_length=256)
    registry_auth: list[RegistryAuth] = Field(default_factory=list)
    # Networks besides "default" (feature "networks"); services name them in ``networks``.
    networks: dict[Name, NetworkSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _graph(self) -> Release:
        names = [s.name for s in self.services]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate service name(s): {', '.join(dupes)}")
        known = set(names)
        networks = {"default", *self.networks}
        for s in self.services:
            unknown_nets = sorted(set(s.networks) - networks)
            if unknown_nets:
                raise ValueError(
                    f"service {s.name!r} joins unknown network(s): {', '.join(unknown_nets)}"
                )
            missing = sorted(set(s.depends_on) - known)
            if missing:
                raise ValueError(f"service {s.name!r} depends on unknown {', '.join(missing)}")
            if s.name in s.depends_on:
                raise ValueError(f"service {s.name!r} depends on itself")
        _check_acyclic({s.name: set(s.depends_on) for s in self.services})
        return self

    @property
    def ref(self) -> str:
        """Return ``name@version``."""
        return f"{self.name}@{self.version}"


def secret_names(release: Release) -> set[str]:
    """Return the names of the hub secrets a release refers to."""
    names = {n for s in release.services for n in s.secret_env.values()}
    return names | {a.password_secret for a in release.registry_auth if a.password_secret}


def _check_acyclic(graph: dict[str, set[str]]) -> None:
    done: set[str] = set()
    visiting: set[str] = set()

    def visit(n: str, path: list[str]) -> None:
        if n in done:
            return
        if n in visiting:
            raise ValueError("dependency cycle: " + " -> ".join([*path, n]))
        visiting.add(n)
        for m in sorted(graph[n]):
            visit(m, [*path, n])
        visiting.discard(n)
        done.add(n)

    for n in sorted(graph):
        visit(n, [])


class MaintenanceWindow(Strict):
    """A daily window (local wall-clock time in ``tz``) in which a target may start applying."""

    start: str = Field(max_length=8, description="HH:MM[:SS]; after end: wraps midnight")
    end: str = Field(max_length=8, description="HH:MM[:SS]")
    tz: str = Field(max_length=64, description="IANA time zone, e.g. Europe/Berlin")

    @field_validator("start", "end")
    @classmethod
    def _check_time(cls, v: str) -> str:
        parse_hhmm(v)
        return v

    @field_validator("tz")
    @classmethod
    def _check_tz(cls, v: str) -> str:
        zone(v)
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> MaintenanceWindow:
        if parse_hhmm(self.start) == parse_hhmm(self.end):
            raise ValueError("window is empty (start equals end)")
        return self


class Target(Strict):
    """The desired state of one device at one revision."""

    device_id: str = Field(min_length=1, max_length=128)
    # The hub's revision; a local (technician) target carries the hub revision it is
    # based on (0 before any hub target) and gets a local sequence number in the store.
    revision: int = Field(ge=0, le=2**63 - 1)
    release: Release
    overrides: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="service name -> environment overrides"
    )
    issued_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    expires_at: datetime | None = None
    apply_deadline_s: float = Field(120.0, gt=0, le=86400)
    # Every service must stay up (and healthy) this long before the target counts as good.
    min_ready_s: float = Field(5.0, ge=0, le=3600)
    # Applying starts only inside this window (device-local time), also while offline.
    window: MaintenanceWindow | None = None
    # Apply at once, whatever the window: the hub returns a device to its previous release.
    immediate: bool = False
    # Operator signatures for the release (feature "release_trust"; edge_agent/release_trust.py).
    release_trust: ReleaseTrust | None = None
    # The values of the hub secrets this release names (feature "secrets"): secret name ->
    # value, put in only when the hub delivers the target to its device (never stored there).
    secrets: dict[SecretName, str] = Field(default_factory=dict, repr=False, max_length=1024)
    # What the release may do on this device (feature "device_policy"); None: the agent
    # holds the target to its configured local policy (edge_agent/device_policy.py).
    policy: DevicePolicy | None = None

    @model_validator(mode="after")
    def _overrides_known(self) -> Target:
        known = {s.name for s in self.release.services}
        unknown = sorted(set(self.overrides) - known)
        if unknown:
            raise ValueError(f"overrides name unknown service(s): {', '.join(unknown)}")
        for svc, env in self.overrides.items():
            bad = [k for k in env if not ENV_KEY_RE.match(k)]
            if bad:
                raise ValueError(f"overrides.{svc}: invalid variable name(s): {', '.join(bad)}")
        return self

    def services(self) -> list[Service]:
        """Return the release's services with this device's overrides and secrets applied."""
        out = []
        for s in self.release.services:
            env = {**self.overrides.get(s.name, {}), **self._secret_values(s.secret_env)}
            if env:  # the values replace the names: a resolved service names no secret
                s = s.model_copy(update={"environment": {**s.environment, **env}, "secret_env": {}})
            out.append(s)
        return out

    def registry_auths(self) -> list[RegistryAuth]:
        """Return the release's registry credentials with secret passwords filled in."""
        return [
            a.model_copy(update={"password": self.secrets.get(a.password_secret, "")})
            if a.password_secret
            else a
            for a in self.release.registry_auth
        ]

    def secret_names(self) -> set[str]:
        """Return the names of the hub secrets the release refers to."""
        return secret_names(self.release)

    def missing_secrets(self) -> list[str]:
        """Return the referred secrets the target carries no value for, sorted."""
        return sorted(self.secret_names() - set(self.secrets))

    def _secret_values(self, secret_env: dict[str, str]) -> dict[str, str]:
        return {var: self.secrets.get(name, "") for var, name in secret_env.items()}

    def is_expired(self, now: datetime) -> bool:
        """Return whether the target's validity has passed."""
        return self.expires_at is not None and now >= self.expires_at


class ContainerStatus(StrEnum):
    """A container's state as the engine reports it."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    REMOVING = "removing"
    EXITED = "exited"
    DEAD = "dead"


class Health(StrEnum):
    """A container's healthcheck state; NONE when it has no healthcheck."""

    NONE = "none"
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class CurrentService(BaseModel):
    """One managed container as it is on the engine now."""

    model_config = ConfigDict(frozen=True)

    name: str
    container_id: str
    config_hash: str
    release: str = ""  # the release NAME (its label holds name@version)
    revision: int = 0
    status: ContainerStatus
    health: Health = Health.NONE
    exit_code: int | None = None
    image: str = ""
    image_id: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    oom_killed: bool = False

    @property
    def is_running(self) -> bool:
        """Return whether the container is running (or restarting by the engine)."""
        return self.status in (ContainerStatus.RUNNING, ContainerStatus.RESTARTING)


def parse_document(model: type[BaseModel], data: Any) -> Any:
    """Validate ``data`` as ``model`` or raise InvalidDocument naming every bad field."""
    try:
        if isinstance(data, (str, bytes)):
            return model.model_validate_json(data)
        return model.model_validate(data)
    except ValidationError as exc:
        fields = [
            {
                "field": ".".join(str(p) for p in err["loc"]) or "(document)",
                "message": err["msg"],
                "type": err["type"],
            }
            for err in exc.errors(include_url=False)
        ]
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:10])
        raise InvalidDocument(f"invalid {model.__name__}: {summary}", fields) from None


def strip_unknown(model: type[BaseModel], data: Any, path: str = "") -> tuple[Any, list[str]]:
    """Return ``data`` without the fields ``model`` does not know, and their dotted paths.

    For documents the hub sends (after their signature is verified): a newer hub may add
    optional fields an older agent has never heard of. Only the shape is pruned here;
    validation (strict, as for every document) comes after.
    """
    if not isinstance(data, dict):
        return data, []
    fields = model.model_fields
    kept: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        info = fields.get(key)
        if info is None:
            unknown.append(where)
            continue
        kept[key], inner = _strip_value(info.annotation, value, where)
        unknown += inner
    return kept, unknown


def _strip_value(annotation: Any, value: Any, path: str) -> tuple[Any, list[str]]:
    """Prune ``value`` by its annotation: models, lists, dicts and optionals of models."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return strip_unknown(annotation, value, path)
    if origin is list and args and isinstance(value, list):
        pruned = [_strip_value(args[0], v, f"{path}.{i}") for i, v in enumerate(value)]
        return [v for v, _ in pruned], [u for _, us in pruned for u in us]
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        pruned_d = {k: _strip_value(args[1], v, f"{path}.{k}") for k, v in value.items()}
        return {k: v for k, (v, _) in pruned_d.items()}, [
            u for _, us in pruned_d.values() for u in us
        ]
    models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    if len(models) == 1 and isinstance(value, dict):  # X | None
        return strip_unknown(models[0], value, path)
    return value, []
