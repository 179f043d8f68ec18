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

from edge_agent.errors import InvalidDocument

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

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
        if self.type == "bind" and not self.source.startswith("/"):
            raise ValueError("source of a bind mount must be an absolute host path")
        if self.type == "volume" and not NAME_RE.match(self.source):
            raise ValueError("source of a named volume must match " + NAME_RE.pattern)
        return self


class RegistryAuth(Strict):
    """Credentials for one registry host (e.g. ``127.0.0.1:5000``)."""

    server: str = Field(min_length=1)
    username: str = Field(min_length=1)
    password: str = Field(min_length=1, repr=False)


class Dependency(Strict):
    """Start after the named service is started, or healthy."""

    condition: Literal["started", "healthy"] = "started"


class Service(Strict):
    """One container of a release."""

    name: Name
    image: str = Field(min_length=1, description="tag or repo@sha256:digest")
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    environment: dict[str, str] = Field(default_factory=dict)
    ports: list[PortMapping] = Field(default_factory=list)
    volumes: list[VolumeMount] = Field(default_factory=list)
    restart: Literal["always", "on-failure", "no", "unless-stopped"] = "always"
    healthcheck: HealthCheck | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    mem_limit_bytes: int | None = Field(None, ge=4 * 1024 * 1024)
    cpus: float | None = Field(None, gt=0, le=1024)
    depends_on: dict[str, Dependency] = Field(default_factory=dict)
    stop_timeout_s: float = Field(10.0, ge=0, le=600)

    @field_validator("environment")
    @classmethod
    def _env_keys(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not ENV_KEY_RE.match(k)]
        if bad:
            raise ValueError(f"invalid variable name(s): {', '.join(sorted(bad))}")
        return v

    @field_validator("labels")
    @classmethod
    def _no_reserved_labels(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if k.startswith("io.edgefleet.")]
        if bad:
            raise ValueError(f"labels under io.edgefleet. are reserved: {', '.join(bad)}")
        return v

    def config_hash(self) -> str:
        """Return a stable hash of everything that requires recreating the container."""
        doc = self.model_dump(mode="json", exclude={"depends_on"})
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()[:16]


class Release(Strict):
    """A named, versioned set of services."""

    name: Name
    version: str = Field(min_length=1, max_length=128)
    services: list[Service] = Field(min_length=1, max_length=256)
    registry_auth: list[RegistryAuth] = Field(default_factory=list)

    @model_validator(mode="after")
    def _graph(self) -> Release:
        names = [s.name for s in self.services]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate service name(s): {', '.join(dupes)}")
        known = set(names)
        for s in self.services:
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
        """Return the release's services with this device's overrides applied."""
        out = []
        for s in self.release.services:
            env = self.overrides.get(s.name)
            out.append(s.model_copy(update={"environment": {**s.environment, **env}}) if env else s)
        return out

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
