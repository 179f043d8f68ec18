"""The rollout planner and health gate: tables, Hypothesis properties, a 1,000-device walk.

Pure: no hub, no network. ``SimFleet`` is a simulated fleet (named as such): each
simulated device takes the targets a decision issues and reports like an agent would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hub.errors import Conflict, InvalidRequest
from hub.rollout_gate import device_deadline, judge_device
from hub.rollout_models import (
    ACTIVE_STATUSES,
    DeviceAssignment,
    DeviceObservation,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    ServiceObservation,
    TargetIssue,
    Verdict,
    window_opens_at,
)
from hub.rollouts import (
    abort,
    check_overlap,
    order_devices,
    pause,
    plan_rollout,
    record_revisions,
    resume,
    rollback,
    stage_sizes,
    start_rollout,
    supersede,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OLD, NEW = "app@1", "app@2"
TERMINAL = {
    RolloutStatus.COMPLETED,
    RolloutStatus.ROLLED_BACK,
    RolloutStatus.HALTED,
    RolloutStatus.ABORTED,
}


def spec(**kw: Any) -> RolloutSpec:
    """Return a spec with test defaults (overridable)."""
    base: dict[str, Any] = {
        "release": NEW,
        "group": "all",
        "stages": "100%",
        "soak_s": 60,
        "stage_deadline_s": 300,
    }
    return RolloutSpec(**{**base, **kw})


def ids(n: int) -> list[str]:
    """Return n device ids."""
    return [f"dev-{i:04d}" for i in range(n)]


# ---- a simulated fleet ---------------------------------------------------------------


@dataclass
class SimDevice:
    """A simulated device: takes targets, reports like an agent (no Docker, no network)."""

    device_id: str
    behaviour: str = "good"  # good | fails (rolls NEW back on the device) | silent
    target: str | None = OLD
    release: str | None = OLD
    state: str | None = "good"
    reported_at: datetime | None = NOW - timedelta(hours=1)

    def receive(self, issue: TargetIssue, t: datetime) -> None:
        """Take a target issued at t, and report at once unless silent."""
        if issue.release is None:
            return  # nothing to send back: the engine sends no target (rollout.rollback_kept)
        self.target = issue.release
        if self.behaviour == "silent":
            return
        self.reported_at = t
        if issue.rollback or self.behaviour == "good":
            self.release, self.state = issue.release, "good"
        else:
            self.state = "rolled_back"

    def observe(self) -> DeviceObservation:
        """Return what the hub knows of this device."""
        return DeviceObservation(
            device_id=self.device_id,
            online=self.behaviour != "silent",
            last_contact=self.reported_at,
            reported_at=self.reported_at,
            target_release=self.target,
            release=self.release,
            rollout_state=self.state,
            services=(ServiceObservation(name="web", running=True, healthy=True),),
        )


@dataclass
class SimFleet:
    """Simulated devices by id, with the rollout run against them step by step."""

    devices: dict[str, SimDevice]
    issued: list[TargetIssue] = field(default_factory=list)

    @classmethod
    def of(cls, n: int, behaviours: dict[str, str] | None = None) -> SimFleet:
        """Return n devices, good unless ``behaviours`` says otherwise."""
        behaviours = behaviours or {}
        return cls({d: SimDevice(d, behaviours.get(d, "good")) for d in ids(n)})

    def observations(self) -> dict[str, DeviceObservation]:
        """Return every device's observation."""
        return {d: dev.observe() for d, dev in self.devices.items()}

    def apply(self, issues: tuple[TargetIssue, ...], t: datetime) -> None:
        """Deliver issued targets."""
        self.issued.extend(issues)
        for issue in issues:
            self.devices[issue.device_id].receive(issue, t)

    def run(self, sp: RolloutSpec, state: RolloutState, t: datetime, step_s: float = 30) -> list:
        """Plan, deliver, advance time until the rollout ends; return every decision."""
        decisions = []
        for _ in range(2000):
            decision = plan_rollout(sp, state, self.observations(), t)
            decisions.append(decision)
            self.apply(decision.issue, t)
            state = decision.state
            if state.status in TERMINAL:
                return decisions
            t += timedelta(seconds=step_s)
        raise AssertionError("the rollout never ended")


