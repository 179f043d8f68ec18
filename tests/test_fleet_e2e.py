"""A fleet end to end: a real hub process, a real agent process, the real Docker engine.

The agent enrolls with a token (mutual TLS from then on), receives a signed target by
long-poll, applies it, and reports back; the hub shows what the device runs and holds
the device's audit records.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import docker_env
import pytest
from agentproc import AgentProcess
from docker_env import TestImages

from hub.testing import RunningHub, start_hub

pytestmark = pytest.mark.docker


@pytest.fixture
def fleet_hub(tmp_path: Path) -> Any:
    """Start a hub process of this test's own, shipping every log line (the default policy,
    ``errors``, ships only error lines; this test follows an ordinary line to the hub)."""
    hub = start_hub(tmp_path / "hub", sections={"log_policy": {"default_mode": "all"}})
    yield hub
    hub.stop()


@pytest.fixture
async def enrolled_agent(
    fleet_hub: RunningHub, tmp_path: Path, docker: aiodocker.Docker
) -> AsyncIterator[AgentProcess]:
    """Start an agent that enrolls with the hub on first start."""
    status, body = await fleet_hub.api(
        "POST", "/api/v1/enrollment-tokens", {"uses": 1, "tags": {"site": "lab"}}
    )
    assert status in (200, 201), body
    agent = AgentProcess(
        None,
        tmp_path / "agent",
        hub={
            "url": fleet_hub.url,
            "enrollment_token": body["token"],
            "ca_file": str(fleet_hub.ca_path),
            "sync_interval_s": 1.0,
            "long_poll_s": 10.0,
            "backoff_cap_s": 2.0,
        },
    )
    await agent.start()
    yield agent
    await agent.stop()
    agent.cleanup()
    device_id = (agent.data_dir / "identity.json").exists() and agent_device_id(agent)
    if device_id:
        await docker_env.cleanup_device(docker, device_id)


def agent_device_id(agent: AgentProcess) -> str:
    """Return the device id the hub gave the agent."""
    import json

    return json.loads((agent.data_dir / "identity.json").read_text())["device_id"]


async def hub_device(hub: RunningHub, device_id: str) -> dict[str, Any]:
    """Return the hub's view of a device."""
    status, body = await hub.api("GET", f"/api/v1/devices/{device_id}")
    assert status == 200, body
    return body


async def test_enroll_deploy_report_and_audit(
    fleet_hub: RunningHub, enrolled_agent: AgentProcess, images: TestImages
) -> None:
    """A target set on the hub runs on the device within seconds and is reported back."""
    agent = enrolled_agent
    device_id = agent_device_id(agent)
    st = await agent.status()
    assert st["device_id"] == device_id
    dev = await docker_env.wait_for(lambda: _contacted(fleet_hub, device_id), timeout_s=15)
    assert dev["tags"] == {"site": "lab"}

    release = {
        "name": "app",
        "version": "1",
        "services": [{"name": "web", "image": images.digest_ref("good")}],
    }
    t0 = time.monotonic()
    revision = await fleet_hub.set_target(device_id, release)

    async def received() -> bool:
        return (await agent.status())["target_revision"] == revision

    await docker_env.wait_for(received, timeout_s=10, interval_s=0.05)
    delivery_s = time.monotonic() - t0
    # Long-poll: the device learns of the target about as soon as the operator sets it.
    assert delivery_s < 3.0, delivery_s

    async def reported_running() -> dict[str, Any] | None:
        d = await hub_device(fleet_hub, device_id)
        svcs = {s["name"]: s for s in d.get("services") or []}
        ok = d["applied_revision"] == revision and svcs.get("web", {}).get("state") == "running"
        return d if ok else None

    dev = await docker_env.wait_for(reported_running, timeout_s=30, interval_s=0.3)
    assert dev["drift"] in ("in_sync", "none", "converged", "ok"), dev["drift"]

    async def audit_on_hub() -> list[dict[str, Any]]:
        status, body = await fleet_hub.api("GET", f"/api/v1/devices/{device_id}/events?limit=500")
        assert status == 200, body
        return [
            e["payload"]
            for e in body["events"]
            if e["kind"] == "audit" and e["payload"]["action"] == "target.accept"
        ]

    accepted = await docker_env.wait_for(audit_on_hub, timeout_s=15)
    assert accepted[0]["object"] == f"target:{revision}" and accepted[0]["actor"] == "hub"

    async def logs_on_hub() -> list[dict[str, Any]]:
        status, body = await fleet_hub.api("GET", f"/api/v1/devices/{device_id}/events?limit=1000")
        assert status == 200, body
        return [e["payload"] for e in body["events"] if e["kind"] == "log"]

    # The container's own output reaches the hub: no SSH, no VPN.
    lines = await docker_env.wait_for(logs_on_hub, timeout_s=20)
    assert any(p["service"] == "web" and p["line"] == "tick" for p in lines), lines[:5]


