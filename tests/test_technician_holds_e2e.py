"""Technician holds on a real agent process and a real Docker engine (and a real hub).

Pause: a crashed container stays down and a new target waits until resume; the bound is
refused 400 naming it; a pause survives an agent restart and expires by itself. Pin
(enrolled device, hub-issued tokens over the HTTPS LAN listener): a hub target is stored
and acknowledged but not applied, the hub's device view and rollout gate say "held", a
read-role token cannot pause or pin, technician reads are audited aggregated, and the hub
verifies the device's chain.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import docker_env
import pytest
from agentproc import AgentProcess
from docker_env import TestImages
from fleetkit import device_of, hub_agent, managed_containers, running
from hubproc import HubProcess, free_port
from test_technicians_e2e import issue, token_id

from edge_agent.audit import verify_chain
from edge_agent.models import LABEL_DEVICE, LABEL_SERVICE

pytestmark = pytest.mark.docker


def release(images: TestImages, version: str) -> dict[str, Any]:
    """Return a one-service release; each version a different container config."""
    return {
        "name": "app",
        "version": version,
        "services": [{"name": "web", "image": images.ref("good"), "environment": {"V": version}}],
    }


async def web(docker: aiodocker.Docker, device_id: str) -> Any:
    """Return the device's web container as the engine has it (None if there is none)."""
    found = [c for c in await managed_containers(docker, device_id) if c.service == "web"]
    return found[0] if found else None


async def runs(agent: AgentProcess, docker: aiodocker.Docker, version: str) -> bool:
    """Return whether web runs the given version (the agent converged to it)."""
    st = await agent.status()
    c = await web(docker, st["device_id"])
    return st["release"] == f"app@{version}" and c is not None and c.state == "running"


