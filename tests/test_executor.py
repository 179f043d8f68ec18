"""The executor and the converge loop, against an in-memory engine that records calls.

Real-Docker behaviour is covered by the agent's integration tests; here the fake lets a
test hold any call at a gate, fail it, and see the order in which calls began and ended.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from edge_agent.errors import AgentError, ApplyFailed, ImageNotFound, RuntimeAdapterError
from edge_agent.executor import Reconciler, ReconcileState, execute, poll_health
from edge_agent.models import (
    ContainerStatus,
    CurrentService,
    Dependency,
    Health,
    HealthCheck,
    RegistryAuth,
    Release,
    Service,
    Target,
)
from edge_agent.reconcile import CreateStep, PlanContext, Runtime, StartStep, Step, plan
from edge_agent.supervisor import BackoffPolicy, Supervisor

LOCAL = "127.0.0.1:5000/app:1"
HUB = "busybox:1.36"
AUTH = RegistryAuth(server="127.0.0.1:5000", username="u", password="p")
HC = HealthCheck(test=["CMD", "true"])


class FakeRuntime:
    """An in-memory engine recording "begin op key"/"end op key"; calls can be gated or fail."""

    def __init__(self) -> None:
        self.containers: dict[str, CurrentService] = {}
        self.specs: dict[str, Service] = {}
        self.images: set[str] = set()
        self.networks: set[str] = set()
        self.log: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.failures: dict[str, Exception] = {}
        self.cancelled: list[str] = []
        self.auths: dict[str, RegistryAuth | None] = {}
        self.exit_on_start: dict[str, int] = {}
        self._ids = itertools.count()

    def gate(self, call: str) -> asyncio.Event:
        """Hold ``call`` (e.g. "start db") until the returned event is set."""
        return self.gates.setdefault(call, asyncio.Event())

    async def _call(self, op: str, key: str) -> None:
        call = f"{op} {key}"
        self.log.append(f"begin {call}")
        try:
            gate = self.gates.get(call)
            await (gate.wait() if gate else asyncio.sleep(0))
        except asyncio.CancelledError:
            self.cancelled.append(call)
            raise
        if call in self.failures:
            raise self.failures[call]
        self.log.append(f"end {call}")

    def by_name(self, name: str) -> CurrentService:
        """Return the container of a service."""
        [found] = [c for c in self.containers.values() if c.name == name]
        return found

    def _set(self, cid: str, **update: Any) -> None:
        self.containers[cid] = self.containers[cid].model_copy(update=update)

    def crash(self, name: str, code: int) -> None:
        """Make a service's container exit now, as an engine event would report."""
        self._set(
            self.by_name(name).container_id,
            status=ContainerStatus.EXITED,
            exit_code=code,
            finished_at=datetime.now(UTC),
        )

    def set_health(self, name: str, health: Health) -> None:
        """Set a service's health as its healthcheck would."""
        self._set(self.by_name(name).container_id, health=health)

    async def list_services(self) -> list[CurrentService]:
        await self._call("list", "")
        return list(self.containers.values())

    async def has_image(self, ref: str) -> bool:
        return ref in self.images

    async def pull(self, ref: str, auth: RegistryAuth | None) -> str:
        self.auths[ref] = auth
        await self._call("pull", ref)
        self.images.add(ref)
        return "sha256:" + ref

    async def ensure_network(self, release_name: str) -> str:
        await self._call("ensure_network", release_name)
        self.networks.add(release_name)
        return release_name

    async def list_networks(self) -> list[str]:
        return sorted(self.networks)

    async def remove_network(self, release_name: str) -> None:
        await self._call("remove_network", release_name)
        self.networks.discard(release_name)

    async def create(self, service: Service, *, release: Release, revision: int) -> str:
        await self._call("create", service.name)
        assert all(c.name != service.name for c in self.containers.values()), "name taken"
        cid = f"cid{next(self._ids)}"
        self.specs[cid] = service
        self.containers[cid] = CurrentService(
            name=service.name,
            container_id=cid,
            config_hash=service.config_hash(),
            release=release.name,
            revision=revision,
            status=ContainerStatus.CREATED,
        )
        return cid

    async def start(self, cid: str) -> None:
        name = self.containers[cid].name
        await self._call("start", name)
        now = datetime.now(UTC)
        if name in self.exit_on_start:
            code = self.exit_on_start[name]
            self._set(
                cid, status=ContainerStatus.EXITED, exit_code=code, started_at=now, finished_at=now
            )
            return
        spec = self.specs.get(cid)
        health = Health.STARTING if spec and spec.healthcheck else Health.NONE
        self._set(
            cid, status=ContainerStatus.RUNNING, health=health, exit_code=None, started_at=now
        )

    async def stop(self, cid: str, timeout_s: float) -> None:
        await self._call("stop", self.containers[cid].name)
        if self.containers[cid].is_running:
            self._set(
                cid, status=ContainerStatus.EXITED, exit_code=143, finished_at=datetime.now(UTC)
            )

    async def remove(self, cid: str) -> None:
        await self._call("remove", self.containers[cid].name)
        del self.containers[cid]


