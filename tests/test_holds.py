"""Technician holds (pause, pin): the pure decisions as tables, the state on a real store.

The lifecycle and read-audit cases run on a real SQLite store in ``tmp_path`` with one
fake of our own, a converger that records what it is asked to converge to.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_lifecycle import Converger, running, settle, target
from test_rollout_plan import ISSUED, NOW, OLD, seen, spec

from edge_agent.audit import verify_chain
from edge_agent.drop_audit import DropAudit
from edge_agent.errors import HoldRefused
from edge_agent.hold_api import ReadAudit
from edge_agent.holds import Hold, Holds, check_request, due, holds_targets, is_paused, sleep_s
from edge_agent.lifecycle import Lifecycle
from edge_agent.rollout import Phase
from edge_agent.store import LogLimits, Store, StoreLimits
from hub.device_holds import hold_view
from hub.rollout_gate import judge_device
from hub.rollout_models import RolloutState, RolloutStatus, Verdict
from hub.rollouts import plan_rollout

PAUSE = Hold("pause", "technician:ann", "fan", 100.0, 200.0)
PIN = Hold("pin", "technician:ann", "audit", 100.0, 400.0)


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ([], "(body)", "JSON object"),
        ({"reason": "x"}, "minutes", "required"),
        ({"minutes": "5", "reason": "x"}, "minutes", "number"),
        ({"minutes": True, "reason": "x"}, "minutes", "number"),
        ({"minutes": 0, "reason": "x"}, "minutes", "greater than 0"),
        ({"minutes": float("nan"), "reason": "x"}, "minutes", "finite number"),
        ({"minutes": 241, "reason": "x"}, "minutes", "technician.max_pause_minutes (240)"),
        ({"minutes": 5}, "reason", "required"),
        ({"minutes": 5, "reason": "  "}, "reason", "pattern"),
        ({"minutes": 5, "reason": "x" * 501}, "reason", "at most 500"),
    ],
)
def test_bad_hold_requests_are_refused_naming_the_field(
    body: Any, field: str, message: str
) -> None:
    with pytest.raises(HoldRefused) as caught:
        check_request("pause", body, 240)
    assert caught.value.field == field and message in caught.value.message


def test_a_hold_request_within_the_bound_is_taken() -> None:
    assert check_request("pin", {"minutes": 240, "reason": " fan "}, 240) == (240.0, "fan")


@pytest.mark.parametrize(
    ("holds", "now", "expired", "paused", "targets_wait", "sleep"),
    [
        ({}, 150.0, [], False, False, 60.0),
        ({"pause": PAUSE}, 150.0, [], True, True, 50.0),
        ({"pause": PAUSE}, 200.0, ["pause"], True, True, 0.0),
        ({"pin": PIN}, 150.0, [], False, True, 60.0),
        ({"pin": PIN, "pause": PAUSE}, 390.0, ["pause"], True, True, 0.0),
        ({"pin": PIN, "pause": PAUSE}, 500.0, ["pause", "pin"], True, True, 0.0),
    ],
)
def test_hold_decisions(
    holds: dict[str, Hold],
    now: float,
    expired: list[str],
    paused: bool,
    targets_wait: bool,
    sleep: float,
) -> None:
    assert due(holds, now) == expired
    assert is_paused(holds) is paused
    assert holds_targets(holds) is targets_wait
    assert sleep_s(holds, now) == sleep


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = await Store(tmp_path / "agent.db").open()
    yield s
    await s.close()


async def test_holds_persist_expire_and_are_audited_in_the_chain(store: Store) -> None:
    clock = [1000.0]
    holds = Holds(store, device_id="dev-1", clock=lambda: clock[0])
    await holds.hold("pause", "technician:ann@t1", 30, "replacing the fan")
    again = Holds(store, device_id="dev-1", clock=lambda: clock[0])
    await again.load()  # as after an agent restart
    assert again.is_paused() and again.active["pause"].until == 1000.0 + 30 * 60
    clock[0] += 30 * 60
    assert await again.expire_due() == ["pause"]
    assert not again.is_paused()
    await again.load()
    assert again.active == {}
    rows = list(reversed(await store.audit_log()))
    assert [(r["actor"], r["action"], r["outcome"]) for r in rows] == [
        ("technician:ann@t1", "device.pause", "ok"),
        ("agent", "device.pause_expired", "ok"),
    ]
    assert json.loads(rows[0]["detail"])["reason"] == "replacing the fan"
    assert verify_chain(rows) is None


async def test_a_target_accepted_while_held_waits_for_the_end_of_the_hold(store: Store) -> None:
    conv = Converger()
    holds = Holds(store, device_id="dev-1")
    lc = Lifecycle(store, conv, device_id="dev-1", holding=holds.holds_targets)
    t1, t2 = target(1, "1"), target(2, "2")
    await lc.accept(t1, source="hub", actor="hub")
    lc.images_ready(t1)
    lc.observed(running(t1))
    await settle(lc)
    assert lc.state.phase is Phase.GOOD
    await holds.hold("pin", "technician:ann", 10, "inspection")
    await lc.accept(t2, source="hub", actor="hub")  # stored (acknowledged), not activated
    assert conv.requested == [t1] and lc.desired == t1
    assert (await store.get_target(2)).state == "pending"  # type: ignore[union-attr]
    assert (await lc.report())["held_revision"] == "2"
    await lc.release_held()  # still pinned: nothing
    assert conv.requested == [t1]
    await holds.release("pin", "technician:ann")
    await lc.release_held()
    assert conv.requested[-1] == t2 and lc.state.phase is Phase.APPLYING


async def test_technician_reads_are_audited_once_per_window_with_a_count(store: Store) -> None:
    clock = [0.0]

    class Agent:
        pass

    agent: Any = Agent()
    agent.store = store
    reads = ReadAudit(agent, 600.0, clock=lambda: clock[0])
    for _ in range(50):
        await reads.record("technician:ann@t1", "/v1/status")
    await reads.record("technician:bob@t2", "/v1/status")
    await reads.record("technician:ann@t1", "/v1/audit")
    assert len(await store.audit_log()) == 3  # one per technician and route so far
    clock[0] = 601.0
    await reads.sweep()
    rows = [json.loads(r["detail"]) | {"who": r["actor"]} for r in await store.audit_log()]
    assert len(rows) == 4 and rows[0]["count"] == 49 and rows[0]["who"] == "technician:ann@t1"
    assert sum(r["count"] for r in rows) == 52  # every read counted, none dropped


# ---- the hub: the rollout gate and the device view ------------------------------------


@pytest.mark.parametrize(
    ("state", "release", "at", "verdict"),
    [
        ("held", OLD, 10, Verdict.HELD),
        ("held", OLD, 3000, Verdict.HELD),  # past the deadline: held, not failed
        ("applying", OLD, 300, Verdict.FAILED),  # the same silence without a hold fails
    ],
)
def test_gate_reports_a_held_device_as_held_not_failed(
    state: str, release: str, at: float, verdict: Verdict
) -> None:
    got, a = judge_device(
        spec(), ISSUED, seen(5, rollout_state=state, release=release), NOW + timedelta(seconds=at)
    )
    assert got is verdict
    if verdict is Verdict.HELD:
        assert a.seen_at is None  # its deadline starts when it is first seen applying


def test_a_held_device_does_not_hold_its_stage_and_is_counted_as_held() -> None:
    sp = spec()
    state = RolloutState(
        rollout_id="r1",
        members=("dev-1",),
        assignments={"dev-1": ISSUED},
        started_at=NOW,
        updated_at=NOW,
    )
    obs = {"dev-1": seen(5, rollout_state="held", release=OLD)}
    decision = plan_rollout(sp, state, obs, NOW + timedelta(seconds=10))
    assert decision.verdicts == {"dev-1": Verdict.HELD}
    assert decision.progress[0].held == 1 and decision.progress[0].failed == 0
    assert decision.state.status is RolloutStatus.COMPLETED


HOLD = {"by": "technician:ann@t1", "reason": "fan", "since": "2026-03-01T11:00:00+00:00"}


@pytest.mark.parametrize(
    ("report", "shown"),
    [
        (None, None),
        ({"hold": None}, None),
        ({"hold": {"pin": {**HOLD, "until": "2026-03-01T13:00:00+00:00"}}}, ["pin"]),
        ({"hold": {"pause": {**HOLD, "until": "2026-03-01T11:30:00+00:00"}}}, None),  # over
        ({"hold": {"pause": {**HOLD, "until": "soon"}}}, None),
        ({"hold": {"other": {**HOLD, "until": "2026-03-01T13:00:00+00:00"}}}, None),
    ],
)
def test_device_view_shows_the_active_holds_of_the_newest_report(
    report: Any, shown: list[str] | None
) -> None:
    got = hold_view(report, NOW)
    assert (sorted(got) if got else None) == shown
    if got:
        assert got["pin"]["by"] == "technician:ann@t1" and got["pin"]["reason"] == "fan"


# ---- the agent's own decisions: dropped log lines, aggregated --------------------------


@pytest.mark.parametrize(
    ("drops", "written"),
    [
        # (seconds, lines) per drop -> the counts written, None where only counted
        ([(0, 5)], [5]),
        ([(0, 5), (10, 3), (20, 2)], [5, None, None]),
        ([(0, 5), (10, 3), (300, 2)], [5, None, 5]),  # the later ones added up
        ([(0, 1), (299.9, 1), (300, 1), (301, 1)], [1, None, 2, None]),
    ],
)
def test_log_drops_are_audited_once_per_interval(
    drops: list[tuple[float, int]], written: list[int | None]
) -> None:
    clock = [0.0]
    audit = DropAudit(300.0, clock=lambda: clock[0])
    got = []
    for at, lines in drops:
        clock[0] = at
        got.append(audit.take("logs:web", lines))
    assert got == written


async def test_dropping_local_log_lines_writes_one_agent_audit_row_per_interval(
    tmp_path: Path,
) -> None:
    limits = StoreLimits(
        log_disk_reserve_bytes=0,
        logs=LogLimits(max_bytes_per_container=64 * 1024, drop_audit_interval_s=3600.0),
    )
    store = await Store(tmp_path / "agent.db", limits=limits).open()
    try:
        for _ in range(20):
            lines = [
                {"service": "web", "ts": 1e9, "stream": "stdout", "line": "x" * 1000}
                for _ in range(20)
            ]
            await store.append_logs(lines)
        dropped = (await store.counters())["log_lines_dropped_quota"]
        rows = [r for r in await store.audit_log(1000) if r["action"] == "logs.dropped"]
        assert dropped > 100 and len(rows) == 1, (dropped, rows)
        assert rows[0]["actor"] == "agent" and rows[0]["object"] == "service:web"
        detail = json.loads(rows[0]["detail"])
        assert detail["bound"] == "logs.local_max_bytes_per_container"
        assert 0 < detail["lines"] <= dropped
        assert verify_chain(list(reversed(await store.audit_log(1000)))) is None
    finally:
        await store.close()
