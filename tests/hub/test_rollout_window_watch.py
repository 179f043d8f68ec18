"""A device's reported window opening in the device and rollout views; plain ``--watch``.

The devices are SIMULATED (see test_rollouts): really enrolled, speaking the real sync
protocol to a real hub process, no Docker.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_rollouts import SimDevice, make_release

from hub.testing import RunningHub, start_hub

OPENS_LOCAL = "2026-12-02T01:00:00+01:00"  # as an agent may send it
OPENS_UTC = "2026-12-02T00:00:00+00:00"  # as the hub shows it


@pytest.fixture(scope="module")
def whub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """A hub of its own whose rollout engine ticks fast."""
    running = start_hub(tmp_path_factory.mktemp("whub"), sections={"rollouts": {"tick_s": 0.1}})
    yield running
    status = running.stop()
    assert status == 0, f"hub exited with {status}:\n{running.log()[-3000:]}"


@dataclass(eq=False, kw_only=True)
class WaitingDevice(SimDevice):
    """A simulated device that holds every target for its maintenance window."""

    opens: str | None = OPENS_LOCAL

    def status(self) -> dict[str, Any]:
        return {**super().status(), "window_opens_at": self.opens}

    def take(self, signed: dict[str, Any]) -> bool:
        if not super().take(signed):
            return False
        self.applying_revision, self.rollout_state = self.revision, "waiting_window"
        self.release, self.running_revision = None, 0
        return True


@pytest.fixture
async def tagged(whub: RunningHub, tmp_path: Path) -> AsyncIterator[Any]:
    """Make simulated devices under a fresh tag and group; they sync until the test ends."""
    tasks: list[asyncio.Task[None]] = []

    async def make(cls: type[SimDevice], n: int) -> tuple[str, list[SimDevice]]:
        tag = "w" + uuid.uuid4().hex[:8]
        token = await whub.create_token(uses=n, tags={"fleet": tag})
        devices = [
            cls(identity=await whub.enroll(token, tmp_path / f"{tag}-{i}")) for i in range(n)
        ]
        await asyncio.gather(*(d.sync(whub) for d in devices))
        status, body = await whub.api(
            "POST", "/api/v1/groups", {"name": tag, "selector": f"fleet={tag}"}
        )
        assert status == 201, body
        tasks.append(asyncio.create_task(_keep_syncing(whub, devices)))
        return tag, devices

    yield make
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _keep_syncing(hub: RunningHub, devices: list[SimDevice]) -> None:
    while True:
        await asyncio.gather(*(d.sync(hub) for d in devices))
        await asyncio.sleep(0.1)


async def _device(hub: RunningHub, device_id: str) -> dict[str, Any]:
    status, shown = await hub.api("GET", f"/api/v1/devices/{device_id}")
    assert status == 200, shown
    return dict(shown)


async def _until(check: Any, what: str, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.05)


async def test_reported_window_opening_shows_in_device_view_and_edgectl_show(whub, tmp_path):
    device = WaitingDevice(identity=await whub.enroll(await whub.create_token(), tmp_path / "d"))
    device.rollout_state = "waiting_window"
    await device.sync(whub)
    shown = await _device(whub, device.identity.device_id)
    assert shown["rollout_state"] == "waiting_window"
    assert shown["window_opens_at"] == OPENS_UTC
    ctl = await whub.edgectl("device", "show", device.identity.device_id)
    assert ctl.returncode == 0, ctl.stderr
    assert json.loads(ctl.stdout)["window_opens_at"] == OPENS_UTC
    # The window opened: the next full report has no opening, and the view clears it.
    device.opens, device.rollout_state = None, "applying"
    await device.sync(whub)
    assert (await _device(whub, device.identity.device_id))["window_opens_at"] is None


async def test_status_of_an_agent_that_does_not_report_the_opening_is_still_taken(whub, tmp_path):
    device = SimDevice(identity=await whub.enroll(await whub.create_token(), tmp_path / "old"))
    device.rollout_state = "waiting_window"
    await device.sync(whub)  # asserts 200
    shown = await _device(whub, device.identity.device_id)
    assert shown["rollout_state"] == "waiting_window" and shown["window_opens_at"] is None


async def test_rollout_status_lists_devices_waiting_for_their_window_with_the_opening(whub, tagged):
    tag, devices = await tagged(WaitingDevice, 2)
    release = await make_release(whub, "win-" + tag, "1")
    status, body = await whub.api(
        "POST", "/api/v1/rollouts", {"release": release, "group": tag, "soak_s": 3600}
    )
    assert status == 201, body
    path = f"/api/v1/rollouts/{body['id']}"

    async def waiting() -> dict[str, Any] | None:
        _, view = await whub.api("GET", path)
        return view if len(view.get("waiting_window") or {}) == 2 else None

    view = await _until(waiting, "both devices reported waiting")
    ids = sorted(d.identity.device_id for d in devices)
    assert view["waiting_window"] == {i: OPENS_UTC for i in ids}
    ctl = await whub.edgectl("rollout", "status", body["id"])
    assert ctl.returncode == 0, ctl.stderr
    assert "waiting for the maintenance window: 2 device(s)" in ctl.stdout
    assert f"{ids[0]}  opens {OPENS_UTC}" in ctl.stdout


async def test_watch_prints_plain_progress_lines_when_stdout_is_not_a_tty(whub, tagged):
    tag, _ = await tagged(SimDevice, 3)
    release = await make_release(whub, "plain-" + tag, "1")
    status, body = await whub.api(
        "POST",
        "/api/v1/rollouts",
        {"release": release, "group": tag, "stages": "1,100%", "soak_s": 1},
    )
    assert status == 201, body
    rid = body["id"]
    # capture_output: stdout is a pipe, not a terminal (rich is installed here).
    watched = await whub.edgectl("rollout", "status", rid, "--watch", "--interval", "0.1")
    assert watched.returncode == 0, watched.stderr
    out = watched.stdout
    assert "\x1b[" not in out and "\\x0a" not in out  # no control sequences, real lines
    heads = [line for line in out.splitlines() if line.startswith(rid)]
    assert len(heads) >= 2, out  # progress while running, not only the end
    assert " running " in heads[0], out
    assert " completed " in heads[-1] and all("completed" not in h for h in heads[:-1]), out
    assert out.count("stage 2 (100%):") == len(heads)  # every snapshot lists every stage
    assert "stage 2 (100%): 2/2  healthy 2" in out.splitlines()[-1], out
    _, done = await whub.api("GET", f"/api/v1/rollouts/{rid}")
    assert done["status"] == "completed"