async def _contacted(hub: RunningHub, device_id: str) -> dict[str, Any] | None:
    status, body = await hub.api("GET", f"/api/v1/devices/{device_id}")
    return body if status == 200 and body.get("last_contact") else None


async def test_agent_keeps_running_its_target_while_the_hub_is_down(
    fleet_hub: RunningHub, enrolled_agent: AgentProcess, images: TestImages, tmp_path: Path
) -> None:
    """With the hub gone, the agent still enforces its target and queues what happens."""
    agent = enrolled_agent
    device_id = agent_device_id(agent)
    release = {
        "name": "app",
        "version": "1",
        "services": [{"name": "web", "image": images.ref("good")}],
    }
    revision = await fleet_hub.set_target(device_id, release)

    async def applied() -> bool:
        st = await agent.status()
        return st["applied_revision"] == revision and st["state"] == "converged"

    await docker_env.wait_for(applied, timeout_s=30)
    fleet_hub.kill()
    await agent.kill()
    await agent.start()  # restarts offline: enrolled identity and target come from disk
    await docker_env.wait_for(applied, timeout_s=30)
    code, _ = await agent.call("POST", "/v1/services/web/restart")
    assert code == 200
    await asyncio.sleep(1)
    outbox = (await agent.status())["outbox"]
    assert outbox.get("audit", {}).get("entries", 0) >= 1, outbox
    # The hub comes back on the same port: the queued audit record reaches it.
    hub2 = start_hub(fleet_hub.work_dir, port=fleet_hub.port)
    try:

        async def restart_audited() -> bool:
            status, body = await hub2.api("GET", f"/api/v1/devices/{device_id}/events?limit=500")
            return status == 200 and any(
                e["kind"] == "audit" and e["payload"]["action"] == "service.restart"
                for e in body["events"]
            )

        await docker_env.wait_for(restart_audited, timeout_s=30)
    finally:
        hub2.stop()


async def test_fleet_view_is_never_in_sync_before_the_new_release_is_good(
    fleet_hub: RunningHub, enrolled_agent: AgentProcess, images: TestImages
) -> None:
    """Item 14: sampled during an update to a slow-to-be-healthy release, no early in_sync."""
    agent = enrolled_agent
    device_id = agent_device_id(agent)
    good = {"name": "web", "image": images.ref("good")}
    first = await fleet_hub.set_target(
        device_id, {"name": "app", "version": "1", "services": [good]}
    )

    async def hub_in_sync(revision: int) -> dict[str, Any] | None:
        d = await hub_device(fleet_hub, device_id)
        return d if d["drift"] == "in_sync" and d["running_revision"] == revision else None

    await docker_env.wait_for(lambda: hub_in_sync(first), timeout_s=40, interval_s=0.3)
    slow = {"name": "web", "image": images.ref("slow"), "environment": {"HEALTHY_AFTER": "6"}}
    second = await fleet_hub.set_target(
        device_id, {"name": "app", "version": "2", "services": [slow]}, min_ready_s=1
    )
    samples: list[tuple[str, Any, Any]] = []
    good_at: float | None = None
    async with asyncio.timeout(60):
        while True:
            d = await hub_device(fleet_hub, device_id)
            samples.append((d["drift"], d["running_revision"], d["rollout_state"]))
            st = await agent.status()
            if good_at is None and st["running_revision"] == second:
                assert st["rollout_state"] == "good", st
                good_at = time.monotonic()
            if d["drift"] == "in_sync" and d["running_revision"] == second:
                break
            if good_at is None:
                # The agent does not report the new revision as running before it is good.
                assert st["running_revision"] != second, st
            await asyncio.sleep(0.2)
    early = [s for s in samples[:-1] if s[0] == "in_sync" and s[2] != "good"]
    assert not early, samples
    assert good_at is not None, "the hub showed in_sync before the agent judged the release good"
    assert any(s[0] == "updating" for s in samples), samples  # sampled during the update


async def test_refused_local_apply_on_a_managed_device_is_audited(
    enrolled_agent: AgentProcess, images: TestImages
) -> None:
    """Item 13: the 409 "managed by a hub, needs force" is an audit record with actor, outcome."""
    agent = enrolled_agent
    body = {"release": {"name": "app", "version": "x", "services": [{"name": "w", "image": "x"}]}}
    code, resp = await agent.call("POST", "/v1/apply", body)
    assert code == 409, resp
    code, audit = await agent.call("GET", "/v1/audit")
    assert code == 200
    refused = [a for a in audit if a["action"] == "target.reject"]
    assert refused, audit
    assert refused[0]["outcome"] == "refused" and refused[0]["actor"].startswith("unix:")
    assert "managed by a hub" in refused[0]["detail"]
