"""plan(): tables of (target, current, context) -> steps, and Hypothesis properties."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck as HypothesisHealthCheck
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.executor import execute
from edge_agent.models import (
    ContainerStatus,
    CurrentService,
    Dependency,
    Health,
    HealthCheck,
    NetworkSpec,
    RegistryAuth,
    Release,
    Service,
    Target,
)
from edge_agent.reconcile import (
    STEPS,
    CreateNetworkStep,
    CreateStep,
    PlanContext,
    PullStep,
    RecreateStep,
    RemoveNetworkStep,
    RemoveStep,
    StartStep,
    Step,
    StopStep,
    auth_for,
    joined_networks,
    network_key,
    plan,
    registry_of,
    start_order,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
IMG = "127.0.0.1:5000/app@sha256:" + "a" * 64
IMG2 = "127.0.0.1:5000/db@sha256:" + "b" * 64
HC = HealthCheck(test=["CMD", "true"])
S, R, E, C, D, P = (
    ContainerStatus.RUNNING,
    ContainerStatus.RESTARTING,
    ContainerStatus.EXITED,
    ContainerStatus.CREATED,
    ContainerStatus.DEAD,
    ContainerStatus.PAUSED,
)


def svc(name: str, image: str = IMG, **kw: Any) -> Service:
    """Return a service with defaults."""
    return Service(name=name, image=image, **kw)


def tgt(*services: Service, release: str = "rel", **kw: Any) -> Target:
    """Return a target for device dev."""
    auth = kw.pop("registry_auth", [])
    nets = kw.pop("networks", {})
    rel = Release(
        name=release, version="1", services=list(services), registry_auth=auth, networks=nets
    )
    return Target(device_id="dev", revision=kw.pop("revision", 1), release=rel, **kw)


def cur(
    s: Service | str,
    status: ContainerStatus = S,
    *,
    release: str = "rel",
    cid: str | None = None,
    **kw: Any,
) -> CurrentService:
    """Return the current container of a service (config matching unless told)."""
    name = s if isinstance(s, str) else s.name
    config_hash = kw.pop("config_hash", "stale" if isinstance(s, str) else s.config_hash())
    return CurrentService(
        name=name,
        container_id=cid or f"c-{name}",
        config_hash=config_hash,
        release=release,
        status=status,
        **kw,
    )


def ctx(**kw: Any) -> PlanContext:
    """Return a context at NOW with both images present unless told."""
    kw.setdefault("images_present", frozenset({IMG, IMG2}))
    return PlanContext(now=NOW, **kw)


web = svc("web", depends_on={"db": Dependency()})
db = svc("db", image=IMG2, healthcheck=HC)
job = svc("job", restart="no")
worker = svc("worker", restart="on-failure")
cache = svc("cache", restart="unless-stopped")
web2 = svc("web", depends_on={"db": Dependency()}, environment={"V": "2"})
later = {"web": NOW + timedelta(seconds=5), "job": NOW + timedelta(seconds=5)}
earlier = {"web": NOW - timedelta(seconds=1)}


front = svc("front", networks=["front", "back"])
back = svc("back", networks=["back"])
plain = svc("plain")
hostnet = svc("hostnet", network_mode="host")
NETS = {"front": NetworkSpec(), "back": NetworkSpec(internal=True)}
front_only = svc("front", networks=["front"])


def st_(name: str, cid: str | None = None, restart: str = "") -> StartStep:
    """Return a start step (``restart``: why the agent restarts it by itself)."""
    return StartStep(service=name, container_id=cid, restart=restart)  # type: ignore[arg-type]


CASES: list[tuple[str, Target | None, list[CurrentService], PlanContext, list[Step]]] = [
    ("no target leaves everything alone", None, [cur(web), cur("x", E)], ctx(), []),
    (
        "fresh device: pulls, network, create and start in dependency order",
        tgt(web, db),
        [],
        ctx(images_present=frozenset()),
        [
            PullStep(image=IMG, registry="127.0.0.1:5000", services=("web",)),
            PullStep(image=IMG2, registry="127.0.0.1:5000", services=("db",)),
            CreateNetworkStep(release="rel"),
            CreateStep(service=db),
            st_("db"),
            CreateStep(service=web),
            st_("web"),
        ],
    ),
    (
        "image present: no pull",
        tgt(web, db),
        [cur(db)],
        ctx(),
        [CreateNetworkStep(release="rel"), CreateStep(service=web), st_("web")],
    ),
    (
        "one pull per image, naming every service that needs it",
        tgt(svc("a"), svc("b")),
        [],
        ctx(images_present=frozenset()),
        [
            PullStep(image=IMG, registry="127.0.0.1:5000", services=("a", "b")),
            CreateNetworkStep(release="rel"),
            CreateStep(service=svc("a")),
            st_("a"),
            CreateStep(service=svc("b")),
            st_("b"),
        ],
    ),
    ("everything as wanted: nothing", tgt(web, db), [cur(web), cur(db)], ctx(), []),
    (
        "config changed: recreate only that service",
        tgt(web2, db),
        [cur(web), cur(db)],
        ctx(),
        [CreateNetworkStep(release="rel"), RecreateStep(service=web2, container_id="c-web")],
    ),
    (
        "recreate pulls the new image when missing; a running container needs none",
        tgt(svc("web", image="busybox:1.36"), db),
        [cur(web), cur(db)],
        ctx(images_present=frozenset()),
        [
            PullStep(image="busybox:1.36", registry="docker.io", services=("web",)),
            CreateNetworkStep(release="rel"),
            RecreateStep(service=svc("web", image="busybox:1.36"), container_id="c-web"),
        ],
    ),
    (
        "device override changes the config hash",
        tgt(web, db, overrides={"web": {"V": "2"}}),
        [cur(web), cur(db)],
        ctx(),
        [CreateNetworkStep(release="rel"), RecreateStep(service=web2, container_id="c-web")],
    ),
    (
        "new release: recreate on its network, then drop the old network",
        tgt(db, release="rel2"),
        [cur(db, release="rel")],
        ctx(),
        [
            CreateNetworkStep(release="rel2"),
            RecreateStep(service=db, container_id="c-db"),
            RemoveNetworkStep(release="rel"),
        ],
    ),
    (
        "exited, restart always: start",
        tgt(web, db),
        [cur(web, E, exit_code=0), cur(db)],
        ctx(),
        [st_("web", "c-web", "exited")],
    ),
    ("exited, restart no: stays exited", tgt(job), [cur(job, E, exit_code=1)], ctx(), []),
    ("on-failure, exit 0: stays", tgt(worker), [cur(worker, E, exit_code=0)], ctx(), []),
    (
        "on-failure, exit 2: start",
        tgt(worker),
        [cur(worker, E, exit_code=2)],
        ctx(),
        [st_("worker", "c-worker", "exited")],
    ),
    (
        "unless-stopped: start",
        tgt(cache),
        [cur(cache, E, exit_code=0)],
        ctx(),
        [st_("cache", "c-cache", "exited")],
    ),
    (
        "backoff not over: wait",
        tgt(web, db),
        [cur(web, E, exit_code=1), cur(db)],
        ctx(restart_not_before=later),
        [],
    ),
    (
        "backoff over: start",
        tgt(web, db),
        [cur(web, E, exit_code=1), cur(db)],
        ctx(restart_not_before=earlier),
        [st_("web", "c-web", "exited")],
    ),
    (
        "never started: start whatever the restart policy",
        tgt(job),
        [cur(job, C)],
        ctx(),
        [st_("job", "c-job")],
    ),
    ("created but backoff: wait", tgt(job), [cur(job, C)], ctx(restart_not_before=later), []),
    (
        "dead: replace",
        tgt(worker),
        [cur(worker, D, exit_code=137)],
        ctx(),
        [
            CreateNetworkStep(release="rel"),
            RemoveStep(service="worker", container_id="c-worker"),
            CreateStep(service=worker),
            st_("worker", restart="dead"),
        ],
    ),
    (
        "unhealthy, marked by supervisor: stop and start",
        tgt(db),
        [cur(db, health=Health.UNHEALTHY)],
        ctx(restart_unhealthy=frozenset({"db"})),
        [
            StopStep(service="db", container_id="c-db", timeout_s=10.0),
            st_("db", "c-db", "unhealthy"),
        ],
    ),
    (
        "unhealthy but backoff: wait",
        tgt(db),
        [cur(db, health=Health.UNHEALTHY)],
        ctx(restart_unhealthy=frozenset({"db"}), restart_not_before={"db": NOW + timedelta(1)}),
        [],
    ),
    (
        "unhealthy, restart no: left",
        tgt(job),
        [cur(job)],
        ctx(restart_unhealthy=frozenset({"job"})),
        [],
    ),
    ("unhealthy but not marked: left", tgt(db), [cur(db, health=Health.UNHEALTHY)], ctx(), []),
    (
        "service gone from target: stop and remove; exited: remove only",
        tgt(db),
        [cur(db), cur("old"), cur("older", E, exit_code=0), cur("going", ContainerStatus.REMOVING)],
        ctx(),
        [
            StopStep(service="old", container_id="c-old"),
            RemoveStep(service="old", container_id="c-old"),
            RemoveStep(service="older", container_id="c-older"),
        ],
    ),
    (
        "paused and restarting containers are left",
        tgt(web, db),
        [cur(web, P), cur(db, R)],
        ctx(),
        [],
    ),
    (
        "a removing container of the target waits",
        tgt(web, db),
        [cur("web", ContainerStatus.REMOVING), cur(db)],
        ctx(),
        [],
    ),
    (
        "known network of another release: removed",
        tgt(db),
        [cur(db)],
        ctx(networks_present=frozenset({"rel", "gone"})),
        [RemoveNetworkStep(release="gone")],
    ),
    (
        "two containers of one service: keep the matching one",
        tgt(db),
        [cur(db, cid="c-1", config_hash="stale", status=E, exit_code=0), cur(db, cid="c-2")],
        ctx(),
        [RemoveStep(service="db", container_id="c-1")],
    ),
    (
        "release networks: each one joined is created before the services, internal honoured",
        tgt(front, back, plain, networks=NETS),
        [],
        ctx(),
        [
            CreateNetworkStep(release="rel", network="back", internal=True),
            CreateNetworkStep(release="rel", network="default"),
            CreateNetworkStep(release="rel", network="front"),
            CreateStep(service=back),
            st_("back"),
            CreateStep(service=front),
            st_("front"),
            CreateStep(service=plain),
            st_("plain"),
        ],
    ),
    (
        "host network mode: no release network",
        tgt(hostnet),
        [],
        ctx(),
        [CreateStep(service=hostnet), st_("hostnet")],
    ),
    (
        "release networks present and wanted: nothing",
        tgt(front, back, networks=NETS),
        [cur(front), cur(back)],
        ctx(networks_present=frozenset({"rel", "rel/front", "rel/back"})),
        [],
    ),
    (
        "a network the release no longer uses goes after its services were recreated",
        tgt(front_only, networks={"front": NetworkSpec()}),
        [cur(front), cur(back)],
        ctx(networks_present=frozenset({"rel", "rel/front", "rel/back"})),
        [
            StopStep(service="back", container_id="c-back"),
            RemoveStep(service="back", container_id="c-back"),
            CreateNetworkStep(release="rel", network="front"),
            RecreateStep(service=front_only, container_id="c-front"),
            RemoveNetworkStep(release="rel", network="back"),
        ],
    ),
    (
        "every network of an old release goes; a removing container keeps its release's",
        tgt(db, release="rel2"),
        [cur(db, release="rel2"), cur("x", ContainerStatus.REMOVING, release="busy")],
        ctx(networks_present=frozenset({"old", "old/back", "busy", "busy/front", "rel2"})),
        [
            RemoveNetworkStep(release="old"),
            RemoveNetworkStep(release="old", network="back"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("target", "current", "context", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_plan_table(
    target: Target | None, current: list[CurrentService], context: PlanContext, expected: list
) -> None:
    steps = plan(target, current, context)
    assert steps == expected
    assert _container_ids(steps) <= {c.container_id for c in current}


def test_steps_round_trip_through_json() -> None:
    steps = plan(tgt(web2, db), [cur(web), cur("old")], ctx(images_present=frozenset()))
    assert STEPS.validate_json(STEPS.dump_json(steps)) == steps
    assert {s.action for s in steps} >= {"pull", "stop", "remove", "recreate", "create_network"}


def test_each_step_names_its_service() -> None:
    steps = plan(tgt(web, db), [cur("old")], ctx())
    named = [(s.action, s.service_name) for s in steps if s.service_name]
    assert named == [
        ("stop", "old"),
        ("remove", "old"),
        ("create", "db"),
        ("start", "db"),
        ("create", "web"),
        ("start", "web"),
    ]


def test_start_order_puts_dependencies_first_ties_by_name() -> None:
    a = svc("a", depends_on={"c": Dependency()})
    b = svc("b")
    c = svc("c", depends_on={"b": Dependency(condition="healthy")})
    assert start_order({s.name: s for s in (a, b, c)}) == ["b", "c", "a"]


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("busybox", "docker.io"),
        ("busybox:1.36", "docker.io"),
        ("library/busybox@sha256:" + "c" * 64, "docker.io"),
        ("127.0.0.1:5000/app:1", "127.0.0.1:5000"),
        ("localhost/app", "localhost"),
        ("ghcr.io/org/app:2", "ghcr.io"),
    ],
)
def test_registry_of(image: str, registry: str) -> None:
    assert registry_of(image) == registry


def test_auth_for_matches_host_and_docker_hub_aliases() -> None:
    local = RegistryAuth(server="127.0.0.1:5000", username="u", password="p")
    hub = RegistryAuth(server="index.docker.io", username="h", password="p")
    assert auth_for("127.0.0.1:5000", [hub, local]) is local
    assert auth_for("docker.io", [local, hub]) is hub
    assert auth_for("ghcr.io", [local, hub]) is None


def _container_ids(steps: list[Step]) -> set[str]:
    return {cid for s in steps if (cid := getattr(s, "container_id", None))}


# -- properties -------------------------------------------------------------------------

NAMES = ["api", "cache", "db", "web", "worker"]
IMAGES = ["busybox:1.36", IMG, IMG2]


NETWORK_CHOICES: list[dict[str, Any]] = [
    {},
    {"network_mode": "host"},
    {"networks": ["back"]},
    {"networks": ["default", "front"]},
]


@st.composite
def targets(draw: st.DrawFn) -> Target:
    """Draw a valid target: unique names, acyclic dependencies, optional overrides."""
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5, unique=True))
    services = []
    for i, name in enumerate(names):
        deps = draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else []
        conds = [draw(st.sampled_from(["started", "healthy"])) for _ in deps]
        services.append(
            Service(
                name=name,
                image=draw(st.sampled_from(IMAGES)),
                restart=draw(st.sampled_from(["always", "on-failure", "no", "unless-stopped"])),
                environment=draw(st.dictionaries(st.sampled_from("AB"), st.sampled_from("12"))),
                healthcheck=draw(st.none() | st.just(HC)),
                depends_on={d: Dependency(condition=c) for d, c in zip(deps, conds, strict=True)},
                **draw(st.sampled_from(NETWORK_CHOICES)),
            )
        )
    overrides = draw(st.dictionaries(st.sampled_from(names), st.just({"O": "1"}), max_size=2))
    release = Release(
        name=draw(st.sampled_from(["r1", "r2"])),
        version="1",
        services=services,
        networks=draw(st.sampled_from([NETS, {"front": NetworkSpec(), "back": NetworkSpec()}])),
    )
    return Target(device_id="dev", revision=1, release=release, overrides=overrides)


@st.composite
def matching(draw: st.DrawFn, target: Target) -> list[CurrentService]:
    """Draw a current state that is already what the target wants."""
    out = []
    for s in target.services():
        states = [(S, Health.NONE, None), (S, Health.HEALTHY, None), (S, Health.STARTING, None)]
        if s.restart == "no":
            states.append((E, Health.NONE, draw(st.integers(0, 255))))
        if s.restart in ("no", "on-failure"):
            states.append((E, Health.NONE, 0))
        status, health, code = draw(st.sampled_from(states))
        out.append(cur(s, status, release=target.release.name, health=health, exit_code=code))
    return out


@given(st.data())
def test_plan_of_what_is_wanted_is_empty(data: st.DataObject) -> None:
    target = data.draw(targets())
    current = data.draw(matching(target))
    assert plan(target, current, ctx(images_present=frozenset())) == []


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Target, list[CurrentService], PlanContext]:
    """Draw a target, an arbitrary current state and a context."""
    target = draw(targets())
    wanted = {s.name: s for s in target.services()}
    names = draw(st.lists(st.sampled_from([*NAMES, "old1", "old2"]), unique=True))
    current = []
    for i, name in enumerate(names):
        hashes = ["stale"] + ([wanted[name].config_hash()] if name in wanted else [])
        current.append(
            CurrentService(
                name=name,
                container_id=f"cid{i}",
                config_hash=draw(st.sampled_from(hashes)),
                release=draw(st.sampled_from([target.release.name, "r-old"])),
                status=draw(st.sampled_from(list(ContainerStatus))),
                health=draw(st.sampled_from(list(Health))),
                exit_code=draw(st.none() | st.integers(0, 255)),
            )
        )
    backoff = draw(st.dictionaries(st.sampled_from(NAMES), st.sampled_from([-5, 5])))
    context = PlanContext(
        now=NOW,
        images_present=frozenset(draw(st.lists(st.sampled_from(IMAGES)))),
        restart_not_before={n: NOW + timedelta(seconds=d) for n, d in backoff.items()},
        restart_unhealthy=frozenset(draw(st.lists(st.sampled_from(NAMES)))),
        networks_present=frozenset(draw(st.lists(st.sampled_from(NETWORK_KEYS)))),
    )
    return target, current, context


NETWORK_KEYS = ["r1", "r2", "r-old", "r1/back", "r2/front", "r-old/back"]


class SimEngine:
    """A simulated in-memory engine for the pure layer's convergence property (no Docker)."""

    def __init__(self, current: list[CurrentService], images: frozenset[str], nets: frozenset[str]):
        self.containers = {c.container_id: c for c in current}
        self.images = set(images)
        self.networks = set(nets)
        self._ids = itertools.count()
        self.attached: dict[str, set[str]] = {}  # networks of containers created here

    async def list_services(self) -> list[CurrentService]:
        return list(self.containers.values())

    async def has_image(self, ref: str) -> bool:
        return ref in self.images

    async def pull(self, ref: str, auth: RegistryAuth | None) -> str:
        self.images.add(ref)
        return "sha256:" + ref

    async def ensure_network(
        self, release_name: str, network: str = "default", *, internal: bool = False
    ) -> str:
        self.networks.add(network_key(release_name, network))
        return release_name

    async def list_networks(self) -> list[str]:
        return sorted(self.networks)

    async def remove_network(self, release_name: str, network: str = "default") -> None:
        key = network_key(release_name, network)
        assert not any(key in self.attached.get(c, ()) for c in self.containers), (
            "network removed while a container is attached"
        )
        self.networks.discard(key)

    async def create(self, service: Service, *, release: Release, revision: int) -> str:
        assert service.image in self.images, "created before its image was pulled"
        keys = {network_key(release.name, n) for n in joined_networks(service)}
        assert keys <= self.networks, "created before its networks"
        assert all(c.name != service.name for c in self.containers.values()), "name taken"
        cid = f"new{next(self._ids)}"
        self.attached[cid] = keys
        self.containers[cid] = CurrentService(
            name=service.name,
            container_id=cid,
            config_hash=service.config_hash(),
            release=release.name,
            revision=revision,
            status=C,
        )
        return cid

    def _set(self, cid: str, **update: Any) -> None:
        self.containers[cid] = self.containers[cid].model_copy(update=update)

    async def start(self, cid: str) -> None:
        self._set(cid, status=S, health=Health.NONE, exit_code=None, started_at=NOW)

    async def stop(self, cid: str, timeout_s: float) -> None:
        if self.containers[cid].status in (S, R, P):
            self._set(cid, status=E, exit_code=0, finished_at=NOW)

    async def remove(self, cid: str) -> None:
        del self.containers[cid]


async def _healthy(service: str) -> None:
    return None


@settings(max_examples=300, suppress_health_check=[HypothesisHealthCheck.too_slow])
@given(scenarios())
def test_executing_a_plan_converges(
    scenario: tuple[Target, list[CurrentService], PlanContext],
) -> None:
    target, current, context = scenario
    steps = plan(target, current, context)
    assert _container_ids(steps) <= {c.container_id for c in current}
    engine = SimEngine(current, context.images_present, context.networks_present)
    asyncio.run(execute(steps, engine, target, health_wait=_healthy))

    after = list(engine.containers.values())
    still_unhealthy = {c.name for c in after if c.status == S and c.health == Health.UNHEALTHY}
    again = PlanContext(
        now=NOW,
        images_present=frozenset(engine.images),
        restart_not_before=context.restart_not_before,
        restart_unhealthy=context.restart_unhealthy & still_unhealthy,
        networks_present=frozenset(engine.networks),
    )
    assert plan(target, after, again) == []
    wanted = {s.name for s in target.services()}
    assert {c.name for c in after if c.status != ContainerStatus.REMOVING} <= wanted
