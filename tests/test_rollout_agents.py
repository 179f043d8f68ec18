"""Staged rollouts through a real hub to real agent processes on the real engine.

Agents (distinct device ids; their containers kept apart by label) enroll with a token
that tags them; a group selects them. Each agent reaches the hub through its own fault
proxy (``tests/faultproxy.py``), so a test can cut one device's link. A healthy release
walks every stage; a crashing release halts at its first stage, the device it touched
rolls back (on the device, then by the hub's fleet rollback) and the others never
receive it. A device cut off during a stage is counted offline and the rollout completes
without it; back online it catches up. An offline device honours the rollout's window.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiodocker
import docker_env
import pytest
from agentproc import AgentProcess
from docker_env import TestImages
from faultproxy import FaultProxy
from fleetkit import Container, device_of, hub_agent, managed_containers, running

from hub.testing import RunningHub, start_hub

pytestmark = pytest.mark.docker

AGENTS = 3
AGENT_HUB = {"sync_interval_s": 0.5, "long_poll_s": 10.0, "backoff_cap_s": 1.0}
AGENT_SUPERVISOR = {
    "backoff_base_s": 0.2,
    "backoff_cap_s": 0.5,
    "crash_loop_exits": 2,
    "crash_loop_window_s": 300.0,
}
# A zone far from UTC, so the window is read in the device's local time, not the host's.
WINDOW_TZ = "Asia/Kathmandu"
WINDOW_OPENS_IN_S = 12
# How long a device of the cut-off scenario has to run the release: ample on a loaded
# machine, and the time the rollout waits for the cut-off device before counting it offline.
STAGE_DEADLINE_S = 15


@pytest.fixture
def hub(tmp_path: Path) -> Any:
    running_hub = start_hub(tmp_path / "hub", sections={"rollouts": {"tick_s": 0.2}})
    yield running_hub
    running_hub.stop()


@dataclass
class Fleet:
    """Agents tagged ``fleet=<tag>``, a group ``<tag>`` selecting them, each one's link."""

    tag: str
    agents: list[AgentProcess]
    links: list[FaultProxy]  # agents[i] reaches the hub only through links[i]

    def device(self, i: int) -> str:
        """Return the device id of agent ``i``."""
        device = device_of(self.agents[i])
        assert device is not None, "agent not enrolled"
        return device


MakeFleet = Callable[[int], Awaitable[Fleet]]


@pytest.fixture
async def make_fleet(
    hub: RunningHub, tmp_path: Path, docker: aiodocker.Docker
) -> AsyncIterator[MakeFleet]:
    """Yield ``make(n)``: n agents enrolled through their own proxies, and their group."""
    async with AsyncExitStack() as stack:

        async def make(n: int) -> Fleet:
            tag = "f" + uuid.uuid4().hex[:8]
            token = await hub.create_token(uses=n, tags={"fleet": tag})
            links = [await FaultProxy("127.0.0.1", hub.port).start() for _ in range(n)]
            for link in links:
                stack.push_async_callback(link.close)
            agents = [
                hub_agent(
                    tmp_path / f"{tag}-agent{i}",
                    link.url,
                    hub.ca_path,
                    token,
                    hub=AGENT_HUB,
                    supervisor=AGENT_SUPERVISOR,
                )
                for i, link in enumerate(links)
            ]
            await stack.enter_async_context(running(docker, *agents))
            group = {"name": tag, "selector": f"fleet={tag}"}
            status, body = await hub.api("POST", "/api/v1/groups", group)
            assert status == 201 and len(body["members"]) == n, body
            return Fleet(tag, agents, links)

        yield make


@pytest.fixture
async def fleet(make_fleet: MakeFleet) -> Fleet:
    return await make_fleet(AGENTS)


async def _release(hub: RunningHub, name: str, version: str, image: str, **svc: Any) -> str:
    doc = {"name": name, "version": version, "services": [{"name": "web", "image": image, **svc}]}
    status, body = await hub.api("POST", "/api/v1/releases", {"release": doc})
    assert status == 201, body
    return f"{name}@{version}"


async def _start_rollout(hub: RunningHub, **spec: Any) -> str:
    status, body = await hub.api("POST", "/api/v1/rollouts", spec)
    assert status == 201, body
    return str(body["id"])


async def _view(hub: RunningHub, rollout: str) -> dict[str, Any]:
    status, view = await hub.api("GET", f"/api/v1/rollouts/{rollout}")
    assert status == 200, view
    return view