def target(*services: Service, release: str = "rel", revision: int = 1) -> Target:
    """Return a target of the given services, with credentials for the local registry."""
    rel = Release(name=release, version="1", services=list(services), registry_auth=[AUTH])
    return Target(device_id="dev", revision=revision, release=rel)


def svc(name: str, image: str = LOCAL, **kw: Any) -> Service:
    """Return a service."""
    return Service(name=name, image=image, **kw)


async def until(predicate: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """Wait until ``predicate()`` holds."""
    async with asyncio.timeout(timeout_s):
        # Polls state the code under test changes; tests only, with a bound.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.001)


async def no_health_wait(service: str) -> None:
    """Pretend every dependency is healthy."""


def steps_for(t: Target, rt: FakeRuntime) -> list[Step]:
    """Return the plan for ``t`` against the fake's current state."""
    ctx = PlanContext(now=datetime.now(UTC), images_present=frozenset(rt.images))
    return plan(t, list(rt.containers.values()), ctx)


async def test_dependency_started_is_waited_for_independent_services_are_not() -> None:
    rt = FakeRuntime()
    t = target(svc("web", depends_on={"db": Dependency()}), svc("db"), svc("api"))
    db_start = rt.gate("start db")
    task = asyncio.create_task(execute(steps_for(t, rt), rt, t, health_wait=no_health_wait))
    await until(lambda: "begin start db" in rt.log and "end start api" in rt.log)
    assert "begin create web" not in rt.log
    db_start.set()
    await task
    assert rt.log.index("end start db") < rt.log.index("begin create web")
    assert {c.name for c in rt.containers.values() if c.is_running} == {"web", "db", "api"}


async def test_dependency_healthy_waits_for_health() -> None:
    rt = FakeRuntime()
    t = target(svc("web", depends_on={"db": Dependency(condition="healthy")}), svc("db"))
    healthy = asyncio.Event()
    asked: list[str] = []

    async def health_wait(service: str) -> None:
        asked.append(service)
        await healthy.wait()

    task = asyncio.create_task(execute(steps_for(t, rt), rt, t, health_wait=health_wait))
    await until(lambda: asked == ["db"])
    assert "end start db" in rt.log
    await asyncio.sleep(0.01)
    assert "begin create web" not in rt.log
    healthy.set()
    await task
    assert "end start web" in rt.log


async def test_independent_services_start_concurrently() -> None:
    rt = FakeRuntime()
    t = target(svc("a"), svc("b"), svc("c"))
    gates = [rt.gate(f"start {n}") for n in "abc"]
    task = asyncio.create_task(execute(steps_for(t, rt), rt, t, health_wait=no_health_wait))
    # All three are in flight at once; run one after another this would time out.
    await until(lambda: all(f"begin start {n}" in rt.log for n in "abc"))
    for g in gates:
        g.set()
    await task


async def test_pulls_come_first_concurrently_with_the_registry_credentials() -> None:
    rt = FakeRuntime()
    t = target(svc("a", image=LOCAL), svc("b", image=HUB), svc("c", image=LOCAL))
    gates = [rt.gate(f"pull {LOCAL}"), rt.gate(f"pull {HUB}")]
    task = asyncio.create_task(execute(steps_for(t, rt), rt, t, health_wait=no_health_wait))
    await until(lambda: f"begin pull {LOCAL}" in rt.log and f"begin pull {HUB}" in rt.log)
    assert not [e for e in rt.log if "create" in e or "network" in e]
    for g in gates:
        g.set()
    await task
    assert rt.auths == {LOCAL: AUTH, HUB: None}
    assert [e for e in rt.log if e.startswith("begin pull")] == [
        f"begin pull {LOCAL}",
        f"begin pull {HUB}",
    ]


async def test_removed_services_go_before_new_ones_come_and_recreate_is_ordered() -> None:
    rt = FakeRuntime()
    old = target(svc("old"), svc("web"))
    await execute(steps_for(old, rt), rt, old, health_wait=no_health_wait)
    new = target(svc("web", environment={"V": "2"}), svc("db"))
    rt.log.clear()
    await execute(steps_for(new, rt), rt, new, health_wait=no_health_wait)
    assert rt.log.index("end remove old") < rt.log.index("begin ensure_network rel")
    web = [e for e in rt.log if e.endswith(" web")]
    assert web == [
        f"{p} {op} web" for op in ("stop", "remove", "create", "start") for p in ("begin", "end")
    ]
    assert rt.by_name("web").config_hash == new.services()[0].config_hash()


async def test_failing_step_raises_apply_failed_and_cancels_the_rest() -> None:
    rt = FakeRuntime()
    t = target(svc("a"), svc("b"))
    release_a = rt.gate("create a")
    rt.gate("start b")  # never released
    boom = RuntimeAdapterError("engine said no", status=500)
    rt.failures["create a"] = boom
    task = asyncio.create_task(execute(steps_for(t, rt), rt, t, health_wait=no_health_wait))
    await until(lambda: "begin start b" in rt.log)
    release_a.set()
    with pytest.raises(ApplyFailed) as info:
        await task
    assert info.value.step == CreateStep(service=svc("a"))
    assert info.value.__cause__ is boom
    assert "create a failed: engine said no" in str(info.value)
    assert info.value.retryable is False
    assert rt.cancelled == ["start b"]


async def test_cancelling_an_apply_propagates_cancelled_error() -> None:
    rt = FakeRuntime()
    t = target(svc("a"))
    rt.gate(f"pull {LOCAL}")
    task = asyncio.create_task(execute(steps_for(t, rt), rt, t, health_wait=no_health_wait))
    await until(lambda: f"begin pull {LOCAL}" in rt.log)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rt.cancelled == [f"pull {LOCAL}"]


async def test_dependency_not_healthy_fails_the_waiting_step() -> None:
    rt = FakeRuntime()
    t = target(svc("web", depends_on={"db": Dependency(condition="healthy")}), svc("db"))

    async def never(service: str) -> None:
        raise ApplyFailed(f"{service} not healthy after 1s")

    with pytest.raises(ApplyFailed, match="create web: dependency db not healthy") as info:
        await execute(steps_for(t, rt), rt, t, health_wait=never)
    assert info.value.step == CreateStep(service=t.services()[0])


async def test_start_of_nothing_created_is_an_apply_failure() -> None:
    rt = FakeRuntime()
    with pytest.raises(ApplyFailed, match="no container of web"):
        await execute(
            [StartStep(service="web")], rt, target(svc("web")), health_wait=no_health_wait
        )


async def test_poll_health_waits_for_healthy_and_is_bounded() -> None:
    rt = FakeRuntime()
    t = target(svc("db", healthcheck=HC))
    await execute(steps_for(t, rt), rt, t, health_wait=no_health_wait)
    wait = poll_health(rt, timeout_s=0.05, interval_s=0.001)
    with pytest.raises(ApplyFailed, match=r"db not healthy after 0\.05s"):
        await wait("db")
    rt.set_health("db", Health.HEALTHY)
    await poll_health(rt, timeout_s=1, interval_s=0.001)("db")
    rt.crash("db", 3)
    with pytest.raises(ApplyFailed, match=r"db exited \(code 3\)"):
        await poll_health(rt, timeout_s=1, interval_s=0.001)("db")


# -- the converge loop ------------------------------------------------------------------


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Reconciler], Reconciler]]:
    """Run reconcilers' loops in the background; on teardown cancel them and check it."""
    tasks: list[asyncio.Task[None]] = []

    def start(rec: Reconciler) -> Reconciler:
        tasks.append(asyncio.create_task(rec.run()))
        return rec

    yield start
    for task in tasks:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_reconciler_converges_and_reports_each_step(running: Any) -> None:
    rt = FakeRuntime()
    done: list[Step] = []
    rec = running(Reconciler(rt, health_wait=no_health_wait, on_step_done=done.append))
    t = target(svc("web", depends_on={"db": Dependency()}), svc("db"))
    rec.request(t)
    async with asyncio.timeout(2):
        await rec.wait_converged()
    assert rec.state is ReconcileState.CONVERGED
    assert [s.action for s in done] == [
        "pull",
        "create_network",
        "create",
        "start",
        "create",
        "start",
    ]
    assert {c.name for c in rt.containers.values() if c.is_running} == {"web", "db"}


