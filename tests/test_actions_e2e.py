"""Queued device actions on real agent processes enrolled with a real hub.

Each kind runs on a real agent; an online device is woken by the long-poll; a replayed
or expired action is refused and audited (locally and at the hub); an action for an
offline device runs once after it comes back, across kill -9 (one queued while the
agent is down, and one whose agent is killed right after recording it: interrupted,
reported failed, never re-run).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest
from agentproc import AgentProcess
from cryptography.hazmat.primitives import serialization
from fleetkit import FAST, device_of, hub_agent, running, until
from hubproc import HubProcess

from edge_agent.actiondoc import ActionDoc, sign_action
from edge_agent.models import LABEL_DEVICE, LABEL_SERVICE

IMAGE = "edgefleet-test/good:1"
# A service that ignores SIGTERM (sh as PID 1 without a trap): a restart takes the
# stop timeout (10 s), a window to kill the agent in while the action runs.
# It writes 200 lines at start (a log longer than a small result bound).
STUBBORN = [
    "/bin/sh",
    "-c",
    "i=0; while [ $i -lt 200 ]; do echo line $i; i=$((i+1)); done; while true; do sleep 1; done",
]
RELEASE = {
    "name": "app",
    "version": "1",
    "services": [
        {"name": "web", "image": IMAGE},
        {"name": "stubborn", "image": IMAGE, "command": STUBBORN},
    ],
}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    proc = HubProcess(tmp_path / "hub").start()
    yield proc
    proc.stop()


def action(hub: HubProcess, action_id: str) -> dict[str, Any]:
    return dict(hub._call("GET", f"/api/v1/actions/{action_id}", None))


async def finished(hub: HubProcess, action_id: str, timeout_s: float = 45.0) -> dict[str, Any]:
    final = ("succeeded", "failed", "refused", "expired")
    return dict(
        await until(
            lambda: (a := action(hub, action_id))["state"] in final and a,
            timeout_s,
            f"action {action_id} to finish",
        )
    )


def queue(hub: HubProcess, device: str, kind: str, **body: Any) -> str:
    made = hub._call("POST", f"/api/v1/devices/{device}/actions", {"kind": kind, **body})
    return str(made["id"])


def agent_rows(agent: AgentProcess, sql: str, *args: Any) -> list[Any]:
    db = sqlite3.connect(f"file:{agent.data_dir / 'agent.db'}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def local_audit(agent: AgentProcess, action_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    rows = agent_rows(
        agent,
        "SELECT action, outcome, detail FROM audit WHERE object = ? ORDER BY id",
        f"action:{action_id}",
    )
    return [(a, o, json.loads(d)) for a, o, d in rows]


async def deployed(hub: HubProcess, agent: AgentProcess) -> str:
    device = str(await until(lambda: device_of(agent), what="enrollment"))
    hub.set_target(device, RELEASE)
    await until(
        lambda: hub.device(device).get("state") == "converged", 90, "the release to converge"
    )
    return device


@pytest.fixture
async def device(
    hub: HubProcess, tmp_path: Path, docker: aiodocker.Docker
) -> AsyncIterator[tuple[AgentProcess, str]]:
    agent = hub_agent(tmp_path / "agent", hub.url, hub.ca_path, hub.create_token(), hub=FAST)
    async with running(docker, agent):
        yield agent, await deployed(hub, agent)


async def started_at(docker: aiodocker.Docker, device: str, service: str) -> str:
    filters = json.dumps({"label": [f"{LABEL_DEVICE}={device}", f"{LABEL_SERVICE}={service}"]})
    [found] = await docker.containers.list(all=True, filters=filters)
    return str((await found.show())["State"]["StartedAt"])


async def test_each_kind_runs_on_a_real_agent(
    hub: HubProcess, device: tuple[AgentProcess, str], docker: aiodocker.Docker
) -> None:
    agent, dev = device
    before = await started_at(docker, dev, "web")
    ids = {
        "restart": queue(hub, dev, "restart", args={"service": "web"}),
        "selftest": queue(hub, dev, "selftest"),
        "prune_images": queue(hub, dev, "prune_images"),
        "diagnostics": queue(hub, dev, "diagnostics", args={"lines": 3}),
        "collect_logs": queue(hub, dev, "collect_logs", args={"service": "web", "lines": 2}),
    }
    done = {kind: await finished(hub, i, 90) for kind, i in ids.items()}
    assert {k: a["state"] for k, a in done.items()} == dict.fromkeys(ids, "succeeded"), done
    assert await started_at(docker, dev, "web") != before  # restarted
    assert done["selftest"]["result"]["exit_code"] == 0
    assert "removed" in done["prune_images"]["result"]
    diag = done["diagnostics"]["result"]
    assert diag["status"]["device_id"] == dev and diag["engine"]["ApiVersion"]
    assert diag["disk"]["data"]["total"] > 0 and diag["memory"]["MemTotal"] > 0
    assert set(diag["logs"]) == {"web", "stubborn"} and len(diag["logs"]["web"]) <= 3
    logs = done["collect_logs"]["result"]["logs"]
    assert list(logs) == ["web"] and 1 <= len(logs["web"]) <= 2 and "tick" in logs["web"][-1]
    for kind, i in ids.items():  # audited on the device, in its chain, once each
        assert local_audit(agent, i) == [
            (f"action.{kind}", "received", ids_args(done[kind])),
            (f"action.{kind}", "succeeded", {}),
        ]


def ids_args(shown: dict[str, Any]) -> dict[str, Any]:
    return dict(shown["args"])


async def test_a_failing_action_is_reported_failed_with_its_reason(
    hub: HubProcess, device: tuple[AgentProcess, str]
) -> None:
    _agent, dev = device
    done = await finished(hub, queue(hub, dev, "restart", args={"service": "nope"}))
    assert done["state"] == "failed" and "nope" in done["reason"]


async def test_an_online_device_is_woken_by_the_long_poll(
    hub: HubProcess, tmp_path: Path, docker: aiodocker.Docker
) -> None:
    slow_sync = {**FAST, "sync_interval_s": 120.0, "long_poll_s": 60.0}
    agent = hub_agent(tmp_path / "agent", hub.url, hub.ca_path, hub.create_token(), hub=slow_sync)
    async with running(docker, agent):
        dev = str(await until(lambda: device_of(agent), what="enrollment"))
        await until(lambda: hub.device(dev).get("last_contact"), what="a first sync")
        await asyncio.sleep(1.0)  # the agent's long-poll is held now
        started = time.monotonic()
        done = await finished(hub, queue(hub, dev, "collect_logs"), 20)
        took = time.monotonic() - started
    assert done["state"] == "succeeded" and took < 10, took  # not the 120 s sync interval


def hub_key(hub: HubProcess) -> Any:
    return serialization.load_pem_private_key(
        (hub.data_dir / "signing.key").read_bytes(), password=None
    )


def replay(hub: HubProcess, action_id: str) -> None:
    """Offer a finished action again, as a replaying hub (or a copy of its answer) would."""
    db = sqlite3.connect(hub.data_dir / "hub.db", timeout=10)
    with db:
        db.execute(
            "UPDATE actions SET state = 'queued', received_at = NULL WHERE id = ?", (action_id,)
        )
    db.close()


def smuggle_expired(hub: HubProcess, device: str) -> str:
    """Queue a validly signed action whose signed expiry has passed (the hub's row does not
    say so): only the device's own check stands between it and running."""
    now = int(time.time())
    doc = ActionDoc("act-00000000000000ee", device, "selftest", {}, now - 120, now - 60, 4096)
    signed = sign_action(doc, hub_key(hub)).model_dump_json()
    db = sqlite3.connect(hub.data_dir / "hub.db", timeout=10)
    at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    later = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now + 3600))
    with db:
        db.execute(
            "INSERT INTO actions (id, device_id, kind, args, created_by, created_at, expires_at,"
            " signed, state, state_at) VALUES (?,?,?,?,?,?,?,?,'queued',?)",
            (doc.id, device, "selftest", "{}", "test", at, later, signed, at),
        )
    db.close()
    return doc.id