async def _until_status(hub: RunningHub, rollout: str, want: str, timeout_s: float = 90) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        view = await _view(hub, rollout)
        if view["status"] == want:
            return view
        assert view["status"] in ("running", "rolling_back"), view
        assert time.monotonic() < deadline, f"rollout never became {want}: {view}"
        await asyncio.sleep(0.2)


async def _rollout(hub: RunningHub, want: str, timeout_s: float = 90, **spec: Any) -> dict:
    return await _until_status(hub, await _start_rollout(hub, **spec), want, timeout_s)


async def _releases_running(agents: list[AgentProcess]) -> list[str | None]:
    return [(await a.status())["release"] for a in agents]


def _web(release: str, image: str) -> Container:
    """Return the release's one service as the engine shows it running (pinned by digest)."""
    return Container("web", release, image, "running")


async def _runs(docker: aiodocker.Docker, device: str, release: str, image: str) -> bool:
    """Return whether the engine runs exactly the release's one service for the device."""
    return await managed_containers(docker, device) == [_web(release, image)]


async def test_rollout_walks_stages_then_a_crashing_release_halts_and_rolls_back(
    hub: RunningHub, fleet: Fleet, images: TestImages
) -> None:
    tag, agents = fleet.tag, fleet.agents
    good = await _release(hub, tag, "1", images.ref("good"))
    done = await _rollout(hub, "completed", release=good, group=tag, stages="1,100%", soak_s=1)
    assert [p["healthy"] for p in done["progress"]] == [1, AGENTS - 1]
    assert await _releases_running(agents) == [good] * AGENTS

    bad = await _release(hub, tag, "2", images.ref("crash"), environment={"CRASH_AFTER": "0"})
    halted = await _rollout(
        hub, "rolled_back", release=bad, group=tag, stages="1,100%", soak_s=1, max_failed=0
    )
    assert halted["failed_stage"] == 0
    (touched,) = halted["devices"]

    # Every device ends on the good release: the touched one rolled back, the rest untouched.
    async def all_good() -> bool:
        return await _releases_running(agents) == [good] * AGENTS

    await docker_env.wait_for(all_good, timeout_s=60, interval_s=0.3)
    for agent in agents:
        targets = await agent.status()
        assert targets["rollout_state"] in ("good", "rolled_back"), targets
    status, view = await hub.api("GET", f"/api/v1/devices/{touched}")
    assert status == 200 and view["release"] == good, view


async def _cut_one_outside_first_stage(hub: RunningHub, fleet: Fleet, rollout: str) -> int:
    """Wait for the first stage's device; cut another one's link before stage 2 begins."""

    async def first_stage() -> dict[str, Any] | None:
        view = await _view(hub, rollout)
        return view if view["devices"] else None

    (first,) = (await docker_env.wait_for(first_stage, timeout_s=30, interval_s=0.1))["devices"]
    cut = next(i for i in range(len(fleet.agents)) if fleet.device(i) != first)
    fleet.links[cut].set_mode("cut")
    view = await _view(hub, rollout)
    assert view["current_stage"] == 0 and list(view["devices"]) == [first], view
    return cut


async def test_a_device_cut_off_during_a_stage_is_counted_offline_and_catches_up(
    hub: RunningHub, fleet: Fleet, images: TestImages, docker: aiodocker.Docker
) -> None:
    old = await _release(hub, fleet.tag, "1", images.ref("good"))
    await _rollout(hub, "completed", release=old, group=fleet.tag, stages="100%", soak_s=0)
    new = await _release(hub, fleet.tag, "2", images.ref("healthy"))
    rollout = await _start_rollout(
        hub,
        release=new,
        group=fleet.tag,
        stages="1,100%",
        soak_s=3,
        stage_deadline_s=STAGE_DEADLINE_S,
    )
    cut = await _cut_one_outside_first_stage(hub, fleet, rollout)
    agent, link, device = fleet.agents[cut], fleet.links[cut], fleet.device(cut)
    accepted = link.stats["accepted"]

    done = await _until_status(hub, rollout, "completed")
    assert done["devices"][device] == "offline", done
    assert [(p["planned"], p["healthy"], p["offline"], p["failed"]) for p in done["progress"]] == [
        (1, 1, 0, 0),
        (AGENTS - 1, AGENTS - 2, 1, 0),  # each stage counts the devices it added
    ], done["progress"]
    assert [p["pending"] + p["applying"] for p in done["progress"]] == [0, 0]
    # While cut off the device kept what it ran; it never reached the hub.
    assert await managed_containers(docker, device) == [_web(old, images.digest_ref("good"))]
    assert (await agent.status())["release"] == old
    assert link.stats["accepted"] == accepted and link.stats["refused"] > 0, link.stats

    link.set_mode("pass")

    async def caught_up() -> bool:
        st = await agent.status()
        on_new = st["release"] == new and st["rollout_state"] == "good"
        return on_new and await _runs(docker, device, new, images.digest_ref("healthy"))

    await docker_env.wait_for(caught_up, timeout_s=60, interval_s=0.3)

    async def hub_knows() -> bool:
        status, view = await hub.api("GET", f"/api/v1/devices/{device}")
        return status == 200 and view["release"] == new

    await docker_env.wait_for(hub_knows, timeout_s=30, interval_s=0.3)
    assert (await _view(hub, rollout))["status"] == "completed"