def started(n: int, sp: RolloutSpec, rollout_id: str = "r1") -> RolloutState:
    """Return a new rollout over n devices, all online."""
    return start_rollout(rollout_id, sp, ids(n), set(ids(n)), NOW)


def kinds(decisions: list) -> list[tuple[str, int | None]]:
    """Return every event of the decisions as (kind, stage)."""
    return [(e.kind, e.stage) for d in decisions for e in d.events]


# ---- spec parsing --------------------------------------------------------------------

SPEC_ERRORS = [
    ({"release": "app"}, "release"),
    ({"release": "App@1"}, "release"),
    ({"stages": [10, 5, "100%"]}, "stages"),
    ({"stages": ["10%", "10%", "100%"]}, "stages"),
    ({"stages": ["10%", 5, "100%"]}, "stages"),
    ({"stages": [1, "50%"]}, "stages"),
    ({"stages": [0, "100%"]}, "stages"),
    ({"stages": ["150%"]}, "stages"),
    ({"stages": []}, "stages"),
    ({"stages": "1,ten,100%"}, "stages"),
    ({"stages": [True, "100%"]}, "stages"),
    ({"max_failed": "x%"}, "max_failed"),
    ({"max_failed": -1}, "max_failed"),
    ({"max_failed": "101%"}, "max_failed"),
    ({"soak_s": -1}, "soak_s"),
    ({"stage_deadline_s": 0}, "stage_deadline_s"),
    ({"window": "1-4", "tz": "UTC"}, "window"),
    ({"window": "25:00-04:00", "tz": "UTC"}, "window"),
    ({"window": "01:00-01:00", "tz": "UTC"}, "window"),
    ({"window": "01:00-04:00", "tz": "Mars/Olympus"}, "tz"),
    ({"window": "01:00-04:00", "tz": "../etc/passwd"}, "tz"),
    ({"window": "01:00-04:00"}, "tz"),
    ({"group": None}, "group"),
    ({"selector": "site=berlin"}, "group"),
    ({"gate": {"max_restarts_during_soak": -1}}, "gate"),
    ({"color": "blue"}, "color"),
]


@pytest.mark.parametrize(("kw", "name"), SPEC_ERRORS)
def test_spec_error_names_the_field(kw: dict[str, Any], name: str) -> None:
    with pytest.raises(ValidationError) as info:
        spec(**kw)
    err = info.value.errors()[0]
    assert name in (str(err["loc"][0]) if err["loc"] else err["msg"])


def test_spec_parses_stages_and_thresholds() -> None:
    sp = spec(stages="1, 10%,50%,100%", max_failed="5%", window="22:00-02:00", tz="Europe/Berlin")
    assert [str(s) for s in sp.stages] == ["1", "10%", "50%", "100%"]
    assert str(sp.max_failed) == "5%"
    assert [str(s) for s in spec(stages=[1, 5, "100%"], max_failed=3).stages] == ["1", "5", "100%"]
    assert spec(max_failed="2").max_failed.count == 2


STAGE_SIZES = [
    (["100%"], 7, [7]),
    ([1, "10%", "50%", "100%"], 1000, [1, 100, 500, 1000]),
    ([1, "10%", "50%", "100%"], 5, [1, 1, 3, 5]),
    ([1, "10%", "50%", "100%"], 1, [1, 1, 1, 1]),
    ([5, 20, "100%"], 3, [3, 3, 3]),
    (["33%", "100%"], 10, [4, 10]),
    (["10%", "100%"], 30, [3, 30]),
]


@pytest.mark.parametrize(("stages", "total", "sizes"), STAGE_SIZES)
def test_stage_sizes(stages: list[Any], total: int, sizes: list[int]) -> None:
    assert stage_sizes(spec(stages=stages).stages, total) == sizes


# ---- ordering ------------------------------------------------------------------------


def test_order_devices_online_first_then_stable_hash() -> None:
    devices = ids(50)
    online = set(devices[40:])
    order = order_devices(devices, online, "r1")
    assert set(order[:10]) == online
    assert order == order_devices(list(reversed(devices)), online, "r1")
    assert order != order_devices(devices, online, "r2")  # each rollout spreads differently
    assert sorted(order) == sorted(devices)