async def test_replayed_and_expired_actions_are_refused_and_audited(
    hub: HubProcess, device: tuple[AgentProcess, str]
) -> None:
    agent, dev = device
    first = await finished(hub, queue(hub, dev, "collect_logs", args={"lines": 1}))
    assert first["state"] == "succeeded"
    replay(hub, first["id"])
    await until(lambda: action(hub, first["id"])["state"] == "delivered", what="redelivery")
    refusals = await until(
        lambda: [d for a, o, d in local_audit(agent, first["id"]) if a == "action.refused"],
        what="the replay refused",
    )
    assert refusals[0]["reason"] == "replay"
    runs = [o for a, o, _ in local_audit(agent, first["id"]) if a == "action.collect_logs"]
    assert runs == ["received", "succeeded"]  # ran once
    expired = await finished(hub, smuggle_expired(hub, dev))
    assert (expired["state"], expired["reason"]) == ("refused", "expired")
    assert [o for a, o, _ in local_audit(agent, expired["id"])] == ["refused"]
    on_hub = await until(
        lambda: [
            a
            for a in hub._call("GET", f"/api/v1/audit?device={dev}&limit=1000", None)["audit"]
            if a["action"] == "action.refused"
        ],
        what="the refusals in the hub's audit",
    )
    assert {a["detail"]["reason"] for a in on_hub} >= {"replay", "expired"}, on_hub


