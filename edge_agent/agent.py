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
from edge_agent.api import Conflict, NotFound, start_api
from edge_agent.config import AgentConfig
from edge_agent.errors import AgentError, ConfigError, InvalidDocument, TargetRejected
from edge_agent.executor import Reconciler, poll_health
from edge_agent.models import CurrentService, Target, parse_document
from edge_agent.sdnotify import sd_notify
from edge_agent.store import AuditRow, Quota, Store, StoreLimits
from edge_agent.supervisor import BackoffPolicy, RolloutWatch, Supervisor
from edge_agent.tasks import cancel_and_wait

log = logging.getLogger("edge_agent")


def _limits(config: AgentConfig) -> StoreLimits:
    o = config.outbox
    return StoreLimits(
        quotas={
            "status": Quota(max_entries=o.status_max_entries),
            "event": Quota(max_entries=o.event_max_entries, max_bytes=o.event_max_bytes),
            "log": Quota(max_entries=o.log_max_entries, max_bytes=o.log_max_bytes),
        },
        log_disk_reserve_bytes=o.log_disk_reserve_mb * 2**20,
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
        self.watch: RolloutWatch | None = None
        self.desired: Target | None = None
        self.state = "starting"
        self.last_error: str | None = None
        self.started_at = now()
        self._tasks: list[asyncio.Task[Any]] = []
        self._runners: list[Any] = []
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._recheck: asyncio.TimerHandle | None = None
        self._verdict_lock = asyncio.Lock()
        self.hub_link: Any = None
        self._current: list[CurrentService] = []
        self._last_status = ""

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
            )
        sc = self.config.supervisor
        self.supervisor = Supervisor(
            BackoffPolicy(
                base_s=sc.backoff_base_s,
                cap_s=sc.backoff_cap_s,
                stable_after_s=sc.stable_after_s,
                crash_loop_exits=sc.crash_loop_exits,
                crash_loop_window_s=sc.crash_loop_window_s,
            ),
            on_crash_loop=self._on_crash_loop,
        )
        self.reconciler = Reconciler(
            self.runtime,
            advisor=self.supervisor if sc.restart_unhealthy else _NoUnhealthy(self.supervisor),
            health_wait=poll_health(self.runtime, timeout_s=self.config.supervisor.backoff_cap_s),
            safety_interval_s=sc.safety_interval_s,
            on_step_done=self._on_step_done,
            on_error=self._on_error,
            on_observed=self._on_observed,
            on_settled=self._on_settled,
        )
        await self._restore()
        self._spawn(self.reconciler.run(), "reconciler")
        self._spawn(self._watch_events(), "events")
        if self.config.logs.enabled:
            from edge_agent.logs import LogCollector

            collector = LogCollector(
                self.runtime,
                self.store,
                max_line_bytes=self.config.logs.max_line_bytes,
                max_lines_per_minute=self.config.logs.max_lines_per_minute,
                interval_s=self.config.logs.interval_s,
                services=lambda: self._current,
            )
            self._spawn(collector.run(), "logs")
        self._runners = await start_api(self, self.config.api)
        if identity is not None:
            from edge_agent.hub_link import HubLink

            self.hub_link = HubLink(self, identity)
            for coro, name in self.hub_link.tasks():
                self._spawn(coro, name)
        await self._event("agent", {"action": "started", "version": __version__})
        log.info("agent %s started as device %s", __version__, self.device_id)

    async def stop(self) -> None:
        """Stop every loop, close the API and the store; containers keep running."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        for task in reversed(self._tasks):
            await cancel_and_wait(task)
        self._tasks.clear()
        if self.hub_link is not None:
            await self.hub_link.close()
        for runner in self._runners:
            await runner.cleanup()
        if self.runtime is not None and hasattr(self.runtime, "close"):
            await self.runtime.close()
        await self.store.close()
        log.info("agent stopped")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s died: %r", task.get_name(), task.exception())

    async def _restore(self) -> None:
        """Re-apply the stored target after a restart (re-watching it if it was unproven)."""
        for stored in await self.store.target_history(limit=1000):
            if stored.state in ("pending", "applying", "good"):
                target = parse_document(Target, stored.document)
                if stored.state == "good":
                    self.desired = target
                    self.reconciler.request(target)  # type: ignore[union-attr]
                else:
                    await self._activate(target)
                log.info("restored target revision %d (%s)", target.revision, stored.state)
                return
        self.state = "idle"

    # ---- targets ---------------------------------------------------------------

    async def max_revision(self) -> int:
        """Return the highest revision ever stored (accepted or not)."""
        latest = await self.store.latest_target()
        return latest.revision if latest else 0

    async def accept_target(self, target: Target, *, source: str, actor: str) -> Target:
        """Store a validated target durably with its audit row, then apply it."""
        if target.device_id != self.device_id:
            raise TargetRejected(f"target is for {target.device_id!r}, this is {self.device_id!r}")
        if target.revision <= await self.max_revision():
            raise TargetRejected(
                f"revision {target.revision} is not newer than {await self.max_revision()}"
            )
        if target.is_expired(now()):
            raise TargetRejected(f"target revision {target.revision} has expired")
        audit = AuditRow(
            actor=actor,
            action="target.accept",
            object=f"target:{target.revision}",
            outcome="ok",
            detail={"release": target.release.ref, "source": source},
        )
        doc = target.model_dump_json()
        await self.store.save_target(target.revision, doc, source=source, audit=audit)
        await self._activate(target)
        return target

    async def reject_target(self, reason: str, *, actor: str, revision: int | None) -> None:
        """Record a refused target as an audit record."""
        await self.store.append_audit(
            AuditRow(
                actor=actor,
                action="target.reject",
                object=f"target:{revision if revision is not None else '?'}",
                outcome="refused",
                detail={"reason": reason},
            )
        )

    async def apply_local(self, body: Any, *, actor: str) -> Target:
        """Apply a technician's target or bare release; refused while a hub manages us."""
        if self.config.hub.url and not (isinstance(body, dict) and body.get("force")):
            raise Conflict(
                'this device is managed by a hub; local apply needs "force": true '
                "(the hub's next target replaces it)"
            )
        if not isinstance(body, dict):
            raise InvalidDocument("body must be a JSON object", [{"field": "(body)"}])
        body = {k: v for k, v in body.items() if k != "force"}
        if "release" not in body and "services" in body:
            body = {"release": body}
        body.setdefault("device_id", self.device_id)
        body.setdefault("revision", await self.max_revision() + 1)
        try:
            target = parse_document(Target, body)
        except InvalidDocument as exc:
            await self.reject_target(exc.message, actor=actor, revision=body.get("revision"))
            raise
        try:
            return await self.accept_target(target, source="local", actor=actor)
        except TargetRejected as exc:
            await self.reject_target(exc.message, actor=actor, revision=target.revision)
            raise

    async def _activate(self, target: Target) -> None:
        """Converge to a new target and watch it against its deadline."""
        await self.store.set_target_state(target.revision, "applying")
        self.desired = target
        self.state = "converging"
        self.watch = RolloutWatch(target, now())
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        loop = asyncio.get_running_loop()
        self._deadline_timer = loop.call_later(
            target.apply_deadline_s + 0.5,
            self.reconciler.poke,
            "apply deadline",  # type: ignore[union-attr]
        )
        self.reconciler.request(target)  # type: ignore[union-attr]

    # ---- reconciler observers ----------------------------------------------------

    def _on_observed(self, current: list[CurrentService]) -> None:
        self._current = current
        if self.watch is not None and not self.watch.verdict.is_final:
            asyncio.get_running_loop().create_task(self._judge(current))

    async def _judge(self, current: list[CurrentService]) -> None:
        """Mark the watched target good, or roll back to the last good one."""
        async with self._verdict_lock:
            watch = self.watch
            if watch is None or watch.verdict.is_final:
                return
            verdict = watch.evaluate(current, crash_looping=self.supervisor.crash_looping())  # type: ignore[union-attr]
            rev = watch.target.revision
            if verdict.status == "good":
                await self.store.set_target_state(rev, "good")
                self.state = "converged"
                await self._event("target", {"action": "good", "revision": rev})
            elif verdict.status == "failed":
                await self._roll_back(watch.target, verdict.reason or "failed")
            elif self._recheck is None or self._recheck.cancelled():
                # Pending: look again soon, so min_ready_s and the deadline are judged on time.
                self._recheck = asyncio.get_running_loop().call_later(1.0, self._poke_recheck)

    def _poke_recheck(self) -> None:
        self._recheck = None
        if self.watch is not None and not self.watch.verdict.is_final:
            self.reconciler.poke("rollout watch")  # type: ignore[union-attr]

    async def _roll_back(self, failed: Target, reason: str) -> None:
        good = await self.store.last_good_target(before=failed.revision)
        outcome = "rolled_back" if good else "failed"
        audit = AuditRow(
            actor="agent",
            action="target.rollback" if good else "target.fail",
            object=f"target:{failed.revision}",
            outcome=outcome,
            detail={"reason": reason, "to_revision": good.revision if good else None},
        )
        await self.store.set_target_state(failed.revision, outcome, reason, audit=audit)
        await self._event(
            "target",
            {
                "action": outcome,
                "revision": failed.revision,
                "to_revision": good.revision if good else None,
                "reason": reason,
            },
        )
        self.last_error = f"revision {failed.revision} {outcome}: {reason}"
        log.warning("revision %d %s: %s", failed.revision, outcome, reason)
        if good is None:
            self.state = "failed"
            return
        target = parse_document(Target, good.document)
        self.desired = target
        self.watch = None
        self.state = "rolled_back"
        self.reconciler.request(target)  # type: ignore[union-attr]

    def _on_step_done(self, step: Any) -> None:
        self._fire("event", {"type": "step", "action": step.action, "detail": step.describe()})

    def _on_error(self, exc: AgentError) -> None:
        self.last_error = exc.message
        self._fire("event", {"type": "error", "error": type(exc).__name__, "message": exc.message})

    def _on_settled(self, outcome: Any) -> None:
        # While a rollout is watched its verdict sets the state; otherwise convergence does.
        if self.watch is None and str(outcome) == "converged" and self.state == "starting":
            self.state = "converged"
        self._fire("status", None)

    def _on_crash_loop(self, service: str, *_: Any) -> None:
        self._fire("event", {"type": "container", "action": "crash_loop", "service": service})

    def _fire(self, kind: str, payload: dict[str, Any] | None) -> None:
        asyncio.get_running_loop().create_task(self._fire_async(kind, payload))

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
        latest = await self.store.latest_target()
        out: dict[str, Any] = {
            "device_id": self.device_id,
            "agent_version": __version__,
            "state": self.state,
            "target_revision": latest.revision if latest else None,
            "applied_revision": self.desired.revision if self.desired else None,
            "release": self.desired.release.ref if self.desired else None,
            "reconciler": str(self.reconciler.state) if self.reconciler else None,
            "services": services,
            "last_error": self.last_error,
        }
        if counters:
            out["counters"] = await self.store.counters()
            out["outbox"] = await self.store.outbox_stats()
            out["started_at"] = self.started_at.isoformat()
        return out

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


async def run_agent(config: AgentConfig) -> int:
    """Run the agent until SIGTERM or SIGINT; return the exit code."""
    agent = Agent(config)
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
    sd_notify("READY=1")
    await stop.wait()
    log.info("stopping on signal")
    sd_notify("STOPPING=1")
    await agent.stop()
    return 0
