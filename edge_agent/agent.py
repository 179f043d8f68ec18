"""The agent process: wires store, runtime, reconciler, supervisor, local API and sync.

Wiring and lifecycle only; decisions live in reconcile.py and supervisor.py, I/O in
runtime.py (Docker), store.py (SQLite) and sync.py (hub).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
from datetime import UTC, datetime
from typing import Any

from edge_agent import __version__
from edge_agent.anchor import RevisionAnchor
from edge_agent.api import start_api
from edge_agent.config import AgentConfig
from edge_agent.errors import (
    AgentError,
    ConfigError,
    Conflict,
    InvalidDocument,
    NotFound,
    TargetRejected,
)
from edge_agent.executor import Reconciler, poll_completion, poll_health
from edge_agent.heaptrim import TRIM_DELAY_S, HeapTrimmer, trim_heap
from edge_agent.host_report import HostReport
from edge_agent.lifecycle import Lifecycle, LifecyclePolicy, Ref, local_target
from edge_agent.models import CurrentService, Target
from edge_agent.release_pin import ReleasePin
from edge_agent.sdnotify import sd_notify, watchdog_interval_s
from edge_agent.store import AuditRow, LogLimits, Quota, Store, StoreLimits
from edge_agent.supervisor import BackoffPolicy, RolloutWatch, ServiceState, Supervisor
from edge_agent.tasks import (
    EXIT_TASK_FAILED,
    WATCHDOG_TASK,
    TaskPolicy,
    TaskSupervisor,
    feed_watchdog,
)

log = logging.getLogger("edge_agent")


def _limits(config: AgentConfig) -> StoreLimits:
    o = config.outbox
    return StoreLimits(
        quotas={
            "status": Quota(max_entries=o.status_max_entries),
            "event": Quota(max_entries=o.event_max_entries, max_bytes=o.event_max_bytes),
            "log": Quota(max_entries=o.log_max_entries, max_bytes=o.log_max_bytes),
            "metrics": Quota(max_entries=config.metrics.outbox_max_entries),
        },
        log_disk_reserve_bytes=o.log_disk_reserve_mb * 2**20,
        acked_keep_max_entries=o.acked_keep_max_entries,
        logs=LogLimits(
            max_bytes_per_container=config.logs.local_max_bytes_per_container,
            max_age_s=config.logs.local_max_age_s,
            drop_audit_interval_s=config.logs.drop_audit_interval_s,
        ),
    )


async def resolve_device_id(config: AgentConfig, store: Store) -> str:
    """Return the device id: configured, enrolled, or a stable local one made once."""
    stored = await store.get_meta("device_id")
    if config.device_id:
        if stored and stored != config.device_id:
            log.warning("configured device_id %s replaces stored %s", config.device_id, stored)
        if stored != config.device_id:
            await store.set_meta("device_id", config.device_id)
        return config.device_id
    if stored:
        return stored
    device_id = f"local-{socket.gethostname().lower()}"[:128]
    await store.set_meta("device_id", device_id)
    return device_id


def now() -> datetime:
    """Return the current UTC time."""
    return datetime.now(UTC)


class Agent:
    """One device's agent: keeps the containers at the stored target, with or without a hub."""

    def __init__(self, config: AgentConfig, *, runtime: Any = None) -> None:
        self.config = config
        self.store = Store(config.store_path, limits=_limits(config))
        self.runtime = runtime
        self.device_id = ""
        self.supervisor: Supervisor | None = None
        self.reconciler: Reconciler | None = None
        self.lifecycle: Lifecycle | None = None
        self.state = "starting"
        self.last_error: str | None = None
        self.started_at = now()
        tc = config.tasks
        self.tasks = TaskSupervisor(
            TaskPolicy(
                backoff_base_s=tc.backoff_base_s,
                backoff_cap_s=tc.backoff_cap_s,
                stable_after_s=tc.stable_after_s,
                max_failures=tc.max_failures,
            ),
            on_failure=self._on_task_failure,
        )
        # one-shot tasks (queued events, verdicts): referenced until done, drained at stop
        self._inflight: set[asyncio.Task[Any]] = set()
        self._runners: list[Any] = []
        self._deadline_timer: asyncio.TimerHandle | None = None
        self.hub_link: Any = None
        self.logs: Any = None  # the LogFollower, when logs are enabled
        self.metrics: Any = None  # the MetricsReporter, when metrics are enabled
        self.heap_trimmer: HeapTrimmer | None = None  # trims after busy spells
        self.holds: Any = None  # the technician's pause and pin (edge_agent.holds)
        self.read_audits: list[Any] = []  # the local APIs' technician read audits
        self._current: list[CurrentService] = []
        self._last_status = ""
        self._host_report: HostReport | None = None

    # ---- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, restore the stored target, and start every loop."""
        await self.store.open()
        identity = None
        if self.config.hub.url:
            from edge_agent.hub_link import ensure_identity

            identity = await ensure_identity(self.config)
            if await self.store.get_meta("device_id") != identity.device_id:
                await self.store.set_meta("device_id", identity.device_id)
            self.device_id = identity.device_id
        else:
            self.device_id = await resolve_device_id(self.config, self.store)
        if self.runtime is None:
            from edge_agent.runtime import DockerRuntime

            self.runtime = DockerRuntime(
                self.device_id,
                docker_url=self.config.docker.url,
                disk_reserve_bytes=self.config.docker.disk_reserve_mb * 2**20,
                docker_root=self.config.docker.root,
                data_dir=self.config.data_dir,
            )
        sc = self.config.supervisor
        self.supervisor = Supervisor(
            BackoffPolicy(
                base_s=sc.backoff_base_s,
                cap_s=sc.backoff_cap_s,
                stable_after_s=sc.stable_after_s,
                crash_loop_exits=sc.crash_loop_exits,
                crash_loop_window_s=sc.crash_loop_window_s,
                max_tracked=sc.max_tracked_services,
            ),
            on_crash_loop=self._on_crash_loop,
        )
        self.reconciler = Reconciler(
            self.runtime,
            advisor=self.supervisor if sc.restart_unhealthy else _NoUnhealthy(self.supervisor),
            health_wait=poll_health(self.runtime, timeout_s=self.config.supervisor.backoff_cap_s),
            completion_wait=poll_completion(self.runtime, timeout_s=sc.completed_wait_s),
            safety_interval_s=sc.safety_interval_s,
            on_step_done=self._on_step_done,
            on_error=self._on_error,
            on_observed=self._on_observed,
            on_settled=self._on_settled,
        )
        await self._start_holds()
        await self._restore()
        self._spawn("reconciler", self.reconciler.run)
        self._spawn("events", self._watch_events)
        if self.config.logs.enabled:
            self._spawn_logs()
        if self.config.image_gc.enabled:
            self._spawn_image_gc()
        if self.config.metrics.enabled:
            self._spawn_metrics(hub=identity is not None)
        if sc.heap_trim_interval_s > 0:
            self.heap_trimmer = HeapTrimmer(
                sc.heap_trim_interval_s,
                sc.heap_trim_busy_cpu_s,
                beat=lambda: self.tasks.beat("heap-trim"),
            )
            self._spawn("heap-trim", self.heap_trimmer.run, sc.heap_trim_interval_s)
        self._runners = await start_api(self, self.config.api)
        if identity is not None:
            from edge_agent.hub_link import HubLink

            self.hub_link = HubLink(self, identity, beat=self.tasks.beat)
            for name, factory, every_s in self.hub_link.tasks():
                self._spawn(name, factory, every_s)
        await self._event("agent", {"action": "started", "version": __version__})
        log.info("agent %s started as device %s", __version__, self.device_id)

    async def _start_holds(self) -> None:
        """Load the technician's holds; the reconciler and lifecycle obey them."""
        from edge_agent.holds import Holds

        self.holds = Holds(self.store, device_id=self.device_id, on_change=self._holds_changed)
        await self.holds.load()
        self.reconciler.held = self.holds.is_paused  # type: ignore[union-attr]
        self._spawn(
            "holds",
            lambda: self.holds.run(lambda: self.tasks.beat("holds"), self._sweep_reads),
            60.0,
        )

    async def _holds_changed(self) -> None:
        """Resume converging and activate a held target once the holds allow it."""
        if self.lifecycle is not None:
            await self.lifecycle.release_held()
        if self.reconciler is not None:
            self.reconciler.poke("technician hold changed")
        self._fire("status", None)

    async def _sweep_reads(self) -> None:
        for reads in self.read_audits:
            await reads.sweep()

    async def stop(self) -> None:
        """Stop every loop, close the API and the store; containers keep running."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        await self._drain()  # events in flight are written before the loops stop
        log.debug("stop: cancelling the background tasks")
        await self.tasks.stop()
        await self._drain()
        if self.lifecycle is not None:
            log.debug("stop: closing the target lifecycle")
            await self.lifecycle.close()
        if self.hub_link is not None:
            log.debug("stop: closing the hub link")
            await self.hub_link.close()
        for runner in self._runners:
            log.debug("stop: closing the local API")
            await runner.cleanup()
        for reads in self.read_audits:
            await reads.sweep(float("inf"))  # counted technician reads are never dropped
        if self.runtime is not None and hasattr(self.runtime, "close"):
            log.debug("stop: closing the engine client")
            await self.runtime.close()
        await self.store.close()
        log.info("agent stopped")

    def _spawn(self, name: str, factory: Any, every_s: float | None = None) -> None:
        """Run a loop under the task supervisor; ``every_s``: how often it beats, if it does."""
        stale_s = None if every_s is None else every_s + self.config.tasks.heartbeat_grace_s
        self.tasks.spawn(name, factory, stale_after_s=stale_s)

    def _track(self, coro: Any, name: str) -> None:
        """Run a one-shot coroutine, referenced until it ends."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._inflight.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed: %r", task.get_name(), task.exception())

    async def _drain(self) -> None:
        """Wait (bounded) for the one-shot tasks in flight, then cancel what is left."""
        if not self._inflight:
            return
        pending = set(self._inflight)
        _, late = await asyncio.wait(pending, timeout=self.config.tasks.drain_timeout_s)
        for task in late:
            log.warning("task %s still running at stop; cancelled", task.get_name())
            task.cancel()
        if late:
            await asyncio.wait(late)

    def _on_task_failure(self, name: str, exc: BaseException, streak: int) -> None:
        self._track(self.store.bump("task_failures"), "count task failure")
        if streak == 1:
            detail = {"action": "task_failed", "task": name, "error": repr(exc)[:500]}
            self._fire("event", {"type": "agent", **detail})

    def _spawn_image_gc(self) -> None:
        from edge_agent.image_gc import GcPolicy, ImageCollector

        g = self.config.image_gc
        gc = ImageCollector(
            self.runtime,
            self.store,
            GcPolicy(g.keep_good, g.min_unused_s, g.max_removals_per_run),
            interval_s=g.interval_s,
            check_interval_s=g.check_interval_s,
            beat=lambda: self.tasks.beat("image-gc"),
        )
        self._spawn("image-gc", lambda: gc.run(self._good_revision), g.check_interval_s)

    def _spawn_metrics(self, *, hub: bool) -> None:
        from edge_agent.metrics import (
            HUB_ENTRY_KINDS_META,
            MetricsReporter,
            MetricsSampler,
            accepts_metrics,
        )

        mc = self.config.metrics
        sampler = MetricsSampler(
            data_dir=self.config.data_dir,
            docker_root=self.config.docker.root,
            services=lambda: self._current,
            engine_stats=getattr(self.runtime, "container_usage", None),
            max_containers=mc.max_containers,
        )

        async def hub_accepts() -> bool:
            return accepts_metrics(await self.store.get_meta(HUB_ENTRY_KINDS_META))

        self.metrics = MetricsReporter(
            sampler,
            interval_s=mc.interval_s,
            append=(lambda sample: self.store.append("metrics", sample)) if hub else None,
            hub_accepts=hub_accepts,
            beat=lambda: self.tasks.beat("metrics"),
        )
        self._spawn("metrics", self.metrics.run, mc.interval_s)

    async def _good_revision(self) -> int | None:
        # The row id, not the revision: a local target turning good keeps the hub revision.
        good = await self.store.last_good_target()
        return good.id if good else None

    def _spawn_logs(self) -> None:
        from edge_agent.logfollow import LogFollower
        from edge_agent.logs import LogCollector

        lc = self.config.logs
        collector = LogCollector(
            self.runtime,
            self.store,
            max_line_bytes=lc.max_line_bytes,
            max_lines_per_minute=lc.max_lines_per_minute,
            max_lines_per_read=lc.max_lines_per_read,
            max_bytes_per_read=lc.max_bytes_per_read,
            services=lambda: self._current,
        )
        self.logs = LogFollower(
            collector,
            flush_interval_s=lc.flush_interval_s,
            rescan_s=lc.interval_s,
            retry_base_s=lc.stream_retry_base_s,
            retry_cap_s=lc.stream_retry_cap_s,
            beat=lambda: self.tasks.beat("logs"),
        )
        self.reconciler.before_remove = self.logs.drain  # type: ignore[union-attr]
        self._spawn("logs", self.logs.run, lc.interval_s)

    async def _restore(self) -> None:
        """Build the target lifecycle and re-apply the stored target after a restart."""
        self.lifecycle = self._make_lifecycle()
        self.reconciler.on_images_ready = self.lifecycle.images_ready  # type: ignore[union-attr]
        await self.lifecycle.restore()
        if self.lifecycle.state.watching is None:
            self.state = "idle"

    def _make_lifecycle(self) -> Lifecycle:
        key_id = ""
        if self.config.hub.url:
            from edge_agent.enroll import load_identity
            from edge_agent.signing import key_id as signing_key_id

            identity = load_identity(self.config.data_dir)
            key_id = signing_key_id(identity.signing_public_key()) if identity else ""
        anchor = RevisionAnchor(self.config.data_dir, self.device_id).load()
        anchor.check_key(key_id)
        sc = self.config.supervisor
        return Lifecycle(
            self.store,
            self.reconciler,  # type: ignore[arg-type]
            device_id=self.device_id,
            anchor=anchor,
            key_id=key_id,
            policy=LifecyclePolicy(
                pull_timeout_s=sc.pull_timeout_s,
                pull_retry_base_s=sc.pull_retry_base_s,
                pull_retry_cap_s=sc.pull_retry_cap_s,
            ),
            local_policy=self.config.policy,
            crash_looping=lambda: self.supervisor.crash_looping(),  # type: ignore[union-attr]
            on_state=self._set_state,
            on_error=self._set_error,
            release_pin=ReleasePin(anchor, self.config.trust.release_root).load(),
            holding=lambda: self.holds is not None and self.holds.holds_targets(),
        )

    def _set_state(self, state: str) -> None:
        self.state = state

    def _set_error(self, message: str) -> None:
        self.last_error = message

    @property
    def desired(self) -> Target | None:
        """Return the target being converged to."""
        return self.lifecycle.desired if self.lifecycle else None

    @property
    def watch(self) -> RolloutWatch | None:
        """Return the watch of the rollout in progress."""
        return self.lifecycle.watch if self.lifecycle else None

    # ---- targets ---------------------------------------------------------------

    async def max_revision(self) -> int:
        """Return the highest revision ever accepted from the hub (store or anchor)."""
        return await self.lifecycle.hub_floor()  # type: ignore[union-attr]

    async def accept_target(self, target: Target, *, source: str, actor: str) -> Ref:
        """Store a validated target durably with its audit row, then apply it (serialized)."""
        return await self.lifecycle.accept(target, source=source, actor=actor)  # type: ignore[union-attr]

    async def reject_target(self, reason: str, *, actor: str, revision: int | str | None) -> None:
        """Record a refused target as an audit record."""
        label = str(revision) if revision is not None else "?"
        await self.lifecycle.reject(reason, actor=actor, label=label)  # type: ignore[union-attr]

    async def apply_local(self, body: Any, *, actor: str) -> Ref:
        """Apply a technician's target or bare release; refused while a hub manages us."""
        revision = body.get("revision") if isinstance(body, dict) else None
        if self.config.hub.url and not (isinstance(body, dict) and body.get("force") is True):
            reason = (
                'this device is managed by a hub; local apply needs "force": true '
                "(the hub's next target replaces it)"
            )
            await self.reject_target(reason, actor=actor, revision=revision)
            raise Conflict(reason)
        try:
            target = local_target(body, self.device_id)
            return await self.accept_target(target, source="local", actor=actor)
        except (InvalidDocument, TargetRejected) as exc:
            await self.reject_target(exc.message, actor=actor, revision=revision)
            raise

    # ---- reconciler observers ----------------------------------------------------

    def _on_observed(self, current: list[CurrentService]) -> None:
        self._current = current
        if self.lifecycle is not None:
            self.lifecycle.observed(current)

    def _on_step_done(self, step: Any) -> None:
        self._fire("event", {"type": "step", "action": step.action, "detail": step.describe()})
        if getattr(step, "restart", ""):  # the agent's own decision: in the audit chain
            target = f"service:{step.service}"
            row = AuditRow("agent", "service.restart", target, "restarted", {"why": step.restart})
            self._track(self.store.append_audit(row), "audit restart")

    def _on_error(self, exc: AgentError) -> None:
        self.last_error = exc.message
        if self.lifecycle is not None:
            self.lifecycle.note_error(exc)
        self._fire("event", {"type": "error", "error": type(exc).__name__, "message": exc.message})

    def _on_settled(self, outcome: Any) -> None:
        # While a rollout is watched its verdict sets the state; otherwise convergence does.
        if self.watch is None and str(outcome) == "converged" and self.state == "starting":
            self.state = "converged"
        self._fire("status", None)

    def _on_crash_loop(self, state: ServiceState) -> None:
        self._fire("event", state.crash_loop_event())
        # The agent's own decision: restarts now wait the backoff cap, in the audit chain.
        sc = self.config.supervisor
        detail = {
            "restarts": state.restarts,
            "last_exit_code": state.last_exit_code,
            "exits": sc.crash_loop_exits,
            "window_s": sc.crash_loop_window_s,
            "backoff_s": sc.backoff_cap_s,
        }
        target = f"service:{state.service}"
        row = AuditRow("agent", "service.crash_loop", target, "backoff", detail)
        self._track(self.store.append_audit(row), "audit crash loop")

    def _fire(self, kind: str, payload: dict[str, Any] | None) -> None:
        self._track(self._fire_async(kind, payload), f"queue {kind}")

    async def _fire_async(self, kind: str, payload: dict[str, Any] | None) -> None:
        try:
            if kind == "status":
                await self._record_status()
            else:
                await self.store.append(kind, payload or {})  # type: ignore[arg-type]
        except AgentError as exc:
            log.warning("could not queue %s: %s", kind, exc.message)

    async def _event(self, type_: str, detail: dict[str, Any]) -> None:
        await self.store.append("event", {"type": type_, **detail})

    async def _record_status(self) -> None:
        """Queue a status snapshot when it differs from the last one queued."""
        snap = await self.status(counters=False)
        body = json.dumps(snap, sort_keys=True, default=str)
        if body != self._last_status:
            self._last_status = body
            await self.store.append("status", snap)

    # ---- technician actions and status --------------------------------------------

    async def restart_service(self, name: str, *, actor: str) -> None:
        """Restart one service's container, audited."""
        found = [c for c in await self.runtime.list_services() if c.name == name]
        if not found:
            await self.store.append_audit(
                AuditRow(actor, "service.restart", f"service:{name}", "not_found")
            )
            raise NotFound(f"no managed container for service {name!r}")
        outcome = "ok"
        try:
            for c in found:
                if c.is_running:
                    await self.runtime.stop(c.container_id, 10.0)
                await self.runtime.start(c.container_id)
        except AgentError as exc:
            outcome = f"error: {exc.message}"
            raise
        finally:
            await self.store.append_audit(
                AuditRow(actor, "service.restart", f"service:{name}", outcome)
            )

    def current_services(self) -> list[CurrentService]:
        """Return the managed containers as last observed (no engine call)."""
        return list(self._current)

    async def status(self, *, counters: bool = True) -> dict[str, Any]:
        """Return the agent's state, target revisions and every service."""
        current = {c.name: c for c in self._current}
        states = dict(self.supervisor.states()) if self.supervisor else {}
        names = [s.name for s in self.desired.services()] if self.desired else []
        names += [n for n in current if n not in names]
        services = []
        for n in names:
            c, s = current.get(n), states.get(n)
            services.append(
                {
                    "name": n,
                    "state": str(c.status) if c else "missing",
                    "health": str(c.health) if c else "none",
                    "image": c.image if c else "",
                    "image_id": c.image_id if c else "",
                    "restarts": s.restarts if s else 0,
                    "crash_loop": s.crash_loop if s else False,
                    "last_exit_code": s.last_exit_code if s else None,
                    "next_restart_at": s.next_restart_at.isoformat()
                    if s and s.next_restart_at
                    else None,
                }
            )
        out: dict[str, Any] = {
            "device_id": self.device_id,
            "agent_version": __version__,
            "state": self.state,
            **(await self.lifecycle.report() if self.lifecycle else {}),
            "reconciler": str(self.reconciler.state) if self.reconciler else None,
            "hold": self.holds.report() if self.holds else None,
            "services": services,
            "last_error": self.last_error,
        }
        out["host_containers"], out["host_containers_total"] = await self._host_containers()
        if counters:
            out["tasks"] = self.tasks.status()
            if self.logs is not None:
                out["logs"] = self.logs.status()
            if self.metrics is not None:
                out["metrics"] = self.metrics.status()
            if self.heap_trimmer is not None:
                out["heap_trim"] = self.heap_trimmer.status()
            out["event_loop"] = type(asyncio.get_running_loop()).__module__
            if self.supervisor is not None:
                out["supervisor_forgotten_over_bound"] = self.supervisor.forgotten_over_bound
            out["counters"] = await self.store.counters()
            out["outbox"] = await self.store.outbox_stats()
            out["started_at"] = self.started_at.isoformat()
        return out

    async def _host_containers(self) -> tuple[list[dict[str, Any]] | None, int | None]:
        """Return the host's containers (bounded) and their count; None if the engine is away."""
        if self._host_report is None:
            sc = self.config.supervisor
            self._host_report = HostReport(
                getattr(self.runtime, "host_containers", None),
                limit=sc.host_containers_max,
                timeout_s=sc.host_report_timeout_s,
                max_age_s=sc.host_report_max_age_s,
            )
        return await self._host_report.read()

    # ---- engine events -------------------------------------------------------------

    async def _watch_events(self) -> None:
        """Turn engine events into outbox events and reconciler pokes; reconnect on loss."""
        failures = 0
        while True:
            try:
                async for ev in self.runtime.events():
                    if failures:
                        log.info("engine event stream back after %d failures", failures)
                        failures = 0
                    if ev.action in ("die", "oom", "health_status", "destroy", "stop"):
                        self.reconciler.poke(ev.action)  # type: ignore[union-attr]
                    if self.logs is not None and ev.action in ("start", "restart", "destroy"):
                        self.logs.notice(ev.action, ev.container_id)
                    if ev.action in ("die", "oom", "health_status", "start"):
                        await self._event(
                            "container",
                            {
                                "action": ev.action,
                                "service": ev.service,
                                "exit_code": ev.exit_code,
                                "health": ev.health,
                            },
                        )
            except AgentError as exc:
                if not failures:
                    log.warning("engine event stream lost: %s", exc.message)
                failures += 1
            await asyncio.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)))


