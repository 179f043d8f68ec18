"""Execute planned steps through the runtime, and run the converge loop around plan().

``execute()`` runs one plan: pulls first, then teardown of removed services, the release
network, every target service's steps (independent services concurrently, each waiting
for its ``depends_on``), and last the removal of unwanted networks. ``Reconciler`` runs
read-plan-execute until the plan is empty, one apply at a time; a newer target cancels the
apply in flight. It wakes on a new target, on ``poke()`` (runtime events), when a restart
backoff expires, and on a slow safety timer; it never polls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol, TypeVar

from edge_agent.errors import AgentError, ApplyFailed, RuntimeAdapterError
from edge_agent.models import ContainerStatus, CurrentService, Health, Target
from edge_agent.prom import Histogram
from edge_agent.reconcile import (
    DEFAULT_NETWORK,
    CreateNetworkStep,
    CreateStep,
    PlanContext,
    PullStep,
    RecreateStep,
    RemoveNetworkStep,
    RemoveStep,
    Runtime,
    StartStep,
    Step,
    StopStep,
    auth_for,
    network_steps,
    plan,
)

log = logging.getLogger(__name__)

HealthWait = Callable[[str], Awaitable[None]]
StepHook = Callable[[Step], None]
BeforeRemove = Callable[[str], Awaitable[None]]
_T = TypeVar("_T")


def utcnow() -> datetime:
    """Return the current time, timezone-aware."""
    return datetime.now(UTC)


def poll_health(
    runtime: Runtime, *, timeout_s: float = 120.0, interval_s: float = 1.0
) -> HealthWait:
    """Return a HealthWait that polls the runtime until the service is healthy, bounded."""

    async def wait(service: str) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    found = [c for c in await runtime.list_services() if c.name == service]
                    if any(is_healthy(c) for c in found):
                        return
                    dead = [c for c in found if c.status in _STOPPED]
                    if found and len(dead) == len(found):
                        code = dead[0].exit_code
                        raise ApplyFailed(f"{service} exited (code {code}) before healthy")
                    await asyncio.sleep(interval_s)
        except TimeoutError:
            raise ApplyFailed(f"{service} not healthy after {timeout_s:g}s") from None

    return wait


_STOPPED = frozenset({ContainerStatus.EXITED, ContainerStatus.DEAD, ContainerStatus.CREATED})
_FINISHED = frozenset({ContainerStatus.EXITED, ContainerStatus.DEAD})


def poll_completion(
    runtime: Runtime, *, timeout_s: float = 120.0, interval_s: float = 0.5
) -> HealthWait:
    """Return a wait that polls until the service's container exited 0, bounded.

    A non-zero exit raises ApplyFailed at once: the dependent is never started.
    """

    async def wait(service: str) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    found = [c for c in await runtime.list_services() if c.name == service]
                    finished = [c for c in found if c.status in _FINISHED]
                    if found and len(finished) == len(found):
                        codes = sorted({c.exit_code for c in finished}, key=str)
                        if codes == [0]:
                            return
                        raise ApplyFailed(f"{service} exited with code {codes[-1]}")
                    await asyncio.sleep(interval_s)
        except TimeoutError:
            raise ApplyFailed(f"{service} not completed after {timeout_s:g}s") from None

    return wait


def is_healthy(c: CurrentService) -> bool:
    """Return whether a container is running and healthy (or running without healthcheck)."""
    return c.is_running and c.health in (Health.HEALTHY, Health.NONE)


async def execute(
    steps: Sequence[Step],
    runtime: Runtime,
    target: Target,
    *,
    health_wait: HealthWait,
    on_step_done: StepHook | None = None,
    on_pulled: Callable[[Target], None] | None = None,
    before_remove: BeforeRemove | None = None,
    completion_wait: HealthWait | None = None,
) -> None:
    """Run a plan; raise ApplyFailed naming the first failing step, cancelling the rest.

    ``on_pulled`` is called once the pull phase is done (every image is then present);
    ``before_remove`` is awaited with a container's id after it stopped, before it is
    removed (the log collector reads its last lines there). A dependent waits for its
    ``healthy`` dependencies with ``health_wait`` and its ``completed`` ones with
    ``completion_wait`` (default: ``poll_completion``).
    """
    apply = _Apply(
        runtime, target, health_wait, on_step_done, on_pulled, before_remove, completion_wait
    )
    await apply.run(steps)


class _Apply:
    """One execution of one plan: the created containers and which services are done."""

    def __init__(
        self,
        runtime: Runtime,
        target: Target,
        health_wait: HealthWait,
        on_step_done: StepHook | None,
        on_pulled: Callable[[Target], None] | None = None,
        before_remove: BeforeRemove | None = None,
        completion_wait: HealthWait | None = None,
    ) -> None:
        self.runtime = runtime
        self.target = target
        self.before_remove = before_remove
        self.health_wait = health_wait
        self.waits = {
            "healthy": (health_wait, "not healthy"),
            "completed": (completion_wait or poll_completion(runtime), "did not complete"),
        }
        self.on_step_done = on_step_done
        self.on_pulled = on_pulled
        self.services = {s.name: s for s in target.services()}
        self.created: dict[str, str] = {}
        self.done: dict[str, asyncio.Event] = {}
        self.actions: dict[str, Callable[[Step], Awaitable[None]]] = {
            "pull": self._pull,
            "create_network": self._create_network,
            "create": self._create,
            "start": self._start,
            "stop": self._stop,
            "remove": self._remove,
            "recreate": self._recreate,
            "remove_network": self._remove_network,
        }

    async def run(self, steps: Sequence[Step]) -> None:
        """Run the plan's phases in order, each phase's independent parts concurrently."""
        chains: dict[str, list[Step]] = {}
        for step in steps:
            if step.service_name is not None and not isinstance(step, PullStep):
                chains.setdefault(step.service_name, []).append(step)
        owned = {n: c for n, c in chains.items() if n in self.services}
        gone = [c for n, c in chains.items() if n not in self.services]
        self.done = {n: asyncio.Event() for n in owned}
        await _together(self._run_step, [s for s in steps if isinstance(s, PullStep)])
        if self.on_pulled is not None:
            _call_hook(self.on_pulled, self.target)
        await _together(self._run_chain, gone)
        await _together(self._run_step, [s for s in steps if isinstance(s, CreateNetworkStep)])
        await _together(self._run_service, list(owned.items()))
        await _together(self._run_step, [s for s in steps if isinstance(s, RemoveNetworkStep)])

    async def _run_chain(self, chain: list[Step]) -> None:
        for step in chain:
            await self._run_step(step)

    async def _run_service(self, item: tuple[str, list[Step]]) -> None:
        name, chain = item
        waited = False
        for step in chain:
            # Tearing down an old container needs no dependency; anything that brings
            # the service up waits for its dependencies first.
            if not waited and not isinstance(step, StopStep | RemoveStep):
                await self._await_dependencies(name, step)
                waited = True
            await self._run_step(step)
        self.done[name].set()

    async def _await_dependencies(self, name: str, step: Step) -> None:
        for dep, cond in sorted(self.services[name].depends_on.items()):
            if dep in self.done:
                await self.done[dep].wait()
            if cond.condition == "started":
                continue
            wait, how = self.waits[cond.condition]
            try:
                await wait(dep)
            except Exception as exc:
                msg = f"{step.describe()}: dependency {dep} {how}: {exc}"
                raise ApplyFailed(msg, step=step) from exc

    async def _run_step(self, step: Step) -> None:
        try:
            await self.actions[step.action](step)
        except Exception as exc:  # CancelledError is not an Exception: it propagates
            retryable = exc.retryable if isinstance(exc, AgentError) else True
            msg = f"{step.describe()} failed: {exc}"
            raise ApplyFailed(msg, step=step, retryable=retryable) from exc
        if self.on_step_done is not None:
            _call_hook(self.on_step_done, step)

    async def _pull(self, step: Step) -> None:
        assert isinstance(step, PullStep)
        auth = auth_for(step.registry, self.target.registry_auths())
        await self.runtime.pull(step.image, auth)

    async def _create_network(self, step: Step) -> None:
        assert isinstance(step, CreateNetworkStep)
        if step.network == DEFAULT_NETWORK and not step.internal:
            await self.runtime.ensure_network(step.release)  # what every runtime offers
        else:
            await self.runtime.ensure_network(step.release, step.network, internal=step.internal)

    async def _create(self, step: Step) -> None:
        assert isinstance(step, CreateStep)
        await self._create_service(step.service.name, step)

    async def _create_service(self, name: str, step: CreateStep | RecreateStep) -> str:
        cid = await self.runtime.create(
            step.service, release=self.target.release, revision=self.target.revision
        )
        self.created[name] = cid
        return cid

    async def _start(self, step: Step) -> None:
        assert isinstance(step, StartStep)
        cid = step.container_id or self.created.get(step.service)
        if cid is None:
            raise ApplyFailed(f"no container of {step.service} to start", step=step)
        try:
            await self.runtime.start(cid)
        except RuntimeAdapterError as exc:
            if not _network_gone(exc) or step.container_id is None:
                raise
            await self._rebuild_without_network(step.service, cid)

    async def _rebuild_without_network(self, name: str, cid: str) -> None:
        """A network the container joined was removed behind the agent's back (``docker
        network prune``): the container can never start again. Create its networks again
        and replace the container (named volumes are kept)."""
        log.warning("a network of %s was removed outside the agent; recreating it", name)
        service = next(s for s in self.target.services() if s.name == name)
        for net in network_steps(self.target.release, [service]):
            await self._create_network(net)
        await self._removing(cid)
        await self.runtime.remove(cid)
        new = await self._create_service(name, CreateStep(service=service))
        await self.runtime.start(new)

    async def _stop(self, step: Step) -> None:
        assert isinstance(step, StopStep)
        await self.runtime.stop(step.container_id, step.timeout_s)

    async def _remove(self, step: Step) -> None:
        assert isinstance(step, RemoveStep)
        await self._removing(step.container_id)
        await self.runtime.remove(step.container_id)

    async def _recreate(self, step: Step) -> None:
        assert isinstance(step, RecreateStep)
        await self.runtime.stop(step.container_id, step.service.stop_timeout_s)
        await self._removing(step.container_id)
        await self.runtime.remove(step.container_id)
        cid = await self._create_service(step.service.name, step)
        await self.runtime.start(cid)

    async def _removing(self, container_id: str) -> None:
        if self.before_remove is not None:
            await self.before_remove(container_id)

    async def _remove_network(self, step: Step) -> None:
        assert isinstance(step, RemoveNetworkStep)
        if step.network == DEFAULT_NETWORK:
            await self.runtime.remove_network(step.release)
        else:
            await self.runtime.remove_network(step.release, step.network)


async def _together(fn: Callable[[_T], Awaitable[None]], items: Sequence[_T]) -> None:
    """Run ``fn`` over items concurrently; on failure raise the first ApplyFailed."""
    if not items:
        return
    try:
        async with asyncio.TaskGroup() as tg:
            for item in items:
                tg.create_task(fn(item))
    except BaseExceptionGroup as group:
        failed = group.subgroup(ApplyFailed)
        if failed is None:
            raise
        first = _first_leaf(failed)
        raise first from first.__cause__


def _first_leaf(group: BaseExceptionGroup[ApplyFailed]) -> ApplyFailed:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, ApplyFailed)
    return exc


def _call_hook(hook: Callable[[_T], object], arg: _T) -> None:
    """Call an observer; an observer's bug must not fail the apply."""
    try:
        hook(arg)
    except Exception:
        log.exception("observer %r failed", hook)


