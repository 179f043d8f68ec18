"""Enrollment against a real hub process: the happy path and every refusal."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hubdocs import release_doc

from edge_agent.protocol import EnrollResponse, ErrorBody, RenewResponse
from hub.testing import RunningHub, make_key_and_csr


async def _enroll(hub: RunningHub, token: str, csr_pem: str | None = None) -> tuple[int, object]:
    body = {"token": token, "csr_pem": csr_pem or make_key_and_csr()[1], "hostname": "h"}
    return await hub.request("POST", "/v1/enroll", json_body=body)


async def _device_count(hub: RunningHub) -> int:
    status, body = await hub.api("GET", "/api/v1/devices")
    assert status == 200
    return len(body["devices"])


def _assert_error(status: int, body: object, want_status: int, code: str) -> None:
    assert status == want_status, body
    err = ErrorBody.model_validate(body)
    assert err.error == code
    assert err.message


async def test_enroll_happy_path_gives_identity_that_syncs(hub: RunningHub, tmp_path: Path):
    token = await hub.create_token(tags={"site": "lab", "line": "3"})
    key_pem, csr_pem = make_key_and_csr()
    status, body = await _enroll(hub, token, csr_pem)
    assert status == 201, body
    resp = EnrollResponse.model_validate(body)
    assert resp.tags == {"site": "lab", "line": "3"}
    assert resp.ca_pem == hub.ca_path.read_text()

    cert = x509.load_pem_x509_certificate(resp.certificate_pem.encode())
    ca = x509.load_pem_x509_certificate(resp.ca_pem.encode())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == resp.device_id
    key = serialization.load_pem_private_key(key_pem, None)
    assert cert.public_key() == key.public_key()  # the hub signed the device's own key

    identity = await hub.enroll(await hub.create_token(), tmp_path / "d")
    status, sync = await hub.request(
        "POST", "/v1/sync", json_body={"entries": []}, ssl_context=identity.ssl_context()
    )
    assert status == 200, sync
    assert sync["acked_seq"] == 0
    assert sync["want_full_status"] is True

    status, shown = await hub.api("GET", f"/api/v1/devices/{resp.device_id}")
    assert status == 200
    assert shown["hostname"] == "h" and shown["connectivity"] == "online"


async def test_unknown_token_is_refused_and_creates_nothing(hub: RunningHub):
    before = await _device_count(hub)
    status, body = await _enroll(hub, "et_000000000000.not-a-real-secret")
    _assert_error(status, body, 401, "unknown_token")
    status, body = await _enroll(hub, "garbage-token-without-form")
    _assert_error(status, body, 401, "unknown_token")
    real = await hub.create_token()
    status, body = await _enroll(hub, real.split(".")[0] + ".wrong-secret-for-this-id")
    _assert_error(status, body, 401, "unknown_token")
    assert await _device_count(hub) == before
    status, _ = await _enroll(hub, real)  # the real token was not consumed by the guess
    assert status == 201


async def test_single_use_token_refused_the_second_time(hub: RunningHub):
    token = await hub.create_token(uses=1)
    assert (await _enroll(hub, token))[0] == 201
    before = await _device_count(hub)
    status, body = await _enroll(hub, token)
    _assert_error(status, body, 410, "token_used_up")
    assert await _device_count(hub) == before


async def test_n_use_token_refused_at_use_n_plus_1(hub: RunningHub):
    token = await hub.create_token(uses=3)
    for _ in range(3):
        assert (await _enroll(hub, token))[0] == 201
    before = await _device_count(hub)
    status, body = await _enroll(hub, token)
    _assert_error(status, body, 410, "token_used_up")
    assert await _device_count(hub) == before


async def test_concurrent_enrollments_cannot_overspend_a_token(hub: RunningHub):
    token = await hub.create_token(uses=2)
    before = await _device_count(hub)
    results = await asyncio.gather(*(_enroll(hub, token) for _ in range(8)))
    assert sorted(s for s, _ in results) == [201, 201] + [410] * 6
    assert await _device_count(hub) == before + 2


async def test_expired_token_is_refused(hub: RunningHub):
    token = await hub.create_token(expires_in_s=1)
    await asyncio.sleep(1.2)
    before = await _device_count(hub)
    status, body = await _enroll(hub, token)
    _assert_error(status, body, 410, "token_expired")
    assert await _device_count(hub) == before


async def test_bad_csr_is_refused_and_token_not_consumed(hub: RunningHub):
    token = await hub.create_token(uses=1)
    before = await _device_count(hub)
    not_pem = (
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + "A" * 120
        + "\n-----END CERTIFICATE REQUEST-----\n"
    )
    status, body = await _enroll(hub, token, not_pem)
    _assert_error(status, body, 400, "bad_csr")

    # A well-formed CSR whose self-signature does not verify (subject swapped after signing).
    csr_pem = make_key_and_csr()[1]
    der = bytearray(
        x509.load_pem_x509_csr(csr_pem.encode()).public_bytes(serialization.Encoding.DER)
    )
    idx = der.find(b"edge-device")
    der[idx : idx + 11] = b"evil-device"
    tampered = (
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(bytes(der)).decode()
        + "-----END CERTIFICATE REQUEST-----\n"
    )
    status, body = await _enroll(hub, token, tampered)
    _assert_error(status, body, 400, "bad_csr")

    status, body = await hub.request("POST", "/v1/enroll", json_body={"token": token})
    assert status == 422 and any(f["field"] == "csr_pem" for f in body["fields"])
    assert await _device_count(hub) == before
    assert (await _enroll(hub, token))[0] == 201  # still has its one use


async def test_refused_enrollments_are_audited(hub: RunningHub):
    await _enroll(hub, "et_ffffffffffff.nope-nope-nope")
    status, body = await hub.api("GET", "/api/v1/audit?limit=1000")
    assert status == 200
    denied = [
        a for a in body["audit"] if a["action"] == "device.enroll" and a["outcome"] == "denied"
    ]
    assert any(a["detail"]["reason"] == "unknown_token" for a in denied)


async def test_renew_issues_a_new_working_certificate(hub: RunningHub, tmp_path: Path):
    identity = await hub.enroll(await hub.create_token(), tmp_path / "d")
    old = x509.load_pem_x509_certificate(identity.cert_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whatever")]))
        .sign(key, hashes.SHA256())
    )
    body = {"csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode()}
    status, resp = await hub.request(
        "POST", "/v1/renew", json_body=body, ssl_context=identity.ssl_context()
    )
    assert status == 200, resp
    new = x509.load_pem_x509_certificate(
        RenewResponse.model_validate(resp).certificate_pem.encode()
    )
    assert new.serial_number != old.serial_number
    assert new.subject == old.subject  # the identity is the hub's, not the CSR's CN
    identity.key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    identity.cert_path.write_text(resp["certificate_pem"])
    status, _ = await hub.request(
        "POST", "/v1/sync", json_body={}, ssl_context=identity.ssl_context()
    )
    assert status == 200
    status, shown = await hub.api("GET", f"/api/v1/devices/{identity.device_id}")
    assert shown["certificate"]["serial"] == format(new.serial_number, "x")
    # And a target set now is signed for this device id.
    rev = await hub.set_target(identity.device_id, release_doc())
    assert rev == 1
