"""Restart backoff, crash loops, health tracking, and the on-device rollback decision.

Pure decisions plus small in-memory state: no I/O, and time comes in as an argument (or
from an injected clock). Containers run with Docker's restart policy "no"; the reconciler
calls ``Supervisor.observe()`` with the current state on every pass and hands
``restart_not_before()`` and ``restart_unhealthy()`` to ``plan()``, which then restarts
exited and unhealthy containers no sooner than the backoff allows.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from edge_agent.errors import ConfigError
from edge_agent.models import ContainerStatus, CurrentService, Health, Service, Target

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    """Return the current time, timezone-aware."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class BackoffPolicy:
    """Bounds of the restart backoff and of crash-loop detection."""

    base_s: float = 1.0
    cap_s: float = 300.0
    factor: float = 2.0
    # a container that stayed up this long starts over at base_s
    stable_after_s: float = 60.0
    # this many exits (or unhealthy restarts) within the window is a crash loop
    crash_loop_exits: int = 5
    crash_loop_window_s: float = 300.0
    # services whose history is kept; beyond it, the longest-gone are forgotten first
    max_tracked: int = 1000

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise ConfigError("backoff: need 0 < base_s <= cap_s")
        if self.factor < 1 or self.stable_after_s <= 0 or self.crash_loop_window_s <= 0:
            raise ConfigError("backoff: need factor >= 1 and positive stable_after_s, window")
        if self.crash_loop_exits < 2:
            raise ConfigError("backoff: crash_loop_exits must be at least 2")
        if self.max_tracked < 1:
            raise ConfigError("backoff: max_tracked must be at least 1")

    def delay_s(self, attempt: int) -> float:
        """Return the wait before restart number ``attempt`` (1-based), capped."""
        exponent = min(max(attempt - 1, 0), 64)  # bounded so the power cannot overflow
        return min(self.cap_s, self.base_s * self.factor**exponent)


@dataclass(frozen=True)
class ServiceState:
    """What the supervisor knows about one service, for status reports."""

    service: str
    restarts: int = 0
    last_exit_code: int | None = None
    crash_loop: bool = False
    next_restart_at: datetime | None = None
    unhealthy: bool = False

    def crash_loop_event(self) -> dict[str, Any]:
        """Return the JSON-ready outbox event announcing this service's crash loop."""
        return {
            "type": "container",
            "action": "crash_loop",
            "service": self.service,
            "restarts": self.restarts,
            "last_exit_code": self.last_exit_code,
        }


# Called once when a service enters a crash loop, with its state at that moment.
CrashLoopCallback = Callable[[ServiceState], None]


@dataclass
class _Track:
    """Mutable history of one service definition, across the containers that run it."""

    container_id: str | None = None
    config_hash: str | None = None
    last_seen: datetime | None = None
    attempts: int = 0
    restarts_total: int = 0  # like attempts, never reset by stability (Prometheus counter)
    exits: deque[datetime] = field(default_factory=deque)
    last_exit_code: int | None = None
    crash_loop: bool = False
    next_restart_at: datetime | None = None
    started_at: datetime | None = None
    unhealthy: bool = False
    # keys of the exit / unhealthy spell already counted, so re-observing is idempotent
    exit_key: tuple[str, datetime | None] | None = None
    unhealthy_key: tuple[str, datetime | None] | None = None