class RestartAdvisor(Protocol):
    """Restart backoff and health decisions (edge_agent.supervisor.Supervisor)."""

    def observe(self, current: Sequence[CurrentService], now: datetime) -> None:
        """Take note of exits, starts and health in the current state."""
        ...

    def restart_not_before(self) -> Mapping[str, datetime]:
        """Return per service the earliest time a restart is allowed."""
        ...

    def restart_unhealthy(self) -> frozenset[str]:
        """Return the services to restart because their healthcheck failed."""
        ...


CONVERGE_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class ReconcileState(StrEnum):
    """Where the reconciler is."""

    IDLE = "idle"
    APPLYING = "applying"
    CONVERGED = "converged"
    NOT_CONVERGED = "not_converged"
    FAILED = "failed"


class Reconciler:
    """Converge the runtime to the requested target; one apply at a time."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        advisor: RestartAdvisor | None = None,
        health_wait: HealthWait | None = None,
        completion_wait: HealthWait | None = None,
        clock: Callable[[], datetime] = utcnow,
        max_iterations: int = 5,
        safety_interval_s: float = 30.0,
        debounce_s: float = 0.1,
        on_step_done: StepHook | None = None,
        on_error: Callable[[AgentError], None] | None = None,
        on_observed: Callable[[list[CurrentService]], None] | None = None,
        on_settled: Callable[[ReconcileState], None] | None = None,
        on_images_ready: Callable[[Target], None] | None = None,
        before_remove: BeforeRemove | None = None,
    ) -> None:
        self.runtime = runtime
        self.before_remove = before_remove
        self.advisor = advisor
        self.health_wait = health_wait or poll_health(runtime)
        self.completion_wait = completion_wait or poll_completion(runtime)
        self.clock = clock
        self.max_iterations = max_iterations
        self.safety_interval_s = safety_interval_s
        self.debounce_s = debounce_s
        self.on_step_done = on_step_done
        self.on_error = on_error
        self.on_observed = on_observed
        self.on_settled = on_settled
        # Called when every image of the target is present (its apply deadline starts).
        self.on_images_ready = on_images_ready
        self.held: Callable[[], bool] | None = None  # a technician's pause: do nothing
        self.target: Target | None = None
        self.state = ReconcileState.IDLE
        self.last_error: AgentError | None = None
        self.failures = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._settled = asyncio.Condition()
        self._wanted = 0  # bumped by request()/poke(); an apply serves every ticket <= it
        self._urgent = False  # a new target: converge without the event debounce
        self._served = -1
        # outcome and error of the last settled apply, read by wait_converged()
        self._outcome = ReconcileState.IDLE
        self._outcome_error: AgentError | None = None
        self._apply: asyncio.Task[bool] | None = None
        # What GET /v1/prometheus shows: every finished converge's duration and outcome.
        self.durations = Histogram(CONVERGE_BUCKETS_S)
        self.outcomes: dict[ReconcileState, int] = {}

    def request(self, target: Target | None) -> None:
        """Make ``target`` the one to converge to; a different one cancels the apply."""
        changed = target != self.target
        self.target = target
        if changed and self._apply is not None and not self._apply.done():
            self._apply.cancel()
        # A new target is one decision, not a burst of engine events: no debounce.
        self._urgent = self._urgent or changed
        self.poke("new target" if changed else "same target")

    def poke(self, reason: str) -> None:
        """Ask for a converge soon (a runtime event, an operator action)."""
        log.debug("reconcile poked: %s", reason)
        self._wanted += 1
        self._wake.set()

    async def wait_converged(self) -> None:
        """Wait for an apply that covers every request so far; raise if it did not converge."""
        wanted = self._wanted
        async with self._settled:
            await self._settled.wait_for(lambda: self._served >= wanted)
        if self._outcome is not ReconcileState.CONVERGED:
            raise self._outcome_error or ApplyFailed(f"reconcile ended {self._outcome}")

    async def run(self) -> None:
        """Converge whenever woken, until cancelled."""
        while True:
            try:
                async with asyncio.timeout(self._next_wake_s()):
                    await self._wake.wait()
                # A burst of engine events (or a flapping service) becomes one converge.
                if not self._urgent:
                    await asyncio.sleep(self.debounce_s)
            except TimeoutError:
                pass
            self._wake.clear()
            self._urgent = False
            if self.held is not None and self.held():
                continue  # paused: woken again (poke) when the pause ends
            self._apply = asyncio.create_task(self.converge())
            try:
                # wait() does not raise when the apply is cancelled by request();
                # cancelling run() itself raises here and cancels the apply below.
                await asyncio.wait({self._apply})
            finally:
                if not self._apply.done():
                    self._apply.cancel()
                    await asyncio.wait({self._apply})
                self._apply = None

    async def converge(self) -> bool:
        """Read, plan and execute until the plan is empty; return whether it converged."""
        async with self._lock:
            ticket, target = self._wanted, self.target
            self.state = ReconcileState.APPLYING
            started = time.perf_counter()
            try:
                outcome = await self._iterate(target)
            except AgentError as exc:
                outcome = self._failed(exc, ReconcileState.FAILED)
            except Exception as exc:
                log.exception("reconcile crashed")
                err = ApplyFailed(f"reconcile crashed: {exc!r}")
                outcome = self._failed(err, ReconcileState.FAILED)
            except asyncio.CancelledError:
                self.state = ReconcileState.IDLE
                raise
            self.durations.observe(time.perf_counter() - started)
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            await self._settle(ticket, outcome)
            return outcome is ReconcileState.CONVERGED

    async def _iterate(self, target: Target | None) -> ReconcileState:
        for _ in range(self.max_iterations):
            # The engine reads of one iteration are independent: made at once, not in turn.
            current, (images, networks) = await asyncio.gather(
                self.runtime.list_services(), self._engine_facts(target)
            )
            if self.on_observed is not None:
                _call_hook(self.on_observed, current)
            context = self._context(target, current, images, networks)
            if target is not None and _images_of(target) <= context.images_present:
                self._images_ready(target)
            steps = plan(target, current, context)
            if not steps:
                if self.failures:
                    log.info("reconcile recovered after %d failed applies", self.failures)
                self.failures, self.last_error = 0, None
                return ReconcileState.CONVERGED
            assert target is not None  # plan(None, ...) is always empty
            await execute(
                steps,
                self.runtime,
                target,
                health_wait=self.health_wait,
                on_step_done=self.on_step_done,
                on_pulled=self._images_ready,
                before_remove=self.before_remove,
                completion_wait=self.completion_wait,
            )
        stuck = ApplyFailed(f"not converged after {self.max_iterations} applies")
        return self._failed(stuck, ReconcileState.NOT_CONVERGED)

    def _images_ready(self, target: Target) -> None:
        if self.on_images_ready is not None:
            _call_hook(self.on_images_ready, target)

    def _failed(self, exc: AgentError, outcome: ReconcileState) -> ReconcileState:
        self.failures += 1
        self.last_error = exc
        if self.failures == 1:
            log.warning("reconcile failed: %s", exc)
        if self.on_error is not None:
            _call_hook(self.on_error, exc)
        return outcome

    async def _settle(self, ticket: int, outcome: ReconcileState) -> None:
        self.state = self._outcome = outcome
        self._outcome_error = self.last_error
        async with self._settled:
            self._served = max(self._served, ticket)
            self._settled.notify_all()
        if self.on_settled is not None:
            _call_hook(self.on_settled, outcome)

    async def _engine_facts(self, target: Target | None) -> tuple[frozenset[str], list[str]]:
        """Return the target's images the engine has, and the device's networks."""
        if target is None:
            return frozenset(), []
        images = sorted(_images_of(target))
        # Networks left by an apply cancelled after its last container went are removed too.
        *flags, networks = await asyncio.gather(
            *(self.runtime.has_image(ref) for ref in images), self.runtime.list_networks()
        )
        return frozenset(ref for ref, ok in zip(images, flags, strict=True) if ok), networks

    def _context(
        self,
        target: Target | None,
        current: list[CurrentService],
        images_present: frozenset[str],
        networks: list[str],
    ) -> PlanContext:
        now = self.clock()
        if self.advisor is not None:
            self.advisor.observe(current, now)
        return PlanContext(
            networks_present=frozenset(networks),
            now=now,
            images_present=images_present,
            restart_not_before=dict(self.advisor.restart_not_before()) if self.advisor else {},
            restart_unhealthy=self.advisor.restart_unhealthy() if self.advisor else frozenset(),
        )

    def _next_wake_s(self) -> float:
        """Return seconds until the safety timer or the earliest backoff expiry."""
        delay = self.safety_interval_s
        if self.advisor is not None:
            now = self.clock()
            for at in _future(self.advisor.restart_not_before().values(), now):
                delay = min(delay, (at - now).total_seconds())
        return max(delay, 0.0)


def _images_of(target: Target) -> set[str]:
    return {s.image for s in target.services()}


def _future(times: Iterable[datetime], now: datetime) -> list[datetime]:
    return [t for t in times if t > now]


def _network_gone(exc: RuntimeAdapterError) -> bool:
    """Return whether the engine refused a start because a joined network is gone."""
    return exc.status == 404 and "network" in exc.message and "not found" in exc.message
