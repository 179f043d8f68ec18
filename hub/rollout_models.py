"""The rollout's data: spec (what the operator asked), state (how far it got), observations.

Pure data and parsing, no I/O. ``hub.rollouts`` decides on these; the store keeps them.
Every model is frozen: a decision returns new values, it never edits the ones it got.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

# The window rules are the agent's (a contract module), so hub and agent read them alike.
from edge_agent.window import parse_window, window_opens_at

__all__ = ["parse_window", "window_opens_at"]

RELEASE_REF_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}@[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
MAX_STAGES = 20
MAX_SOAK_S = 7 * 86400.0


class Frozen(BaseModel):
    """Base: unknown fields are errors; instances never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Amount(Frozen):
    """A number of devices: absolute (``count``) or a share of the members (``percent``)."""

    count: int | None = Field(None, ge=0)
    percent: float | None = Field(None, ge=0, le=100)

    @model_validator(mode="after")
    def _one_of(self) -> Amount:
        if (self.count is None) == (self.percent is None):
            raise ValueError("give either a count or a percentage")
        return self

    def of(self, total: int, *, round_up: bool) -> int:
        """Return how many of ``total`` devices this amount is (never more than total)."""
        if self.count is not None:
            return min(self.count, total)
        share = total * (self.percent or 0.0) / 100.0
        # A small epsilon keeps 10% of 30 at 3, not 4, despite float error.
        value = math.ceil(share - 1e-9) if round_up else math.floor(share + 1e-9)
        return min(total, value)

    def __str__(self) -> str:
        if self.count is not None:
            return str(self.count)
        percent = self.percent or 0.0
        return f"{int(percent) if percent.is_integer() else percent!r}%"  # exact: round-trips


def parse_amount(value: Any) -> Any:
    """Turn ``3``, ``"3"`` or ``"5%"`` into an ``Amount``; leave anything else to pydantic."""
    if isinstance(value, bool):
        raise ValueError("must be a count or a percentage like '5%', not a boolean")
    if isinstance(value, int):
        return Amount(count=value)
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.endswith("%"):
                return Amount(percent=float(text[:-1]))
            return Amount(count=int(text))
        except ValueError:
            raise ValueError(f"{value!r} is neither a count nor a percentage like '5%'") from None
    return value


# Written and read as the operator writes it: 3 -> "3", 5% -> "5%".
AmountField = Annotated[Amount, BeforeValidator(parse_amount), PlainSerializer(str)]


def parse_stages(value: Any) -> Any:
    """Accept ``"1,10%,100%"`` as well as a list."""
    if isinstance(value, str):
        return [part for part in value.split(",")]
    return value


def check_stages(stages: tuple[Amount, ...]) -> None:
    """Raise ValueError unless the stages are strictly increasing and end at 100%.

    Counts can only be compared with counts and percentages with percentages, so counts
    come first (canaries: ``1, 5, 10%, 100%``) and a count may not follow a percentage.
    """
    if not stages:
        raise ValueError("at least one stage is needed")
    if len(stages) > MAX_STAGES:
        raise ValueError(f"at most {MAX_STAGES} stages")
    for i, stage in enumerate(stages):
        if stage.count == 0 or stage.percent == 0:
            raise ValueError(f"stage {i + 1} ({stage}) adds no device")
        if i == 0:
            continue
        prev = stages[i - 1]
        if stage.count is not None and prev.percent is not None:
            raise ValueError(f"stage {i + 1} ({stage}) is a count after a percentage")
        if (stage.count or stage.percent or 0) <= (prev.count or prev.percent or 0) and (
            (stage.count is None) == (prev.count is None)
        ):
            raise ValueError(f"stage {i + 1} ({stage}) is not larger than stage {i} ({prev})")
    if stages[-1].percent != 100:
        raise ValueError(f"the last stage must be 100% (it is {stages[-1]})")