async def _both_sides(hub: RunningHub, agent: AgentProcess, device: str) -> str:
    """Return what the hub and the agent each say of the device, to explain a failure."""
    _, view = await hub.api("GET", f"/api/v1/devices/{device}")
    keys = ("release", "rollout_state", "running_revision", "applying_revision", "status_at")
    st = await agent.status()
    return (
        f"hub: { {k: view.get(k) for k in keys} }\nagent: { {k: st.get(k) for k in keys} }"
        f"\nagent log:\n{agent.log()}\nhub log:\n{hub.log()[-3000:]}"
    )


def _window_opening_in(seconds: float) -> tuple[str, datetime]:
    """Return a window in WINDOW_TZ's wall-clock time opening ``seconds`` from now, and when."""
    opens = (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)
    local = opens.astimezone(ZoneInfo(WINDOW_TZ))
    window = f"{local:%H:%M:%S}-{local + timedelta(minutes=10):%H:%M:%S}"
    return window, opens


async def test_an_offline_device_applies_the_rollout_only_once_its_window_opens(
    hub: RunningHub, make_fleet: MakeFleet, images: TestImages, docker: aiodocker.Docker
) -> None:
    fleet = await make_fleet(1)
    (agent,), (link,), device = fleet.agents, fleet.links, fleet.device(0)
    old = await _release(hub, fleet.tag, "1", images.ref("good"))
    await _rollout(hub, "completed", release=old, group=fleet.tag, stages="100%", soak_s=0)
    new = await _release(hub, fleet.tag, "2", images.ref("healthy"))
    window, opens = _window_opening_in(WINDOW_OPENS_IN_S)
    rollout = await _start_rollout(
        hub, release=new, group=fleet.tag, stages="100%", soak_s=1, window=window, tz=WINDOW_TZ
    )

    async def waiting() -> bool:
        st = await agent.status()
        return st["rollout_state"] == "waiting_window" and st["applying_revision"] is not None

    await docker_env.wait_for(waiting, timeout_s=WINDOW_OPENS_IN_S - 2, interval_s=0.1)
    link.set_mode("cut")
    accepted, refused = link.stats["accepted"], link.stats["refused"]
    assert datetime.now(UTC) < opens, "the target arrived too late to test the closed window"

    async def window_opened() -> bool:
        st = await agent.status()
        untouched = await _runs(docker, device, old, images.digest_ref("good"))
        if datetime.now(UTC) >= opens:  # both reads ended before this: they saw it closed
            return True
        assert untouched and st["release"] == old, ("changed before its window opened", st)
        assert st["rollout_state"] == "waiting_window", st
        return False

    await docker_env.wait_for(window_opened, timeout_s=WINDOW_OPENS_IN_S + 5, interval_s=0.2)

    async def applied() -> bool:
        st = await agent.status()
        on_new = st["release"] == new and st["rollout_state"] == "good"
        return on_new and await _runs(docker, device, new, images.digest_ref("healthy"))

    await docker_env.wait_for(applied, timeout_s=60, interval_s=0.3)
    # Offline throughout: no connection reached the hub, and the agent did try.
    assert link.stats["accepted"] == accepted and link.stats["refused"] > refused, link.stats

    link.set_mode("pass")
    try:
        done = await _until_status(hub, rollout, "completed", timeout_s=60)
    except AssertionError as exc:
        raise AssertionError(await _both_sides(hub, agent, device)) from exc
    assert [(p["planned"], p["healthy"]) for p in done["progress"]] == [(1, 1)], done
