"""Weeks offline without losing the identity (issue 7, item 9).

A device whose certificate expired while it was offline renews it within the hub's
grace (``pki.renew_grace_days``) by proving its key; past the grace it is refused with
a clear error; after a renewal only the newest certificate works on every mTLS route.
Certificate lifetimes of seconds make expiry real without sleeping for it: the tests
wait on the condition "the certificate has expired" with a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentproc import AgentProcess
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hubproc import HubProcess
from synckit import enroll_device, open_device, until

from edge_agent.enroll import (
    CERT_FILE,
    KEY_FILE,
    PENDING_KEY_FILE,
    Identity,
    load_identity,
    maintain_certificate,
    renew,
    renew_if_due,
)
from edge_agent.errors import HubRefused, SyncError
from hub.errors import CertificateExpired, Unauthenticated
from hub.renewal import (
    CHALLENGE_TTL,
    check_challenge,
    check_grace,
    check_lineage,
    issue_challenge,
    verify_proof,
)
from hub.store.records import CertLineage

DAY_S = 86400.0
SHORT_CERT_S = 3.0


def _days(seconds: float) -> str:
    return repr(seconds / DAY_S)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    proc = HubProcess(tmp_path_factory.mktemp("hub")).start()
    yield proc
    proc.stop()


def _short_lived_hub(work_dir: Path, grace_s: float) -> HubProcess:
    return HubProcess(
        work_dir,
        EDGE_HUB_PKI_DEVICE_CERT_DAYS=_days(SHORT_CERT_S),
        EDGE_HUB_PKI_RENEW_GRACE_DAYS=_days(grace_s),
    ).start()


async def _until_expired(ident: Identity, extra_s: float = 0.0) -> None:
    """Wait (on the clock, with a deadline) until the certificate expired ``extra_s`` ago."""
    not_after = ident.certificate().not_valid_after_utc + dt.timedelta(seconds=extra_s)

    async def expired() -> bool:
        return dt.datetime.now(dt.UTC) > not_after

    await until(expired, SHORT_CERT_S + extra_s + 10)


def _audit(hub: HubProcess, action: str) -> list[dict[str, object]]:
    return [a for a in hub._get("/api/v1/audit?limit=1000")["audit"] if a["action"] == action]


async def test_expired_certificate_within_grace_renews_and_syncs(tmp_path: Path) -> None:
    hub = _short_lived_hub(tmp_path / "hub", grace_s=DAY_S)
    try:
        ident = await enroll_device(hub, tmp_path / "dev")
        dev = await open_device(tmp_path / "dev")
        old_serial = ident.certificate().serial_number
        await _until_expired(ident)
        await dev.store.append("event", {"n": 1})
        with pytest.raises(SyncError):  # the TLS handshake refuses the expired certificate
            await dev.syncer.sync_once()

        renewed: list[int] = []

        async def reload() -> None:
            await dev.syncer.client.reload_tls()
            renewed.append(1)

        # The agent's renewal loop, as it runs in the agent: it sees the expiry and takes
        # the grace path.
        task = asyncio.create_task(maintain_certificate(ident, reload, check_interval_s=3600))

        async def done() -> bool:
            return bool(renewed)

        try:
            await until(done, 15)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert ident.certificate().serial_number != old_serial
        assert (await dev.syncer.sync_once()).drained
        assert [e[1] for e in hub.events(ident.device_id)] == ["event"]
        (renewal,) = _audit(hub, "device.renew")
        assert renewal["outcome"] == "ok" and renewal["detail"]["via"] == "expired"
        await dev.close()
    finally:
        hub.stop()


async def test_expired_certificate_beyond_grace_is_refused_with_a_clear_error(
    tmp_path: Path,
) -> None:
    grace_s = 1.0
    hub = _short_lived_hub(tmp_path / "hub", grace_s=grace_s)
    try:
        ident = await enroll_device(hub, tmp_path / "dev")
        old_cert = ident.cert_path.read_bytes()
        await _until_expired(ident, extra_s=grace_s + 0.5)
        with pytest.raises(HubRefused) as refused:
            await renew_if_due(ident)
        assert refused.value.status == 403
        assert "certificate_expired" in refused.value.message
        assert "pki.renew_grace_days" in refused.value.message
        assert "re-enroll" in refused.value.message
        assert ident.cert_path.read_bytes() == old_cert  # nothing changed on the device
        # Nothing changed on the hub either; the refusal itself is audited.
        (refusal,) = _audit(hub, "device.renew")
        assert refusal["outcome"] == "denied"
        assert refusal["detail"]["reason"] == "certificate_expired"
    finally:
        hub.stop()


def _copy_identity(src: Path, dst: Path) -> Identity:
    shutil.copytree(src, dst)
    ident = load_identity(dst)
    assert ident is not None
    return ident


async def _call(hub: HubProcess, method: str, path: str, ident: Identity) -> int:
    assert hub.running is not None
    body = {"entries": []} if path == "/v1/sync" else None
    if path == "/v1/renew":
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
        )
        body = {"csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode()}
    status, _ = await hub.running.request(
        method, path, json_body=body, ssl_context=ident.ssl_context()
    )
    return status


async def test_old_certificate_is_refused_on_every_mtls_route_after_renewal(
    hub: HubProcess, tmp_path: Path
) -> None:
    ident = await enroll_device(hub, tmp_path / "dev")
    old = _copy_identity(tmp_path / "dev", tmp_path / "old")
    await renew(ident)
    routes = [("POST", "/v1/sync"), ("GET", "/v1/target?after=0&wait=0"), ("POST", "/v1/renew")]
    for method, path in routes:
        assert await _call(hub, method, path, old) == 401, path
    assert await _call(hub, "POST", "/v1/sync", ident) == 200


async def test_renewal_whose_answer_was_lost_is_retried_with_the_pending_key(
    hub: HubProcess, tmp_path: Path
) -> None:
    ident = await enroll_device(hub, tmp_path / "dev")
    d = tmp_path / "dev"
    old_key, old_cert = (d / KEY_FILE).read_bytes(), (d / CERT_FILE).read_bytes()
    await renew(ident)
    # The hub issued a certificate, but its answer never reached the device: the device
    # still holds its old pair and the key it asked for.
    (d / PENDING_KEY_FILE).write_bytes((d / KEY_FILE).read_bytes())
    (d / KEY_FILE).write_bytes(old_key)
    (d / CERT_FILE).write_bytes(old_cert)
    stranded = _copy_identity(d, tmp_path / "stranded")
    assert await _call(hub, "POST", "/v1/sync", stranded) == 401
    await renew(ident)  # the retry: same pending key, authenticated by the replaced cert
    assert not (d / PENDING_KEY_FILE).exists()
    assert await _call(hub, "POST", "/v1/sync", ident) == 200
    # The replaced certificate cannot renew for any other key.
    assert await _call(hub, "POST", "/v1/renew", stranded) == 401


# ---- pure rules -----------------------------------------------------------------------

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
LINEAGE = CertLineage(serial="b", previous_serial="a", key_sha256="key-b")


@pytest.mark.parametrize(
    ("presented", "csr_key", "from_previous"),
    [("b", "any", False), ("b", "key-b", False), ("a", "key-b", True)],
)
def test_lineage_accepts_newest_or_previous_for_the_newest_key(
    presented: str, csr_key: str, from_previous: bool
) -> None:
    assert check_lineage(presented, csr_key, LINEAGE) is from_previous


@pytest.mark.parametrize(("presented", "csr_key"), [("a", "other"), ("z", "key-b"), ("", "")])
def test_lineage_refuses_replaced_certificates(presented: str, csr_key: str) -> None:
    with pytest.raises(Unauthenticated):
        check_lineage(
            presented, csr_key, CertLineage("b", "", "key-b") if not presented else LINEAGE
        )


@pytest.mark.parametrize(
    ("expired_ago", "grace", "ok"),
    [
        (dt.timedelta(0), dt.timedelta(0), True),
        (dt.timedelta(days=-1), dt.timedelta(0), True),  # still valid
        (dt.timedelta(days=59), dt.timedelta(days=60), True),
        (dt.timedelta(days=60), dt.timedelta(days=60), True),
        (dt.timedelta(days=60, seconds=1), dt.timedelta(days=60), False),
        (dt.timedelta(seconds=1), dt.timedelta(0), False),
    ],
)
def test_grace_window(expired_ago: dt.timedelta, grace: dt.timedelta, ok: bool) -> None:
    if ok:
        check_grace(NOW - expired_ago, NOW, grace)
    else:
        with pytest.raises(CertificateExpired, match="renew_grace_days"):
            check_grace(NOW - expired_ago, NOW, grace)


def test_challenge_is_bound_to_device_secret_and_time() -> None:
    secret = b"s" * 32
    ch = issue_challenge(secret, "dev-1", NOW).challenge
    check_challenge(secret, ch, "dev-1", NOW + CHALLENGE_TTL)
    bad = [
        (b"t" * 32, ch, "dev-1", NOW),  # another hub
        (secret, ch, "dev-2", NOW),  # another device
        (secret, ch, "dev-1", NOW + CHALLENGE_TTL + dt.timedelta(seconds=1)),  # expired
        (secret, ch[:-1] + ("0" if ch[-1] != "0" else "1"), "dev-1", NOW),  # tampered
        (secret, "garbage", "dev-1", NOW),
    ]
    for args in bad:
        with pytest.raises(Unauthenticated, match="challenge"):
            check_challenge(*args)


def test_proof_must_be_the_certificate_keys_signature() -> None:
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    msg = b"message"
    verify_proof(cert, msg, base64.b64encode(key.sign(msg, ec.ECDSA(hashes.SHA256()))).decode())
    for sig in (other.sign(msg, ec.ECDSA(hashes.SHA256())), b"", b"\x00" * 64):
        with pytest.raises(Unauthenticated, match="signature_b64"):
            verify_proof(cert, msg, base64.b64encode(sig).decode())
    with pytest.raises(Unauthenticated):
        verify_proof(cert, msg, "not base64!")


async def test_agent_offline_past_its_certificate_lifetime_comes_back(tmp_path: Path) -> None:
    """A real agent process, stopped until its certificate expired, renews and syncs."""
    hub = _short_lived_hub(tmp_path / "hub", grace_s=DAY_S)
    agent = AgentProcess(
        None,
        tmp_path / "agent",
        hub={
            "url": hub.url,
            "enrollment_token": hub.create_token(),
            "ca_file": str(hub.ca_path),
            "sync_interval_s": 0.5,
            "long_poll_s": 2.0,
            "backoff_cap_s": 1.0,
        },
    )
    try:
        await agent.start()
        ident = load_identity(agent.data_dir)
        assert ident is not None
        assert await agent.stop() == 0
        await _until_expired(ident)  # "weeks offline", in seconds
        expired_serial = format(ident.certificate().serial_number, "x")
        acked_before = hub.device(ident.device_id)["acked_seq"]
        await agent.start()

        async def renewed_and_synced() -> bool:
            view = hub.device(ident.device_id)
            renewed = view["certificate"]["serial"] != expired_serial
            return bool(renewed and view["acked_seq"] > acked_before)

        await until(renewed_and_synced, 30)
        assert any(a["detail"]["via"] == "expired" for a in _audit(hub, "device.renew"))
    finally:
        await agent.stop()
        agent.cleanup()
        hub.stop()