def test_start_rollout_without_members_names_the_group() -> None:
    with pytest.raises(InvalidRequest) as info:
        start_rollout("r1", spec(), [], set(), NOW)
    assert info.value.fields[0]["field"] == "group"


# ---- walking stages ------------------------------------------------------------------


def test_healthy_fleet_walks_every_stage() -> None:
    sp = spec(stages="1,10%,50%,100%")
    fleet = SimFleet.of(20)
    decisions = fleet.run(sp, started(20, sp), NOW)
    assert decisions[-1].state.status is RolloutStatus.COMPLETED
    started_stages = [s for k, s in kinds(decisions) if k == "stage_started"]
    passed = [s for k, s in kinds(decisions) if k == "stage_passed"]
    assert started_stages == [0, 1, 2, 3] and passed == [0, 1, 2, 3]
    assert sorted(i.device_id for i in fleet.issued if i.release == NEW) == ids(20)
    assert [p.healthy for p in decisions[-1].progress] == [1, 1, 8, 10]
    assert [p.planned for p in decisions[-1].progress] == [1, 1, 8, 10]


def test_a_stage_waits_for_the_soak() -> None:
    sp = spec(stages="1,100%", soak_s=600)
    fleet = SimFleet.of(4)
    decisions = fleet.run(sp, started(4, sp), NOW, step_s=60)
    second = next(d for d in decisions if ("stage_started", 1) in kinds([d]))
    # issued at NOW, seen good at NOW+60 (soak starts), healthy at NOW+660, stage 1 then.
    assert second.state.updated_at == NOW + timedelta(seconds=660)


THRESHOLDS = [
    # (max_failed, failing devices of 10, end status)
    (2, 1, RolloutStatus.COMPLETED),
    (2, 2, RolloutStatus.COMPLETED),
    (2, 3, RolloutStatus.ROLLED_BACK),
    ("20%", 1, RolloutStatus.COMPLETED),
    ("20%", 2, RolloutStatus.COMPLETED),
    ("20%", 3, RolloutStatus.ROLLED_BACK),
    (0, 1, RolloutStatus.ROLLED_BACK),
    ("100%", 10, RolloutStatus.COMPLETED),
]


@pytest.mark.parametrize(("max_failed", "failing", "status"), THRESHOLDS)
def test_failures_under_at_over_the_threshold(
    max_failed: Any, failing: int, status: RolloutStatus
) -> None:
    sp = spec(max_failed=max_failed)
    fleet = SimFleet.of(10, {d: "fails" for d in ids(10)[:failing]})
    end = fleet.run(sp, started(10, sp), NOW)[-1]
    assert end.state.status is status
    if status is RolloutStatus.COMPLETED:
        assert sum(p.failed for p in end.progress) == failing
    else:
        assert sum(p.rolled_back for p in end.progress) == 10


def test_offline_devices_are_counted_and_do_not_stall() -> None:
    sp = spec(stages="50%,100%", stage_deadline_s=300)
    silent = ids(10)[:2]
    fleet = SimFleet.of(10, {d: "silent" for d in silent})
    state = start_rollout("r1", sp, ids(10), set(ids(10)[2:]), NOW)
    decisions = fleet.run(sp, state, NOW)
    end = decisions[-1]
    assert end.state.status is RolloutStatus.COMPLETED
    assert sum(p.offline for p in end.progress) == 2 and sum(p.healthy for p in end.progress) == 8
    # online devices go first: the silent ones are in the last stage, judged at its deadline
    last_issue = max(end.state.assignments[s].issued_at for s in silent)
    assert end.state.updated_at >= last_issue + timedelta(seconds=300)
    assert {i.device_id for i in fleet.issued} == set(ids(10))


