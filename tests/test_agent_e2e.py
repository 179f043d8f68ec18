"""The agent end to end: a real agent process on the real Docker engine and registry.

Set EDGE_AGENT_BIN to run these scenarios against a frozen binary.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiodocker
import docker_env
import pytest
from agentproc import AgentProcess, agent_command
from docker_env import TestImages

pytestmark = pytest.mark.docker

AgentFactory = Callable[..., Awaitable[AgentProcess]]


@pytest.fixture
async def make_agent(
    tmp_path: Path, device_id: str, docker: aiodocker.Docker
) -> AsyncIterator[AgentFactory]:
    """Yield ``make(**config_overrides)`` that starts an agent for this test's device."""
    made: list[AgentProcess] = []

    async def make(**overrides: Any) -> AgentProcess:
        agent = AgentProcess(device_id, tmp_path / "agent", **overrides)
        made.append(agent)
        return await agent.start()

    try:
        yield make
    finally:
        for agent in made:
            await agent.stop()
            agent.cleanup()
        await docker_env.cleanup_device(docker, device_id)


def release(version: str, services: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Return a bare release document."""
    return {"name": "app", "version": version, "services": services, **extra}


async def wait_status(
    agent: AgentProcess, pred: Callable[[dict[str, Any]], bool], timeout_s: float = 30.0
) -> dict[str, Any]:
    """Poll the agent's status until ``pred`` holds; fail with the last status and log."""
    last: dict[str, Any] = {}
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                last = await agent.status()
                if pred(last):
                    return last
                await asyncio.sleep(0.25)
    except TimeoutError:
        pytest.fail(f"status never matched; last: {json.dumps(last, indent=1)}\n{agent.log()}")


def services(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return the status's services by name."""
    return {s["name"]: s for s in status["services"]}


def running(st: dict[str, Any], names: set[str]) -> bool:
    """Return whether every named service is running."""
    svcs = services(st)
    return all(svcs.get(n, {}).get("state") == "running" for n in names)


def all_running(names: set[str]) -> Callable[[dict[str, Any]], bool]:
    """Return a predicate: every named service is running and the agent converged."""
    return lambda st: st["state"] == "converged" and running(st, names)


async def container_ids(docker: aiodocker.Docker, device_id: str) -> dict[str, str]:
    """Return service name -> container id for the device's containers."""
    filters = json.dumps({"label": [f"io.edgefleet.device={device_id}"]})
    out = {}
    for c in await docker.containers.list(all=True, filters=filters):
        out[c._container["Labels"]["io.edgefleet.service"]] = c.id
    return out


def outbox_events(agent: AgentProcess) -> list[dict[str, Any]]:
    """Return the event payloads waiting in the agent's outbox (read-only)."""
    db = sqlite3.connect(f"file:{agent.data_dir / 'agent.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT payload FROM outbox WHERE kind = 'event' ORDER BY seq").fetchall()
    finally:
        db.close()
    return [json.loads(r[0]) for r in rows]


@pytest.fixture
def bystander(docker: aiodocker.Docker, images: TestImages) -> Any:
    """Start an unlabelled container the agent must never touch; yield its name."""
    name = f"bystander-{time.time_ns()}"
    subprocess.run(
        ["docker", "run", "-d", "--name", name, images.local("good")],
        check=True,
        capture_output=True,
    )
    yield name
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def is_running(name: str) -> bool:
    """Return whether a container (by name) is running, per the docker CLI."""
    done = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Running}}", name], capture_output=True, text=True
    )
    return done.stdout.strip() == "true"


