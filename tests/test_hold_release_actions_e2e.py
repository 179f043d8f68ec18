"""The hub ends a technician's hold: ``unpin`` and ``resume`` actions on a real agent.

A technician pins (or pauses) a real agent on a real engine; the hub's next target waits.
An ``unpin``/``resume`` action queued at the hub (signed, delivered, run once) ends the
hold: the waiting target is applied, and the release is audited on the device (the
hold's own ``device.unpin``/``device.resume`` row, actor ``hub``) and at the hub (the
action's creation, and the device's rows after sync).
"""

from __future__ import annotations

from typing import Any

import aiodocker
import docker_env
import pytest
from agentproc import AgentProcess
from docker_env import TestImages
from fleetkit import device_of, until
from hubproc import HubProcess
from test_actions_e2e import action, finished, hub, local_audit, queue  # noqa: F401
from test_technician_holds_e2e import audit_rows, device, release, runs  # noqa: F401

from edge_agent.actiondoc import KINDS

pytestmark = pytest.mark.docker


def hub_audit(proc: HubProcess, query: str) -> list[dict[str, Any]]:
    return list(proc._call("GET", f"/api/v1/audit?{query}&limit=1000", None)["audit"])


def test_resume_and_unpin_are_action_kinds_without_arguments() -> None:
    assert KINDS["resume"]({}) == {} and KINDS["unpin"]({}) == {}


@pytest.mark.parametrize(("hold", "kind"), [("pin", "unpin"), ("pause", "resume")])
async def test_the_hub_ends_a_technicians_hold_with_an_action(
    hub: HubProcess,  # noqa: F811
    device: tuple[AgentProcess, int],  # noqa: F811
    docker: aiodocker.Docker,
    images: TestImages,
    hold: str,
    kind: str,
) -> None:
    agent, _port = device
    device_id = str(await until(lambda: device_of(agent), what="enrollment"))
    hub.set_target(device_id, release(images, "1"))
    await docker_env.wait_for(lambda: runs(agent, docker, "1"), timeout_s=60)
    code, body = await agent.call("POST", f"/v1/{hold}", {"minutes": 60, "reason": "on site"})
    assert code == 200, body
    hub.set_target(device_id, release(images, "2"))
    await until(lambda: hub.device(device_id)["rollout_state"] == "held", 30, "held at hub")
    assert await runs(agent, docker, "1")  # the hold keeps the new target waiting

    action_id = queue(hub, device_id, kind)
    done = await finished(hub, action_id, 60)
    assert done["state"] == "succeeded", done
    assert done["result"]["released"] == hold and done["result"]["was"]["reason"] == "on site"
    await docker_env.wait_for(lambda: runs(agent, docker, "2"), timeout_s=60)
    code, rows = await agent.call("GET", "/v1/audit?limit=1000")
    ended = audit_rows(rows, f"device.{kind}")
    assert [(r["actor"], r["outcome"]) for r in ended] == [("hub", "ok")], ended
    assert [o for _, o, _ in local_audit(agent, action_id)] == ["received", "succeeded"]
    assert (await agent.call("GET", "/v1/holds"))[1] == {}
    created = hub_audit(hub, "action=action.create&source=hub")
    assert [a["detail"]["kind"] for a in created if a["detail"]["id"] == action_id] == [kind]
    await until(
        lambda: hub_audit(hub, f"device={device_id}&action=device.{kind}"), what="the device's row"
    )

    again = await finished(hub, queue(hub, device_id, kind), 60)  # nothing held: said so
    assert again["state"] == "succeeded" and again["result"]["was"] is None, again


def test_edgectl_queues_an_unpin_for_a_device() -> None:
    import argparse

    from hub.edgectl_action import run

    calls: list[tuple[Any, ...]] = []
    ns = argparse.Namespace(command="action", words=["dev-1", "unpin"], group=None, expires=None)
    run(ns, lambda *a: calls.append(a), int)
    assert calls == [("POST", "/api/v1/devices/dev-1/actions", {"kind": "unpin", "args": {}})]
