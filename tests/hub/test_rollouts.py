"""Rollouts on a real hub process, its engine walking the stages.

The devices are SIMULATED: each is really enrolled (mTLS certificate) and speaks the real
protocol (POST /v1/sync with a status snapshot, targets in the sync answer), but runs no
Docker; it reports the release it was sent as running and good, or (``bad``) as rolled
back on the device, the way the agent reports it.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from synckit import SimulatedRelease
from test_registry import GOOD, OPEN

from hub.testing import DeviceIdentity, RunningHub, start_hub

SIM_SYNC_S = 0.1  # the simulated devices' sync interval


@pytest.fixture(scope="module")
def rhub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """A hub of its own whose engine ticks fast."""
    running = start_hub(tmp_path_factory.mktemp("rhub"), sections={"rollouts": {"tick_s": 0.1}})
    yield running
    status = running.stop()
    assert status == 0, f"hub exited with {status}:\n{running.log()[-3000:]}"


@dataclass(eq=False, kw_only=True)
class SimDevice(SimulatedRelease):
    """A simulated device: enrolled for real, syncing for real, no containers."""

    identity: DeviceIdentity

    async def sync(self, hub: RunningHub) -> None:
        body = {
            "protocol": 3,
            "epoch": "sim",
            "entries": [],
            "known_target_revision": self.revision,
            "status": self.status(),
        }
        raw = gzip.compress(json.dumps(body).encode())
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        status, answer = await hub.request(
            "POST", "/v1/sync", data=raw, headers=headers, ssl_context=self.identity.ssl_context()
        )
        assert status == 200, answer
        if answer.get("target"):
            self.take(answer["target"])


@dataclass
class Fleet:
    """Simulated devices under one fresh tag, syncing in the background."""

    hub: RunningHub
    tag: str
    devices: list[SimDevice]

    @property
    def ids(self) -> list[str]:
        return [d.identity.device_id for d in self.devices]


async def _run(hub: RunningHub, devices: list[SimDevice]) -> None:
    while True:
        await asyncio.gather(*(d.sync(hub) for d in devices))
        await asyncio.sleep(SIM_SYNC_S)


@pytest.fixture
async def fleet_of(rhub: RunningHub, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    tasks: list[asyncio.Task[None]] = []

    async def make(n: int, bad: Callable[[str], bool] = lambda ref: False) -> Fleet:
        tag = "f" + uuid.uuid4().hex[:8]
        token = await rhub.create_token(uses=n, tags={"fleet": tag})
        devices = [
            SimDevice(identity=await rhub.enroll(token, tmp_path / f"{tag}-{i}"), bad=bad)
            for i in range(n)
        ]
        await asyncio.gather(*(d.sync(rhub) for d in devices))
        status, body = await rhub.api(
            "POST", "/api/v1/groups", {"name": tag, "selector": f"fleet={tag}"}
        )
        assert status == 201, body
        tasks.append(asyncio.create_task(_run(rhub, devices)))
        return Fleet(rhub, tag, devices)

    yield make
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def make_release(hub: RunningHub, name: str, version: str) -> str:
    doc = {
        "name": name,
        "version": version,
        "services": [{"name": "web", "image": f"{OPEN}/{GOOD}:1"}],
    }
    status, body = await hub.api("POST", "/api/v1/releases", {"release": doc})
    assert status in (200, 201), body
    return f"{name}@{version}"


async def wait_for(
    hub: RunningHub, rollout_id: str, check: Callable[[dict[str, Any]], bool], timeout_s: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = await hub.api("GET", f"/api/v1/rollouts/{rollout_id}")
        assert status == 200, body
        if check(body):
            return body
        assert time.monotonic() < deadline, f"rollout never got there: {body}"
        await asyncio.sleep(0.05)


async def audit_of(hub: RunningHub, target: str) -> list[str]:
    _, body = await hub.api("GET", "/api/v1/audit?limit=1000")
    rows = body["audit"]
    while len(body["audit"]) == 1000:
        _, body = await hub.api("GET", f"/api/v1/audit?limit=1000&after={body['next_after']}")
        rows += body["audit"]
    return [a["action"] for a in rows if a["target"] == target]


async def start(hub: RunningHub, **spec: Any) -> tuple[int, Any]:
    return await hub.api("POST", "/api/v1/rollouts", spec)


async def test_healthy_release_walks_every_stage_of_20_simulated_devices(rhub, fleet_of):
    fleet = await fleet_of(20)
    release = await make_release(rhub, "app-" + fleet.tag, "1")
    status, body = await start(
        rhub, release=release, group=fleet.tag, stages="1,10%,50%,100%", soak_s=0
    )
    assert status == 201, body
    assert body["members"] == 20 and body["status"] == "running"
    done = await wait_for(rhub, body["id"], lambda b: b["status"] == "completed")
    assert [(p["planned"], p["healthy"]) for p in done["progress"]] == [
        (1, 1),
        (1, 1),
        (8, 8),
        (10, 10),
    ]
    assert all(d.received == [release] for d in fleet.devices), [d.received for d in fleet.devices]
    actions = await audit_of(rhub, body["id"])
    assert actions[0] == "rollout.start"
    assert actions.count("rollout.stage_started") == 4
    assert actions.count("rollout.stage_passed") == 4
    assert actions[-1] == "rollout.completed"


async def test_failing_release_halts_at_first_stage_and_rolls_back_every_touched_device(
    rhub, fleet_of
):
    name = "bad-" + uuid.uuid4().hex[:6]
    fleet = await fleet_of(10, bad=lambda ref: ref == f"{name}@2")
    good = await make_release(rhub, name, "1")
    bad = await make_release(rhub, name, "2")
    status, body = await start(rhub, release=good, group=fleet.tag, soak_s=0)
    assert status == 201, body
    await wait_for(rhub, body["id"], lambda b: b["status"] == "completed")

    status, body = await start(
        rhub, release=bad, group=fleet.tag, stages="3,50%,100%", soak_s=0, max_failed=1
    )
    assert status == 201, body
    done = await wait_for(rhub, body["id"], lambda b: b["status"] == "rolled_back")
    assert done["failed_stage"] == 0 and "failed" in done["reason"]
    assert done["progress"][0]["rolled_back"] == 3
    assert [p["planned"] - p["pending"] for p in done["progress"][1:]] == [0, 0]
    assert len(done["devices"]) == 3  # the first stage's devices, all rolled back
    touched = [d for d in fleet.devices if d.identity.device_id in done["devices"]]
    for d in touched:  # the release each ran before, as a NEW target (a later revision)
        assert d.received[0] == good and d.received[-1] == good and d.release == good
        assert len(d.received) >= 2 and d.revision > 1
    for d in fleet.devices:
        if d not in touched:
            assert d.received == [good]
    actions = await audit_of(rhub, body["id"])
    assert "rollout.stage_failed" in actions and "rollout.rolling_back" in actions
    assert actions[-1] == "rollout.rolled_back"


async def test_pause_resume_abort_over_rest(rhub, fleet_of):
    fleet = await fleet_of(4)
    release = await make_release(rhub, "pra-" + fleet.tag, "1")
    # soak 1 h: the first stage stays applying while we act on it
    status, body = await start(rhub, release=release, group=fleet.tag, stages="1,100%", soak_s=3600)
    assert status == 201
    rid = body["id"]
    status, paused = await rhub.api("POST", f"/api/v1/rollouts/{rid}/pause", {"reason": "lunch"})
    assert status == 200 and paused["status"] == "paused" and paused["reason"] == "lunch"
    status, again = await rhub.api("POST", f"/api/v1/rollouts/{rid}/pause", {})
    assert status == 409, again
    status, resumed = await rhub.api("POST", f"/api/v1/rollouts/{rid}/resume")
    assert status == 200 and resumed["status"] == "running"
    status, aborted = await rhub.api("POST", f"/api/v1/rollouts/{rid}/abort", {"reason": "enough"})
    assert status == 200 and aborted["status"] == "aborted"
    status, _ = await rhub.api("POST", f"/api/v1/rollouts/{rid}/resume")
    assert status == 409
    status, listed = await rhub.api("GET", "/api/v1/rollouts")
    assert {"id": rid, "status": "aborted"}.items() <= next(
        r for r in listed["rollouts"] if r["id"] == rid
    ).items()
    actions = await audit_of(rhub, rid)
    for action in ("rollout.pause", "rollout.resume", "rollout.abort"):
        assert action in actions
    assert sum(1 for d in fleet.devices if d.received) <= 1  # never beyond stage 1


async def test_overlapping_rollout_is_refused_unless_it_supersedes(rhub, fleet_of):
    fleet = await fleet_of(2)
    first = await make_release(rhub, "ovl-" + fleet.tag, "1")
    second = await make_release(rhub, "ovl-" + fleet.tag, "2")
    status, body = await start(rhub, release=first, group=fleet.tag, soak_s=3600)
    assert status == 201
    status, refused = await start(rhub, release=second, group=fleet.tag, soak_s=0)
    assert status == 409, refused
    assert body["id"] in json.dumps(refused)
    status, newer = await start(
        rhub, release=second, group=fleet.tag, soak_s=0, supersedes=body["id"]
    )
    assert status == 201, newer
    _, old = await rhub.api("GET", f"/api/v1/rollouts/{body['id']}")
    assert old["status"] == "aborted" and body["id"] in await _ids(rhub)
    await wait_for(rhub, newer["id"], lambda b: b["status"] == "completed")


async def _ids(hub: RunningHub) -> list[str]:
    _, listed = await hub.api("GET", "/api/v1/rollouts")
    return [r["id"] for r in listed["rollouts"]]


async def test_retired_release_cannot_be_rolled_out(rhub, fleet_of):
    fleet = await fleet_of(1)
    release = await make_release(rhub, "ret-" + fleet.tag, "1")
    status, _ = await rhub.api("POST", f"/api/v1/releases/{release}/retire", {"reason": "cve"})
    assert status == 200
    status, body = await start(rhub, release=release, group=fleet.tag)
    assert status == 409, body
    assert "retired" in json.dumps(body)
    assert not await _ids_for(rhub, release)


async def _ids_for(hub: RunningHub, release: str) -> list[str]:
    _, listed = await hub.api("GET", "/api/v1/rollouts")
    return [r["id"] for r in listed["rollouts"] if r["release"] == release]


async def test_edgectl_rollout_start_pause_resume_abort_list_status(rhub, fleet_of):
    fleet = await fleet_of(3)
    release = await make_release(rhub, "ctl-" + fleet.tag, "1")
    started = await rhub.edgectl("--json", "rollout", "start", release, "--group", fleet.tag,
        "--stages", "1,100%", "--soak", "1h", "--max-failed", "34%",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    rid = json.loads(started.stdout)["id"]
    for action, status in (("pause", "paused"), ("resume", "running"), ("abort", "aborted")):
        done = await rhub.edgectl("--json", "rollout", action, rid, "--reason", "ctl")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["status"] == status
    refused = await rhub.edgectl("rollout", "resume", rid)
    assert refused.returncode == 1 and "aborted" in refused.stderr
    listed = await rhub.edgectl("rollout", "list")
    assert rid in listed.stdout and "aborted" in listed.stdout
    shown = await rhub.edgectl("rollout", "status", rid)
    assert shown.returncode == 0 and "stage 1 (1)" in shown.stdout
    spec = json.loads((await rhub.edgectl("--json", "rollout", "status", rid)).stdout)["spec"]
    assert spec["stages"] == ["1", "100%"] and spec["soak_s"] == 3600
    assert spec["max_failed"] == "34%"


async def test_edgectl_rollout_status_watch_follows_until_completed(rhub, fleet_of):
    fleet = await fleet_of(4)
    release = await make_release(rhub, "watch-" + fleet.tag, "1")
    status, body = await start(rhub, release=release, group=fleet.tag, stages="1,100%", soak_s=1)
    assert status == 201
    watched = await rhub.edgectl("rollout", "status", body["id"], "--watch", "--interval", "0.2")
    assert watched.returncode == 0, watched.stderr
    assert "completed" in watched.stdout and "stage 2 (100%)" in watched.stdout


async def test_bad_spec_is_422_naming_the_field_and_nothing_is_stored(rhub, fleet_of):
    fleet = await fleet_of(1)
    release = await make_release(rhub, "bad-spec-" + fleet.tag, "1")
    before = await _ids(rhub)
    status, body = await start(rhub, release=release, group=fleet.tag, stages="10%,5%")
    assert status == 422, body
    assert any("stages" in json.dumps(f) for f in body["fields"]), body
    status, body = await start(rhub, release=release, group="no-such-group")
    assert status == 404, body
    assert await _ids(rhub) == before


async def test_max_active_rollouts_bound_is_409_audited_and_superseding_takes_the_place(
    tmp_path: Path,
):
    hub = start_hub(tmp_path / "h", sections={"rollouts": {"tick_s": 0.1, "max_active": 1}})
    try:
        for site in ("a", "b"):
            await hub.enroll(await hub.create_token(tags={"site": site}), tmp_path / site)
        web = {"name": "web", "image": f"{OPEN}/{GOOD}:1"}
        doc = {"name": "m", "version": "1", "services": [web]}
        status, body = await hub.api("POST", "/api/v1/releases", {"release": doc})
        assert status == 201, body
        status, first = await start(hub, release="m@1", selector="site=a", soak_s=3600)
        assert status == 201, first
        status, refused = await start(hub, release="m@1", selector="site=b", soak_s=0)
        assert status == 409 and "rollouts.max_active" in refused["message"], refused
        _, audit = await hub.api("GET", "/api/v1/audit?limit=1000")
        outcomes = [(a["action"], a["outcome"]) for a in audit["audit"]]
        assert ("rollout.start", "rejected") in outcomes
        status, newer = await start(
            hub, release="m@1", selector="site=a", soak_s=0, supersedes=first["id"]
        )
        assert status == 201, newer
    finally:
        assert hub.stop() == 0


def test_rollout_targets_carry_the_window_and_rollbacks_apply_at_once():
    from edge_agent.models import MaintenanceWindow
    from hub.rollout_engine import target_options
    from hub.rollout_models import RolloutSpec

    plain = RolloutSpec(release="app@1", group="g", stages=[1, "100%"])
    assert target_options(plain, rollback=False).window is None
    assert not target_options(plain, rollback=True).immediate  # no window: needs no feature
    windowed = plain.model_copy(update={"window": "01:00-04:00", "tz": "Europe/Berlin"})
    rollout = target_options(windowed, rollback=False)
    assert rollout.window == MaintenanceWindow(start="01:00", end="04:00", tz="Europe/Berlin")
    assert not rollout.immediate
    back = target_options(windowed, rollback=True)
    assert back.window is None and back.immediate
