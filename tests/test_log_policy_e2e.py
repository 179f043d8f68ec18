"""Issue 10 (Logs 2): a group's log shipping policy reaches a real agent and decides which
container log lines reach the hub, while the agent keeps every line locally. An agent
that does not list the ``log_policy`` feature is sent no policy (it ships everything).
A real hub process, a real agent process, a real container.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
import urllib.error
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import pytest
from agentproc import AgentProcess
from docker_env import TestImages, wait_for
from fleetkit import device_of, hub_agent, running
from hubproc import HubProcess

from edge_agent.protocol import AGENT_FEATURES, DEFAULT_LOG_PATTERN
from hub.testing import client_ssl_context, make_key_and_csr

# An info line and an error line every 0.2 s, numbered.
CHATTY = 'i=0; while true; do i=$((i+1)); echo "info $i"; echo "ERROR $i"; usleep 200000; done'


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    proc = HubProcess(tmp_path / "hub").start()
    yield proc
    proc.stop()


def _policy(hub: HubProcess, group: str, body: dict[str, Any] | None) -> Any:
    path = f"/api/v1/groups/{group}/log-policy"
    return hub._call("DELETE" if body is None else "PUT", path, body)


def _hub_lines(hub: HubProcess, device_id: str) -> list[str]:
    return [p["line"] for _, kind, p in hub.events(device_id) if kind == "log"]


def _agent_db(agent: AgentProcess, sql: str) -> list[Any]:
    db = sqlite3.connect(f"file:{agent.data_dir / 'agent.db'}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


@pytest.fixture
async def agent(
    hub: HubProcess, tmp_path: Path, docker: aiodocker.Docker, images: TestImages
) -> AsyncIterator[AgentProcess]:
    hub._call("POST", "/api/v1/groups", {"name": "quiet", "selector": "site=shed"})
    _policy(hub, "quiet", {"mode": "none"})
    proc = hub_agent(
        tmp_path / "agent",
        hub.url,
        hub.ca_path,
        hub.create_token(site="shed"),
        hub={"sync_interval_s": 0.5, "backoff_cap_s": 1.0, "long_poll_s": 1.0},
        logs={"enabled": True, "flush_interval_s": 0.5},
    )
    async with running(docker, proc):
        device_id = await wait_for(lambda: _enrolled(proc), timeout_s=20)
        release = {
            "name": "chatty",
            "version": "1",
            "services": [
                {"name": "web", "image": images.local("good"), "command": ["sh", "-c", CHATTY]}
            ],
        }
        hub.set_target(device_id, release)
        yield proc


async def _enrolled(agent: AgentProcess) -> str | None:
    return device_of(agent)


async def test_group_policy_none_errors_all_decides_what_reaches_the_hub(
    hub: HubProcess, agent: AgentProcess
) -> None:
    device_id = device_of(agent)
    assert device_id is not None
    resolved = hub._get(f"/api/v1/devices/{device_id}/log-policy")
    assert resolved["log_policy"]["mode"] == "none" and resolved["groups"] == ["quiet"]

    # none: every line kept on the device, none queued for the hub.
    async def kept_not_shipped() -> bool:
        kept = _agent_db(agent, "SELECT COUNT(*) FROM logs WHERE line LIKE 'ERROR %'")[0][0]
        held = _agent_db(agent, "SELECT value FROM counters WHERE name='log_lines_not_shipped'")
        return kept >= 10 and bool(held) and held[0][0] >= 20

    await wait_for(kept_not_shipped, timeout_s=60)
    assert _agent_db(agent, "SELECT COUNT(*) FROM outbox WHERE kind = 'log'")[0][0] == 0
    assert _hub_lines(hub, device_id) == []
    assert hub._get(f"/api/v1/devices/{device_id}/log-policy")["applied"] is True

    # errors (the default pattern): only the error lines arrive.
    _policy(hub, "quiet", {"mode": "errors"})

    async def errors_arrived() -> list[str] | None:
        lines = _hub_lines(hub, device_id)
        return lines if len(lines) >= 10 else None

    lines = await wait_for(errors_arrived, timeout_s=60)
    assert all(line.startswith("ERROR ") for line in lines), lines

    # all: the info lines too; the device kept the lines it never shipped.
    _policy(hub, "quiet", {"mode": "all"})

    async def info_arrived() -> bool:
        return any(line.startswith("info ") for line in _hub_lines(hub, device_id))

    await wait_for(info_arrived, timeout_s=60)
    kept = _agent_db(agent, "SELECT COUNT(*) FROM logs WHERE line LIKE 'info %'")[0][0]
    shipped = sum(1 for line in _hub_lines(hub, device_id) if line.startswith("info "))
    assert kept > shipped  # the info lines of the none and errors phases stayed local


async def _raw_sync(hub: HubProcess, tmp_path: Path, features: list[str] | None) -> dict[str, Any]:
    """Enroll a device with raw protocol calls and sync once listing ``features``."""
    key_pem, csr_pem = make_key_and_csr()
    token = hub.create_token(site="shed")
    plain = aiohttp.TCPConnector(ssl=hub._ssl())
    async with aiohttp.ClientSession(connector=plain) as s:
        body = {"token": token, "csr_pem": csr_pem, "hostname": "old"}
        async with s.post(f"{hub.url}/v1/enroll", json=body) as r:
            doc = await r.json()
            assert r.status == 201, doc
    tmp_path.mkdir(parents=True)
    (tmp_path / "k.pem").write_bytes(key_pem)
    (tmp_path / "c.pem").write_text(doc["certificate_pem"])
    ssl_ctx = client_ssl_context(hub.ca_path, tmp_path / "c.pem", tmp_path / "k.pem")
    sync: dict[str, Any] = {"protocol": 3, "epoch": "e", "entries": [], "known_target_revision": 0}
    if features is not None:
        sync["features"] = features
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_ctx)) as s,
        s.post(
            f"{hub.url}/v1/sync", data=gzip.compress(json.dumps(sync).encode()), headers=headers
        ) as r,
    ):
        answer: dict[str, Any] = await r.json()
        assert r.status == 200, answer
    return answer


async def test_policy_is_sent_only_to_agents_that_list_the_feature(
    hub: HubProcess, tmp_path: Path
) -> None:
    older = sorted(AGENT_FEATURES - {"log_policy"})
    assert "log_policy" not in await _raw_sync(hub, tmp_path / "a", older)
    assert "log_policy" not in await _raw_sync(hub, tmp_path / "b", None)  # protocol 2
    # No group sets a policy: the hub's default, errors with the default pattern.
    answer = await _raw_sync(hub, tmp_path / "c", sorted(AGENT_FEATURES))
    assert answer["log_policy"] == {"mode": "errors", "patterns": [DEFAULT_LOG_PATTERN]}
    # Two groups match: the most permissive wins; errors patterns of both are joined.
    hub._call("POST", "/api/v1/groups", {"name": "a", "selector": "site=shed"})
    hub._call("POST", "/api/v1/groups", {"name": "b", "selector": "site"})
    _policy(hub, "a", {"mode": "errors", "pattern": "oops"})
    _policy(hub, "b", {"mode": "none"})
    answer = await _raw_sync(hub, tmp_path / "d", sorted(AGENT_FEATURES))
    assert answer["log_policy"] == {"mode": "errors", "patterns": ["oops"]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mode": "errors", "pattern": "(unclosed"}, "pattern"),
        ({"mode": "errors", "pattern": "x" * 513}, "pattern"),
        ({"mode": "all", "pattern": "x"}, "pattern"),
        ({"mode": "loud"}, "mode"),
    ],
)
def test_bad_policy_is_refused_naming_the_field_and_changes_nothing(
    hub: HubProcess, body: dict[str, Any], field: str
) -> None:
    hub._call("POST", "/api/v1/groups", {"name": "g", "selector": "site=x"})
    _policy(hub, "g", {"mode": "none"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        _policy(hub, "g", body)
    assert caught.value.code == 422
    answer = json.loads(caught.value.read())
    assert field in json.dumps(answer["fields"]) + answer["message"], answer
    assert hub._get("/api/v1/groups/g/log-policy")["log_policy"] == {
        "mode": "none",
        "pattern": None,
    }
    with pytest.raises(urllib.error.HTTPError) as missing:
        _policy(hub, "nope", {"mode": "all"})
    assert missing.value.code == 404