async def test_an_action_for_an_offline_device_runs_once_after_it_comes_back(
    hub: HubProcess, device: tuple[AgentProcess, str]
) -> None:
    agent, dev = device
    await agent.kill()  # kill -9: offline, nothing shut down
    action_id = queue(hub, dev, "collect_logs", args={"service": "web", "lines": 1})
    await asyncio.sleep(1.0)
    assert action(hub, action_id)["state"] == "queued"
    await agent.start()
    done = await finished(hub, action_id)
    assert done["state"] == "succeeded"
    await agent.kill()
    await agent.start()  # and again: nothing runs twice
    await until(lambda: hub.device(dev)["acked_seq"] > 0, what="a sync")
    await asyncio.sleep(2.0)
    rows = agent_rows(agent, "SELECT state FROM actions WHERE id = ?", action_id)
    assert rows == [("succeeded",)]
    assert [o for _, o, _ in local_audit(agent, action_id)] == ["received", "succeeded"]


async def test_an_action_interrupted_by_kill_9_is_reported_failed_and_never_rerun(
    hub: HubProcess, device: tuple[AgentProcess, str]
) -> None:
    agent, dev = device
    action_id = queue(hub, dev, "restart", args={"service": "stubborn"})
    await until(
        lambda: (
            agent_rows(agent, "SELECT state FROM actions WHERE id = ?", action_id) == [("running",)]
        ),
        what="the action recorded",
    )
    await agent.kill()  # while the restart waits out the stop timeout
    await agent.start()
    done = await finished(hub, action_id)
    assert (done["state"], done["reason"]) == ("failed", "interrupted")
    assert agent_rows(agent, "SELECT state FROM actions WHERE id = ?", action_id) == [
        ("interrupted",)
    ]
    outcomes = [(a, o) for a, o, _ in local_audit(agent, action_id)]
    assert outcomes == [("action.restart", "received"), ("action.restart", "interrupted")]


async def test_a_result_over_the_bound_is_cut_on_the_device_and_counted(
    tmp_path: Path, docker: aiodocker.Docker
) -> None:
    hub = HubProcess(tmp_path / "hub", EDGE_HUB_ACTIONS_MAX_RESULT_BYTES="2048").start()
    try:
        agent = hub_agent(tmp_path / "agent", hub.url, hub.ca_path, hub.create_token(), hub=FAST)
        async with running(docker, agent):
            dev = await deployed(hub, agent)
            args = {"service": "stubborn", "lines": 1000}
            done = await finished(hub, queue(hub, dev, "collect_logs", args=args))
            counted = agent_rows(
                agent, "SELECT value FROM counters WHERE name = 'action_results_truncated'"
            )
    finally:
        hub.stop()
    result = done["result"]
    assert done["state"] == "succeeded" and result["truncated"] is True
    assert result["original_bytes"] > 2048 and len(json.dumps(result)) <= 2048
    assert result["logs"]["stubborn"][-1].endswith("line 199")  # the newest kept
    assert counted == [(1,)]
