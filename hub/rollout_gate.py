"""The rollout's health gate: one device's verdict from its assignment, report and now.

Pure: no I/O, no clock. Healthy and failed are sticky (kept on the assignment); a device
silent past its deadline is offline; one first heard of after its deadline gets a fresh
one. The rules are in docs/deployments.md ("The health gate").
"""

from __future__ import annotations

from datetime import datetime, timedelta

from hub.metric_gate import has_samples, metrics_verdict
from hub.rollout_models import (
    DeviceAssignment,
    DeviceObservation,
    RolloutSpec,
    Verdict,
    window_opens_at,
)

ON_DEVICE_FAILURE = ("rolled_back", "failed")
APPLYING_STATES = ("waiting_window", "applying", "settling")
HELD = "held"  # the agent's rollout_state while a technician's pause or pin holds the target


def device_deadline(spec: RolloutSpec, assignment: DeviceAssignment) -> datetime:
    """Return when the device must have reported the target good (window-aware)."""
    start = assignment.issued_at
    if spec.window is not None and spec.tz is not None:
        start = window_opens_at(spec.window, spec.tz, start)
    return start + timedelta(seconds=spec.stage_deadline_s)


def _about_target(a: DeviceAssignment, obs: DeviceObservation | None) -> bool:
    """Return whether the observation was reported after the target was issued, about it."""
    if obs is None or obs.reported_at is None or obs.reported_at < a.issued_at:
        return False
    if a.revision is not None and obs.rollout_revision is not None:
        return obs.rollout_revision == a.revision
    return True


def _failed(a: DeviceAssignment, reason: str) -> tuple[Verdict, DeviceAssignment]:
    return Verdict.FAILED, a.model_copy(update={"failed_reason": reason})


def judge_device(
    spec: RolloutSpec, a: DeviceAssignment, obs: DeviceObservation | None, now: datetime
) -> tuple[Verdict, DeviceAssignment]:
    """Return the gate's verdict on one device and its assignment updated (soak, verdict)."""
    if a.failed_reason is not None:
        return Verdict.FAILED, a
    deadline = device_deadline(spec, a)
    if obs is None or not _about_target(a, obs):
        if a.healthy_at is not None:
            return Verdict.HEALTHY, a
        return (Verdict.OFFLINE if now >= deadline else Verdict.PENDING), a
    if obs.rollout_state == HELD and a.healthy_at is None:
        # Held by a technician on site (bounded): reported as such, and its deadline
        # starts when it is first seen applying, as for a device that was away.
        return Verdict.HELD, a
    if a.seen_at is None:
        a = a.model_copy(update={"seen_at": obs.reported_at})
    if a.seen_at is not None and a.seen_at >= deadline:
        # First heard of after its deadline: it was away, not slow; it gets a fresh one.
        deadline = a.seen_at + timedelta(seconds=spec.stage_deadline_s)
    if obs.rollout_state in ON_DEVICE_FAILURE:
        return _failed(a, f"on-device rollback ({obs.rollout_state})")
    if spec.gate.fail_on_crash_loop and obs.crash_loop:
        return _failed(a, "crash loop")
    if a.healthy_at is not None:
        return Verdict.HEALTHY, a
    runs = obs.release == spec.release and obs.rollout_state in (None, "good") and obs.all_up
    if not runs:
        # The soak restarts once every service is up again; the deadline bounds the wait.
        a = a.model_copy(update={"soak_started_at": None})
        if now < deadline:
            return Verdict.APPLYING, a
        if not obs.online:
            return Verdict.OFFLINE, a
        return _failed(a, f"not good within stage_deadline_s={spec.stage_deadline_s:g}")
    return _soak(spec, a, obs, now, deadline)


def _soak(
    spec: RolloutSpec,
    a: DeviceAssignment,
    obs: DeviceObservation,
    now: datetime,
    deadline: datetime,
) -> tuple[Verdict, DeviceAssignment]:
    """Judge a device that runs the target with every service up."""
    if a.soak_started_at is None:
        a = a.model_copy(update={"soak_started_at": now, "restarts_at_soak_start": obs.restarts})
    soak_started_at = a.soak_started_at or now
    restarts = obs.restarts - a.restarts_at_soak_start
    limit = spec.gate.max_restarts_during_soak
    if restarts > limit:
        return _failed(a, f"{restarts} restarts during the soak (max_restarts_during_soak={limit})")
    if (now - soak_started_at).total_seconds() >= spec.soak_s:
        judged = _metrics(spec, a, obs, now, deadline, soak_started_at)
        return judged or (Verdict.HEALTHY, a.model_copy(update={"healthy_at": now}))
    if not obs.online and now >= deadline + timedelta(seconds=spec.soak_s):
        return Verdict.OFFLINE, a
    return Verdict.APPLYING, a


def _metrics(
    spec: RolloutSpec,
    a: DeviceAssignment,
    obs: DeviceObservation,
    now: datetime,
    deadline: datetime,
    since: datetime,
) -> tuple[Verdict, DeviceAssignment] | None:
    """Judge the soak's metrics (if the gate bounds them); None: they pass."""
    if not spec.gate.has_metric_bounds:
        return None
    if not has_samples(obs.metrics, since):  # waits for one, bounded by the deadline
        if now < deadline + timedelta(seconds=spec.soak_s):
            return Verdict.APPLYING, a
        return _failed(a, "no metrics sample during the soak (the gate bounds metrics)")
    reason = metrics_verdict(spec.gate, obs.metrics, since)
    return _failed(a, reason) if reason is not None else None


def judge_rollback(
    spec: RolloutSpec, a: DeviceAssignment, obs: DeviceObservation | None, now: datetime
) -> Verdict:
    """Return where a device is on its way back to its previous release."""
    if a.previous_release is None and _about_target(a, obs):
        verdict = _none_before(obs)
        if verdict is not None:
            return verdict
    issued = a.rollback_issued_at or now
    back = (
        obs is not None
        and obs.reported_at is not None
        and obs.reported_at >= issued
        and obs.release == a.previous_release
        and obs.rollout_state not in ("applying", "settling")
    )
    if back:
        return Verdict.ROLLED_BACK
    if now < issued + timedelta(seconds=spec.stage_deadline_s):
        talked = obs is not None and obs.reported_at is not None and obs.reported_at >= issued
        return Verdict.APPLYING if talked else Verdict.PENDING
    return Verdict.FAILED if obs is not None and obs.online else Verdict.OFFLINE


def _none_before(obs: DeviceObservation | None) -> Verdict | None:
    """Judge the rollback of a device that ran no release before the rollout.

    Nothing is sent to it (a target names a release): failed on the device, it runs no
    rollout target again (back); running the release, it keeps it (failed, at once: no
    target will change that); still applying it, None (the deadline decides).
    """
    assert obs is not None
    if obs.rollout_state in ON_DEVICE_FAILURE:
        return Verdict.ROLLED_BACK
    if obs.rollout_state in APPLYING_STATES:
        return None
    return Verdict.FAILED
