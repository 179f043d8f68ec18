"""The rollout's stage planner: (spec, state, observations, now) -> Decision.

Pure: no I/O, no clock; ``now`` is passed in. The hub applies a ``Decision`` in one store
transaction with the audit records of its events.

Rules (docs/deployments.md, "Rollouts: stages and the health gate"):

- Stages are cumulative sizes (``1, 10%, 50%, 100%`` of the members frozen at start);
  a stage never shrinks. Which devices a stage adds is ``order_devices``: those online
  now first, then by a stable hash of (rollout id, device id).
- The gate (``hub.rollout_gate``) judges each touched device: pending, applying,
  healthy, failed or offline. Healthy and failed are sticky. A device that has not
  reported the target by ``stage_deadline_s`` after it was issued (and its window
  opened) is offline: counted, never waited for. One that talked but is not good by then has failed.
- The failed count is judged over every device touched so far: more than ``max_failed``
  (a count, or a share rounded down) fails the stage. A stage passes when none of its
  devices is pending or applying any more.
- A failed stage halts the rollout; with ``rollback_on_failure`` every touched device is
  sent the release the hub targeted at it before the rollout (fleet rollback).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime

from hub.errors import Conflict, InvalidRequest
from hub.rollout_gate import judge_device, judge_rollback
from hub.rollout_models import (
    ACTIVE_STATUSES,
    Amount,
    Decision,
    DeviceAssignment,
    DeviceObservation,
    RolloutEvent,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    StageProgress,
    TargetIssue,
    Verdict,
)

Observations = Mapping[str, DeviceObservation]
UNDECIDED = (Verdict.PENDING, Verdict.APPLYING)
OVERLAP_EXAMPLES = 5


# ---- ordering and sizes ---------------------------------------------------------------


def order_devices(device_ids: Iterable[str], online: Collection[str], rollout_id: str) -> list[str]:
    """Return the devices in rollout order: online first, then by sha256(rollout id, device id).

    The hash spreads each rollout over the fleet differently, yet the same inputs always
    give the same order.
    """

    def key(device_id: str) -> tuple[bool, str, str]:
        digest = hashlib.sha256(f"{rollout_id}\0{device_id}".encode()).hexdigest()
        return (device_id not in online, digest, device_id)

    return sorted(set(device_ids), key=key)


def stage_sizes(stages: Sequence[Amount], total: int) -> list[int]:
    """Return each stage's cumulative number of devices: never shrinking, the last = total."""
    sizes: list[int] = []
    for stage in stages:
        size = max(stage.of(total, round_up=True), sizes[-1] if sizes else 0)
        sizes.append(size)
    if sizes:
        sizes[-1] = total
    return sizes


def start_rollout(
    rollout_id: str,
    spec: RolloutSpec,
    members: Iterable[str],
    online: Collection[str],
    now: datetime,
) -> RolloutState:
    """Return the state of a new rollout over ``members`` (frozen now); nothing is issued yet."""
    ordered = order_devices(members, online, rollout_id)
    if not ordered:
        raise InvalidRequest(
            f"rollout of {spec.release}: no device matches",
            fields=[{"field": "group" if spec.group else "selector", "message": "no members"}],
        )
    return RolloutState(
        rollout_id=rollout_id, members=tuple(ordered), started_at=now, updated_at=now
    )


def record_revisions(state: RolloutState, revisions: Mapping[str, int]) -> RolloutState:
    """Return the state with the hub revision of each issued target recorded.

    The gate then only takes reports about exactly that revision as news of the target.
    """
    unknown = sorted(set(revisions) - set(state.assignments))
    if unknown:
        raise InvalidRequest(
            f"rollout {state.rollout_id} did not assign {', '.join(unknown[:5])}",
            fields=[{"field": "device_id", "message": "not assigned"}],
        )
    assignments = dict(state.assignments)
    for device_id, revision in revisions.items():
        assignments[device_id] = assignments[device_id].model_copy(update={"revision": revision})
    return state.model_copy(update={"assignments": assignments})