def test_halt_rolls_back_each_device_to_its_previous_release() -> None:
    sp = spec(stages="4,100%")
    behaviours = {d: "silent" for d in ids(10)[4:]}  # offline now: not in the first stage
    fleet = SimFleet.of(10, {**behaviours, "dev-0001": "fails"})
    previous = {"dev-0000": "app@0", "dev-0001": OLD, "dev-0002": None, "dev-0003": "web@7"}
    for device_id, release in previous.items():
        fleet.devices[device_id].target = fleet.devices[device_id].release = release
    decisions = fleet.run(sp, started(10, sp), NOW)
    end = decisions[-1]
    assert end.state.status is RolloutStatus.ROLLED_BACK and end.state.failed_stage == 0
    rollbacks = {i.device_id: i.release for i in fleet.issued if i.rollback}
    assert rollbacks == previous  # only the touched devices, each to its own previous release
    assert "1 of 4 devices failed" in (end.state.reason or "")
    # dev-0002 ran nothing before: it keeps the release it runs well (not back: failed)
    assert [p.rolled_back for p in end.progress] == [3, 0]
    assert [p.failed for p in end.progress] == [1, 0]
    assert [p.pending for p in end.progress] == [0, 6]


def test_halt_without_rollback_waits_for_an_operator() -> None:
    sp = spec(rollback_on_failure=False)
    fleet = SimFleet.of(3, {"dev-0000": "fails"})
    end = fleet.run(sp, started(3, sp), NOW)[-1]
    assert end.state.status is RolloutStatus.HALTED and not end.issue
    by_hand = rollback(end.state, NOW + timedelta(hours=1), "bad build")
    assert {i.device_id for i in by_hand.issue} == set(ids(3))
    assert by_hand.state.status is RolloutStatus.ROLLING_BACK


# ---- the gate, one device ------------------------------------------------------------

ISSUED = DeviceAssignment(stage=0, previous_release=OLD, issued_at=NOW, revision=7)


def seen(at: float, **kw: Any) -> DeviceObservation:
    """Return a device report ``at`` seconds after NOW, good on NEW unless told."""
    base: dict[str, Any] = {
        "device_id": "d",
        "online": True,
        "reported_at": NOW + timedelta(seconds=at),
        "release": NEW,
        "rollout_revision": 7,
        "rollout_state": "good",
        "services": (ServiceObservation(name="web", running=True, healthy=True, restarts=3),),
    }
    return DeviceObservation(**{**base, **kw})


def svc(**kw: Any) -> tuple[ServiceObservation, ...]:
    """Return one service observation."""
    return (ServiceObservation(**{"name": "web", "running": True, "healthy": True, **kw}),)


GATE = [
    # (observation, seconds after NOW, verdict)
    (None, 10, Verdict.PENDING),
    (None, 300, Verdict.OFFLINE),
    (seen(-5), 10, Verdict.PENDING),  # reported before the target was issued
    (seen(5, rollout_revision=6), 10, Verdict.PENDING),  # about an older target
    (seen(5, rollout_state="applying", release=OLD), 10, Verdict.APPLYING),
    (seen(5, rollout_state="settling"), 10, Verdict.APPLYING),
    (seen(5, rollout_state="applying", release=OLD), 300, Verdict.FAILED),
    (seen(5, rollout_state="applying", release=OLD, online=False), 300, Verdict.OFFLINE),
    (seen(5, rollout_state="rolled_back", release=OLD), 10, Verdict.FAILED),
    (seen(5, rollout_state="failed", release=OLD), 10, Verdict.FAILED),
    (seen(5, services=svc(crash_loop=True)), 10, Verdict.FAILED),
    (seen(5, services=svc(healthy=False)), 10, Verdict.APPLYING),
    (seen(5, services=svc(running=False)), 10, Verdict.APPLYING),
    (seen(5, services=svc(healthy=None)), 10, Verdict.APPLYING),  # no healthcheck: soaking
    (seen(5, release="other@1"), 10, Verdict.APPLYING),
    (seen(5), 10, Verdict.APPLYING),  # soak starts now
]


@pytest.mark.parametrize(("obs", "at", "verdict"), GATE)
def test_gate_verdict(obs: DeviceObservation | None, at: float, verdict: Verdict) -> None:
    got, _ = judge_device(spec(), ISSUED, obs, NOW + timedelta(seconds=at))
    assert got is verdict