async def test_newer_target_cancels_the_apply_in_flight(running: Any) -> None:
    rt = FakeRuntime()
    rec = running(Reconciler(rt, health_wait=no_health_wait))
    rt.gate(f"pull {LOCAL}")
    rec.request(target(svc("web", image=LOCAL)))
    await until(lambda: f"begin pull {LOCAL}" in rt.log)
    newer = target(svc("web", image=HUB), revision=2)
    rec.request(newer)
    async with asyncio.timeout(2):
        await rec.wait_converged()
    assert rt.cancelled == [f"pull {LOCAL}"]
    assert rt.by_name("web").config_hash == newer.services()[0].config_hash()
    assert rt.images == {HUB}


async def test_requesting_the_same_target_does_not_cancel(running: Any) -> None:
    rt = FakeRuntime()
    rec = running(Reconciler(rt, health_wait=no_health_wait))
    gate = rt.gate(f"pull {LOCAL}")
    t = target(svc("web"))
    rec.request(t)
    await until(lambda: f"begin pull {LOCAL}" in rt.log)
    rec.request(t)
    gate.set()
    async with asyncio.timeout(2):
        await rec.wait_converged()
    assert rt.cancelled == []


async def test_crashed_container_is_restarted_after_backoff_without_polling(running: Any) -> None:
    rt = FakeRuntime()
    sup = Supervisor(BackoffPolicy(base_s=0.05, cap_s=1))
    rec = running(
        Reconciler(
            rt, advisor=sup, health_wait=no_health_wait, safety_interval_s=3600, debounce_s=0
        )
    )
    rec.request(target(svc("web")))
    async with asyncio.timeout(2):
        await rec.wait_converged()
    rt.crash("web", 1)
    rt.log.clear()
    rec.poke("die")
    async with asyncio.timeout(2):
        await rec.wait_converged()
    assert not rt.by_name("web").is_running  # backoff holds the restart
    assert sup.state("web").restarts == 1
    # Nobody pokes again: the reconciler wakes itself when the backoff expires.
    await until(lambda: rt.by_name("web").is_running)
    assert rt.log.count("begin list ") <= 4


