"""The agent survives a hub that is killed and restarted while technicians use the local API.

Issue 7 item 4 (HIGH): on uvloop a cancelled connect could leave its file descriptor to a
new socket (uvloop #653, aiohttp #10362); the sync task died for good, the device stayed
offline, local API calls were dropped. A real agent process, a real hub process killed
with SIGKILL and restarted on the same port and data dir, a client hammering the unix
socket throughout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import docker_env
import pytest
from agentproc import AgentProcess
from docker_env import TestImages
from fleetkit import hub_agent, running
from hubproc import HubProcess, release_doc

pytestmark = pytest.mark.docker

HUB_RESTARTS = 4


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubProcess]:
    """Start a hub on a fixed port that the test may kill and restart."""
    proc = await asyncio.to_thread(HubProcess(tmp_path / "hub").start)
    yield proc
    proc.stop()


@pytest.fixture
async def agent(
    hub: HubProcess, tmp_path: Path, docker: aiodocker.Docker
) -> AsyncIterator[AgentProcess]:
    """Start an agent enrolled with the hub, retrying quickly while the hub is away."""
    token = await asyncio.to_thread(hub.create_token, 1)
    proc = hub_agent(
        tmp_path / "agent",
        hub.url,
        hub.ca_path,
        token,
        hub={
            "sync_interval_s": 1.0,
            "long_poll_s": 5.0,
            "backoff_base_s": 0.2,
            "backoff_cap_s": 1.0,
            "request_timeout_s": 5.0,
        },
    )
    async with running(docker, proc):
        yield proc


class Hammer:
    """Call the local API back to back; count calls and every one not answered."""

    def __init__(self, agent: AgentProcess) -> None:
        self.agent = agent
        self.calls = 0
        self.unanswered: list[str] = []

    async def run(self) -> None:
        paths = ("/v1/status", "/v1/targets", "/v1/containers", "/v1/audit?limit=5")
        while True:
            path = paths[self.calls % len(paths)]
            self.calls += 1
            try:
                async with asyncio.timeout(15):
                    code, _ = await self.agent.call("GET", path)
                if code != 200:
                    self.unanswered.append(f"{path}: {code}")
            except Exception as exc:  # any failure is a dropped call
                self.unanswered.append(f"{path}: {exc!r}")
            await asyncio.sleep(0.02)


def log_count(agent: AgentProcess, text: str) -> int:
    """Return how often ``text`` occurs in the agent's log."""
    return agent.log_path.read_text(errors="replace").count(text)


async def test_hub_killed_and_restarted_while_local_api_busy_no_task_death_no_dropped_call(
    hub: HubProcess, agent: AgentProcess, images: TestImages
) -> None:
    device_id = (await agent.status())["device_id"]

    async def online() -> bool:
        dev = await asyncio.to_thread(hub.device, device_id)
        return bool(dev.get("last_contact"))

    await docker_env.wait_for(online, timeout_s=30)
    hammer = Hammer(agent)
    hammering = asyncio.create_task(hammer.run())
    try:
        for _ in range(HUB_RESTARTS):
            lost, back = log_count(agent, "hub unreachable"), log_count(agent, "hub is back")
            await asyncio.to_thread(hub.kill)

            async def noticed(lost: int = lost) -> bool:
                return log_count(agent, "hub unreachable") > lost

            await docker_env.wait_for(noticed, timeout_s=30)
            await asyncio.to_thread(hub.start)

            async def reconnected(back: int = back) -> bool:
                return log_count(agent, "hub is back") > back

            await docker_env.wait_for(reconnected, timeout_s=30)
    finally:
        hammering.cancel()
        await asyncio.gather(hammering, return_exceptions=True)

    assert hammer.calls > 20 and hammer.unanswered == [], hammer.unanswered[:10]
    st = await agent.status()
    assert st["event_loop"].startswith("asyncio"), st["event_loop"]
    assert all(t["state"] == "running" for t in st["tasks"].values()), st["tasks"]

    # Sync and long-poll both alive: a new target arrives, runs, and is reported back.
    release: dict[str, Any] = release_doc("2")
    release["services"][0]["image"] = images.ref("good")
    revision = (await asyncio.to_thread(hub.set_target, device_id, release))["revision"]

    async def reported() -> bool:
        dev = await asyncio.to_thread(hub.device, device_id)
        return bool(dev.get("applied_revision") == revision)

    await docker_env.wait_for(reported, timeout_s=60, interval_s=0.5)

    async def drained() -> bool:
        outbox = (await agent.status())["outbox"]
        return not any(v.get("entries") for v in outbox.values())

    await docker_env.wait_for(drained, timeout_s=30, interval_s=0.3)
    accepted = [
        p
        for _, kind, p in await asyncio.to_thread(hub.events, device_id)
        if kind == "audit" and p.get("action") == "target.accept"
    ]
    assert accepted and accepted[-1]["object"] == f"target:{revision}"
    log = agent.log_path.read_text(errors="replace")
    assert "died" not in log and "background task" not in log, log[-3000:]