class Supervisor:
    """Track exits and health per service and decide when each may be restarted."""

    def __init__(
        self,
        policy: BackoffPolicy | None = None,
        *,
        on_crash_loop: CrashLoopCallback | None = None,
    ) -> None:
        self.policy = policy or BackoffPolicy()
        self.on_crash_loop = on_crash_loop
        self._tracks: dict[str, _Track] = {}
        self.forgotten_over_bound = 0  # histories dropped because max_tracked was reached

    def record_start(self, service: str, at: datetime) -> None:
        """Note that the service's container started at ``at``."""
        self._track(service).started_at = at

    def record_exit(
        self,
        service: str,
        at: datetime,
        *,
        exit_code: int | None = None,
        started_at: datetime | None = None,
    ) -> datetime:
        """Count an exit and return the earliest time the service may be restarted."""
        t = self._track(service)
        started = started_at or t.started_at
        if started is not None and (at - started).total_seconds() >= self.policy.stable_after_s:
            self._reset(service, t)
        t.last_exit_code = exit_code
        t.unhealthy = False
        return self._bump(service, t, at)

    def mark_unhealthy(self, service: str, at: datetime) -> datetime:
        """Mark the service for restart because its healthcheck failed; return not-before."""
        t = self._track(service)
        t.unhealthy = True
        return self._bump(service, t, at)

    def observe(self, current: Sequence[CurrentService], now: datetime) -> None:
        """Update from the engine's current state; calling it again with the same is a no-op."""
        seen: set[str] = set()
        for c in current:
            seen.add(c.name)
            t = self._tracks.get(c.name)
            if t is None or t.config_hash not in (None, c.config_hash):
                # A new definition of the service gets a fresh history; a replaced container
                # of the same definition keeps it (or a loop that recreates goes unseen).
                t = self._tracks[c.name] = self._new_track()
            t.container_id, t.config_hash, t.last_seen = c.container_id, c.config_hash, now
            if c.started_at is not None:
                t.started_at = c.started_at
            if c.is_running:
                self._observe_running(c, t, now)
            elif c.status in (ContainerStatus.EXITED, ContainerStatus.DEAD):
                key = (c.container_id, c.finished_at)
                if t.exit_key != key:
                    t.exit_key = key
                    self.record_exit(
                        c.name, c.finished_at or now, exit_code=c.exit_code, started_at=c.started_at
                    )
        self._forget_gone(seen, now)

    def _forget_gone(self, seen: set[str], now: datetime) -> None:
        """Drop services unseen for a crash-loop window (kept that long across a recreate)."""
        horizon = now - timedelta(seconds=self.policy.crash_loop_window_s)
        for name in set(self._tracks) - seen:
            last = self._tracks[name].last_seen
            if last is None or last < horizon:
                del self._tracks[name]
        excess = len(self._tracks) - self.policy.max_tracked
        if excess > 0:
            gone = sorted((n for n in self._tracks if n not in seen), key=self._last_seen)
            for name in gone[:excess]:
                del self._tracks[name]
                self.forgotten_over_bound += 1

    def _last_seen(self, service: str) -> datetime:
        return self._tracks[service].last_seen or datetime.min.replace(tzinfo=UTC)

    def _observe_running(self, c: CurrentService, t: _Track, now: datetime) -> None:
        up_s = (now - c.started_at).total_seconds() if c.started_at else 0.0
        if up_s >= self.policy.stable_after_s and c.health != Health.UNHEALTHY:
            self._reset(c.name, t)
        if c.health == Health.UNHEALTHY:
            key = (c.container_id, c.started_at)
            if t.unhealthy_key != key:
                t.unhealthy_key = key
                self.mark_unhealthy(c.name, now)
        else:
            # Healthy again, or restarted (health "starting"): no restart wanted.
            t.unhealthy = False
            t.unhealthy_key = None

    def state(self, service: str) -> ServiceState:
        """Return the service's restart count, last exit, crash loop and next restart."""
        t = self._tracks.get(service)
        if t is None:
            return ServiceState(service=service)
        return ServiceState(
            service=service,
            restarts=t.attempts,
            last_exit_code=t.last_exit_code,
            crash_loop=t.crash_loop,
            next_restart_at=t.next_restart_at,
            unhealthy=t.unhealthy,
        )

    def states(self) -> dict[str, ServiceState]:
        """Return the state of every tracked service."""
        return {name: self.state(name) for name in sorted(self._tracks)}

    def restart_totals(self) -> dict[str, int]:
        """Return per tracked service its restart-worthy failures since the agent started."""
        return {name: self._tracks[name].restarts_total for name in sorted(self._tracks)}

    def restart_not_before(self) -> dict[str, datetime]:
        """Return per service the earliest allowed restart (for PlanContext)."""
        return {n: t.next_restart_at for n, t in self._tracks.items() if t.next_restart_at}

    def restart_unhealthy(self) -> frozenset[str]:
        """Return the services marked for restart because unhealthy (for PlanContext)."""
        return frozenset(n for n, t in self._tracks.items() if t.unhealthy)

    def crash_looping(self) -> frozenset[str]:
        """Return the services in crash loop."""
        return frozenset(n for n, t in self._tracks.items() if t.crash_loop)

    def forget(self, service: str) -> None:
        """Drop everything known about a service."""
        self._tracks.pop(service, None)

    def _track(self, service: str) -> _Track:
        t = self._tracks.get(service)
        if t is None:
            t = self._tracks[service] = self._new_track()
        return t

    def _new_track(self) -> _Track:
        # Only the last crash_loop_exits exits decide a crash loop: keep no more than that.
        return _Track(exits=deque(maxlen=self.policy.crash_loop_exits))

    def _bump(self, service: str, t: _Track, at: datetime) -> datetime:
        """Count one restart-worthy failure at ``at`` and schedule the restart."""
        p = self.policy
        t.attempts += 1
        t.restarts_total += 1
        t.exits.append(at)
        horizon = at - timedelta(seconds=p.crash_loop_window_s)
        while t.exits and t.exits[0] < horizon:
            t.exits.popleft()
        if len(t.exits) >= p.crash_loop_exits and not t.crash_loop:
            t.crash_loop = True
            n, window = len(t.exits), p.crash_loop_window_s
            log.warning("%s is in crash loop: %d exits within %gs", service, n, window)
            if self.on_crash_loop is not None:
                self.on_crash_loop(self.state(service))
        # Still restarted in a crash loop, but never faster than the cap.
        delay = p.cap_s if t.crash_loop else p.delay_s(t.attempts)
        t.next_restart_at = at + timedelta(seconds=delay)
        return t.next_restart_at

    def _reset(self, service: str, t: _Track) -> None:
        if t.crash_loop:
            log.info("%s recovered from crash loop after %d restarts", service, t.attempts)
        t.attempts = 0
        t.exits.clear()
        t.crash_loop = False
        t.next_restart_at = None


