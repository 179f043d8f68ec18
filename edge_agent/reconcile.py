"""Plan the steps that take a device from its current state to its target state.

``plan()`` is pure: everything it needs (images present, the time, restart backoff) is
passed in a ``PlanContext``. Steps are typed data, one model per action, discriminated by
``action``; ``edge_agent.executor`` runs them through a ``Runtime``.

Plan order (also the executor's phases): pulls; teardown of services no longer in the
target; the release networks the (re)created services join; each target service's steps
in dependency order; removal of networks no longer wanted (other releases' networks, and
the current release's networks no service joins any more).

A release network is known by its key: ``release`` for the release's ``default``
network, ``release/network`` for the others ("/" is not allowed in names).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from edge_agent.models import (
    ContainerStatus,
    CurrentService,
    RegistryAuth,
    Release,
    Service,
    Target,
)

DEFAULT_NETWORK = "default"
# Stop timeout for containers whose service is gone from the target (no spec to ask).
DEFAULT_STOP_TIMEOUT_S = 10.0
DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = frozenset(
    {DOCKER_HUB, "index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/"}
)
_STOPPABLE = frozenset(
    {ContainerStatus.RUNNING, ContainerStatus.RESTARTING, ContainerStatus.PAUSED}
)


class Runtime(Protocol):
    """The container engine calls the executor and reconciler make (see runtime.py)."""

    async def list_services(self) -> list[CurrentService]:
        """Return this device's managed containers."""
        ...

    async def has_image(self, ref: str) -> bool:
        """Return whether the image is present locally."""
        ...

    async def pull(self, ref: str, auth: RegistryAuth | None) -> str:
        """Pull an image and return its id."""
        ...

    async def ensure_network(
        self, release_name: str, network: str = DEFAULT_NETWORK, *, internal: bool = False
    ) -> str:
        """Create a network of the release if missing and return its name."""
        ...

    async def remove_network(self, release_name: str, network: str = DEFAULT_NETWORK) -> None:
        """Remove a network of the release."""
        ...

    async def list_networks(self) -> list[str]:
        """Return the keys of this device's networks (``release`` or ``release/network``)."""
        ...

    async def create(self, service: Service, *, release: Release, revision: int) -> str:
        """Create the service's container and return its id."""
        ...

    async def start(self, cid: str) -> None:
        """Start a container."""
        ...

    async def stop(self, cid: str, timeout_s: float) -> None:
        """Stop a container; a container that is not running is left as it is."""
        ...

    async def remove(self, cid: str) -> None:
        """Remove a stopped container."""
        ...


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @property
    def service_name(self) -> str | None:
        """Return the service this step acts on, if it acts on one."""
        return None

    def describe(self) -> str:
        """Return a short human description for logs and events."""
        raise NotImplementedError


class PullStep(_Step):
    """Pull an image; ``registry`` is the host whose credentials to use."""

    action: Literal["pull"] = "pull"
    image: str
    registry: str
    services: tuple[str, ...] = ()

    def describe(self) -> str:
        """Return a short human description for logs and events."""
        return f"pull {self.image}"


class CreateNetworkStep(_Step):
    """Create a network of the release (idempotent)."""

    action: Literal["create_network"] = "create_network"
    release: str
    network: str = DEFAULT_NETWORK
    internal: bool = False

    def describe(self) -> str:
        """Return a short human description for logs and events."""
        if self.network == DEFAULT_NETWORK:
            return f"create network of {self.release}"
        return f"create network {self.network} of {self.release}"


class CreateStep(_Step):
    """Create a service's container; a following start step starts it."""

    action: Literal["create"] = "create"
    service: Service

    @property
    def service_name(self) -> str:
        """Return the service this step acts on."""
        return self.service.name

    def describe(self) -> str:
        """Return a short human description for logs and events."""
        return f"create {self.service.name}"


class StartStep(_Step):
    """Start a container; ``container_id`` None means the one created in this apply."""

    action: Literal["start"] = "start"
    service: str
    container_id: str | None = None
    # Why the agent restarts it by itself ("" when the target asks for it): audited.
    restart: Literal["", "exited", "dead", "unhealthy"] = ""

    @property
    def service_name(self) -> str:
        """Return the service this step acts on."""
        return self.service

    def describe(self) -> str:
        """Return a short human description for logs and events."""
        return f"start {self.service}"


class StopStep(_Step):
    """Stop a container."""

    action: Literal["stop"] = "stop"
    service: str
    container_id: str
    timeout_s: float = DEFAULT_STOP_TIMEOUT_S

    @property
    def service_name(self) -> str:
        """Return the service this step acts on."""
        return self.service

    def describe(self) -> str:
        """Return a short human description for logs and events."""
        return f"stop {self.service} ({self.container_id[:12]})"