def test_soak_timing_with_an_explicit_now() -> None:
    sp = spec(soak_s=600)
    v, a = judge_device(sp, ISSUED, seen(10), NOW + timedelta(seconds=10))
    assert v is Verdict.APPLYING and a.soak_started_at == NOW + timedelta(seconds=10)
    v, a = judge_device(sp, a, seen(10), NOW + timedelta(seconds=609))
    assert v is Verdict.APPLYING
    v, a = judge_device(sp, a, seen(10), NOW + timedelta(seconds=610))
    assert v is Verdict.HEALTHY and a.healthy_at == NOW + timedelta(seconds=610)
    v, _ = judge_device(sp, a, seen(10), NOW + timedelta(days=3))  # healthy is sticky
    assert v is Verdict.HEALTHY


def test_a_service_going_down_restarts_the_soak() -> None:
    sp = spec(soak_s=600, stage_deadline_s=3600)
    _, a = judge_device(sp, ISSUED, seen(10), NOW + timedelta(seconds=10))
    v, a = judge_device(sp, a, seen(300, services=svc(running=False)), NOW + timedelta(seconds=300))
    assert v is Verdict.APPLYING and a.soak_started_at is None
    v, a = judge_device(sp, a, seen(400), NOW + timedelta(seconds=400))
    v, a = judge_device(sp, a, seen(400), NOW + timedelta(seconds=999))
    assert v is Verdict.APPLYING
    v, a = judge_device(sp, a, seen(400), NOW + timedelta(seconds=1000))
    assert v is Verdict.HEALTHY


@pytest.mark.parametrize(
    ("allowed", "restarts", "verdict"),
    [(0, 0, "applying"), (0, 1, "failed"), (2, 2, "applying"), (2, 3, "failed")],
)
def test_restarts_during_the_soak(allowed: int, restarts: int, verdict: str) -> None:
    sp = spec(soak_s=600, gate={"max_restarts_during_soak": allowed})
    _, a = judge_device(sp, ISSUED, seen(10), NOW + timedelta(seconds=10))
    assert a.restarts_at_soak_start == 3  # restarts before the soak do not count
    v, a = judge_device(
        sp, a, seen(20, services=svc(restarts=3 + restarts)), NOW + timedelta(seconds=20)
    )
    assert v.value == verdict
    if v is Verdict.FAILED:
        assert "max_restarts_during_soak" in (a.failed_reason or "")


WINDOWS = [
    # (window, tz, at UTC, opens at UTC)
    ("01:00-04:00", "Europe/Berlin", datetime(2026, 3, 1, 12, 0), datetime(2026, 3, 2, 0, 0)),
    ("01:00-04:00", "Europe/Berlin", datetime(2026, 3, 1, 1, 0), datetime(2026, 3, 1, 1, 0)),
    ("22:00-02:00", "UTC", datetime(2026, 3, 1, 1, 30), datetime(2026, 3, 1, 1, 30)),
    ("22:00-02:00", "UTC", datetime(2026, 3, 1, 2, 0), datetime(2026, 3, 1, 22, 0)),
    ("22:00-02:00", "UTC", datetime(2026, 3, 1, 23, 0), datetime(2026, 3, 1, 23, 0)),
    # summer time starts in Berlin on 2026-03-29: 03:00 local is then 01:00 UTC
    ("03:00-04:00", "Europe/Berlin", datetime(2026, 3, 29, 0, 0), datetime(2026, 3, 29, 1, 0)),
]


@pytest.mark.parametrize(("window", "tz", "at", "opens"), WINDOWS)
def test_window_opens_at(window: str, tz: str, at: datetime, opens: datetime) -> None:
    assert window_opens_at(window, tz, at.replace(tzinfo=UTC)) == opens.replace(tzinfo=UTC)


def test_the_deadline_counts_from_the_window_opening() -> None:
    sp = spec(window="01:00-04:00", tz="Europe/Berlin", stage_deadline_s=600)
    assert device_deadline(sp, ISSUED) == datetime(2026, 3, 2, 0, 10, tzinfo=UTC)
    v, _ = judge_device(sp, ISSUED, None, NOW + timedelta(hours=6))
    assert v is Verdict.PENDING  # silent, but its window has not opened yet


# ---- operator actions ----------------------------------------------------------------


