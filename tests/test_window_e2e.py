"""Maintenance windows end to end: a real hub, a real agent process, the real Docker engine.

Windows are computed from the current UTC time (``HH:MM:SS``), so each opens seconds from now.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import docker_env
import pytest
from agentproc import AgentProcess
from docker_env import TestImages
from test_fleet_e2e import agent_device_id, enrolled_agent, fleet_hub  # noqa: F401

from hub.testing import RunningHub

pytestmark = pytest.mark.docker


def window_in(open_in_s: float, length_s: float) -> tuple[dict[str, str], datetime]:
    """Return a UTC window opening ``open_in_s`` from now, and its opening instant."""
    opens = (datetime.now(UTC) + timedelta(seconds=open_in_s)).replace(microsecond=0)
    closes = opens + timedelta(seconds=length_s)
    window = {"start": opens.strftime("%H:%M:%S"), "end": closes.strftime("%H:%M:%S"), "tz": "UTC"}
    return window, opens


def release(version: str, image: str) -> dict[str, Any]:
    return {"name": "app", "version": version, "services": [{"name": "web", "image": image}]}


async def run_first(hub: RunningHub, agent: AgentProcess, images: TestImages) -> str:
    """Give the device a good first release and wait until it runs; return the device id."""
    device_id = agent_device_id(agent)
    revision = await hub.set_target(device_id, release("1", images.ref("good")), min_ready_s=0)

    async def good() -> bool:
        st = await agent.status()
        return st["running_revision"] == revision and st["rollout_state"] == "good"

    await docker_env.wait_for(good, timeout_s=60)
    return device_id


async def wait_applied_in_window(agent: AgentProcess, revision: int, opens: datetime) -> None:
    """Wait until ``revision`` is being applied or runs; it must not start before ``opens``."""

    async def started() -> dict[str, Any] | None:
        st = await agent.status()
        if st["rollout_state"] == "waiting_window":
            assert datetime.now(UTC) < opens + timedelta(seconds=2), "window opened, still waiting"
            return None
        return st if revision in (st["applying_revision"], st["running_revision"]) else None

    await docker_env.wait_for(started, timeout_s=30, interval_s=0.1)
    assert datetime.now(UTC) >= opens, "applied before its window opened"

    async def good() -> bool:
        st = await agent.status()
        return st["running_revision"] == revision and st["rollout_state"] == "good"

    await docker_env.wait_for(good, timeout_s=60)


async def wait_waiting(agent: AgentProcess, revision: int) -> dict[str, Any]:
    async def waiting() -> dict[str, Any] | None:
        st = await agent.status()
        ok = st["applying_revision"] == revision and st["rollout_state"] == "waiting_window"
        return st if ok else None

    st = await docker_env.wait_for(waiting, timeout_s=10, interval_s=0.05)
    assert st["running_revision"] != revision and st["release"] == "app@1"
    return st


async def test_target_with_a_window_is_stored_then_applied_when_it_opens(
    fleet_hub: RunningHub,  # noqa: F811
    enrolled_agent: AgentProcess,  # noqa: F811
    images: TestImages,
) -> None:
    device_id = await run_first(fleet_hub, enrolled_agent, images)
    window, opens = window_in(4, 600)
    revision = await fleet_hub.set_target(
        device_id, release("2", images.ref("healthy")), window=window, min_ready_s=0
    )
    st = await wait_waiting(enrolled_agent, revision)
    assert datetime.fromisoformat(st["window_opens_at"]) == opens
    await wait_applied_in_window(enrolled_agent, revision, opens)


async def test_window_is_honoured_with_the_hub_gone(
    fleet_hub: RunningHub,  # noqa: F811
    enrolled_agent: AgentProcess,  # noqa: F811
    images: TestImages,
) -> None:
    device_id = await run_first(fleet_hub, enrolled_agent, images)
    window, opens = window_in(5, 600)
    revision = await fleet_hub.set_target(
        device_id, release("2", images.ref("healthy")), window=window, min_ready_s=0
    )
    await wait_waiting(enrolled_agent, revision)
    fleet_hub.kill()  # offline from here on: the device applies on its own clock
    await wait_applied_in_window(enrolled_agent, revision, opens)


async def test_on_device_rollback_does_not_wait_for_a_window(
    fleet_hub: RunningHub,  # noqa: F811
    enrolled_agent: AgentProcess,  # noqa: F811
    images: TestImages,
) -> None:
    """A release that fails after its window closed is rolled back at once."""
    device_id = await run_first(fleet_hub, enrolled_agent, images)
    window, opens = window_in(2, 3)
    closes = opens + timedelta(seconds=3)
    revision = await fleet_hub.set_target(
        device_id, release("2", images.ref("crash")), window=window, apply_deadline_s=8
    )
    await wait_waiting(enrolled_agent, revision)

    async def rolled_back() -> dict[str, Any] | None:
        st = await enrolled_agent.status()
        return st if st["rollout_state"] == "rolled_back" and st["release"] == "app@1" else None

    await docker_env.wait_for(rolled_back, timeout_s=45, interval_s=0.2)
    assert datetime.now(UTC) > closes  # judged and rolled back outside the window

    async def first_runs() -> bool:
        st = await enrolled_agent.status()
        return any(s["name"] == "web" and s["state"] == "running" for s in st["services"])

    await docker_env.wait_for(first_runs, timeout_s=20)
