"""Fleet rollback of a device that ran no release before the rollout.

A target always names a release with at least one service, so "the state before" (no
target) cannot be sent: such a device keeps the rollout's release, the engine says so in
the audit (``rollout.rollback_kept``, outcome ok) and the gate counts it at once as not
back (failed), so the rollback finishes without waiting out its deadline. The devices
are SIMULATED (``test_rollouts.SimDevice``: real enrollment and protocol, no Docker).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from synckit import until
from test_registry import GOOD, OPEN
from test_rollouts import audit_of, fleet_of, make_release, rhub, start, wait_for

from hub.rollout_gate import judge_rollback
from hub.rollout_models import DeviceAssignment, DeviceObservation, RolloutSpec, Verdict
from hub.testing import RunningHub

NOW = datetime(2026, 1, 1, tzinfo=UTC)
__all__ = ["fleet_of", "rhub"]  # the fixtures of test_rollouts: a hub of this module's own


async def _audit_rows(hub: RunningHub, target: str) -> list[dict[str, Any]]:
    _, body = await hub.api("GET", "/api/v1/audit?limit=1000")
    rows = list(body["audit"])
    while len(body["audit"]) == 1000:
        _, body = await hub.api("GET", f"/api/v1/audit?limit=1000&after={body['next_after']}")
        rows += body["audit"]
    return [a for a in rows if a["target"] == target]


async def test_rollback_keeps_the_release_of_a_device_that_ran_none_before_and_says_so(
    rhub: RunningHub, fleet_of: Any
) -> None:
    name = "none-" + datetime.now(UTC).strftime("%H%M%S%f")
    bad = f"{name}@2"
    fleet = await fleet_of(3, bad=lambda ref: ref == bad)
    good = await make_release(rhub, name, "1")
    await make_release(rhub, name, "2")
    had, dropped, kept = fleet.devices  # dropped fails the release on the device, as had
    kept.bad = lambda ref: False  # runs the rollout's release happily
    doc = {"name": name, "version": "1", "services": [{"name": "web", "image": f"{OPEN}/{GOOD}:1"}]}
    await rhub.set_target(had.identity.device_id, doc)  # only this one ran a release before
    status, body = await start(
        rhub, release=bad, group=fleet.tag, soak_s=0, stage_deadline_s=600, max_failed=1
    )
    assert status == 201, body
    rid = body["id"]
    # not held until the 600 s deadline by the device that has nowhere to go back to
    done = await wait_for(rhub, rid, lambda b: b["status"] == "rolled_back", timeout_s=20)
    ids = {
        d.identity.device_id: n
        for d, n in zip(fleet.devices, ("had", "dropped", "kept"), strict=True)
    }
    verdicts = {ids[d]: v for d, v in done["devices"].items()}
    assert verdicts == {"had": "rolled_back", "dropped": "rolled_back", "kept": "failed"}
    assert had.received[-1] == good and had.release == good
    assert dropped.received == [bad] and dropped.release is None  # runs nothing, as before
    assert kept.received == [bad] and kept.release == bad  # nothing was sent after it
    rows = await _audit_rows(rhub, kept.identity.device_id)
    noted = [r for r in rows if r["action"] == "rollout.rollback_kept"]
    assert len(noted) == 1 and noted[0]["outcome"] == "ok", rows
    assert noted[0]["detail"]["keeps"] == bad and noted[0]["detail"]["rollout"] == rid
    assert "ran no release before" in noted[0]["detail"]["reason"]
    for device in (had, dropped, kept):
        rows = await _audit_rows(rhub, device.identity.device_id)
        assert not [r for r in rows if r["action"] == "rollout.issue_failed"], rows
    assert "rollout.rolled_back" in await audit_of(rhub, rid)


NONE_BEFORE = DeviceAssignment(
    stage=0, previous_release=None, issued_at=NOW, revision=3, rollback_issued_at=NOW
)
SPEC = RolloutSpec(release="app@2", group="g", stages=["100%"], stage_deadline_s=600)


def _report(**kw: Any) -> DeviceObservation:
    at = NOW + timedelta(seconds=1)
    base: dict[str, Any] = {"device_id": "d", "online": True, "reported_at": at}
    return DeviceObservation(**{**base, "rollout_revision": 3, **kw})


@pytest.mark.parametrize(
    ("assignment", "obs", "verdict"),
    [
        (NONE_BEFORE, _report(release="app@2", rollout_state="good"), Verdict.FAILED),  # kept
        (NONE_BEFORE, _report(rollout_state="failed"), Verdict.ROLLED_BACK),  # runs nothing
        (NONE_BEFORE, _report(rollout_state="rolled_back"), Verdict.ROLLED_BACK),
        (NONE_BEFORE, _report(rollout_state="applying"), Verdict.APPLYING),  # deadline decides
        (
            NONE_BEFORE,
            _report(release="app@2", rollout_revision=2),
            Verdict.APPLYING,
        ),  # not about it
        (NONE_BEFORE, None, Verdict.PENDING),
        (  # a way back: judged as before
            NONE_BEFORE.model_copy(update={"previous_release": "app@1"}),
            _report(release="app@2", rollout_state="good"),
            Verdict.APPLYING,
        ),
    ],
)
def test_gate_judges_the_rollback_of_a_device_with_no_previous_release_at_once(
    assignment: DeviceAssignment, obs: DeviceObservation | None, verdict: Verdict
) -> None:
    assert judge_rollback(SPEC, assignment, obs, NOW + timedelta(seconds=2)) is verdict


async def test_rollback_sends_back_a_previous_release_that_was_never_a_hub_release(
    rhub: RunningHub, fleet_of: Any
) -> None:
    """A device whose target came from ``edgectl target set FILE`` (no hub release of that
    name) gets that same release back, as the hub sent it before: not ``issue_failed``."""
    name = "adhoc-" + datetime.now(UTC).strftime("%H%M%S%f")
    bad = f"{name}-new@2"
    fleet = await fleet_of(1, bad=lambda ref: ref == bad)
    await make_release(rhub, f"{name}-new", "2")
    [device] = fleet.devices
    adhoc = {
        "name": name,
        "version": "1",
        "services": [{"name": "web", "image": f"{OPEN}/{GOOD}:1", "environment": {"A": "1"}}],
    }
    await rhub.set_target(device.identity.device_id, adhoc)  # never created as a release

    async def has_it() -> bool:  # the fleet syncs every SIM_SYNC_S
        return device.release == f"{name}@1"

    await until(has_it, timeout_s=20)
    status, body = await start(
        rhub, release=bad, group=fleet.tag, soak_s=0, stage_deadline_s=600, max_failed=0
    )
    assert status == 201, body
    done = await wait_for(rhub, body["id"], lambda b: b["status"] == "rolled_back", timeout_s=20)
    assert done["devices"] == {device.identity.device_id: "rolled_back"}

    async def got_it_back() -> bool:  # on its next sync after the rollback target was set
        return device.received[-1] == f"{name}@1" and device.release == f"{name}@1"

    await until(got_it_back, timeout_s=20)
    rows = await _audit_rows(rhub, device.identity.device_id)
    assert not [r for r in rows if r["action"] == "rollout.issue_failed"], rows
    sent = [r for r in rows if r["action"] == "target.set" and r["detail"].get("rollback")]
    assert len(sent) == 1 and sent[0]["detail"]["release"] == f"{name}@1", rows