def test_pause_resume_abort() -> None:
    sp = spec(stages="1,100%", soak_s=0)
    fleet = SimFleet.of(5)
    first = plan_rollout(sp, started(5, sp), fleet.observations(), NOW)
    fleet.apply(first.issue, NOW)
    paused = pause(first.state, NOW, "lunch").state
    assert paused.status is RolloutStatus.PAUSED and paused.reason == "lunch"
    held = plan_rollout(sp, paused, fleet.observations(), NOW + timedelta(seconds=1))
    assert not held.issue and held.state.status is RolloutStatus.PAUSED
    running = resume(held.state, NOW + timedelta(seconds=2)).state
    more = plan_rollout(sp, running, fleet.observations(), NOW + timedelta(seconds=2))
    assert len(more.issue) == 4
    aborted = abort(more.state, NOW, "wrong release").state
    assert aborted.status is RolloutStatus.ABORTED
    assert not plan_rollout(sp, aborted, fleet.observations(), NOW + timedelta(hours=1)).issue


def test_a_paused_rollout_still_halts_on_failure() -> None:
    sp = spec()
    fleet = SimFleet.of(2, {"dev-0000": "fails"})
    first = plan_rollout(sp, started(2, sp), fleet.observations(), NOW)
    fleet.apply(first.issue, NOW)
    later = plan_rollout(sp, pause(first.state, NOW).state, fleet.observations(), NOW)
    assert later.state.status is RolloutStatus.ROLLING_BACK and len(later.issue) == 2


ILLEGAL = [
    (pause, RolloutStatus.PAUSED),
    (resume, RolloutStatus.RUNNING),
    (resume, RolloutStatus.HALTED),
    (abort, RolloutStatus.COMPLETED),
    (abort, RolloutStatus.ROLLING_BACK),
    (rollback, RolloutStatus.ROLLING_BACK),
    (rollback, RolloutStatus.ROLLED_BACK),
]


@pytest.mark.parametrize(("action", "status"), ILLEGAL)
def test_illegal_operator_action_is_a_conflict(action: Any, status: RolloutStatus) -> None:
    state = started(2, spec()).model_copy(update={"status": status})
    with pytest.raises(Conflict) as info:
        action(state, NOW)
    assert info.value.status == 409 and status.value in info.value.message


def test_rollback_by_hand_after_completion() -> None:
    sp = spec()
    fleet = SimFleet.of(3)
    end = fleet.run(sp, started(3, sp), NOW)[-1]
    back = rollback(end.state, NOW + timedelta(hours=1), "customer complaint")
    assert {(i.device_id, i.release) for i in back.issue} == {(d, OLD) for d in ids(3)}
    fleet.apply(back.issue, NOW + timedelta(hours=1))
    done = plan_rollout(sp, back.state, fleet.observations(), NOW + timedelta(hours=1))
    assert done.state.status is RolloutStatus.ROLLED_BACK
    assert done.state.reason == "customer complaint"


# ---- overlap -------------------------------------------------------------------------


def test_overlap_is_refused_unless_superseding() -> None:
    active = started(3, spec(), "r1")
    other = started(3, spec(), "r2").model_copy(update={"status": RolloutStatus.COMPLETED})
    with pytest.raises(Conflict) as info:
        check_overlap(spec(), [active, other], ["dev-0002", "dev-0009"])
    assert "r1 (1 devices)" in info.value.message
    assert info.value.fields[0]["examples"] == ["dev-0002"]
    assert check_overlap(spec(supersedes="r1"), [active, other], ["dev-0002"]) == ("r1",)
    assert check_overlap(spec(), [active], ["dev-0009"]) == ()


# ---- properties ----------------------------------------------------------------------

stage_lists = st.lists(st.integers(1, 99), max_size=4, unique=True).map(
    lambda xs: [f"{x}%" for x in sorted(xs)] + ["100%"]
)
counts_first = st.lists(st.integers(1, 50), max_size=2, unique=True).map(sorted)


@given(counts=counts_first, percents=stage_lists, total=st.integers(0, 3000))
def test_stages_never_shrink(counts: list[int], percents: list[str], total: int) -> None:
    sizes = stage_sizes(spec(stages=[*counts, *percents]).stages, total)
    assert sizes == sorted(sizes) and sizes[-1] == total and all(s <= total for s in sizes)


DEVICES = st.tuples(
    st.sampled_from(["good", "good", "good", "fails", "silent"]),
    st.sampled_from([OLD, OLD, "app@0", None]),
)


