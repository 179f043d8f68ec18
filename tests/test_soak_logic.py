"""The soak's pure parts: the seeded fault plan, the exactly-once check, slopes in lifetimes."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from soak_delivery import AgentOutbox, check_delivery
from soak_faults import plan_faults
from soak_series import Sample, max_per_lifetime, slopes, within_slope


def test_fault_plan_is_the_same_for_the_same_seed_and_ordered_in_time() -> None:
    plan = plan_faults(random.Random(3), 3600)
    assert plan == plan_faults(random.Random(3), 3600)
    assert plan != plan_faults(random.Random(4), 3600)
    assert [f.at_s for f in plan] == sorted(f.at_s for f in plan)
    assert {f.kind for f in plan} == {"container_kill", "hub_restart", "net_cut", "agent_kill"}
    assert all(5 <= f.duration_s <= 60 for f in plan if f.kind == "net_cut")


def _log(seq: int, ts: float) -> tuple[int, str, dict[str, object]]:
    return seq, "log", {"service": "s1", "ts": ts, "stream": "stdout", "line": "tick"}


@pytest.mark.parametrize(
    ("highest", "queued", "rows", "missing", "dup", "ok"),
    [
        (3, set(), [_log(1, 1.0), _log(2, 2.0), _log(3, 3.0)], [], 0, True),
        (3, {3}, [_log(1, 1.0), _log(2, 2.0)], [], 0, True),  # still queued is not lost
        (3, set(), [_log(1, 1.0), _log(3, 3.0)], [2], 0, False),  # a gap
        (3, set(), [_log(1, 1.0), _log(2, 1.0), _log(3, 3.0)], [], 1, False),  # read twice
        (
            4,
            set(),
            [
                _log(1, 1.0),
                (4, "dropped", {"kind": "log", "count": 2, "first_seq": 2, "last_seq": 3}),
            ],
            [],
            0,
            True,
        ),
    ],
)
def test_delivery_check_tells_gaps_duplicates_queued_and_counted_drops(
    highest: int,
    queued: set[int],
    rows: list[tuple[int, str, dict[str, object]]],
    missing: list[int],
    dup: int,
    ok: bool,
) -> None:
    dropped = sum(int(p["count"]) for _, k, p in rows if k == "dropped")  # type: ignore[call-overload]
    d = check_delivery(AgentOutbox(highest, frozenset(queued), dropped), rows)
    assert (d.missing, d.log_duplicates, d.ok) == (missing, dup, ok)


def test_delivery_check_fails_on_drops_not_counted_by_the_agent() -> None:
    rows = [
        _log(1, 1.0),
        (3, "dropped", {"kind": "log", "count": 1, "first_seq": 2, "last_seq": 2}),
    ]
    assert not check_delivery(AgentOutbox(3, frozenset(), 0), rows).ok


def test_slope_within_lifetimes_ignores_the_reset_of_a_restart() -> None:
    # Two flat lifetimes at different levels: across them a fall, within them nothing.
    flat = [Sample(t, 1, 1, rss_kib=100.0) for t in range(10)]
    flat += [Sample(t, 2, 2, rss_kib=50.0) for t in range(10, 20)]
    assert within_slope(flat, "rss_kib") == pytest.approx(0.0)
    # Each lifetime grows 1 KiB per second: 3600 KiB per hour, whatever the resets.
    grow = [Sample(t, 1 + t // 10, 1, rss_kib=float(t % 10)) for t in range(30)]
    assert within_slope(grow, "rss_kib") == pytest.approx(3600.0)


def test_growth_slopes_leave_out_warm_up_and_samples_with_no_agent_up() -> None:
    # Warm-up (age < 60 s) climbs steeply, then flat; a sample with no agent up reads 0.
    samples = [
        Sample(float(t), 1, 1, age_s=float(t), rss_kib=float(t * 100 if t < 60 else 6000))
        for t in range(0, 400, 5)
    ]
    samples.insert(50, Sample(250.0, 0, 0, open_fds=0.0, rss_kib=0.0))
    assert slopes(samples, warmup_s=60.0)["rss_kib"] == pytest.approx(0.0)
    assert max_per_lifetime(samples, "rss_kib") == {1: 6000.0}
