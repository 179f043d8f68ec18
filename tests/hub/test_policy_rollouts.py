"""Device policies and rollouts on a real hub: the engine checks again when it issues.

A device's groups may change between a rollout's start (checked for every member) and the
stage that reaches it. The simulated devices of test_rollouts speak the real protocol.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_registry import GOOD, OPEN
from test_rollouts import SimDevice, _run, audit_of, start

from hub.testing import RunningHub, start_hub


@pytest.fixture(scope="module")
def rhub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """A hub of its own whose engine ticks fast."""
    running = start_hub(tmp_path_factory.mktemp("phub"), sections={"rollouts": {"tick_s": 0.1}})
    yield running
    status = running.stop()
    assert status == 0, f"hub exited with {status}:\n{running.log()[-3000:]}"


FEATURES = ["depends_on", "healthcheck", "container_options", "device_policy"]


@dataclass(eq=False, kw_only=True)
class PolicyDevice(SimDevice):
    """A simulated device whose agent lists the container_options and device_policy features."""

    policies: list[dict[str, Any]] = field(default_factory=list)  # each target's policy

    async def sync(self, hub: RunningHub) -> None:
        body = {
            "protocol": 3,
            "epoch": "sim",
            "features": FEATURES,
            "entries": [],
            "known_target_revision": self.revision,
            "status": self.status(),
        }
        status, answer = await hub.request(
            "POST", "/v1/sync", json_body=body, ssl_context=self.identity.ssl_context()
        )
        assert status == 200, answer
        if answer.get("target"):
            self.take(answer["target"])
            self.policies.append(
                json.loads(base64.b64decode(answer["target"]["payload"]))["policy"]
            )


async def until(check: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := await check()):
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.05)
    return value


async def test_engine_refuses_a_device_whose_policy_changed_after_the_start(
    rhub: RunningHub, tmp_path: Path
) -> None:
    tag = "p" + uuid.uuid4().hex[:8]
    token = await rhub.create_token(uses=2, tags={"fleet": tag})
    devices = [PolicyDevice(identity=await rhub.enroll(token, tmp_path / f"d{i}")) for i in (0, 1)]
    await asyncio.gather(*(d.sync(rhub) for d in devices))  # online before the start
    group = {"name": tag, "selector": f"fleet={tag}"}
    assert (await rhub.api("POST", "/api/v1/groups", group))[0] == 201
    status, body = await rhub.api("PUT", f"/api/v1/groups/{tag}/policy", {"privileged": True})
    assert status == 200, body
    web = {"name": "web", "image": f"{OPEN}/{GOOD}:1", "privileged": True}
    doc = {"name": f"r{tag}", "version": "1", "services": [web]}
    status, body = await rhub.api("POST", "/api/v1/releases", {"release": doc})
    assert status == 201, body
    runner = asyncio.create_task(_run(rhub, devices))
    try:
        status, rollout = await start(
            rhub, release=f"r{tag}@1", group=tag, stages="1,100%", soak_s=3
        )
        assert status == 201, rollout

        async def first() -> list[SimDevice]:
            return [d for d in devices if d.received]

        [reached] = await until(first)
        # Between the stages the group stops allowing privileged mode.
        assert (await rhub.api("DELETE", f"/api/v1/groups/{tag}/policy"))[0] == 200
        other = next(d for d in devices if d is not reached).identity.device_id

        async def refused() -> bool:
            return "rollout.policy_refused" in await audit_of(rhub, other)

        await until(refused)
        assert reached.policies[0]["privileged"] is True  # the policy travelled signed
        assert not next(d for d in devices if d is not reached).received
        _, health = await rhub.request("GET", "/healthz")
        assert health["rollout_engine"]["not_issued"]["rollout.policy_refused"] == 1, health
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