@settings(max_examples=80, deadline=None)
@given(
    devices=st.lists(DEVICES, min_size=1, max_size=30),
    stages=stage_lists,
    max_failed=st.integers(0, 3),
)
def test_rollout_properties(
    devices: list[tuple[str, str | None]], stages: list[str], max_failed: int
) -> None:
    n = len(devices)
    sp = spec(stages=stages, max_failed=max_failed)
    fleet = SimFleet.of(n, {d: b for d, (b, _) in zip(ids(n), devices, strict=True)})
    previous = {d: p for d, (_, p) in zip(ids(n), devices, strict=True)}
    for device_id, release in previous.items():
        fleet.devices[device_id].target = fleet.devices[device_id].release = release
    decisions = fleet.run(sp, started(n, sp), NOW)
    forward = [i.device_id for i in fleet.issued if not i.rollback]
    assert len(forward) == len(set(forward))  # a device is assigned at most once
    touched = [len(d.state.assignments) for d in decisions]
    assert touched == sorted(touched)  # stages never shrink
    end = decisions[-1]
    event(end.state.status.value)
    if end.state.status is RolloutStatus.ROLLED_BACK:
        back = {i.device_id: i.release for i in fleet.issued if i.rollback}
        assert back == {d: previous[d] for d in end.state.assignments}
        for d in end.state.assignments:  # each runs its previous release, or is offline
            if previous[d] is None and fleet.devices[d].release == sp.release:
                assert end.verdicts[d] is Verdict.FAILED  # nothing to go back to: kept, not back
                continue
            assert fleet.devices[d].release == previous[d] or end.verdicts[d] is Verdict.OFFLINE
    failed = {d for d, v in end.verdicts.items() if v is Verdict.FAILED}
    settled = {d for d, v in end.verdicts.items() if v in (Verdict.HEALTHY, Verdict.OFFLINE)}
    allowed = sp.max_failed.of(n, round_up=False)
    completes = settled | failed == set(ids(n)) and len(failed) <= allowed
    assert (end.state.status is RolloutStatus.COMPLETED) == completes


# ---- at fleet size -------------------------------------------------------------------


def test_thousand_devices_walk_every_stage() -> None:
    sp = spec(stages="1,10%,50%,100%", max_failed="1%")
    silent = {d: "silent" for d in ids(1000)[::50]}  # 20 devices never report
    fleet = SimFleet.of(1000, silent)
    state = start_rollout("big", sp, ids(1000), set(ids(1000)) - set(silent), NOW)
    decisions = fleet.run(sp, state, NOW, step_s=60)
    end = decisions[-1]
    assert end.state.status is RolloutStatus.COMPLETED
    assert [p.planned for p in end.progress] == [1, 99, 400, 500]
    assert (
        sum(p.healthy for p in end.progress) == 980 and sum(p.offline for p in end.progress) == 20
    )
    assert len(fleet.issued) == 1000


def test_thousand_devices_fail_at_a_stage_and_roll_back() -> None:
    sp = spec(stages="1,10%,50%,100%", max_failed="2%")
    failing = {d: "fails" for d in ids(1000)[::20]}  # 5% of the fleet rolls back on-device
    fleet = SimFleet.of(1000, failing)
    decisions = fleet.run(sp, started(1000, sp, "big"), NOW, step_s=60)
    end = decisions[-1]
    assert end.state.status is RolloutStatus.ROLLED_BACK
    touched = set(end.state.assignments)
    assert 0 < len(touched) < 1000  # halted before the last stage
    back = {i.device_id: i.release for i in fleet.issued if i.rollback}
    assert back == dict.fromkeys(touched, OLD)
    assert all(fleet.devices[d].release == OLD for d in fleet.devices)
    assert sum(p.rolled_back for p in end.progress) == len(touched)


def test_a_device_returning_after_its_deadline_gets_a_fresh_one() -> None:
    sp = spec(stage_deadline_s=300)
    v, a = judge_device(sp, ISSUED, None, NOW + timedelta(seconds=400))
    assert v is Verdict.OFFLINE
    back = seen(3600, rollout_state="applying", release=OLD)
    v, a = judge_device(sp, a, back, NOW + timedelta(seconds=3600))
    assert v is Verdict.APPLYING  # not failed: it was away, not slow
    v, _ = judge_device(sp, a, back, NOW + timedelta(seconds=3900))
    assert v is Verdict.FAILED  # its fresh deadline passed while it talked