def _judge_all(
    spec: RolloutSpec, state: RolloutState, observations: Observations, now: datetime
) -> tuple[RolloutState, dict[str, Verdict]]:
    """Judge every touched device; return the state with assignments updated, and verdicts."""
    verdicts: dict[str, Verdict] = {}
    if state.status in (RolloutStatus.ROLLING_BACK, RolloutStatus.ROLLED_BACK):
        for device_id, a in state.assignments.items():
            verdicts[device_id] = judge_rollback(spec, a, observations.get(device_id), now)
        return state, verdicts
    assignments = dict(state.assignments)
    for device_id, a in state.assignments.items():
        verdict, updated = judge_device(spec, a, observations.get(device_id), now)
        verdicts[device_id] = verdict
        if updated is not a:
            assignments[device_id] = updated
    return state.model_copy(update={"assignments": assignments}), verdicts


# ---- the stage planner ---------------------------------------------------------------


def plan_rollout(
    spec: RolloutSpec, state: RolloutState, observations: Observations, now: datetime
) -> Decision:
    """Return the decision for this moment: targets to issue, verdicts, stage moves, progress."""
    state, verdicts = _judge_all(spec, state, observations, now)
    issues: list[TargetIssue] = []
    events: list[RolloutEvent] = []
    if state.status in (RolloutStatus.RUNNING, RolloutStatus.PAUSED):
        failed = sum(1 for v in verdicts.values() if v is Verdict.FAILED)
        allowed = spec.max_failed.of(len(state.assignments), round_up=False)
        if failed > allowed:
            touched = len(state.assignments)
            reason = f"{failed} of {touched} devices failed (max_failed={spec.max_failed})"
            return _fail(spec, state, verdicts, now, reason)
    if state.status is RolloutStatus.RUNNING:
        state, issues, events = _advance(spec, state, observations, verdicts, now)
    elif state.status is RolloutStatus.ROLLING_BACK and not any(
        v in UNDECIDED for v in verdicts.values()
    ):
        state = state.model_copy(update={"status": RolloutStatus.ROLLED_BACK})
        events.append(RolloutEvent(kind="rolled_back", detail=state.reason or ""))
    state = state.model_copy(update={"updated_at": now})
    return _decision(spec, state, verdicts, issues, events)


def _advance(
    spec: RolloutSpec,
    state: RolloutState,
    observations: Observations,
    verdicts: dict[str, Verdict],
    now: datetime,
) -> tuple[RolloutState, list[TargetIssue], list[RolloutEvent]]:
    """Pass every stage whose devices are all decided; issue the next stage's devices.

    New devices are added to ``verdicts`` as pending.
    """
    sizes = stage_sizes(spec.stages, len(state.members))
    events: list[RolloutEvent] = []
    while True:
        added = _assign_stage(state, observations, sizes, now)
        if added:
            verdicts.update(dict.fromkeys(added, Verdict.PENDING))
            issues = [TargetIssue(device_id=d, release=spec.release) for d in added]
            detail = f"{len(added)} devices"
            events.append(
                RolloutEvent(kind="stage_started", stage=state.current_stage, detail=detail)
            )
            return _with_assigned(state, added), issues, events
        if _stage_undecided(state, verdicts):
            return state, [], events
        events.append(RolloutEvent(kind="stage_passed", stage=state.current_stage))
        if state.current_stage == len(sizes) - 1:
            events.append(RolloutEvent(kind="completed"))
            return state.model_copy(update={"status": RolloutStatus.COMPLETED}), [], events
        state = state.model_copy(update={"current_stage": state.current_stage + 1})


def _stage_undecided(state: RolloutState, verdicts: Mapping[str, Verdict]) -> bool:
    """Return whether a device of the current stage is still pending or applying.

    Devices of earlier stages that return late are judged, but never hold a stage.
    """
    return any(
        verdicts[d] in UNDECIDED
        for d, a in state.assignments.items()
        if a.stage == state.current_stage
    )