class HealthGate(Frozen):
    """What a device must show, beyond running the target, to count as healthy."""

    max_restarts_during_soak: int = Field(0, ge=0, le=1000)
    fail_on_crash_loop: bool = True
    # Device metrics during the soak (hub.metric_gate): the mean of the samples the device
    # took after its soak started must stay at or below each bound set (None: not judged).
    max_cpu_percent: float | None = Field(None, gt=0, le=100)  # the host's CPU
    max_memory_percent: float | None = Field(None, gt=0, le=100)  # the host's memory used
    max_container_cpu_percent: float | None = Field(None, gt=0, le=100_000)  # any container
    max_container_memory_mb: float | None = Field(None, gt=0, le=10_000_000)  # any container

    @property
    def has_metric_bounds(self) -> bool:
        """Return whether the gate judges device metrics."""
        bounds = (self.max_cpu_percent, self.max_memory_percent)
        bounds += (self.max_container_cpu_percent, self.max_container_memory_mb)
        return any(b is not None for b in bounds)


class RolloutSpec(Frozen):
    """What the operator asked for: release x members x stages x gate x window."""

    release: str = Field(..., max_length=128)
    group: str | None = Field(None, max_length=128)
    selector: str | None = Field(None, max_length=1024)
    stages: Annotated[tuple[AmountField, ...], BeforeValidator(parse_stages)] = Field(
        default_factory=lambda: (Amount(percent=100.0),)
    )
    soak_s: float = Field(600.0, ge=0, le=MAX_SOAK_S)
    # A device that has not reported the target good this long after it was issued (and
    # its window opened) is judged: offline if silent, failed if it talked.
    stage_deadline_s: float = Field(1800.0, gt=0, le=MAX_SOAK_S)
    max_failed: AmountField = Field(default_factory=lambda: Amount(count=0))
    window: str | None = None
    tz: str | None = Field(None, max_length=64)
    gate: HealthGate = Field(default_factory=HealthGate)
    rollback_on_failure: bool = True
    supersedes: str | None = Field(None, max_length=128)

    @field_validator("release")
    @classmethod
    def _check_release(cls, value: str) -> str:
        if not RELEASE_REF_RE.match(value):
            raise ValueError(f"{value!r} is not NAME@VERSION")
        return value

    @field_validator("window")
    @classmethod
    def _check_window(cls, value: str | None) -> str | None:
        if value is not None:
            parse_window(value)
        return value

    @field_validator("tz")
    @classmethod
    def _check_tz(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone") from None
        return value

    @field_validator("stages")
    @classmethod
    def _check_stages(cls, value: tuple[Amount, ...]) -> tuple[Amount, ...]:
        check_stages(value)
        return value

    @model_validator(mode="after")
    def _check_whole(self) -> RolloutSpec:
        if (self.group is None) == (self.selector is None):
            raise ValueError("group/selector: give exactly one of them")
        if self.window is not None and self.tz is None:
            raise ValueError("tz: a maintenance window needs its IANA time zone")
        return self


class Verdict(StrEnum):
    """The health gate's verdict on one device of a stage."""

    PENDING = "pending"  # target not issued yet, or issued and nothing reported since
    APPLYING = "applying"  # the device is applying the target or soaking it
    HEALTHY = "healthy"  # applied, healthy for soak_s, restarts under the threshold
    FAILED = "failed"  # rolled back on the device, crash loop, restarts, or deadline missed
    OFFLINE = "offline"  # silent past the deadline: counted, never waited for
    ROLLED_BACK = "rolled_back"  # after a fleet rollback: runs its previous release again
    HELD = "held"  # a technician's pause or pin holds the target: counted, never waited for


class RolloutStatus(StrEnum):
    """Where a rollout is."""

    RUNNING = "running"
    PAUSED = "paused"  # no new devices; the gate still judges (and halts) the touched ones
    HALTED = "halted"  # a stage failed and rollback_on_failure is off: waits for an operator
    ROLLING_BACK = "rolling_back"  # every touched device was sent its previous release
    COMPLETED = "completed"
    ABORTED = "aborted"  # stopped by an operator (or superseded): devices keep what they have
    ROLLED_BACK = "rolled_back"  # every touched device runs its previous release (or is offline)


ACTIVE_STATUSES = frozenset(
    {RolloutStatus.RUNNING, RolloutStatus.PAUSED, RolloutStatus.HALTED, RolloutStatus.ROLLING_BACK}
)


class DeviceAssignment(Frozen):
    """One device the rollout touched: its stage, what it ran before, how its gate went."""

    stage: int = Field(..., ge=0)
    previous_release: str | None  # the release the hub targeted at it before; None = none
    issued_at: datetime
    revision: int | None = None  # the hub revision of the target, once the hub issued it
    seen_at: datetime | None = None  # when the hub first saw a report about the target
    soak_started_at: datetime | None = None
    restarts_at_soak_start: int = 0
    healthy_at: datetime | None = None
    failed_reason: str | None = None
    rollback_issued_at: datetime | None = None


class RolloutState(Frozen):
    """How far a rollout got; ``members`` is frozen at start, in rollout order."""

    rollout_id: str
    status: RolloutStatus = RolloutStatus.RUNNING
    current_stage: int = 0
    members: tuple[str, ...] = ()
    assignments: dict[str, DeviceAssignment] = Field(default_factory=dict)
    started_at: datetime
    updated_at: datetime
    reason: str | None = None  # why it halted, was paused, aborted or rolled back
    failed_stage: int | None = None


class ServiceObservation(Frozen):
    """One service of a device as last reported."""

    name: str
    running: bool
    healthy: bool | None = None  # None: the service has no healthcheck
    restarts: int = Field(0, ge=0)
    crash_loop: bool = False


class MetricPoint(Frozen):
    """One metrics sample of a device, as the gate reads it (what is absent is None)."""

    at: datetime
    cpu_percent: float | None = None
    memory_percent: float | None = None
    containers: tuple[tuple[str, float | None, float | None], ...] = ()  # service, cpu %, MB


class DeviceObservation(Frozen):
    """What the hub knows of a device now (from its row and last status)."""

    device_id: str
    online: bool = False
    last_contact: datetime | None = None
    reported_at: datetime | None = None  # when the status below was reported
    target_release: str | None = None  # the release of the hub's current target for it
    release: str | None = None  # the release it runs
    revision: int | None = None  # the hub revision it runs
    rollout_revision: int | None = None  # the revision rollout_state is about
    rollout_state: str | None = None  # agent: applying | settling | good | rolled_back | failed
    services: tuple[ServiceObservation, ...] = ()
    metrics: tuple[MetricPoint, ...] = ()  # read only when the gate bounds metrics

    @property
    def restarts(self) -> int:
        """Return the restarts of every service together."""
        return sum(s.restarts for s in self.services)

    @property
    def crash_loop(self) -> bool:
        """Return whether any service is in a crash loop."""
        return any(s.crash_loop for s in self.services)

    @property
    def all_up(self) -> bool:
        """Return whether every service runs (and is healthy where it has a healthcheck)."""
        return all(s.running and s.healthy is not False for s in self.services)


class TargetIssue(Frozen):
    """A target the hub must issue: the rollout's release, or on rollback the previous one."""

    device_id: str
    release: str | None  # None: it ran no release before; nothing is sent (it keeps it)
    rollback: bool = False


class RolloutEvent(Frozen):
    """Something the decision did, for the audit log and the operator."""

    kind: str  # stage_started | stage_passed | stage_failed | halted | rolling_back | ...
    stage: int | None = None
    detail: str = ""


class StageProgress(Frozen):
    """One stage's devices by verdict; devices not yet issued count as pending."""

    stage: int
    size: str  # as the operator wrote it: "1", "10%"
    planned: int
    pending: int = 0
    applying: int = 0
    healthy: int = 0
    failed: int = 0
    offline: int = 0
    rolled_back: int = 0
    held: int = 0


class Decision(Frozen):
    """What the planner decided: the new state, targets to issue, events, verdicts, progress.

    The hub applies it in one store transaction together with the events' audit records.
    """

    state: RolloutState
    issue: tuple[TargetIssue, ...] = ()
    events: tuple[RolloutEvent, ...] = ()
    verdicts: dict[str, Verdict] = Field(default_factory=dict)
    progress: tuple[StageProgress, ...] = ()