def test_a_returning_device_of_an_earlier_stage_does_not_hold_the_current_one() -> None:
    sp = spec(stages="1,100%", soak_s=0, stage_deadline_s=300)
    fleet = SimFleet.of(3, {"dev-0000": "silent"})
    now_online = {
        d: o.model_copy(update={"online": d == "dev-0000"}) for d, o in fleet.observations().items()
    }
    first = plan_rollout(sp, started(3, sp), now_online, NOW)  # online now: goes first
    fleet.apply(first.issue, NOW)
    assert [i.device_id for i in first.issue] == ["dev-0000"]
    t = NOW + timedelta(seconds=300)
    second = plan_rollout(sp, first.state, fleet.observations(), t)  # offline: stage 0 passes
    fleet.apply(second.issue, t)
    returned = fleet.devices["dev-0000"]
    returned.behaviour, returned.reported_at, returned.state = "good", t, "applying"
    end = plan_rollout(sp, second.state, fleet.observations(), t + timedelta(seconds=1))
    assert end.state.status is RolloutStatus.COMPLETED
    assert end.verdicts["dev-0000"] is Verdict.APPLYING


@settings(max_examples=50, deadline=None)
@given(
    counts=counts_first,
    percents=stage_lists,
    max_failed=st.one_of(
        st.integers(0, 5), st.floats(0, 100).map(lambda p: f"{p!r}%"), st.just("12.3456789%")
    ),
)
def test_spec_and_state_round_trip_as_json(
    counts: list[int], percents: list[str], max_failed: Any
) -> None:
    sp = spec(stages=[*counts, *percents], max_failed=max_failed, window="01:00-04:00", tz="UTC")
    dumped = sp.model_dump(mode="json")
    assert dumped["stages"] == [str(s) for s in sp.stages]  # as the operator writes them
    assert RolloutSpec.model_validate_json(sp.model_dump_json()) == sp
    decision = plan_rollout(sp, started(5, sp), SimFleet.of(5).observations(), NOW)
    state = decision.state
    assert RolloutState.model_validate_json(state.model_dump_json()) == state


def test_revisions_recorded_after_issue() -> None:
    sp = spec()
    first = plan_rollout(sp, started(2, sp), {}, NOW)
    state = record_revisions(first.state, {"dev-0000": 11, "dev-0001": 12})
    assert state.assignments["dev-0001"].revision == 12
    with pytest.raises(InvalidRequest):
        record_revisions(state, {"dev-0099": 1})


@pytest.mark.parametrize("status", sorted(ACTIVE_STATUSES))
def test_a_superseded_rollout_is_aborted_from_any_active_status(status: RolloutStatus) -> None:
    old = started(3, spec(), "r1").model_copy(update={"status": status})
    assert check_overlap(spec(supersedes="r1"), [old], ids(3)) == ("r1",)
    done = supersede(old, "r2", NOW)
    assert done.state.status is RolloutStatus.ABORTED and done.state.reason == "superseded by r2"
    assert not done.issue and done.events[0].kind == "superseded"


def test_progress_per_stage_while_running() -> None:
    sp = spec(stages="2,100%", soak_s=600)
    fleet = SimFleet.of(10, {"dev-0003": "silent"})
    first = plan_rollout(sp, started(10, sp), fleet.observations(), NOW)
    counts = [(p.planned, p.pending, p.applying, p.healthy) for p in first.progress]
    assert counts == [(2, 2, 0, 0), (8, 8, 0, 0)]
    fleet.apply(first.issue, NOW)
    soaking = plan_rollout(sp, first.state, fleet.observations(), NOW + timedelta(seconds=5))
    assert [(p.pending, p.applying) for p in soaking.progress] == [(0, 2), (8, 0)]
    done = plan_rollout(sp, soaking.state, fleet.observations(), NOW + timedelta(seconds=605))
    assert [(p.healthy, p.pending) for p in done.progress] == [(2, 0), (0, 8)]
    assert len(done.issue) == 8  # stage 1 began in the same decision