@dataclass(frozen=True)
class RolloutVerdict:
    """Whether a newly applied target is good, failed (with why), or still pending."""

    status: Literal["pending", "good", "failed"]
    reason: str = ""
    # "pull": the images never arrived within the pull bound (the release was not tried)
    kind: Literal["release", "pull"] = "release"

    @property
    def is_final(self) -> bool:
        """Return whether the decision is made (good or failed)."""
        return self.status != "pending"


class RolloutWatch:
    """Decide whether a target came up within its deadline, counted from its images' arrival.

    The apply deadline starts when every image of the target is present (``images_ready``);
    until then only the pull bound (``pull_timeout_s`` from ``started_at``) runs, and
    missing it fails the rollout as a pull failure, not as a failed release.
    """

    def __init__(
        self,
        target: Target,
        started_at: datetime,
        *,
        pull_timeout_s: float = 1800.0,
        images_ready_at: datetime | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.target = target
        self.started_at = started_at
        self.pull_timeout_s = pull_timeout_s
        self.images_ready_at = images_ready_at
        self.pull_error = ""
        self.clock = clock
        self.verdict = RolloutVerdict("pending")

    def images_ready(self, at: datetime) -> bool:
        """Start the apply deadline (once); return whether this call started it."""
        if self.images_ready_at is not None:
            return False
        self.images_ready_at = at
        return True

    @property
    def deadline(self) -> datetime:
        """Return when the target must be good by (the pull bound while images are missing)."""
        if self.images_ready_at is None:
            return self.started_at + timedelta(seconds=self.pull_timeout_s)
        return self.images_ready_at + timedelta(seconds=self.target.apply_deadline_s)

    def evaluate(
        self, current: Sequence[CurrentService], *, crash_looping: Collection[str] = ()
    ) -> RolloutVerdict:
        """Return the verdict for the current state; once good or failed, it stays."""
        if self.verdict.is_final:
            return self.verdict
        now = self.clock()
        if self.images_ready_at is None:
            if now < self.deadline:
                return RolloutVerdict("pending", "pulling images")
            why = f"pull failed: images not present within {self.pull_timeout_s:g}s"
            if self.pull_error:
                why += f" ({self.pull_error})"
            self.verdict = RolloutVerdict("failed", why, kind="pull")
            return self.verdict
        return self._evaluate_release(current, crash_looping, now)

    def _evaluate_release(
        self, current: Sequence[CurrentService], crash_looping: Collection[str], now: datetime
    ) -> RolloutVerdict:
        services = self.target.services()
        looping = sorted(s.name for s in services if s.name in crash_looping)
        by_name = {c.name: c for c in current}
        problems = [
            (s.name, p)
            for s in services
            if (p := _readiness(s, by_name.get(s.name), self.target, now))
        ]
        if looping:
            self.verdict = RolloutVerdict("failed", f"crash loop: {', '.join(looping)}")
        elif not problems:
            self.verdict = RolloutVerdict("good")
        elif fatal := [f"{n}: {p}" for n, p in problems if p.startswith(_FATAL)]:
            self.verdict = RolloutVerdict("failed", "; ".join(fatal))
        else:
            detail = "; ".join(f"{n}: {p}" for n, p in problems)
            if now >= self.deadline:
                why = f"not ready within {self.target.apply_deadline_s:g}s: {detail}"
                self.verdict = RolloutVerdict("failed", why)
            else:
                return RolloutVerdict("pending", detail)
        return self.verdict


_FATAL = "exited for good"


def _readiness(svc: Service, c: CurrentService | None, target: Target, now: datetime) -> str:
    """Return why the service is not yet up as the target wants, or "" when it is."""
    if c is None:
        return "no container"
    if c.config_hash != svc.config_hash() or c.release != target.release.name:
        return "old container"
    if c.is_running:
        checks = svc.healthcheck is not None and svc.healthcheck.test[0] != "NONE"
        # An image's own HEALTHCHECK counts too: Docker reports it even if the release has none.
        if (checks or c.health != Health.NONE) and c.health != Health.HEALTHY:
            return f"health {c.health}"
        up_s = (now - c.started_at).total_seconds() if c.started_at else 0.0
        if up_s < target.min_ready_s:
            # A container that crashes after a second must not pass for good.
            return f"up {up_s:.1f}s of the {target.min_ready_s:g}s it must stay up"
        return ""
    if c.status == ContainerStatus.EXITED and svc.restart in ("no", "on-failure"):
        if c.exit_code == 0:
            return ""  # a one-shot service that completed
        if svc.restart == "no":
            return f"{_FATAL} (code {c.exit_code}, restart policy no)"
    return f"{c.status}" + (f" (code {c.exit_code})" if c.exit_code is not None else "")