async def test_unhealthy_container_is_restarted(running: Any) -> None:
    rt = FakeRuntime()
    sup = Supervisor(BackoffPolicy(base_s=0.01, cap_s=1))
    rec = running(Reconciler(rt, advisor=sup, health_wait=no_health_wait))
    rec.request(target(svc("db", healthcheck=HC)))
    async with asyncio.timeout(2):
        await rec.wait_converged()
    rt.set_health("db", Health.UNHEALTHY)
    rec.poke("health_status: unhealthy")
    await until(lambda: "end stop db" in rt.log and rt.by_name("db").is_running)
    assert rt.log.index("end stop db") < len(rt.log) - 1 - rt.log[::-1].index("end start db")
    assert rt.by_name("db").health == Health.STARTING


async def test_not_converged_after_bounded_iterations(running: Any) -> None:
    rt = FakeRuntime()
    rt.exit_on_start["web"] = 1
    errors: list[AgentError] = []
    rec = running(
        Reconciler(rt, health_wait=no_health_wait, max_iterations=3, on_error=errors.append)
    )
    rec.request(target(svc("web")))
    with pytest.raises(ApplyFailed, match="not converged after 3 applies"):
        async with asyncio.timeout(2):
            await rec.wait_converged()
    assert rec.state is ReconcileState.NOT_CONVERGED
    assert len(errors) == 1
    assert rt.log.count("end start web") == 3


async def test_failed_apply_is_reported_then_retried_on_poke(running: Any) -> None:
    rt = FakeRuntime()
    errors: list[AgentError] = []
    rec = running(Reconciler(rt, health_wait=no_health_wait, on_error=errors.append))
    missing = ImageNotFound(f"no such image {LOCAL}")
    rt.failures[f"pull {LOCAL}"] = missing
    rec.request(target(svc("web")))
    with pytest.raises(ApplyFailed) as info:
        async with asyncio.timeout(2):
            await rec.wait_converged()
    assert info.value.__cause__ is missing and not info.value.retryable
    assert rec.state is ReconcileState.FAILED and errors == [info.value]
    del rt.failures[f"pull {LOCAL}"]
    rec.poke("operator retry")
    async with asyncio.timeout(2):
        await rec.wait_converged()
    assert rec.failures == 0 and rec.last_error is None


async def test_no_target_leaves_containers_alone(running: Any) -> None:
    rt = FakeRuntime()
    t = target(svc("web"))
    await execute(steps_for(t, rt), rt, t, health_wait=no_health_wait)
    rt.log.clear()
    rec = running(Reconciler(rt, health_wait=no_health_wait))
    rec.request(None)
    async with asyncio.timeout(2):
        await rec.wait_converged()
    assert rt.log == ["begin list ", "end list "]


