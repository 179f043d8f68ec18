"""Hub-issued technician tokens on a real agent process enrolled with a real hub.

One device tagged site=berlin. Tokens are issued by the hub's operator API; the agent
verifies them offline with the key it pinned at enrollment. Refusals are 401 (forged,
expired, revoked) or 403 (out of scope, wrong role), named and audited; actions are
audited with the technician's name and token id, locally and, after sync, on the hub.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import docker_env
import pytest
from agentproc import AgentProcess
from fleetkit import device_of, hub_agent, running
from hubproc import HubProcess, free_port


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    proc = HubProcess(tmp_path / "hub").start()
    yield proc
    proc.stop()


def issue(hub: HubProcess, name: str, role: str, scope: str, expires_in_s: int = 3600) -> str:
    body = {"name": name, "role": role, "scope": scope, "expires_in_s": expires_in_s}
    return str(hub._call("POST", "/api/v1/technicians", body)["token"])


def token_id(token: str) -> str:
    body = token[len("eft1.") :].split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["id"])


async def call(
    agent: AgentProcess, method: str, path: str, token: str, *, lan: int | None = None
) -> tuple[int, Any]:
    """Call the agent's API with a Bearer token: unix socket, or the HTTPS LAN port."""
    headers = {"Authorization": f"Bearer {token}"}
    if lan is None:
        conn: aiohttp.BaseConnector = aiohttp.UnixConnector(path=str(agent.socket))
        url = f"http://agent{path}"
    else:
        ctx = ssl.create_default_context(cafile=str(agent.data_dir / "hub-ca.pem"))
        ctx.check_hostname = False  # the device certificate names the device, not 127.0.0.1
        conn = aiohttp.TCPConnector(ssl=ctx)
        url = f"https://127.0.0.1:{lan}{path}"
    async with (
        aiohttp.ClientSession(connector=conn) as session,
        session.request(method, url, headers=headers) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


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
        api={"lan_listen": f"127.0.0.1:{port}", "technician_skew_s": 0},
    )
    async with running(docker, agent):
        yield agent, port


async def test_technician_tokens_work_offline_and_refusals_are_named_and_audited(
    hub: HubProcess, device: tuple[AgentProcess, int]
) -> None:
    agent, lan = device
    alice = issue(hub, "alice", "operate", "site=berlin")
    reader = issue(hub, "rita", "read", "site in (berlin, hamburg)")
    paris = issue(hub, "pierre", "operate", "site=paris")
    brief = issue(hub, "bob", "operate", "site=berlin", expires_in_s=1)
    doomed = issue(hub, "dave", "operate", "site=berlin")
    hub.stop()  # on site: no hub

    for where in (None, lan):
        assert (await call(agent, "GET", "/v1/status", alice, lan=where))[0] == 200
        assert (await call(agent, "GET", "/v1/status", reader, lan=where))[0] == 200
        code, body = await call(agent, "POST", "/v1/services/web/restart", alice, lan=where)
        assert code == 404, body  # allowed; there is no such service
    code, body = await call(agent, "POST", "/v1/services/web/restart", reader)
    assert (code, body["error"]) == (403, "wrong_role"), body
    code, body = await call(agent, "GET", "/v1/status", paris, lan=lan)
    assert (code, body["error"]) == (403, "wrong_scope"), body
    assert "site=paris" in body["message"]
    forged = reader[: reader.rindex(".")] + "." + alice[alice.rindex(".") + 1 :]
    code, body = await call(agent, "GET", "/v1/status", forged)
    assert (code, body["error"]) == (401, "forged"), body

    async def expired() -> Any:
        code, body = await call(agent, "GET", "/v1/status", brief)
        return code == 401 and body["error"] == "expired"

    await docker_env.wait_for(expired, timeout_s=10)

    hub.start()
    hub._call("POST", f"/api/v1/technicians/{token_id(doomed)}/revoke", {})

    async def revoked() -> Any:
        code, body = await call(agent, "GET", "/v1/status", doomed, lan=lan)
        return code == 401 and body["error"] == "revoked"

    await docker_env.wait_for(revoked, timeout_s=15)  # with the next sync
    hub.stop()
    await agent.stop()
    await agent.start()  # offline, after a restart: still revoked, the others still good
    code, body = await call(agent, "GET", "/v1/status", doomed)
    assert (code, body["error"]) == (401, "revoked"), body
    assert (await call(agent, "GET", "/v1/status", alice))[0] == 200

    code, audit = await agent.call("GET", "/v1/audit?limit=100")
    assert code == 200
    actor = f"technician:alice@{token_id(alice)}"
    restarts = [a for a in audit if a["action"] == "service.restart" and a["actor"] == actor]
    assert len(restarts) == 2, audit
    refused = {
        (a["actor"].split("@")[0], json.loads(a["detail"])["reason"])
        for a in audit
        if a["action"] == "api.refused"
    }
    assert {
        ("technician:rita", "wrong_role"),
        ("technician:pierre", "wrong_scope"),
        ("anonymous", "forged"),
        ("technician:bob", "expired"),
        ("technician:dave", "revoked"),
    } <= refused, refused

    hub.start()
    device_id = device_of(agent)

    async def on_hub() -> Any:
        got = [p for _, kind, p in hub.events(device_id or "") if kind == "audit"]
        return [p for p in got if p.get("actor") == actor and p["action"] == "service.restart"]

    assert len(await docker_env.wait_for(on_hub, timeout_s=15)) == 2


async def test_lan_listener_refuses_to_start_without_a_certificate(tmp_path: Path) -> None:
    agent = AgentProcess("dev-lan", tmp_path / "a", api={"lan_listen": f"127.0.0.1:{free_port()}"})
    try:
        with pytest.raises(RuntimeError, match="lan_listen needs a TLS certificate"):
            await agent.start()
    finally:
        await agent.stop()
        agent.cleanup()