class _NoUnhealthy:
    """Advisor wrapper that ignores health (restart_unhealthy = false in the config)."""

    def __init__(self, inner: Supervisor) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def restart_unhealthy(self) -> frozenset[str]:
        return frozenset()


async def run_agent(config: AgentConfig, *, runtime: Any = None) -> int:
    """Run the agent until SIGTERM or SIGINT (0), or until a loop keeps failing (70)."""
    agent = Agent(config, runtime=runtime)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await agent.start()
    except AgentError as exc:
        log.error("agent could not start: %s", exc.message)
        await agent.stop()
        # A configuration error (a refused enrollment included) does not heal by itself:
        # 2 is the status the unit does not restart on (RestartPreventExitStatus=2).
        return 2 if isinstance(exc, ConfigError) else 1
    interval_s = watchdog_interval_s()
    if interval_s is not None:
        agent.tasks.spawn(WATCHDOG_TASK, lambda: feed_watchdog(agent.tasks, interval_s, sd_notify))
    sd_notify("READY=1")
    trim = loop.call_later(TRIM_DELAY_S, trim_heap)
    fatal = asyncio.create_task(agent.tasks.fatal.wait())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({fatal, stopping}, return_when=asyncio.FIRST_COMPLETED)
    fatal.cancel()
    stopping.cancel()
    trim.cancel()
    code = EXIT_TASK_FAILED if agent.tasks.fatal.is_set() else 0
    log.info("stopping: %s", "a background task keeps failing" if code else "signal")
    sd_notify("STOPPING=1")
    await agent.stop()
    return code
