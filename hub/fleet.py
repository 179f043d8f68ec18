"""The fleet picture, computed: connectivity, drift, status merging. Pure; no I/O."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from edge_agent.protocol import StatusSnapshot

# The parts of a device's reported status that the hub keeps (columns of its row).
STATUS_FIELDS = (
    "release",
    "state",
    "services",
    "counters",
    "last_error",
    "running_revision",
    "running_local_seq",
    "applying_revision",
    "rollout_state",
    "window_opens_at",
    "release_trust_stale",
)


class Connectivity(StrEnum):
    """How recently a device talked to the hub."""

    ONLINE = "online"  # contact within fleet.online_after_s
    OFFLINE = "offline"  # silent longer than that, up to fleet.stale_after_s
    STALE = "stale"  # silent longer than fleet.stale_after_s (or never seen)


class Drift(StrEnum):
    """Whether a device runs what the hub wants it to run."""

    NO_TARGET = "no_target"
    IN_SYNC = "in_sync"  # runs the target, and the target proved good
    UPDATING = "updating"  # rolling out the target (applying or settling)
    DRIFTED = "drifted"  # runs something other than its target, and is not rolling it out


ROLLING_OUT = ("waiting_window", "applying", "settling")  # on its way to the target


def connectivity(
    last_contact: datetime | None, now: datetime, online_after_s: float, stale_after_s: float
) -> Connectivity:
    """Return the device's connectivity from its last contact and the thresholds."""
    if last_contact is None:
        return Connectivity.STALE
    age = (now - last_contact).total_seconds()
    if age <= online_after_s:
        return Connectivity.ONLINE
    if age <= stale_after_s:
        return Connectivity.OFFLINE
    return Connectivity.STALE


def drift(
    target_revision: int,
    applied_revision: int,
    *,
    running_revision: int | None = None,
    running_local_seq: int | None = None,
    applying_revision: int | None = None,
    rollout_state: str | None = None,
) -> Drift:
    """Return whether the device runs its target.

    In sync only when the running revision is the target (not a technician's local
    target on top of it) and its rollout is good. Agents that do not report
    ``rollout_state`` are judged by their applied revision alone.
    """
    if target_revision <= 0:
        return Drift.NO_TARGET
    if rollout_state is None:
        return Drift.IN_SYNC if applied_revision == target_revision else Drift.DRIFTED
    runs_target = running_revision == target_revision and not running_local_seq
    if runs_target and rollout_state == "good":
        return Drift.IN_SYNC
    if applying_revision == target_revision and rollout_state in ROLLING_OUT:
        return Drift.UPDATING
    return Drift.DRIFTED


def merge_status(current: dict[str, Any], delta: StatusSnapshot) -> dict[str, Any]:
    """Return the stored status after applying a snapshot.

    A full snapshot replaces every field; a delta (``full=False``) replaces only the
    fields it carries (None means "unchanged").
    """
    merged = dict(current)
    for name in STATUS_FIELDS:
        value = getattr(delta, name)
        if value is not None or delta.full:
            if name == "services" and value is not None:
                value = [s.model_dump(mode="json") for s in value]
            elif name == "window_opens_at" and value is not None:
                value = value.isoformat()  # UTC (the model normalizes it): sorts as time
            merged[name] = value
    return merged


def is_target_newer(target_revision: int, known_revision: int) -> bool:
    """Return whether the hub holds a target the agent has not seen."""
    return target_revision > 0 and target_revision > known_revision
