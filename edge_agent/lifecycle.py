"""The target lifecycle: accept, activate, judge, roll back, retry, restore, local apply.

Every decision comes from ``rollout.decide()`` (pure) and is executed here under ONE lock,
so acceptance, judging and rollback never interleave: a target accepted while a rollback
writes to the store waits for it, then wins. Hub targets must be newer than the highest
hub revision ever accepted (kept in the store and in the anchor beside the identity);
local (technician) targets never consume the hub's revision space: they carry the hub
revision they are based on and a local sequence number of their own. A target with a
closed maintenance window is stored at once and waits (a timer, re-checked against the
wall clock at least every ``window_recheck_s``) until the window opens; a stored waiting
target re-arms the timer on restore. Rolling back never waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from edge_agent.anchor import RevisionAnchor
from edge_agent.device_policy import PERMISSIVE, DevicePolicy, describe, violations
from edge_agent.errors import AgentError, ApplyFailed, InvalidDocument, TargetRejected
from edge_agent.models import CurrentService, Target, parse_document
from edge_agent.reconcile import PullStep
from edge_agent.release_pin import ReleasePin
from edge_agent.release_trust import ReleaseTrust
from edge_agent.rollout import (
    Accepted,
    Action,
    Activate,
    AwaitWindow,
    Event,
    ImagesReady,
    Judged,
    LifeState,
    MarkGood,
    Phase,
    Recheck,
    RetryDue,
    RollBack,
    ScheduleRetry,
    StartDeadline,
    WindowOpened,
    decide,
    retry_delay_s,
)
from edge_agent.store import AuditRow, Store, StoredTarget
from edge_agent.supervisor import RolloutWatch
from edge_agent.window import next_opening

log = logging.getLogger(__name__)

MAX_REVISION = 2**63 - 1
MAX_VIOLATIONS = 20  # violations named in one policy_refused event (count says how many)
# Events that would activate a new target: a technician's pause or pin holds them.
HELD_EVENTS = (Accepted, RetryDue, WindowOpened)


def now() -> datetime:
    """Return the current UTC time."""
    return datetime.now(UTC)


class Converger(Protocol):
    """What the lifecycle needs of the reconciler."""

    def request(self, target: Target | None) -> None:
        """Converge to ``target``."""
        ...

    def poke(self, reason: str) -> None:
        """Converge again soon."""
        ...


@dataclass(frozen=True)
class LifecyclePolicy:
    """Bounds of the lifecycle: the pull bound and the retry backoff after a pull failure."""

    pull_timeout_s: float = 1800.0
    pull_retry_base_s: float = 60.0
    pull_retry_cap_s: float = 3600.0
    recheck_s: float = 1.0
    # A waiting target's timer wakes at least this often to re-read the wall clock, so a
    # clock stepped while waiting (NTP after a cold boot) moves the opening with it.
    window_recheck_s: float = 60.0


@dataclass(frozen=True)
class Ref:
    """A stored target and its parsed document."""

    stored: StoredTarget
    target: Target

    @property
    def id(self) -> int:
        """Return the store id."""
        return self.stored.id


class Lifecycle:
    """Executes the decisions of the pure core, one at a time."""

    def __init__(
        self,
        store: Store,
        converger: Converger,
        *,
        device_id: str,
        anchor: RevisionAnchor | None = None,
        key_id: str = "",
        policy: LifecyclePolicy | None = None,
        local_policy: DevicePolicy = PERMISSIVE,
        crash_looping: Callable[[], Collection[str]] = frozenset,
        on_state: Callable[[str], None] = lambda _s: None,
        on_error: Callable[[str], None] = lambda _m: None,
        release_pin: ReleasePin | None = None,
        holding: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.converger = converger
        self.device_id = device_id
        self.anchor = anchor
        self.key_id = key_id
        self.policy = policy or LifecyclePolicy()
        self.local_policy = local_policy  # for targets that carry no device policy
        self.crash_looping = crash_looping
        self.on_state = on_state
        self.on_error = on_error
        self.release_pin = release_pin  # operator signatures every hub target needs
        self.state = LifeState()
        self.watch: RolloutWatch | None = None
        self.desired: Target | None = None
        self.watched: Ref | None = None
        self.running: Ref | None = None
        self.retries: dict[int, int] = {}
        self.waiting: tuple[Ref, datetime] | None = None
        self.failed: Ref | None = None  # the target the last rollback or failure was about
        # A technician's pause or pin holds new targets: the newest waits here (stored).
        self.holding = holding
        self.held: Ref | None = None
        self._lock = asyncio.Lock()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._jobs: set[asyncio.Task[None]] = set()

    # ---- entry points (each serialized) ---------------------------------------------

    async def restore(self) -> None:
        """Resume the newest pending, applying or good target after a restart."""
        async with self._lock:
            if self.anchor is not None:
                await self.anchor.raise_to(await self.store.max_hub_revision(), self.key_id)
            for stored in await self.store.target_history(limit=1000):
                if stored.state not in ("pending", "applying", "good", "pull_failed"):
                    continue
                ref = Ref(stored, parse_document(Target, stored.document))
                if stored.state == "good":
                    self.running = self.watched = ref
                    self.desired = ref.target
                    self.state = LifeState(ref.id, Phase.GOOD)
                    self.converger.request(ref.target)
                else:
                    good = await self.store.last_good_target(before=stored.id)
                    if good is not None:
                        self.running = Ref(good, parse_document(Target, good.document))
                    # Applying had started inside the window: it goes on after a restart.
                    waits = stored.state in ("pending", "pull_failed")
                    opens = opens_at(ref.target) if waits else None
                    await self._handle(Accepted(ref.id, opens), ref)
                log.info("restored target %s (%s)", stored.label, stored.state)
                return

    async def hub_floor(self) -> int:
        """Return the highest hub revision ever accepted (store or anchor)."""
        floor = await self.store.max_hub_revision()
        return max(floor, self.anchor.revision if self.anchor else 0)

    async def accept(self, target: Target, *, source: str, actor: str) -> Ref:
        """Check, store durably with its audit row, raise the anchor, then activate."""
        async with self._lock:
            if target.device_id != self.device_id:
                raise TargetRejected(
                    f"target is for {target.device_id!r}, this is {self.device_id!r}"
                )
            missing = target.missing_secrets()
            if missing:  # a local apply of a release naming hub secrets: no values here
                raise TargetRejected(f"target carries no value for secret(s) {', '.join(missing)}")
            if source == "local":
                target = target.model_copy(update={"policy": await self._current_policy()})
            await self._check_policy(target, source)
            if source == "local":
                if self.release_pin is not None:  # held to the operators' manifest too
                    trust = await self._newest_trust()
                    self.release_pin.admit_local(target.release, trust, now())
                return await self._accept_local(target, actor)
            floor = await self.hub_floor()
            if target.revision <= floor:
                raise TargetRejected(f"revision {target.revision} is not newer than {floor}")
            if target.is_expired(now()):
                raise TargetRejected(f"target revision {target.revision} has expired")
            if self.release_pin is not None:
                await self.release_pin.admit(target, now())
            target_id = await self.store.save_target(
                target.revision,
                target.model_dump_json(),
                source=source,
                audit=_accept_audit(actor, str(target.revision), target, source),
            )
            if self.anchor is not None:
                await self.anchor.raise_to(target.revision, self.key_id)
            return await self._start(target_id, target)

    async def _current_policy(self) -> DevicePolicy:
        """Return the policy of the newest hub target, else the configured local one."""
        stored = await self.store.latest_hub_target()
        if stored is not None:
            policy = parse_document(Target, stored.document).policy
            if policy is not None:
                return policy
        return self.local_policy

    async def _newest_trust(self) -> ReleaseTrust | None:
        """Return the release signatures of the newest hub target (None: none stored)."""
        stored = await self.store.latest_hub_target()
        return None if stored is None else parse_document(Target, stored.document).release_trust

    async def _check_policy(self, target: Target, source: str) -> None:
        """Refuse a target whose release its device policy refuses, even if signed."""
        found = violations(target.policy or self.local_policy, target.release)
        if not found:
            return
        await self.store.bump("targets_policy_refused")
        await self.store.append(
            "event",
            {
                "type": "policy_refused",
                "revision": target.revision,
                "source": source,
                "release": target.release.ref,
                "violations": [v.model_dump() for v in found[:MAX_VIOLATIONS]],
                "count": len(found),
            },
        )
        message = "release refused by device policy: " + describe(found)
        if source != "local":  # in the status the hub shows (a technician gets the 409)
            self.on_error(f"revision {target.revision} {target.release.ref}: {message}")
        raise TargetRejected(message)

    async def _accept_local(self, target: Target, actor: str) -> Ref:
        base = await self.hub_floor()
        seq = await self.store.max_local_seq() + 1
        local = target.model_copy(update={"revision": base})
        label = f"{base}+local.{seq}"
        audit = _accept_audit(actor, label, target, "local")
        if target.revision not in (0, base):
            audit.detail["requested_revision"] = target.revision
        target_id = await self.store.save_target(
            base, local.model_dump_json(), source="local", local_seq=seq, audit=audit
        )
        return await self._start(target_id, local)

    async def _start(self, target_id: int, target: Target) -> Ref:
        stored = await self.store.get_target(target_id)
        assert stored is not None
        ref = Ref(stored, target)
        await self._handle(Accepted(target_id, opens_at(target)), ref)
        return ref

    async def reject(self, reason: str, *, actor: str, label: str) -> None:
        """Record a refused target as an audit record."""
        await self.store.append_audit(
            AuditRow(
                actor=actor,
                action="target.reject",
                object=f"target:{label}",
                outcome="refused",
                detail={"reason": reason},
            )
        )

    def observed(self, current: list[CurrentService]) -> None:
        """Judge the watched rollout against what the engine runs (from the reconciler)."""
        if self.watch is not None and not self.watch.verdict.is_final:
            self._job(self._judge(current))

    def images_ready(self, target: Target) -> None:
        """Start ``target``'s apply deadline if it is the one rolled out (from the reconciler)."""
        at = now()
        self._job(self._images_ready(target, at))

    def note_error(self, exc: AgentError) -> None:
        """Keep the last pull error of the watched rollout (reported if the pull bound passes)."""
        is_pull = isinstance(exc, ApplyFailed) and isinstance(exc.step, PullStep)
        if self.watch is not None and is_pull:
            self.watch.pull_error = exc.message

    async def close(self) -> None:
        """Cancel timers and wait for judgements in flight."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)

    # ---- serialized work ---------------------------------------------------------------

    async def _judge(self, current: list[CurrentService]) -> None:
        async with self._lock:
            watch, ref = self.watch, self.watched
            if watch is None or ref is None or watch.verdict.is_final:
                return
            verdict = watch.evaluate(current, crash_looping=self.crash_looping())
            await self._handle(Judged(ref.id, verdict))

    async def _images_ready(self, target: Target, at: datetime) -> None:
        async with self._lock:
            ref, watch = self.watched, self.watch
            if ref is None or watch is None or ref.target != target:
                return
            if watch.images_ready_at is None:
                await self._handle(ImagesReady(ref.id), at=at)

    async def _retry(self, target_id: int) -> None:
        async with self._lock:
            stored = await self.store.get_target(target_id)
            if stored is None:
                return
            ref = Ref(stored, parse_document(Target, stored.document))
            await self._handle(RetryDue(target_id, opens_at(ref.target)), ref)

    async def _window_due(self, target_id: int) -> None:
        async with self._lock:
            waiting = self.waiting
            if waiting is None or waiting[0].id != target_id:
                return
            ref = waiting[0]
            opens = opens_at(ref.target)
            if opens is not None:
                self._await_window(ref, opens)  # not yet by the wall clock: wait on
                return
            log.info("maintenance window of target %s opened", ref.stored.label)
            await self._handle(WindowOpened(target_id), ref)

    async def _handle(
        self, event: Event, ref: Ref | None = None, *, at: datetime | None = None
    ) -> None:
        """Decide (pure) and execute the actions; the caller holds the lock."""
        if ref is not None and isinstance(event, HELD_EVENTS) and self.holding():
            self._hold(ref)
            return
        self.state, actions = decide(self.state, event)
        for action in actions:
            await self._execute(action, ref, at)

    async def _execute(self, action: Action, ref: Ref | None, at: datetime | None) -> None:
        if isinstance(action, Activate):
            assert ref is not None
            await self._activate(ref)
        elif isinstance(action, AwaitWindow):
            assert ref is not None
            self._await_window(ref, action.opens_at)
        elif isinstance(action, StartDeadline):
            assert self.watch is not None
            self.watch.images_ready(at or now())
            self._later("deadline", self.watch.target.apply_deadline_s + 0.5, self._poke)
        elif isinstance(action, MarkGood):
            await self._mark_good()
        elif isinstance(action, RollBack):
            await self._roll_back(action)
        elif isinstance(action, ScheduleRetry):
            self._schedule_retry(action.target_id)
        elif isinstance(action, Recheck) and "recheck" not in self._timers:
            self._later("recheck", self.policy.recheck_s, self._poke)

    def _await_window(self, ref: Ref, opens: datetime) -> None:
        if self.waiting is None or self.waiting[0].id != ref.id:
            log.info(
                "target %s waits for its maintenance window (opens %s)",
                ref.stored.label,
                opens.isoformat(),
            )
        self.waiting = (ref, opens)
        delay = max(0.0, min((opens - now()).total_seconds(), self.policy.window_recheck_s))
        self._later("window", delay, lambda: self._job(self._window_due(ref.id)))

    async def _activate(self, ref: Ref) -> None:
        self.waiting = None
        self._cancel("window")
        # In memory before the first await: decide() has already made the phase APPLYING,
        # and a status read meanwhile must name this target, not the previous one.
        self.watched, self.desired = ref, ref.target
        self.watch = RolloutWatch(ref.target, now(), pull_timeout_s=self.policy.pull_timeout_s)
        self.on_state("converging")
        self._later("deadline", self.policy.pull_timeout_s + 0.5, self._poke)
        # The converge starts before the state write (an fsync), not after it: the target
        # is already stored, and a restart before the write re-activates it as pending.
        self.converger.request(ref.target)
        await self.store.set_target_state(ref.id, "applying")

    async def _mark_good(self) -> None:
        ref = self.watched
        assert ref is not None
        # Before the first await: decide() has already made the phase GOOD, and a status
        # read meanwhile must not report "good" with nothing running.
        self.running = ref
        self.retries.pop(ref.id, None)
        # Converged is what the engine runs now; the durable "good" (an fsync) follows and
        # does not hold the state back. A restart before it judges the target again.
        self.on_state("converged")
        await self.store.set_target_state(ref.id, "good")
        await self.store.append(
            "event",
            {
                "type": "target",
                "action": "good",
                "revision": ref.stored.revision,
                "local_seq": ref.stored.local_seq,
            },
        )

    async def _roll_back(self, action: RollBack) -> None:
        failed = self.watched
        assert failed is not None
        self.failed = failed
        good = await self.store.last_good_target(before=failed.id)
        await self._record_failure(failed, action, good)
        self._cancel("deadline")
        if good is None:
            self.state = LifeState(failed.id, Phase.FAILED, pull_failed=action.pull)
            self.running = None
            self.on_state("failed")
            return
        self.running = Ref(good, parse_document(Target, good.document))
        self.desired = self.running.target
        self.on_state("rolled_back")
        self.converger.request(self.running.target)

    async def _record_failure(
        self, failed: Ref, action: RollBack, good: StoredTarget | None
    ) -> None:
        """Write the failed target's state with its audit row, then the event; log once."""
        outcome = "rolled_back" if good else "failed"
        state = "pull_failed" if action.pull else outcome
        label = failed.stored.label
        detail = {
            "reason": action.reason,
            "cause": "pull" if action.pull else "release",
            "to_revision": good.label if good else None,
        }
        audit = AuditRow(
            actor="agent",
            action="target.rollback" if good else "target.fail",
            object=f"target:{label}",
            outcome=state,
            detail=detail,
        )
        await self.store.set_target_state(failed.id, state, action.reason, audit=audit)
        event = {"type": "target", "action": outcome, "revision": failed.stored.revision}
        await self.store.append("event", {**event, "local_seq": failed.stored.local_seq, **detail})
        self.on_error(f"revision {label} {state}: {action.reason}")
        log.warning("revision %s %s: %s", label, state, action.reason)

    # ---- technician holds ------------------------------------------------------------

    def _hold(self, ref: Ref) -> None:
        """Keep ``ref`` for when the hold ends; go on running what runs now."""
        if self.held is None or self.held.id <= ref.id:
            self.held = ref
        log.info("target %s held by a technician's pause or pin", ref.stored.label)
        if self.desired is None and self.running is not None:
            self.desired = self.running.target  # after a restart: keep what ran before
            self.converger.request(self.desired)

    async def release_held(self) -> None:
        """Activate the target held by a pause or pin, once no hold is left."""
        async with self._lock:
            ref = self.held
            if ref is None or self.holding():
                return
            self.held = None
            log.info("hold ended: activating target %s", ref.stored.label)
            await self._handle(Accepted(ref.id, opens_at(ref.target)), ref)

    # ---- timers and jobs ----------------------------------------------------------------

    def _schedule_retry(self, target_id: int) -> None:
        attempt = self.retries.get(target_id, 0) + 1
        self.retries[target_id] = attempt
        p = self.policy
        delay = retry_delay_s(attempt, p.pull_retry_base_s, p.pull_retry_cap_s)
        log.info("retrying target id %d after a pull failure in %gs", target_id, delay)
        self._later("retry", delay, lambda: self._job(self._retry(target_id)))

    def _poke(self) -> None:
        if self.watch is not None and not self.watch.verdict.is_final:
            self.converger.poke("rollout watch")

    def _later(self, name: str, delay_s: float, fn: Callable[[], Any]) -> None:
        self._cancel(name)

        def fire() -> None:
            self._timers.pop(name, None)
            fn()

        self._timers[name] = asyncio.get_running_loop().call_later(delay_s, fire)

    def _cancel(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _job(self, coro: Any) -> None:
        """Run a serialized job; keep a reference until done, log (once) if it fails."""
        task = asyncio.get_running_loop().create_task(coro)
        self._jobs.add(task)
        task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._jobs.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("target lifecycle job failed: %r", task.exception())

    # ---- reporting ----------------------------------------------------------------------

    async def report(self) -> dict[str, Any]:
        """Return the revision fields of the status: running and applying reported apart."""
        applying = self.watched if self.state.phase in (Phase.APPLYING, Phase.SETTLING) else None
        if self.state.phase is Phase.WAITING_WINDOW and self.waiting is not None:
            applying = self.waiting[0]
        if self.state.phase in (Phase.ROLLED_BACK, Phase.FAILED) and self.failed is not None:
            # The target that failed: so the hub knows which target rollout_state is about.
            applying = self.failed
        running = self.running
        out: dict[str, Any] = {
            "target_revision": await self.hub_floor(),
            "applied_revision": running.stored.revision if running else None,
            "running_revision": running.stored.revision if running else None,
            "running_local_seq": running.stored.local_seq if running else None,
            "applying_revision": applying.stored.revision if applying else None,
            "applying_local_seq": applying.stored.local_seq if applying else None,
            "rollout_state": str(self.state.phase),
            "release": self.desired.release.ref if self.desired else None,
        }
        if self.held is not None:
            # The hub's gate reads "held" about the held target: not failed, not applying.
            out["held_revision"] = self.held.stored.label
            out["applying_revision"] = self.held.stored.revision
            out["applying_local_seq"] = self.held.stored.local_seq
            out["rollout_state"] = "held"
        if self.desired is not None and self.desired.is_expired(now()):
            out["target_expired"] = True
        trust = self.release_pin.report(now()) if self.release_pin is not None else None
        if trust is not None:
            out["release_trust"] = trust  # local status only; ``stale``: a frozen manifest
        if self.state.phase is Phase.WAITING_WINDOW and self.waiting is not None:
            out["window_opens_at"] = self.waiting[1].isoformat()
        elif applying is not None and self.watch is not None:
            out["rollout_detail"] = {
                "images_ready": self.watch.images_ready_at is not None,
                "pull_error": self.watch.pull_error or None,
            }
        return out


def opens_at(target: Target) -> datetime | None:
    """Return when ``target``'s window next opens; None if open now, absent or immediate."""
    if target.window is None or target.immediate:
        return None
    return next_opening(target.window, now())


def _accept_audit(actor: str, label: str, target: Target, source: str) -> AuditRow:
    return AuditRow(
        actor=actor,
        action="target.accept",
        object=f"target:{label}",
        outcome="ok",
        detail={"release": target.release.ref, "source": source, **_window_detail(target)},
    )


def _window_detail(target: Target) -> dict[str, Any]:
    if target.immediate:
        return {"immediate": True}
    return {"window": target.window.model_dump()} if target.window else {}


def local_target(body: Any, device_id: str) -> Target:
    """Parse a technician's body (a target or a bare release) as a local target."""
    if not isinstance(body, dict):
        raise InvalidDocument("body must be a JSON object", [{"field": "(body)"}])
    body = {k: v for k, v in body.items() if k != "force"}
    if "release" not in body and "services" in body:
        body = {"release": body}
    body.setdefault("device_id", device_id)
    body.setdefault("revision", 0)
    return parse_document(Target, body)