async def stays(predicate: Any, seconds: float) -> None:
    """Assert that ``predicate`` holds at every poll for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert await predicate()
        await asyncio.sleep(0.3)


async def kill_web(docker: aiodocker.Docker, device_id: str) -> None:
    """Kill the web container as a crash would, and wait until the engine says exited."""
    labels = [f"{LABEL_DEVICE}={device_id}", f"{LABEL_SERVICE}=web"]
    found = await docker.containers.list(all=True, filters=json.dumps({"label": labels}))
    assert found, "no web container"
    await found[0].kill()

    async def exited() -> bool:
        c = await web(docker, device_id)
        return c is not None and c.state == "exited"

    await docker_env.wait_for(exited, timeout_s=15)


def audit_rows(rows: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    """Return the audit rows of one action, oldest first, detail decoded."""
    picked = [dict(r, detail=json.loads(r["detail"])) for r in rows if r["action"] == action]
    return list(reversed(picked))


async def test_pause_holds_a_crashed_container_and_a_new_target_until_resume(
    tmp_path: Path, docker: aiodocker.Docker, images: TestImages, device_id: str
) -> None:
    agent = AgentProcess(device_id, tmp_path / "a", technician={"max_pause_minutes": 30})
    async with running(docker, agent):
        assert (await agent.call("POST", "/v1/apply", release(images, "1")))[0] == 202
        await docker_env.wait_for(lambda: runs(agent, docker, "1"), timeout_s=60)

        code, body = await agent.call("POST", "/v1/pause", {"minutes": 31, "reason": "fan"})
        assert code == 400 and body["fields"][0]["field"] == "minutes", body
        assert "technician.max_pause_minutes (30)" in body["message"]
        assert (await agent.status())["hold"] is None  # nothing changed

        code, body = await agent.call("POST", "/v1/pause", {"minutes": 10, "reason": "fan"})
        assert code == 200 and body["pause"]["reason"] == "fan", body
        await kill_web(docker, device_id)
        code, body = await agent.call("POST", "/v1/apply", release(images, "2"))
        assert code == 202, body

        async def held_down() -> bool:
            c = await web(docker, device_id)
            st = await agent.status()
            return c.state == "exited" and st["rollout_state"] == "held"

        # Longer than the restart backoff (0.5 s) and the safety timer (5 s).
        await stays(held_down, 7.0)
        st = await agent.status()
        assert st["hold"]["pause"]["by"].startswith("unix:"), st["hold"]

        code, body = await agent.call("POST", "/v1/resume")
        assert code == 200 and body["released"] == "pause", body
        await docker_env.wait_for(lambda: runs(agent, docker, "2"), timeout_s=60)
        assert (await agent.call("POST", "/v1/resume"))[0] == 409  # no pause any more

        code, rows = await agent.call("GET", "/v1/audit?limit=1000")
        pauses = audit_rows(rows, "device.pause")
        assert [p["outcome"] for p in pauses] == ["refused", "ok"], pauses
        assert pauses[1]["detail"]["reason"] == "fan"
        assert [r["outcome"] for r in audit_rows(rows, "device.resume")] == ["ok", "not_held"]
        assert verify_chain(list(reversed(rows))) is None


async def test_pause_survives_an_agent_restart_and_expires_by_itself(
    tmp_path: Path, docker: aiodocker.Docker, images: TestImages, device_id: str
) -> None:
    agent = AgentProcess(device_id, tmp_path / "a")
    async with running(docker, agent):
        assert (await agent.call("POST", "/v1/apply", release(images, "1")))[0] == 202
        await docker_env.wait_for(lambda: runs(agent, docker, "1"), timeout_s=60)
        code, body = await agent.call("POST", "/v1/pause", {"minutes": 0.25, "reason": "cable"})
        assert code == 200, body
        until = body["pause"]["until"]
        await agent.kill()  # kill -9: the pause is in the store
        await kill_web(docker, device_id)
        await agent.start()
        st = await agent.status()
        assert st["hold"]["pause"]["until"] == until, st["hold"]
        assert (await web(docker, device_id)).state == "exited"

        async def expired() -> bool:
            st = await agent.status()
            return st["hold"] is None and await runs(agent, docker, "1")

        await docker_env.wait_for(expired, timeout_s=40)
        code, rows = await agent.call("GET", "/v1/audit?limit=1000")
        ends = audit_rows(rows, "device.pause_expired")
        assert [(e["actor"], e["outcome"]) for e in ends] == [("agent", "ok")], ends
        assert verify_chain(list(reversed(rows))) is None


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    proc = HubProcess(tmp_path / "hub").start()
    yield proc
    proc.stop()


@pytest.fixture
async def device(
    hub: HubProcess, tmp_path: Path, docker: aiodocker.Docker
) -> AsyncIterator[tuple[AgentProcess, int]]:
    port = free_port()
    agent = hub_agent(
        tmp_path / "agent",
        hub.url,
        hub.ca_path,
        hub.create_token(site="berlin"),
        hub={"sync_interval_s": 0.5, "backoff_cap_s": 1.0, "long_poll_s": 1.0},
        api={"lan_listen": f"127.0.0.1:{port}"},
    )
    async with running(docker, agent):
        yield agent, port


async def lan(
    agent: AgentProcess, port: int, method: str, path: str, token: str, body: Any = None
) -> tuple[int, Any]:
    """Call the agent's HTTPS LAN listener with a technician token."""
    ctx = ssl.create_default_context(cafile=str(agent.data_dir / "hub-ca.pem"))
    ctx.check_hostname = False  # the device certificate names the device, not 127.0.0.1
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.request(
            method,
            f"https://127.0.0.1:{port}{path}",
            headers={"Authorization": f"Bearer {token}"},
            json=body,
        ) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def test_pin_holds_a_hub_target_and_the_hub_shows_it(
    hub: HubProcess,
    device: tuple[AgentProcess, int],
    docker: aiodocker.Docker,
    images: TestImages,
) -> None:
    agent, port = device
    device_id = device_of(agent) or ""
    alice = issue(hub, "alice", "operate", "site=berlin")
    rita = issue(hub, "rita", "read", "site=berlin")
    hub.set_target(device_id, release(images, "1"))
    await docker_env.wait_for(lambda: runs(agent, docker, "1"), timeout_s=60)

    for path in ("/v1/pin", "/v1/pause"):
        code, body = await lan(agent, port, "POST", path, rita, {"minutes": 5, "reason": "x"})
        assert (code, body.get("error")) == (403, "wrong_role"), body
    pin = {"minutes": 30, "reason": "inspection"}
    code, body = await lan(agent, port, "POST", "/v1/pin", alice, pin)
    assert code == 200, body
    revision = hub.set_target(device_id, release(images, "2"))["revision"]

    async def hub_shows_held() -> Any:
        view = hub.device(device_id)
        held = view["rollout_state"] == "held" and view["applying_revision"] == revision
        return view if held and view.get("hold") else None

    view = await docker_env.wait_for(hub_shows_held, timeout_s=30)
    assert view["hold"]["pin"]["by"] == f"technician:alice@{token_id(alice)}", view["hold"]
    assert view["hold"]["pin"]["reason"] == "inspection"
    assert await runs(agent, docker, "1")  # still the pinned release

    for _ in range(5):
        assert (await lan(agent, port, "GET", "/v1/status", alice))[0] == 200
    code, body = await lan(agent, port, "POST", "/v1/unpin", alice)
    assert code == 200, body
    await docker_env.wait_for(lambda: runs(agent, docker, "2"), timeout_s=60)

    code, rows = await agent.call("GET", "/v1/audit?limit=1000")
    reads = [
        r
        for r in audit_rows(rows, "api.read")
        if r["actor"].startswith("technician:alice@") and r["object"] == "/v1/status"
    ]
    assert len(reads) == 1 and reads[0]["detail"]["count"] == 1, reads  # the rest counted
    assert [r["outcome"] for r in audit_rows(rows, "device.pin")] == ["ok"]
    assert [r["outcome"] for r in audit_rows(rows, "device.unpin")] == ["ok"]

    async def verified() -> Any:
        chain = hub.device(device_id)["audit_chain"]
        return chain if chain["verified"] >= len(rows) else None

    chain = await docker_env.wait_for(verified, timeout_s=30)
    assert chain["broken_id"] is None and chain["breaks"] == 0, chain
    assert hub.device(device_id)["hold"] is None


async def test_the_agent_audits_its_own_crash_loop_decision(
    tmp_path: Path, docker: aiodocker.Docker, images: TestImages, device_id: str
) -> None:
    agent = AgentProcess(
        device_id,
        tmp_path / "a",
        supervisor={"crash_loop_exits": 3, "backoff_base_s": 0.2, "backoff_cap_s": 1.0},
    )
    doc = {
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
    async with running(docker, agent):
        assert (await agent.call("POST", "/v1/apply", doc))[0] == 202

        async def decided() -> list[dict[str, Any]]:
            _, rows = await agent.call("GET", "/v1/audit?limit=1000")
            return audit_rows(rows, "service.crash_loop")

        rows = await docker_env.wait_for(decided, timeout_s=60, interval_s=0.5)
        assert rows[0]["actor"] == "agent" and rows[0]["object"] == "service:crashy", rows
        assert rows[0]["detail"]["exits"] == 3 and rows[0]["detail"]["backoff_s"] == 1.0
        _, all_rows = await agent.call("GET", "/v1/audit?limit=1000")
        assert verify_chain(list(reversed(all_rows))) is None
