"""Mutual TLS on the device routes: no cert, another CA's cert, unknown and disabled devices."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hub.testing import DeviceIdentity, RunningHub, client_ssl_context, make_key_and_csr

DEVICE_ROUTES = [("POST", "/v1/sync"), ("GET", "/v1/target?after=0&wait=0"), ("POST", "/v1/renew")]


def _issue(ca_key: ec.EllipticCurvePrivateKey, ca_name: x509.Name, cn: str, directory: Path):
    """Issue a client cert for ``cn`` from the given CA; write device.key/device.pem."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "device.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / "device.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


async def test_ca_is_public_and_matches_the_pinned_file(hub: RunningHub):
    status, pem = await hub.request("GET", "/v1/ca")
    assert status == 200
    assert pem == hub.ca_path.read_text()
    ca = x509.load_pem_x509_certificate(pem.encode())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize(("method", "path"), DEVICE_ROUTES)
async def test_device_routes_refuse_a_call_without_client_certificate(
    hub: RunningHub, method: str, path: str
):
    status, body = await hub.request(method, path, json_body={} if method == "POST" else None)
    assert status == 401
    assert body["error"] == "unauthenticated"


async def test_certificate_from_another_ca_is_refused(hub: RunningHub, tmp_path: Path):
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rogue CA")])
    # Same CN as a real device: only the issuer differs.
    token = await hub.create_token()
    real = await hub.enroll(token, tmp_path / "real")
    _issue(rogue_key, rogue_name, real.device_id, tmp_path / "rogue")
    ctx = client_ssl_context(
        hub.ca_path, tmp_path / "rogue/device.pem", tmp_path / "rogue/device.key"
    )
    # The TLS layer refuses it before any handler runs (under TLS 1.3 the client sees the
    # server's alert as a dropped connection).
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await hub.request("POST", "/v1/sync", json_body={}, ssl_context=ctx)
    status, _ = await hub.request("POST", "/v1/sync", json_body={}, ssl_context=real.ssl_context())
    assert status == 200


async def test_unknown_device_with_hub_issued_cert_is_refused(hub: RunningHub, tmp_path: Path):
    ca_key = serialization.load_pem_private_key((hub.data_dir / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate(hub.ca_path.read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    _issue(ca_key, ca.subject, "dev-ghost0000000000", tmp_path / "ghost")
    ctx = client_ssl_context(
        hub.ca_path, tmp_path / "ghost/device.pem", tmp_path / "ghost/device.key"
    )
    status, body = await hub.request("POST", "/v1/sync", json_body={}, ssl_context=ctx)
    assert status == 403 and "not enrolled" in body["message"]


async def test_disabled_device_is_refused_everywhere(hub: RunningHub, device: DeviceIdentity):
    ctx = device.ssl_context()
    assert (await hub.request("POST", "/v1/sync", json_body={}, ssl_context=ctx))[0] == 200
    status, shown = await hub.api("POST", f"/api/v1/devices/{device.device_id}/disable")
    assert status == 200 and shown["disabled"] is True
    for method, path in DEVICE_ROUTES:
        body = {"csr_pem": make_key_and_csr()[1]} if path == "/v1/renew" else {}
        status, err = await hub.request(
            method, path, json_body=body if method == "POST" else None, ssl_context=ctx
        )
        assert status == 403, (path, err)
        assert "disabled" in err["message"]
    status, shown = await hub.api("POST", f"/api/v1/devices/{device.device_id}/enable")
    assert status == 200 and shown["disabled"] is False
    assert (await hub.request("POST", "/v1/sync", json_body={}, ssl_context=ctx))[0] == 200


async def test_server_certificate_names_loopback(hub: RunningHub):
    cert = x509.load_pem_x509_certificate((hub.data_dir / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1"}
    files = ("ca.key", "server.key", "signing.key", "admin.token")
    for name in files if hub.store_url else (*files, "hub.db"):  # on PostgreSQL: no hub.db
        assert (hub.data_dir / name).stat().st_mode & 0o777 == 0o600, name
    assert hub.data_dir.stat().st_mode & 0o777 == 0o700
