"""A staged rollout to 1,000 SIMULATED devices through a real hub process.

The devices are simulated (``synckit.SimulatedDevice``): each is enrolled for real (its
own key and client certificate) and speaks the real protocol over its own kept-alive
mTLS connection — a long-poll for its targets, a sync reporting each — but runs no
Docker. Marked ``slow`` (about half a minute on two cores); CI runs every marker.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from synckit import SimulatedDevice, close_simulated, enroll_simulated
from test_rollouts import make_release, start

from hub.testing import RunningHub, start_hub

N = 1000
STAGES = "1%,10%,50%,100%"  # of 1,000: 10, 100, 500, 1,000 devices


class FailsInThirdStage:
    """``bad`` of every device: the first 100 to receive ``release`` (stages 1 and 2) run
    it; from the 101st on, every 4th fails it on the device (a quarter of stage 3)."""

    def __init__(self, release: str) -> None:
        self.release = release
        self.received = 0

    def __call__(self, ref: str) -> bool:
        if ref != self.release:
            return False
        self.received += 1
        return self.received > 100 and self.received % 4 == 0


async def _until(hub: RunningHub, rid: str, status: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        code, body = await hub.api("GET", f"/api/v1/rollouts/{rid}")
        assert code == 200, body
        if body["status"] == status:
            return dict(body)
        assert time.monotonic() < deadline, {k: body[k] for k in ("status", "progress")}
        await asyncio.sleep(0.25)


async def _online(hub: RunningHub, devices: list[SimulatedDevice]) -> list[asyncio.Task[None]]:
    gate = asyncio.Semaphore(50)

    async def first_sync(d: SimulatedDevice) -> None:
        async with gate:
            await d.sync()

    await asyncio.gather(*(first_sync(d) for d in devices))
    tasks = [asyncio.create_task(d.run(wait_s=30)) for d in devices]
    await hub.wait_long_polls(len(devices), timeout_s=60)
    return tasks


@pytest.mark.slow
async def test_1000_simulated_devices_walk_every_stage_and_a_failing_stage_rolls_back_its_devices(
    tmp_path: Path,
) -> None:
    hub = start_hub(tmp_path / "hub")
    devices: list[SimulatedDevice] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        devices = await enroll_simulated(hub, N, tmp_path / "sims", {"fleet": "big"})
        tasks = await _online(hub, devices)
        code, body = await hub.api(
            "POST", "/api/v1/groups", {"name": "big", "selector": "fleet=big"}
        )
        assert code == 201, body
        good = await make_release(hub, "big", "1")
        bad = await make_release(hub, "big", "2")
        for d in devices:
            d.bad = FailsInThirdStage(bad) if d is devices[0] else devices[0].bad
        await _walks_every_stage(hub, devices, good)
        await _failing_stage_rolls_back_only_its_devices(hub, devices, good, bad)
        assert sum(d.errors for d in devices) == 0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_simulated(devices)
        assert hub.stop() == 0, hub.log()[-3000:]


async def _walks_every_stage(hub: RunningHub, devices: list[SimulatedDevice], good: str) -> None:
    code, body = await start(hub, release=good, group="big", stages=STAGES, soak_s=0)
    assert code == 201 and body["members"] == N, body
    done = await _until(hub, body["id"], "completed", timeout_s=60)
    assert [(p["planned"], p["healthy"]) for p in done["progress"]] == [
        (10, 10),
        (90, 90),
        (400, 400),
        (500, 500),
    ]
    assert all(d.received == [good] and d.release == good for d in devices)


async def _failing_stage_rolls_back_only_its_devices(
    hub: RunningHub, devices: list[SimulatedDevice], good: str, bad: str
) -> None:
    code, body = await start(
        hub, release=bad, group="big", stages=STAGES, soak_s=0, max_failed="10%"
    )
    assert code == 201, body
    done = await _until(hub, body["id"], "rolled_back", timeout_s=60)
    assert done["failed_stage"] == 2, done["reason"]
    touched = set(done["devices"])
    assert len(touched) == 500  # stages 1 to 3; stage 4 never started
    progress = [(p["planned"] - p["pending"], p["rolled_back"]) for p in done["progress"]]
    assert progress == [(10, 10), (90, 90), (400, 400), (0, 0)], done["progress"]
    for d in devices:
        if d.device_id in touched:  # sent its previous release again, as a newer target
            assert d.received[0] == good and d.received[-1] == good and len(d.received) >= 2
            assert set(d.received) <= {good, bad} and d.release == good
        else:
            assert d.received == [good], d.received
    assert 0 < sum(bad in d.received for d in devices) <= 500