def _assign_stage(
    state: RolloutState,
    observations: Observations,
    sizes: list[int],
    now: datetime,
) -> dict[str, DeviceAssignment]:
    """Return the assignments of the devices the current stage adds (none if all issued)."""
    missing = sizes[state.current_stage] - len(state.assignments)
    if missing <= 0:
        return {}
    rest = [d for d in state.members if d not in state.assignments]
    online = {d for d in rest if d in observations and observations[d].online}
    chosen = order_devices(rest, online, state.rollout_id)[:missing]
    return {
        d: DeviceAssignment(
            stage=state.current_stage,
            previous_release=observations[d].target_release if d in observations else None,
            issued_at=now,
        )
        for d in chosen
    }


def _with_assigned(state: RolloutState, added: Mapping[str, DeviceAssignment]) -> RolloutState:
    return state.model_copy(update={"assignments": {**state.assignments, **added}})


def _fail(
    spec: RolloutSpec,
    state: RolloutState,
    verdicts: dict[str, Verdict],
    now: datetime,
    reason: str,
) -> Decision:
    """Halt the rollout at its current stage; roll the touched devices back if configured."""
    stage = state.current_stage
    state = state.model_copy(update={"failed_stage": stage, "reason": reason, "updated_at": now})
    events = [RolloutEvent(kind="stage_failed", stage=stage, detail=reason)]
    if not spec.rollback_on_failure:
        events.append(RolloutEvent(kind="halted", stage=stage, detail=reason))
        state = state.model_copy(update={"status": RolloutStatus.HALTED})
        return _decision(spec, state, verdicts, [], events)
    state, issues = _begin_rollback(state, now, reason)
    events.append(RolloutEvent(kind="rolling_back", stage=stage, detail=reason))
    _, verdicts = _judge_all(spec, state, {}, now)
    return _decision(spec, state, verdicts, issues, events)


def _begin_rollback(
    state: RolloutState, now: datetime, reason: str
) -> tuple[RolloutState, list[TargetIssue]]:
    """Send every touched device the release it ran before; return the state and issues."""
    assignments = {
        d: a.model_copy(update={"rollback_issued_at": now}) for d, a in state.assignments.items()
    }
    issues = [
        TargetIssue(device_id=d, release=a.previous_release, rollback=True)
        for d, a in assignments.items()
    ]
    state = state.model_copy(
        update={
            "status": RolloutStatus.ROLLING_BACK,
            "assignments": assignments,
            "reason": reason,
            "updated_at": now,
        }
    )
    return state, issues


def _decision(
    spec: RolloutSpec,
    state: RolloutState,
    verdicts: dict[str, Verdict],
    issues: list[TargetIssue],
    events: list[RolloutEvent],
) -> Decision:
    return Decision(
        state=state,
        issue=tuple(issues),
        events=tuple(events),
        verdicts=verdicts,
        progress=progress(spec, state, verdicts),
    )


def progress(
    spec: RolloutSpec, state: RolloutState, verdicts: Mapping[str, Verdict]
) -> tuple[StageProgress, ...]:
    """Return per stage its devices by verdict; devices not issued yet count as pending."""
    sizes = stage_sizes(spec.stages, len(state.members))
    by_stage: dict[int, Counter[Verdict]] = {i: Counter() for i in range(len(sizes))}
    for device_id, a in state.assignments.items():
        by_stage[a.stage][verdicts.get(device_id, Verdict.PENDING)] += 1
    rows = []
    for i, size in enumerate(sizes):
        planned = size - (sizes[i - 1] if i else 0)
        counts = by_stage[i]
        issued = sum(counts.values())
        rows.append(
            StageProgress(
                stage=i,
                size=str(spec.stages[i]),
                planned=planned,
                pending=counts[Verdict.PENDING] + max(0, planned - issued),
                **{v.value: counts[v] for v in Verdict if v is not Verdict.PENDING},
            )
        )
    return tuple(rows)


# ---- operator actions ----------------------------------------------------------------


def _require(state: RolloutState, action: str, allowed: Collection[RolloutStatus]) -> None:
    if state.status not in allowed:
        names = ", ".join(sorted(s.value for s in allowed))
        raise Conflict(
            f"cannot {action} rollout {state.rollout_id}: it is {state.status.value} "
            f"(only {names})",
            fields=[{"field": "status", "message": state.status.value}],
        )


