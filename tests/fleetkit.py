"""Real agent processes enrolled with a real hub, for the end-to-end tests.

    agent = hub_agent(tmp_path / "agent", hub.url, hub.ca_path, token,
                      hub={"sync_interval_s": 1.0}, supervisor={...})
    async with running(docker, agent):       # started; after: stopped, containers removed
        ...
    device_of(agent)                         # the id the hub gave it at enrollment

The agent enrolls with ``token`` on its first start; the URL may be a fault proxy's
(``tests/faultproxy.py``) in front of the hub. ``managed_containers`` reads what a device
runs straight from the engine, behind the agent's back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import docker_env
from agentproc import AgentProcess

from edge_agent.models import LABEL_DEVICE, LABEL_MANAGED, LABEL_RELEASE, LABEL_SERVICE, MANAGED_BY

# Hub link settings of an agent under test: quick syncs, short backoff, short long-polls.
FAST = {"sync_interval_s": 0.5, "backoff_base_s": 0.2, "backoff_cap_s": 1.0, "long_poll_s": 5.0}


def hub_agent(
    data_dir: Path,
    url: str,
    ca_path: Path,
    token: str,
    *,
    hub: dict[str, Any] | None = None,
    **sections: Any,
) -> AgentProcess:
    """Return an agent (not started) that enrolls at ``url`` with ``token``; logs off."""
    hub_section = {"url": url, "enrollment_token": token, "ca_file": str(ca_path), **(hub or {})}
    return AgentProcess(None, data_dir, hub=hub_section, **{"logs": {"enabled": False}, **sections})


def device_of(agent: AgentProcess) -> str | None:
    """Return the device id the hub gave the agent, or None before it enrolled."""
    identity = agent.data_dir / "identity.json"
    if not identity.exists():
        return None
    return str(json.loads(identity.read_text())["device_id"])


async def retire(agent: AgentProcess, docker: aiodocker.Docker) -> None:
    """Stop the agent, remove its socket dir and every engine object of its device."""
    await agent.stop()
    agent.cleanup()
    # A hub-enrolled agent's id is in identity.json; a standalone one was given its id.
    device = device_of(agent) or agent.device_id
    if device is not None:
        await docker_env.cleanup_device(docker, device)


@asynccontextmanager
async def running(docker: aiodocker.Docker, *agents: AgentProcess) -> AsyncIterator[None]:
    """Start the agents together; retire every one of them afterwards, however it ends."""
    try:
        await asyncio.gather(*(a.start() for a in agents))
        yield
    finally:
        await asyncio.gather(*(retire(a, docker) for a in agents))


@dataclass(frozen=True)
class Container:
    """One managed container of a device, as the engine has it."""

    service: str
    release: str
    image: str
    state: str


async def managed_containers(docker: aiodocker.Docker, device_id: str) -> list[Container]:
    """Return the device's managed containers from the engine, sorted by service."""
    labels = [f"{LABEL_MANAGED}={MANAGED_BY}", f"{LABEL_DEVICE}={device_id}"]
    found = await docker.containers.list(all=True, filters=json.dumps({"label": labels}))
    out = [
        Container(
            service=c["Labels"].get(LABEL_SERVICE, ""),
            release=c["Labels"].get(LABEL_RELEASE, ""),
            image=c["Image"],
            state=c["State"],
        )
        for c in found
    ]
    return sorted(out, key=lambda c: c.service)


async def until(predicate: Any, timeout_s: float = 45.0, what: str = "condition") -> Any:
    """Poll a plain predicate every 0.2 s until it returns something true; return that."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)
