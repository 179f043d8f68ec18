"""The target lifecycle's pure decision core: (state, event) -> (state, actions). No I/O.

A target is identified by its store id (arrival order). The rollout of one target moves
through phases::

    accepted -> [waiting_window ->] applying (images being pulled) -> settling (images
    present, apply deadline running) -> good | rolled_back | failed

A verdict or an images-ready signal about a target that is no longer the one rolled out
is stale and ignored: acceptance and rollback are decided one event at a time, so a
rollback that finishes after a newer target was accepted can never override it. A
rollout that failed because its images never arrived is retried later (with backoff)
unless a newer target has been accepted meanwhile. A target with a maintenance window
that is closed waits (``waiting_window``) until it opens; so does its retry. Rolling back
never waits: the last good target is converged to at once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from edge_agent.supervisor import RolloutVerdict


class Phase(StrEnum):
    """Where the rollout of the newest target is (reported as ``rollout_state``)."""

    IDLE = "idle"  # no target yet
    WAITING_WINDOW = "waiting_window"  # accepted; its maintenance window is closed
    APPLYING = "applying"  # accepted; images being pulled
    SETTLING = "settling"  # images present; containers coming up within the apply deadline
    GOOD = "good"  # the target runs and stayed healthy for min_ready_s
    ROLLED_BACK = "rolled_back"  # failed; the last good target runs again
    FAILED = "failed"  # failed with nothing to roll back to


ACTIVE = frozenset({Phase.APPLYING, Phase.SETTLING})


@dataclass(frozen=True)
class LifeState:
    """The decision core's state: which target is rolled out and how far it got."""

    watching: int | None = None
    phase: Phase = Phase.IDLE
    pull_failed: bool = False


# ---- events -------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    """A target was stored (from the hub, a technician, a retry or a restore).

    ``opens_at``: when its maintenance window next opens; None if open now (or none).
    """

    target_id: int
    opens_at: datetime | None = None


@dataclass(frozen=True)
class WindowOpened:
    """The maintenance window of the waiting target opened."""

    target_id: int


@dataclass(frozen=True)
class ImagesReady:
    """Every image of the target is present: its apply deadline starts."""

    target_id: int


@dataclass(frozen=True)
class Judged:
    """The rollout watch judged the target."""

    target_id: int
    verdict: RolloutVerdict


@dataclass(frozen=True)
class RetryDue:
    """The backoff after a pull failure of the target has passed (``opens_at`` as Accepted)."""

    target_id: int
    opens_at: datetime | None = None


Event = Accepted | WindowOpened | ImagesReady | Judged | RetryDue

# ---- actions ------------------------------------------------------------------------


@dataclass(frozen=True)
class Activate:
    """Converge to the target and start watching it."""

    target_id: int


@dataclass(frozen=True)
class AwaitWindow:
    """Wake the lifecycle when the target's maintenance window opens."""

    target_id: int
    opens_at: datetime


@dataclass(frozen=True)
class StartDeadline:
    """Start the target's apply deadline now."""

    target_id: int


@dataclass(frozen=True)
class MarkGood:
    """Record the target as good."""

    target_id: int


@dataclass(frozen=True)
class RollBack:
    """Record the failure and converge to the last good target (if any)."""

    target_id: int
    reason: str
    pull: bool


@dataclass(frozen=True)
class ScheduleRetry:
    """Try the target again after a backoff (its images never arrived)."""

    target_id: int


@dataclass(frozen=True)
class Recheck:
    """Judge again soon (min_ready_s and the deadline are judged on time)."""


Action = Activate | AwaitWindow | StartDeadline | MarkGood | RollBack | ScheduleRetry | Recheck


def decide(state: LifeState, event: Event) -> tuple[LifeState, list[Action]]:
    """Return the next state and the actions to execute, in order."""
    if isinstance(event, Accepted):
        return _start(event.target_id, event.opens_at)
    if event.target_id != state.watching:
        return state, []  # about a target that is no longer rolled out: stale
    if isinstance(event, WindowOpened):
        if state.phase is not Phase.WAITING_WINDOW:
            return state, []
        return _start(event.target_id, None)
    if isinstance(event, ImagesReady):
        if state.phase is not Phase.APPLYING:
            return state, []
        return replace(state, phase=Phase.SETTLING), [StartDeadline(event.target_id)]
    if isinstance(event, RetryDue):
        if state.phase in ACTIVE or not state.pull_failed:
            return state, []
        return _start(event.target_id, event.opens_at)
    return _judged(state, event)


def _start(target_id: int, opens_at: datetime | None) -> tuple[LifeState, list[Action]]:
    if opens_at is not None:
        return LifeState(target_id, Phase.WAITING_WINDOW), [AwaitWindow(target_id, opens_at)]
    return LifeState(target_id, Phase.APPLYING), [Activate(target_id)]


def _judged(state: LifeState, event: Judged) -> tuple[LifeState, list[Action]]:
    if state.phase not in ACTIVE:
        return state, []
    verdict = event.verdict
    if verdict.status == "pending":
        return state, [Recheck()]
    if verdict.status == "good":
        return replace(state, phase=Phase.GOOD), [MarkGood(event.target_id)]
    pull = verdict.kind == "pull"
    actions: list[Action] = [RollBack(event.target_id, verdict.reason or "failed", pull)]
    if pull:
        actions.append(ScheduleRetry(event.target_id))
    # ROLLED_BACK or FAILED is settled by the executor once it knows whether a good one exists.
    return LifeState(event.target_id, Phase.ROLLED_BACK, pull_failed=pull), actions


def retry_delay_s(attempt: int, base_s: float, cap_s: float) -> float:
    """Return the backoff before retry ``attempt`` (1-based) of a pull-failed target."""
    return min(cap_s, base_s * 2 ** max(0, min(attempt - 1, 30)))
