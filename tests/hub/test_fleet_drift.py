"""Drift, as a table: in_sync only when the device runs its target and the target proved good."""

from __future__ import annotations

from typing import Any

import pytest

from hub.fleet import Drift, drift


@pytest.mark.parametrize(
    ("target", "report", "expected"),
    [
        (0, {"running_revision": 0, "rollout_state": "good"}, Drift.NO_TARGET),
        (2, {"running_revision": 2, "rollout_state": "good"}, Drift.IN_SYNC),
        # item 14: the applying revision is not the running one
        (
            2,
            {"running_revision": 1, "applying_revision": 2, "rollout_state": "applying"},
            Drift.UPDATING,
        ),
        (
            2,
            {"running_revision": 1, "applying_revision": 2, "rollout_state": "settling"},
            Drift.UPDATING,
        ),
        # waiting for its maintenance window: on its way to the target, not drifted
        (
            2,
            {"running_revision": 1, "applying_revision": 2, "rollout_state": "waiting_window"},
            Drift.UPDATING,
        ),
        (2, {"running_revision": 2, "rollout_state": "settling"}, Drift.DRIFTED),
        (2, {"running_revision": 1, "rollout_state": "rolled_back"}, Drift.DRIFTED),
        (2, {"running_revision": None, "rollout_state": "failed"}, Drift.DRIFTED),
        # item 8: a technician's local target on top of the hub target is not the target
        (
            2,
            {"running_revision": 2, "running_local_seq": 1, "rollout_state": "good"},
            Drift.DRIFTED,
        ),
        # an agent that reports no rollout state is judged by its applied revision
        (2, {}, Drift.DRIFTED),
    ],
)
def test_in_sync_only_when_running_the_target_and_good(
    target: int, report: dict[str, Any], expected: Drift
) -> None:
    applied = report.get("running_revision") or 0
    assert drift(target, applied, **report) is expected


def test_legacy_agents_keep_the_applied_revision_rule() -> None:
    assert drift(3, 3) is Drift.IN_SYNC
    assert drift(3, 2) is Drift.DRIFTED