class RemoveStep(_Step):
    """Remove a stopped container."""

    action: Literal["remove"] = "remove"
    service: str
    container_id: str

    @property
    def service_name(self) -> str:
        """Return the service this step acts on."""
        return self.service

    def describe(self) -> str:
        """Return a short human description for logs and events."""
        return f"remove {self.service} ({self.container_id[:12]})"


class RecreateStep(_Step):
    """Stop and remove a container whose config changed, then create and start anew."""

    action: Literal["recreate"] = "recreate"
    service: Service
    container_id: str

    @property
    def service_name(self) -> str:
        """Return the service this step acts on."""
        return self.service.name

    def describe(self) -> str:
        """Return a short human description for logs and events."""
        return f"recreate {self.service.name} ({self.container_id[:12]})"


class RemoveNetworkStep(_Step):
    """Remove a network that is no longer wanted."""

    action: Literal["remove_network"] = "remove_network"
    release: str
    network: str = DEFAULT_NETWORK

    def describe(self) -> str:
        """Return a short human description for logs and events."""
        if self.network == DEFAULT_NETWORK:
            return f"remove network of {self.release}"
        return f"remove network {self.network} of {self.release}"


Step = Annotated[
    PullStep
    | CreateNetworkStep
    | CreateStep
    | StartStep
    | StopStep
    | RemoveStep
    | RecreateStep
    | RemoveNetworkStep,
    Field(discriminator="action"),
]
STEPS: TypeAdapter[list[Step]] = TypeAdapter(list[Step])


@dataclass(frozen=True)
class PlanContext:
    """Everything besides target and current that plan() decides on."""

    now: datetime
    images_present: frozenset[str] = frozenset()
    # service -> earliest time the supervisor allows restarting it (backoff)
    restart_not_before: Mapping[str, datetime] = field(default_factory=dict)
    # services the supervisor wants restarted because their healthcheck failed
    restart_unhealthy: frozenset[str] = frozenset()
    # keys of the networks known to exist (see network_key); unwanted ones are removed
    networks_present: frozenset[str] = frozenset()

    def is_deferred(self, service: str) -> bool:
        """Return whether backoff forbids restarting the service now."""
        not_before = self.restart_not_before.get(service)
        return not_before is not None and self.now < not_before


def plan(target: Target | None, current: Sequence[CurrentService], ctx: PlanContext) -> list[Step]:
    """Return the steps that take ``current`` to ``target``; no target means no steps."""
    if target is None:
        return []
    release = target.release.name
    wanted = {s.name: s for s in target.services()}
    by_name: dict[str, list[CurrentService]] = {}
    for c in sorted(current, key=lambda c: (c.name, c.container_id)):
        by_name.setdefault(c.name, []).append(c)

    teardown: list[Step] = []
    chains: dict[str, list[Step]] = {}
    for name, containers in by_name.items():
        svc = wanted.get(name)
        if svc is None:
            for c in containers:
                teardown += _teardown(c, DEFAULT_STOP_TIMEOUT_S)
            continue
        keep = _pick(containers, svc, release)
        extras = [s for c in containers if c is not keep for s in _teardown(c, svc.stop_timeout_s)]
        chains[name] = extras + _service_steps(svc, keep, release, ctx)
    for name, svc in wanted.items():
        if name not in by_name:
            chains[name] = [CreateStep(service=svc), StartStep(service=name)]

    ordered = [s for name in start_order(wanted) for s in chains.get(name, [])]
    built = [s.service for s in ordered if isinstance(s, CreateStep | RecreateStep)]
    networks = network_steps(target.release, built)
    drops = _network_drops(target, current, ctx)
    return [*_pulls(built, ctx.images_present), *teardown, *networks, *ordered, *drops]


def network_steps(release: Release, built: Iterable[Service]) -> list[Step]:
    """Return the creation of every network a service about to be (re)created joins."""
    joined = sorted({n for svc in built for n in joined_networks(svc)})
    specs = release.networks
    return [
        CreateNetworkStep(
            release=release.name, network=n, internal=n in specs and specs[n].internal
        )
        for n in joined
    ]


def _network_drops(
    target: Target, current: Sequence[CurrentService], ctx: PlanContext
) -> list[Step]:
    """Return the removal of networks no target service joins (after the services' steps)."""
    release = target.release.name
    wanted = {release} | {
        network_key(release, n) for svc in target.release.services for n in joined_networks(svc)
    }
    # A network cannot go while a container (even one being removed) is attached to it.
    removing = {c.release for c in current if c.status == ContainerStatus.REMOVING}
    present = {c.release for c in current if c.release} | ctx.networks_present
    stale = [k for k in sorted(present - wanted) if k.partition("/")[0] not in removing]
    drops: list[Step] = []
    for key in stale:
        owner, _, network = key.partition("/")
        drops.append(RemoveNetworkStep(release=owner, network=network or DEFAULT_NETWORK))
    return drops


