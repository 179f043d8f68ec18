"""A crash-looping service is reported: exactly one crash-loop event reaches the hub.

Issue 7 item 2: the supervisor called the crash-loop callback with a ``ServiceState``
where the agent expected a name, ``json.dumps`` raised inside an untracked task and the
event was lost. Real hub process, real agent process, real Docker engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import docker_env
import pytest
from agentproc import AgentProcess
from docker_env import TestImages
from fleetkit import hub_agent, running

from hub.testing import RunningHub, start_hub

pytestmark = pytest.mark.docker

CRASH_LOOP_EXITS = 3


@pytest.fixture
def hub(tmp_path: Path) -> Any:
    """Start a hub process of this test's own."""
    running = start_hub(tmp_path / "hub")
    yield running
    running.stop()


@pytest.fixture
async def agent(
    hub: RunningHub, tmp_path: Path, docker: aiodocker.Docker
) -> AsyncIterator[AgentProcess]:
    """Start an agent that enrolls with the hub, with a short crash-loop threshold."""
    token = await hub.create_token(uses=1)
    proc = hub_agent(
        tmp_path / "agent",
        hub.url,
        hub.ca_path,
        token,
        hub={"sync_interval_s": 1.0, "long_poll_s": 10.0, "backoff_cap_s": 2.0},
        supervisor={
            "backoff_base_s": 0.2,
            "backoff_cap_s": 1.0,
            "crash_loop_exits": CRASH_LOOP_EXITS,
            "crash_loop_window_s": 300.0,
        },
    )
    async with running(docker, proc):
        yield proc


async def hub_events(hub: RunningHub, device_id: str) -> list[dict[str, Any]]:
    """Return the payloads of every "event" entry the hub holds for the device."""
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        status, body = await hub.api(
            "GET", f"/api/v1/devices/{device_id}/events?after={after}&limit=500"
        )
        assert status == 200, body
        out += [e["payload"] for e in body["events"] if e["kind"] == "event"]
        if not body["events"]:
            return out
        after = body["next_after"]


def crash_loops(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the crash-loop events among ``events``."""
    return [e for e in events if e.get("type") == "container" and e.get("action") == "crash_loop"]


async def test_crash_loop_event_is_recorded_once_on_the_hub(
    hub: RunningHub, agent: AgentProcess, images: TestImages
) -> None:
    device_id = (await agent.status())["device_id"]
    release = {
        "name": "app",
        "version": "1",
        "services": [
            {
                "name": "crashy",
                "image": images.ref("crash"),
                "environment": {"EXIT_CODE": "1", "CRASH_AFTER": "0"},
            }
        ],
    }
    await hub.set_target(device_id, release)

    async def reported() -> list[dict[str, Any]]:
        return crash_loops(await hub_events(hub, device_id))

    first = await docker_env.wait_for(reported, timeout_s=60, interval_s=0.5)
    assert first[0]["service"] == "crashy", first
    assert first[0]["restarts"] >= CRASH_LOOP_EXITS and first[0]["last_exit_code"] == 1

    # It keeps crashing (and may be recreated on the rollback path): still one event.
    async def crashed_more() -> bool:
        st = await agent.status()
        svc = {s["name"]: s for s in st["services"]}.get("crashy") or {}
        return svc.get("restarts", 0) >= CRASH_LOOP_EXITS + 3

    await docker_env.wait_for(crashed_more, timeout_s=60, interval_s=0.5)

    async def outbox_drained() -> bool:
        st = await agent.status()
        return not st["outbox"].get("event", {}).get("entries", 0)

    await docker_env.wait_for(outbox_drained, timeout_s=30, interval_s=0.3)
    assert len(await reported()) == 1
    log = agent.log_path.read_text(errors="replace")
    assert "died" not in log, log[-3000:]