async def test_deploy_change_remove_from_registry(
    make_agent: AgentFactory, images: TestImages, docker: aiodocker.Docker, bystander: str
) -> None:
    """Deploy 2 services by digest, change one (only it is recreated), then remove it."""
    agent = await make_agent()
    web = {"name": "web", "image": images.digest_ref("good"), "environment": {"MESSAGE": "v1"}}
    api = {
        "name": "api",
        "image": images.digest_ref("good"),
        "depends_on": {"web": {"condition": "started"}},
    }
    code, body = await agent.call("POST", "/v1/apply", release("1", [web, api]))
    assert code == 202, body
    await wait_status(agent, all_running({"web", "api"}))
    ids1 = await container_ids(docker, agent.device_id)
    # What a technician types on site shows the same.
    cli = subprocess.run(
        [*agent_command(), "--socket", str(agent.socket), "status"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cli.returncode == 0, cli.stderr
    assert "state converged" in cli.stdout and "release   app@1" in cli.stdout
    assert [ln.split()[:2] for ln in cli.stdout.splitlines() if ln.startswith(("web", "api"))] == [
        ["web", "running"],
        ["api", "running"],
    ]
    # Services reach each other by service name on the release's network.
    out = subprocess.run(
        ["docker", "exec", f"ef-{agent.device_id}-api", "wget", "-q", "-O-", "http://web:8080/"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.stdout.strip() == "v1", out

    api2 = {**api, "environment": {"EXTRA": "1"}}
    code, body = await agent.call("POST", "/v1/apply", release("2", [web, api2]))
    assert code == 202, body
    st = await wait_status(agent, lambda s: s["running_local_seq"] == 2 and all_running({"api"})(s))
    ids2 = await container_ids(docker, agent.device_id)
    assert ids2["web"] == ids1["web"], "unchanged service must keep its container"
    assert ids2["api"] != ids1["api"], "changed service must be recreated"
    assert st["release"] == "app@2"

    code, body = await agent.call("POST", "/v1/apply", release("3", [web]))
    assert code == 202, body
    await wait_status(agent, lambda s: s["running_local_seq"] == 3 and s["rollout_state"] == "good")
    ids3 = await docker_env.wait_for(
        lambda: _ids_without(docker, agent.device_id, "api"), timeout_s=15
    )
    assert set(ids3) == {"web"} and ids3["web"] == ids1["web"]
    assert is_running(bystander), "an unlabelled container must survive every operation"


async def _ids_without(docker: aiodocker.Docker, device_id: str, name: str) -> dict[str, str]:
    ids = await container_ids(docker, device_id)
    return ids if name not in ids else {}


async def test_crash_is_restarted_with_growing_backoff(
    make_agent: AgentFactory, images: TestImages, bystander: str
) -> None:
    """A crashing service is restarted, each time after a longer wait, and it is reported."""
    agent = await make_agent()
    svc = {"name": "crashy", "image": images.ref("crash"), "environment": {"CRASH_AFTER": "0.2"}}
    code, body = await agent.call(
        "POST", "/v1/apply", {"release": release("1", [svc]), "apply_deadline_s": 600}
    )
    assert code == 202, body
    seen: list[tuple[int, float]] = []
    async with asyncio.timeout(40):
        while len(seen) < 5:
            st = await agent.status()
            n = services(st).get("crashy", {}).get("restarts", 0)
            if n and (not seen or n > seen[-1][0]):
                seen.append((n, time.monotonic()))
            await asyncio.sleep(0.1)
    gaps = [b[1] - a[1] for a, b in itertools.pairwise(seen)]
    # Backoff 0.5, 1, 2, 4 s (cap 4) on top of a 0.2 s run: the waits must grow.
    assert gaps[-1] > gaps[0] + 1.0, gaps
    events = outbox_events(agent)
    assert any(e.get("action") == "die" and e.get("service") == "crashy" for e in events)
    assert is_running(bystander)

    # Each restart is the agent's own decision: in its audit chain, with why (written
    # just after the restart: waited for, not read at once).
    async def audited_restarts() -> list[dict[str, Any]]:
        _, audit = await agent.call("GET", "/v1/audit?limit=1000")
        found = [a for a in audit if a["action"] == "service.restart" and a["actor"] == "agent"]
        return found if len(found) >= 4 else []

    restarts = await docker_env.wait_for(audited_restarts, timeout_s=30)
    assert {a["object"] for a in restarts} == {"service:crashy"}, restarts


async def test_unhealthy_container_is_restarted(
    make_agent: AgentFactory, images: TestImages
) -> None:
    """A container whose healthcheck fails is restarted by the agent (Docker would not)."""
    agent = await make_agent()
    svc = {"name": "sick", "image": images.ref("unhealthy")}
    code, body = await agent.call(
        "POST", "/v1/apply", {"release": release("1", [svc]), "apply_deadline_s": 600}
    )
    assert code == 202, body
    st = await wait_status(agent, lambda s: services(s).get("sick", {}).get("restarts", 0) >= 2)
    assert services(st)["sick"]["restarts"] >= 2


async def test_bad_release_rolls_back_on_device(
    make_agent: AgentFactory, images: TestImages, docker: aiodocker.Docker
) -> None:
    """A release that does not come up within its deadline is replaced by the last good one."""
    agent = await make_agent()
    good = {"name": "web", "image": images.ref("good")}
    code, _ = await agent.call("POST", "/v1/apply", release("1", [good]))
    assert code == 202
    await wait_status(agent, all_running({"web"}))
    await wait_status(agent, lambda s: _target_state(agent, 1) == "good")
    good_ids = await container_ids(docker, agent.device_id)

    bad = {"name": "web", "image": images.ref("crash")}
    code, _ = await agent.call(
        "POST", "/v1/apply", {"release": release("2", [bad]), "apply_deadline_s": 5}
    )
    assert code == 202
    st = await wait_status(agent, lambda s: s["state"] == "rolled_back" and running(s, {"web"}), 45)
    assert st["running_local_seq"] == 1 and st["release"] == "app@1"
    assert "revision 0+local.2 rolled_back" in (st["last_error"] or "")
    assert _target_state(agent, 2) == "rolled_back"
    ids = await container_ids(docker, agent.device_id)
    assert set(ids) == {"web"} and ids != good_ids  # the good config is recreated
    code, audit = await agent.call("GET", "/v1/audit")
    assert any(
        a["action"] == "target.rollback" and a["object"] == "target:0+local.2" for a in audit
    )


def _target_state(agent: AgentProcess, local_seq: int) -> str | None:
    """Return the state of the technician's n-th local target."""
    db = sqlite3.connect(f"file:{agent.data_dir / 'agent.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT state FROM targets WHERE local_seq = ?", (local_seq,)).fetchone()
    finally:
        db.close()
    return row[0] if row else None


async def test_killed_agent_restores_removed_containers(
    make_agent: AgentFactory, images: TestImages, docker: aiodocker.Docker, tmp_path: Path
) -> None:
    """Kill -9 the agent, remove its containers: started again, it restores them offline."""
    agent = await make_agent()
    svcs = [{"name": "a", "image": images.ref("good")}, {"name": "b", "image": images.ref("good")}]
    code, _ = await agent.call("POST", "/v1/apply", release("1", svcs))
    assert code == 202
    await wait_status(agent, all_running({"a", "b"}))
    await agent.kill()
    await docker_env.cleanup_device(docker, agent.device_id)
    assert await container_ids(docker, agent.device_id) == {}
    await agent.start()
    st = await wait_status(agent, all_running({"a", "b"}))
    assert st["running_local_seq"] == 1
    assert set(await container_ids(docker, agent.device_id)) == {"a", "b"}


async def test_invalid_target_is_refused_and_changes_nothing(
    make_agent: AgentFactory, images: TestImages, docker: aiodocker.Docker
) -> None:
    """A bad document gets 422 naming each bad field; containers and target are unchanged."""
    agent = await make_agent()
    code, _ = await agent.call("POST", "/v1/apply", release("1", [{"name": "web", "image": "x"}]))
    # Image "x" cannot be pulled, but the document is valid: accepted, it fails later.
    assert code == 202
    before = await agent.status()
    ids = await container_ids(docker, agent.device_id)
    bad = release("2", [{"name": "Web!", "image": "", "ports": [{"container": 0}]}])
    code, body = await agent.call("POST", "/v1/apply", bad)
    assert code == 422, body
    fields = {f["field"] for f in body["fields"]}
    assert {"release.services.0.name", "release.services.0.image"} <= fields, fields
    assert any(f.startswith("release.services.0.ports.0.container") for f in fields), fields
    after = await agent.status()
    assert after["target_revision"] == before["target_revision"] == 0  # no hub target
    assert _target_state(agent, 2) is None, "a refused document must not be stored"
    assert await container_ids(docker, agent.device_id) == ids
    code, audit = await agent.call("GET", "/v1/audit")
    assert audit[0]["action"] == "target.reject" and audit[0]["actor"].startswith("unix:")


async def test_disk_reserve_refuses_pull_with_an_event(
    make_agent: AgentFactory, images: TestImages, docker: aiodocker.Docker, device_id: str
) -> None:
    """With free disk under the reserve, the pull is refused with a clear event."""
    ref = f"{images.registry}/edgefleet/disk-{device_id}:1"
    subprocess.run(["docker", "tag", images.local("good"), ref], check=True)
    subprocess.run(["docker", "push", ref], check=True, capture_output=True)
    subprocess.run(["docker", "rmi", ref], check=True, capture_output=True)
    agent = await make_agent(docker={"disk_reserve_mb": 100_000_000})
    code, _ = await agent.call("POST", "/v1/apply", release("1", [{"name": "w", "image": ref}]))
    assert code == 202
    st = await wait_status(agent, lambda s: "reserve" in (s["last_error"] or ""))
    assert "free" in st["last_error"]

    async def refused_event() -> bool:
        return any(
            e.get("type") == "error" and "reserve" in e.get("message", "")
            for e in outbox_events(agent)
        )

    await docker_env.wait_for(refused_event, timeout_s=10)
    assert await container_ids(docker, agent.device_id) == {}
    assert subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode != 0


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1 and its key; return both paths."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "lan.crt", directory / "lan.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_lan_api_needs_a_technicians_own_token(
    make_agent: AgentFactory, images: TestImages, tmp_path: Path
) -> None:
    """On the LAN (HTTPS only), each technician uses their own token; the audit names who."""
    import hashlib
    import socket
    import ssl

    import aiohttp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "alice-secret-token"
    cert, key = _self_signed(tmp_path)
    await make_agent(
        api={
            "lan_listen": f"127.0.0.1:{port}",
            "lan_cert_file": str(cert),
            "lan_key_file": str(key),
            "technicians": {"alice": hashlib.sha256(token.encode()).hexdigest()},
        }
    )
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):  # never plain HTTP with bearer tokens
            await http.get(f"http://127.0.0.1:{port}/v1/status")
    base = f"https://127.0.0.1:{port}"
    tls = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(cert)))
    async with aiohttp.ClientSession(connector=tls) as http:
        async with http.get(f"{base}/v1/status") as resp:
            assert resp.status == 401
        bad = {"Authorization": "Bearer not-a-token"}
        async with http.get(f"{base}/v1/status", headers=bad) as resp:
            assert resp.status == 401
        auth = {"Authorization": f"Bearer {token}"}
        body = release("1", [{"name": "web", "image": images.ref("good")}])
        async with http.post(f"{base}/v1/apply", json=body, headers=auth) as resp:
            assert resp.status == 202, await resp.text()
        async with http.get(f"{base}/v1/audit", headers=auth) as resp:
            audit = await resp.json()
    accepted = [a for a in audit if a["action"] == "target.accept"]
    assert accepted and accepted[0]["actor"] == "technician:alice"


async def test_slow_pull_does_not_count_against_the_apply_deadline(
    make_agent: AgentFactory, images: TestImages, docker: aiodocker.Docker
) -> None:
    """Item 6: a pull slower than apply_deadline_s through a slow registry still becomes good."""
    from faultproxy import FaultProxy

    proxy = await FaultProxy("127.0.0.1", 5000).start()
    ref = f"127.0.0.1:{proxy.port}/edgefleet/good:1"
    try:
        agent = await make_agent()
        proxy.set_mode("delay", delay_ms=1500)
        t0 = time.monotonic()
        code, body = await agent.call(
            "POST",
            "/v1/apply",
            {
                "release": release("1", [{"name": "web", "image": ref}]),
                "apply_deadline_s": 3,
                "min_ready_s": 1,
            },
        )
        assert code == 202, body
        st = await wait_status(agent, lambda s: s["rollout_state"] == "applying")
        # Pull progress is visible: still waiting for the images, no deadline running yet.
        assert st["rollout_detail"]["images_ready"] is False, st
        st = await wait_status(
            agent, lambda s: s["rollout_state"] in ("good", "rolled_back", "failed"), 90
        )
        pulled_s = time.monotonic() - t0
        assert st["rollout_state"] == "good", (st["last_error"], agent.log())
        # The pull alone outlasts the apply deadline (3 s) plus min_ready_s (1 s).
        assert pulled_s > 5, f"the apply took {pulled_s:.1f}s: the pull was not slow"
        assert _target_state(agent, 1) == "good"
    finally:
        await proxy.close()
        subprocess.run(["docker", "rmi", ref], capture_output=True)


async def test_pull_failure_is_recorded_as_such_and_retried(
    make_agent: AgentFactory, images: TestImages
) -> None:
    """Item 6: images that never arrive are a pull failure (not a failed release), retried."""
    from faultproxy import FaultProxy

    proxy = await FaultProxy("127.0.0.1", 5000).start()
    ref = f"127.0.0.1:{proxy.port}/edgefleet/good:1"
    try:
        proxy.set_mode("cut")
        agent = await make_agent(
            supervisor={"pull_timeout_s": 3, "pull_retry_base_s": 2, "pull_retry_cap_s": 4}
        )
        svc = {"name": "web", "image": ref}
        code, body = await agent.call("POST", "/v1/apply", release("1", [svc]))
        assert code == 202, body
        await wait_status(agent, lambda s: _target_state(agent, 1) == "pull_failed", 30)
        code, audit = await agent.call("GET", "/v1/audit")
        fail = [a for a in audit if a["action"] == "target.fail"]
        assert fail and json.loads(fail[0]["detail"])["cause"] == "pull", audit
        proxy.set_mode("pass")  # the registry is reachable again: the retry succeeds
        # good and running it: the status may say good a moment before it names the seq
        good = lambda s: s["rollout_state"] == "good" and s.get("running_local_seq") == 1  # noqa: E731
        st = await wait_status(agent, good, 60)
        assert st["running_local_seq"] == 1 and _target_state(agent, 1) == "good"
    finally:
        await proxy.close()
        subprocess.run(["docker", "rmi", ref], capture_output=True)