def network_key(release_name: str, network: str | None = None) -> str:
    """Return the key of a release network: ``release``, or ``release/network``."""
    if network is None or network == DEFAULT_NETWORK:
        return release_name
    return f"{release_name}/{network}"


def joined_networks(service: Service) -> list[str]:
    """Return the release networks ``service`` joins (none in host network mode)."""
    if service.network_mode == "host":
        return []
    return list(service.networks) or [DEFAULT_NETWORK]


def _service_steps(svc: Service, c: CurrentService, release: str, ctx: PlanContext) -> list[Step]:
    """Return the steps for one target service that has a container."""
    if c.status == ContainerStatus.REMOVING:
        return []  # going away; its destroy event brings the next pass, which creates
    if c.config_hash != svc.config_hash() or c.release != release:
        return [RecreateStep(service=svc, container_id=c.container_id)]
    if ctx.is_deferred(svc.name):
        return []
    cid = c.container_id
    match c.status:
        case ContainerStatus.CREATED:
            # Never started (e.g. an apply was cancelled between create and start): the
            # target wants it running whatever its restart policy says about restarts.
            return [StartStep(service=svc.name, container_id=cid)]
        case ContainerStatus.EXITED if is_restart_allowed(svc, c.exit_code):
            return [StartStep(service=svc.name, container_id=cid, restart="exited")]
        case ContainerStatus.DEAD if is_restart_allowed(svc, c.exit_code):
            # A dead container cannot be started again; replace it.
            return [
                RemoveStep(service=svc.name, container_id=cid),
                CreateStep(service=svc),
                StartStep(service=svc.name, restart="dead"),
            ]
        case ContainerStatus.RUNNING if svc.name in ctx.restart_unhealthy and svc.restart != "no":
            return [
                StopStep(service=svc.name, container_id=cid, timeout_s=svc.stop_timeout_s),
                StartStep(service=svc.name, container_id=cid, restart="unhealthy"),
            ]
    return []


def is_restart_allowed(svc: Service, exit_code: int | None) -> bool:
    """Return whether the service's restart policy restarts a container that exited."""
    if svc.restart in ("always", "unless-stopped"):
        return True
    return svc.restart == "on-failure" and exit_code != 0


def _teardown(c: CurrentService, timeout_s: float) -> list[Step]:
    """Return the steps that stop (if needed) and remove a container."""
    if c.status == ContainerStatus.REMOVING:
        return []
    steps: list[Step] = []
    if c.status in _STOPPABLE:
        steps.append(StopStep(service=c.name, container_id=c.container_id, timeout_s=timeout_s))
    steps.append(RemoveStep(service=c.name, container_id=c.container_id))
    return steps


def _pick(containers: list[CurrentService], svc: Service, release: str) -> CurrentService:
    """Return the container to keep when (against the naming rule) a service has several."""
    want = svc.config_hash()
    return max(
        containers,
        key=lambda c: (
            c.config_hash == want and c.release == release,
            c.is_running,
            c.container_id,
        ),
    )


def _pulls(built: Iterable[Service], present: frozenset[str]) -> list[Step]:
    """Return one pull per missing image of the services about to be (re)created."""
    needed: dict[str, set[str]] = {}
    for svc in built:
        if svc.image not in present:
            needed.setdefault(svc.image, set()).add(svc.name)
    return [
        PullStep(image=img, registry=registry_of(img), services=tuple(sorted(names)))
        for img, names in sorted(needed.items())
    ]


def start_order(services: Mapping[str, Service]) -> list[str]:
    """Return service names with every dependency before its dependents, ties by name."""
    order: list[str] = []
    placed: set[str] = set()
    pending = sorted(services)
    while pending:
        ready = [n for n in pending if set(services[n].depends_on) <= placed] or pending
        order += ready
        placed.update(ready)
        pending = [n for n in pending if n not in placed]
    return order


def registry_of(image: str) -> str:
    """Return the registry host of an image reference (``docker.io`` when it has none)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return DOCKER_HUB


def auth_for(registry: str, auths: Iterable[RegistryAuth]) -> RegistryAuth | None:
    """Return the credentials for a registry host, if the release has any."""
    for auth in auths:
        if auth.server == registry or (
            registry == DOCKER_HUB and auth.server in _DOCKER_HUB_ALIASES
        ):
            return auth
    return None