def _action(
    state: RolloutState, now: datetime, status: RolloutStatus, kind: str, reason: str
) -> Decision:
    state = state.model_copy(
        update={"status": status, "reason": reason or state.reason, "updated_at": now}
    )
    return Decision(state=state, events=(RolloutEvent(kind=kind, detail=reason),))


def pause(state: RolloutState, now: datetime, reason: str = "") -> Decision:
    """Stop adding devices; the gate keeps judging (and halting on) the touched ones."""
    _require(state, "pause", {RolloutStatus.RUNNING})
    return _action(state, now, RolloutStatus.PAUSED, "paused", reason)


def resume(state: RolloutState, now: datetime, reason: str = "") -> Decision:
    """Continue a paused rollout where it stood."""
    _require(state, "resume", {RolloutStatus.PAUSED})
    return _action(state, now, RolloutStatus.RUNNING, "resumed", reason)


def abort(state: RolloutState, now: datetime, reason: str = "") -> Decision:
    """Stop the rollout for good; touched devices keep the target they have."""
    _require(state, "abort", {RolloutStatus.RUNNING, RolloutStatus.PAUSED, RolloutStatus.HALTED})
    return _action(state, now, RolloutStatus.ABORTED, "aborted", reason)


def rollback(state: RolloutState, now: datetime, reason: str = "") -> Decision:
    """Roll back by hand: every touched device is sent the release it ran before."""
    allowed = {
        RolloutStatus.RUNNING,
        RolloutStatus.PAUSED,
        RolloutStatus.HALTED,
        RolloutStatus.COMPLETED,
        RolloutStatus.ABORTED,
    }
    _require(state, "roll back", allowed)
    reason = reason or "rolled back by hand"
    state, issues = _begin_rollback(state, now, reason)
    return Decision(
        state=state,
        issue=tuple(issues),
        events=(RolloutEvent(kind="rolling_back", stage=state.current_stage, detail=reason),),
    )


def supersede(state: RolloutState, by: str, now: datetime) -> Decision:
    """Abort an active rollout (even one rolling back) because rollout ``by`` replaces it."""
    _require(state, "supersede", ACTIVE_STATUSES)
    return _action(state, now, RolloutStatus.ABORTED, "superseded", f"superseded by {by}")


# ---- overlap -------------------------------------------------------------------------

HIDDEN_ROLLOUT = "a rollout outside your scope"


def check_overlap(
    new: RolloutSpec,
    active_rollouts: Iterable[RolloutState],
    members: Collection[str],
    hidden: Collection[str] = (),
) -> tuple[str, ...]:
    """Return the ids of the rollouts ``new`` supersedes; raise Conflict on any other overlap.

    Only active rollouts (running, paused, halted, rolling back) count. The hub ends the
    superseded ones with ``supersede`` as it starts the new one. A rollout in ``hidden``
    (outside the caller's scope) is not named, only counted.
    """
    wanted = set(members)
    superseded: list[str] = []
    clashes: list[dict[str, object]] = []
    for other in active_rollouts:
        if other.status not in ACTIVE_STATUSES:
            continue
        shared = sorted(wanted.intersection(other.members))
        if not shared:
            continue
        if new.supersedes == other.rollout_id:
            superseded.append(other.rollout_id)
            continue
        name = HIDDEN_ROLLOUT if other.rollout_id in hidden else other.rollout_id
        clashes.append(
            {
                "field": "supersedes",
                "rollout": name,
                "devices": len(shared),
                "examples": shared[:OVERLAP_EXAMPLES],
            }
        )
    if clashes:
        summary = "; ".join(f"{c['rollout']} ({c['devices']} devices)" for c in clashes)
        raise Conflict(
            f"rollout of {new.release} overlaps active rollouts: {summary}; "
            "pass supersedes=<rollout id> to replace one",
            fields=clashes,
        )
    return tuple(superseded)