async def test_converge_can_be_called_directly() -> None:
    rt = FakeRuntime()
    observed: list[list[CurrentService]] = []
    rec = Reconciler(rt, health_wait=no_health_wait, on_observed=observed.append)
    rec.request(target(svc("web")))
    assert await rec.converge() is True
    assert [len(o) for o in observed] == [0, 1]


def test_docker_runtime_has_every_method_the_protocol_names() -> None:
    from edge_agent import runtime

    for name, method in vars(Runtime).items():
        if name.startswith("_") or not inspect.iscoroutinefunction(method):
            continue
        real = getattr(runtime.DockerRuntime, name)
        assert inspect.iscoroutinefunction(real), name
        wanted = list(inspect.signature(method).parameters.values())[1:]
        got = inspect.signature(real).parameters
        for p in wanted:
            assert p.kind == got[p.name].kind or p.kind == p.POSITIONAL_OR_KEYWORD, (name, p)
            assert p.annotation == got[p.name].annotation, (name, p.name)


async def test_a_burst_of_pokes_is_one_converge(running: Any) -> None:
    rt = FakeRuntime()
    rec = running(Reconciler(rt, health_wait=no_health_wait, safety_interval_s=3600))
    rec.request(target(svc("web")))
    async with asyncio.timeout(2):
        await rec.wait_converged()
    rt.log.clear()
    for _ in range(5):  # e.g. a flapping container's events, a few ms apart
        rec.poke("die")
        await asyncio.sleep(0.01)
    async with asyncio.timeout(2):
        await rec.wait_converged()
    assert rt.log.count("begin list ") == 1


async def test_a_leftover_network_of_an_old_release_is_removed(running: Any) -> None:
    rt = FakeRuntime()
    rt.networks.add("old-release")  # its containers are gone; the network was left behind
    rec = running(Reconciler(rt, health_wait=no_health_wait, safety_interval_s=3600))
    rec.request(target(svc("web")))
    async with asyncio.timeout(2):
        await rec.wait_converged()
    assert rt.networks == {target(svc("web")).release.name}


async def test_images_ready_is_signalled_after_the_pulls_before_any_container() -> None:
    """Item 6: the apply deadline can start when the images are present, not before."""
    rt = FakeRuntime()
    seen: list[list[str]] = []
    rec = Reconciler(
        rt,
        health_wait=no_health_wait,
        on_images_ready=lambda _t: seen.append(list(rt.log)),
    )
    pull = rt.gate(f"pull {LOCAL}")
    rec.request(target(svc("web")))
    apply = asyncio.create_task(rec.converge())
    await until(lambda: f"begin pull {LOCAL}" in rt.log)
    assert seen == [], "images reported ready while the pull is still running"
    pull.set()
    async with asyncio.timeout(2):
        assert await apply
    first = seen[0]
    assert f"end pull {LOCAL}" in first and not any("create" in e for e in first), first


async def test_new_target_is_applied_without_the_event_debounce(running: Any) -> None:
    """The debounce gathers bursts of engine events; a new target is applied at once."""
    rt = FakeRuntime()
    rec = running(Reconciler(rt, health_wait=no_health_wait, debounce_s=30))
    rec.request(target(svc("web")))
    async with asyncio.timeout(5):  # would wait out the 30 s debounce before the fix
        await rec.wait_converged()
    assert rt.by_name("web").is_running


async def test_engine_event_pokes_still_wait_for_the_debounce(running: Any) -> None:
    rt = FakeRuntime()
    rec = running(Reconciler(rt, health_wait=no_health_wait, debounce_s=30))
    rec.request(target(svc("web")))
    async with asyncio.timeout(5):
        await rec.wait_converged()
    rt.log.clear()
    rec.poke("die")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await rec.wait_converged()
    assert "begin list " not in rt.log  # still debouncing: the engine was not read


class _NetworkReadsLogged(FakeRuntime):
    async def list_networks(self) -> list[str]:
        self.log.append("list_networks")
        return await super().list_networks()


async def test_engine_reads_of_an_iteration_are_made_at_once(running: Any) -> None:
    """Containers, images and networks are read concurrently, not one after the other."""
    rt = _NetworkReadsLogged()
    gate = rt.gate("list ")
    rec = running(Reconciler(rt, health_wait=no_health_wait))
    rec.request(target(svc("web")))
    # While the container list is held, the network read has already been made.
    await until(lambda: "begin list " in rt.log and "list_networks" in rt.log)
    assert "end list " not in rt.log
    gate.set()
    async with asyncio.timeout(5):
        await rec.wait_converged()
    assert rt.by_name("web").is_running
