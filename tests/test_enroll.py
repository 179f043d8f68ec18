"""Device identity against a real hub: renewal loop, crash-safe key/cert swap, mTLS checks."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentproc import REPO, agent_command, write_config
from cryptography.hazmat.primitives import serialization
from hubproc import HubProcess
from synckit import enroll_device, open_device, until

from edge_agent.enroll import (
    CERT_FILE,
    KEY_FILE,
    ca_fingerprint,
    enroll,
    load_identity,
    maintain_certificate,
    renew,
)
from edge_agent.errors import HubUnreachable
from edge_agent.sync import HubClient


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    proc = HubProcess(tmp_path_factory.mktemp("hub") / "data").start()
    yield proc
    proc.stop()


def _pub(path: Path) -> bytes:
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _cert_pub(ident_dir: Path) -> bytes:
    ident = load_identity(ident_dir)
    assert ident is not None
    return (
        ident.certificate()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


async def test_renewal_cut_between_renames_is_completed(hub: HubProcess, tmp_path: Path) -> None:
    d = tmp_path / "dev"
    ident = await enroll_device(hub, d)
    old_cert = (d / CERT_FILE).read_bytes()
    await renew(ident)
    # Rebuild the state of a power cut after the key rename, before the cert rename.
    (d / (CERT_FILE + ".new")).write_bytes((d / CERT_FILE).read_bytes())
    (d / CERT_FILE).write_bytes(old_cert)
    assert load_identity(d) is not None
    assert not (d / (CERT_FILE + ".new")).exists()
    assert _cert_pub(d) == _pub(d / KEY_FILE)


async def test_renewal_cut_before_renames_keeps_old_pair(hub: HubProcess, tmp_path: Path) -> None:
    d = tmp_path / "dev"
    await enroll_device(hub, d)
    (d / (KEY_FILE + ".new")).write_bytes(b"half-written")
    (d / (CERT_FILE + ".new")).write_bytes(b"whatever")
    assert load_identity(d) is not None
    assert not list(d.glob("*.new"))
    assert _cert_pub(d) == _pub(d / KEY_FILE)


async def test_maintain_certificate_renews_and_reloads(hub: HubProcess, tmp_path: Path) -> None:
    await enroll_device(hub, tmp_path / "dev")
    dev = await open_device(tmp_path / "dev")
    serial = dev.identity.certificate().serial_number
    reloads: list[int] = []

    async def reloaded() -> None:
        await dev.syncer.client.reload_tls()
        reloads.append(1)

    task = asyncio.create_task(
        maintain_certificate(dev.identity, reloaded, margin=1.0, check_interval_s=3600)
    )

    async def renewed() -> bool:
        return bool(reloads)

    try:
        await until(renewed, 10)
        assert dev.identity.certificate().serial_number != serial
        await dev.store.append("event", {"n": 1})
        assert (await dev.syncer.sync_once()).drained
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await dev.close()


async def test_mtls_pins_the_hub_ca(hub: HubProcess, tmp_path: Path) -> None:
    ident = await enroll_device(hub, tmp_path / "dev")
    ctx = ident.ssl_context()
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    # Another hub (another CA) on the same name is refused by the pinned CA.
    other = HubProcess(tmp_path / "other").start()
    try:
        client = HubClient(other.url, ident.ssl_context, request_timeout_s=5)
        with pytest.raises(HubUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
            await client.wait_target(0, 0)
        await client.close()
    finally:
        other.stop()
    assert os.stat(tmp_path / "dev" / KEY_FILE).st_mode & 0o077 == 0


def _unit_no_restart_status() -> int:
    unit = (Path(__file__).resolve().parent.parent / "systemd" / "edge-agent.service").read_text()
    lines = [ln for ln in unit.splitlines() if ln.startswith("RestartPreventExitStatus=")]
    assert len(lines) == 1, lines
    return int(lines[0].split("=", 1)[1])


def _expired_token(hub: HubProcess) -> str:
    doc = hub._call("POST", "/api/v1/enrollment-tokens", {"uses": 1, "expires_in_s": 1})
    expires_at = dt.datetime.fromisoformat(doc["expires_at"])
    deadline = time.monotonic() + 10
    while dt.datetime.now(dt.UTC) <= expires_at:  # a condition on the clock, not a fixed sleep
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return str(doc["token"])


def _used_token(hub: HubProcess, tmp_path: Path) -> str:
    token = hub.create_token()
    fp = ca_fingerprint(hub.ca_path.read_text())
    asyncio.run(enroll(hub.url, token, tmp_path / "first", ca_sha256=fp, hostname="t"))
    return token


@pytest.mark.parametrize("kind", ["unknown", "used", "expired"])
def test_refused_enrollment_exits_with_the_config_error_code(
    hub: HubProcess, tmp_path: Path, kind: str
) -> None:
    token = {
        "unknown": lambda: "et_000000000000.not-a-secret",
        "used": lambda: _used_token(hub, tmp_path),
        "expired": lambda: _expired_token(hub),
    }[kind]()
    data = tmp_path / "agent"
    data.mkdir()
    cfg = write_config(
        data / "agent.toml",
        data_dir=str(data),
        api={"socket": str(data / "api.sock")},
        hub={"url": hub.url, "enrollment_token": token, "ca_file": str(hub.ca_path)},
    )
    proc = subprocess.run(
        [*agent_command(), "--config", str(cfg), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO),
    )
    assert proc.returncode == _unit_no_restart_status() == 2, proc.stderr[-2000:]
    assert "refused enrollment" in proc.stderr
    assert not (data / "identity.json").exists()
