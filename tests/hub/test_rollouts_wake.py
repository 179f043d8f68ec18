"""The rollout engine is woken by the reports of its members, coalesced.

The devices are SIMULATED (``test_rollouts.SimDevice``: enrolled for real, real
protocol, no Docker). The hub's engine ticks only once an hour here, so a stage that
advances promptly was advanced by a device's report waking the engine.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from test_rollouts import SimDevice, make_release, start, wait_for

from edge_agent.protocol import ServiceReport, StatusSnapshot
from hub.config import build_config
from hub.errors import ConfigError
from hub.rollout_engine import has_news
from hub.store import DeviceRecord
from hub.testing import RunningHub, start_hub

NOW = datetime(2026, 1, 1, tzinfo=UTC)
COALESCE_S = 0.3


@pytest.fixture(scope="module")
def slow_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """A hub whose engine ticks hourly: only wake-ups move a rollout."""
    sections = {"rollouts": {"tick_s": 3600, "wake_coalesce_s": COALESCE_S}}
    running = start_hub(tmp_path_factory.mktemp("slow"), sections=sections)
    yield running
    assert running.stop() == 0, running.log()[-3000:]


async def _engine(hub: RunningHub) -> dict[str, Any]:
    status, body = await hub.request("GET", "/healthz")
    assert status == 200, body
    return dict(body["rollout_engine"])


async def test_device_reports_wake_the_engine_so_stages_advance_before_the_tick(
    slow_hub: RunningHub, tmp_path: Path
) -> None:
    tag = "w" + uuid.uuid4().hex[:8]
    token = await slow_hub.create_token(uses=20, tags={"fleet": tag})
    devices = [
        SimDevice(identity=await slow_hub.enroll(token, tmp_path / f"d{i}")) for i in range(20)
    ]
    await asyncio.gather(*(d.sync(slow_hub) for d in devices))
    status, body = await slow_hub.api(
        "POST", "/api/v1/groups", {"name": tag, "selector": f"fleet={tag}"}
    )
    assert status == 201, body
    release = await make_release(slow_hub, "wake-" + tag, "1")
    status, body = await start(slow_hub, release=release, group=tag, stages="1,100%", soak_s=0)
    assert status == 201, body
    rid = body["id"]
    # the start wakes the engine: stage 1 is issued (progress is judged at each read; the
    # stage and status shown are the stored ones, which only the engine moves)
    await _sync_until(slow_hub, devices, lambda: sum(len(d.received) for d in devices) == 1)
    await asyncio.gather(*(d.sync(slow_hub) for d in devices))  # the canary reports good
    await wait_for(slow_hub, rid, lambda b: b["current_stage"] == 1, timeout_s=10)
    before, t0 = await _engine(slow_hub), time.monotonic()
    await asyncio.gather(*(d.sync(slow_hub) for d in devices))  # 19 take stage 2
    assert sum(len(d.received) for d in devices) == 20
    await asyncio.gather(*(d.sync(slow_hub) for d in devices))  # 19 report good at once
    done = await wait_for(slow_hub, rid, lambda b: b["status"] == "completed", timeout_s=10)
    assert [p["healthy"] for p in done["progress"]] == [1, 19]
    after, elapsed = await _engine(slow_hub), time.monotonic() - t0
    reports, ticks = after["reports"] - before["reports"], after["ticks"] - before["ticks"]
    assert reports >= 19, (before, after)  # every report with news counted
    # coalesced: at most one woken tick per wake_coalesce_s (0.3 s), never a tick per report
    assert ticks <= 1 + elapsed / COALESCE_S and ticks < reports / 2, (ticks, reports, elapsed)


async def _sync_until(
    hub: RunningHub, devices: list[SimDevice], done: Callable[[], bool], timeout_s: float = 10
) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "the engine issued nothing"
        await asyncio.gather(*(d.sync(hub) for d in devices))
        await asyncio.sleep(0.05)


def _device(**status: Any) -> DeviceRecord:
    return DeviceRecord(
        "dev-1", "h", {}, "s", "f", NOW, NOW, "t", False, NOW, "a", 0, 3, 0, **status
    )


WEB = {"name": "web", "state": "running", "health": "none", "restarts": 0}
RUNNING = {"release": "app@1", "running_revision": 3, "rollout_state": "good"}


def _snap(full: bool = False, **fields: Any) -> StatusSnapshot:
    return StatusSnapshot(full=full, **fields)


@pytest.mark.parametrize(
    ("device", "status", "news"),
    [
        (_device(**RUNNING, services=[WEB]), None, False),
        (_device(**RUNNING, services=[WEB]), _snap(), False),  # an empty delta
        (_device(**RUNNING, services=[WEB]), _snap(counters={"x": 1}), False),
        (_device(**RUNNING, services=[WEB]), _snap(release="app@1", running_revision=3), False),
        (_device(**RUNNING), _snap(rollout_state="rolled_back", applying_revision=4), True),
        (_device(**RUNNING), _snap(running_revision=4, release="app@2"), True),
        (_device(applying_revision=4, rollout_state="applying"), _snap(rollout_state="good"), True),
        (
            _device(**RUNNING, services=[WEB]),
            _snap(services=[ServiceReport(**{**WEB, "restarts": 1})]),
            True,
        ),
        (  # what the gate does not read (image id) is no news
            _device(**RUNNING, services=[WEB]),
            _snap(services=[ServiceReport(**WEB, image_id="sha256:1")]),
            False,
        ),
        (  # a full snapshot that clears the applying revision
            _device(**RUNNING, applying_revision=4, services=[WEB]),
            _snap(full=True, **RUNNING, services=[ServiceReport(**WEB)]),
            True,
        ),
    ],
)
def test_has_news_is_what_the_gate_reads_of_a_report(
    device: DeviceRecord, status: StatusSnapshot | None, news: bool
) -> None:
    assert has_news(device, status) is news


@pytest.mark.parametrize(
    ("rollouts", "named"),
    [
        ({"wake_coalesce_s": -1}, "rollouts.wake_coalesce_s"),
        ({"wake_coalesce_s": 61}, "rollouts.wake_coalesce_s"),
        ({"issue_parallel": 0}, "rollouts.issue_parallel"),
        ({"issue_parallel": 257}, "rollouts.issue_parallel"),
    ],
)
def test_engine_bounds_out_of_range_are_refused_naming_the_field(
    rollouts: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"server": {"data_dir": "/d"}, "rollouts": rollouts}, env={})
    assert named in err.value.message


def test_engine_bounds_defaults() -> None:
    config = build_config({"server": {"data_dir": "/d"}}, env={}).rollouts
    assert (config.wake_coalesce_s, config.issue_parallel) == (0.1, 16)
