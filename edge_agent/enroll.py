"""Device identity: enrollment with a one-time token, certificate renewal, the mTLS context.

Files in the data directory (directory 0700, every file 0600)::

    device.key        EC P-256 private key, generated here; it never leaves the device
    device.crt        client certificate issued by the hub
    hub-ca.pem        the CA that the hub's TLS certificate must chain to (pinned)
    hub-signing.pub   the hub's Ed25519 target-signing public key (pinned)
    identity.json     {"device_id", "hub_url", "tags", "ca_sha256"}

Trust in the hub's TLS is bootstrapped from configuration: either a CA file, or the CA's
SHA-256 fingerprint — then ``GET /v1/ca`` is fetched once without verification and the
CA is accepted only if its fingerprint matches. Every later call verifies the hub against
the pinned CA with hostname checking on, and presents the device certificate.

Renewal keeps its new key in ``device.key.pending`` from before the request until the
new certificate is installed, so a retry after a lost answer asks for the same key (the
hub lets the replaced certificate renew again only for that key). On success it writes
``device.crt.new``, then renames the pending key, then the certificate; ``load_identity``
completes a renewal cut anywhere in between, or discards a certificate that matches
neither key, so the key and certificate on disk always match.

An expired certificate cannot complete a TLS handshake, so within the hub's grace
(``pki.renew_grace_days``) it is renewed without one: ``POST /v1/renew/challenge``, then
``POST /v1/renew/expired`` with the expired certificate and the device key's signature
over the challenge and the new CSR (``protocol.renewal_proof_message``).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent import __version__
from edge_agent.errors import ConfigError, HubRefused, HubUnreachable, SyncError
from edge_agent.protocol import (
    EnrollRequest,
    EnrollResponse,
    ExpiredRenewRequest,
    RenewChallenge,
    RenewChallengeRequest,
    RenewRequest,
    RenewResponse,
    renewal_proof_message,
)
from edge_agent.signing import load_public_key

log = logging.getLogger(__name__)

KEY_FILE = "device.key"
CERT_FILE = "device.crt"
CA_FILE = "hub-ca.pem"
SIGNING_KEY_FILE = "hub-signing.pub"
IDENTITY_FILE = "identity.json"
PENDING_KEY_FILE = "device.key.pending"
RENEW_MARGIN = 1 / 3


@dataclass(frozen=True)
class Identity:
    """An enrolled device: its id, its files, and the hub it belongs to."""

    data_dir: Path
    device_id: str
    hub_url: str
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def key_path(self) -> Path:
        """Return the device private key file."""
        return self.data_dir / KEY_FILE

    @property
    def cert_path(self) -> Path:
        """Return the device certificate file."""
        return self.data_dir / CERT_FILE

    @property
    def ca_path(self) -> Path:
        """Return the pinned hub CA file."""
        return self.data_dir / CA_FILE

    def certificate(self) -> x509.Certificate:
        """Return the current device certificate."""
        return x509.load_pem_x509_certificate(self.cert_path.read_bytes())

    def signing_public_key(self) -> Any:
        """Return the pinned Ed25519 key that signs targets."""
        return load_public_key((self.data_dir / SIGNING_KEY_FILE).read_bytes())

    def ssl_context(self) -> ssl.SSLContext:
        """Return a TLS context: pinned hub CA, hostname check on, device certificate."""
        ctx = self.server_only_ssl_context()
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx

    def server_only_ssl_context(self) -> ssl.SSLContext:
        """Return a TLS context: pinned hub CA, hostname check on, no client certificate."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_path))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = True
        return ctx


def load_identity(data_dir: Path) -> Identity | None:
    """Return the enrolled identity in data_dir, or None if the device is not enrolled."""
    _recover_renewal(data_dir)
    meta = data_dir / IDENTITY_FILE
    if not meta.exists():
        return None
    try:
        doc = json.loads(meta.read_text())
        ident = Identity(data_dir, doc["device_id"], doc["hub_url"], doc.get("tags", {}))
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{meta}: unreadable identity file: {exc}") from exc
    missing = [p.name for p in (ident.key_path, ident.cert_path, ident.ca_path) if not p.exists()]
    if missing or not (data_dir / SIGNING_KEY_FILE).exists():
        raise ConfigError(f"{data_dir}: identity incomplete, missing {missing or SIGNING_KEY_FILE}")
    return ident


def ca_fingerprint(pem: str | bytes) -> str:
    """Return ``sha256:<hex>`` of the first certificate in a PEM (its DER encoding)."""
    cert = x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def _normalize_fp(fp: str) -> str:
    hexpart = fp.lower().removeprefix("sha256:").replace(":", "").strip()
    if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise ConfigError(f"hub.ca_sha256: not a SHA-256 fingerprint: {fp!r}")
    return "sha256:" + hexpart


async def fetch_pinned_ca(hub_url: str, ca_sha256: str, *, timeout_s: float = 30.0) -> str:
    """Fetch the hub CA without verification; return it only if its fingerprint matches."""
    want = _normalize_fp(ca_sha256)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # bootstrapping: the fingerprint check below is the trust
    body = await _request("GET", hub_url, "/v1/ca", ctx, None, timeout_s)
    text = body.decode(errors="replace")
    if text.lstrip().startswith("{"):
        text = json.loads(text).get("ca_pem", "")
    try:
        got = ca_fingerprint(text)
    except ValueError as exc:
        raise SyncError(f"GET /v1/ca did not return a PEM certificate: {exc}") from exc
    if got != want:
        raise SyncError(f"hub CA fingerprint {got} does not match the configured {want}")
    return text


async def enroll(
    hub_url: str,
    token: str,
    data_dir: Path,
    *,
    ca_file: str | Path | None = None,
    ca_sha256: str | None = None,
    hostname: str | None = None,
    agent_version: str = __version__,
    timeout_s: float = 30.0,
) -> Identity:
    """Enroll this device with the hub and write its identity files."""
    if (ca_file is None) == (ca_sha256 is None):
        raise ConfigError("hub: give exactly one of ca_file and ca_sha256 to trust the hub")
    if ca_file is not None:
        ca_pem = Path(ca_file).read_text()
    else:
        ca_pem = await fetch_pinned_ca(hub_url, ca_sha256 or "", timeout_s=timeout_s)
    _ensure_private_dir(data_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    req = EnrollRequest(
        token=token,
        csr_pem=_csr(key, hostname or socket.gethostname()),
        hostname=hostname or socket.gethostname(),
        agent_version=agent_version,
    )
    ctx = ssl.create_default_context(cadata=ca_pem)
    body = await _request("POST", hub_url, "/v1/enroll", ctx, req.model_dump_json(), timeout_s)
    resp = EnrollResponse.model_validate_json(body)
    _check_cert_matches(resp.certificate_pem, key)
    load_public_key(resp.signing_public_key_pem)
    # Trust the bootstrapped CA, and the CA that issued our certificate if it differs.
    trust = ca_pem if _same_cert(ca_pem, resp.ca_pem) else ca_pem.rstrip() + "\n" + resp.ca_pem
    _write_private(data_dir / KEY_FILE, _key_pem(key))
    _write_private(data_dir / CERT_FILE, resp.certificate_pem.encode())
    _write_private(data_dir / CA_FILE, trust.encode())
    _write_private(data_dir / SIGNING_KEY_FILE, resp.signing_public_key_pem.encode())
    doc = {"device_id": resp.device_id, "hub_url": hub_url, "tags": resp.tags}
    doc["ca_sha256"] = ca_fingerprint(ca_pem)
    _write_private(data_dir / IDENTITY_FILE, json.dumps(doc, indent=2).encode())
    log.info("enrolled with %s as device %s", hub_url, resp.device_id)
    return Identity(data_dir, resp.device_id, hub_url, resp.tags)


def renewal_due(cert: x509.Certificate, now: dt.datetime, margin: float = RENEW_MARGIN) -> bool:
    """Return whether less than ``margin`` of the certificate's lifetime is left."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return (end - now) < (end - start) * margin


async def renew(identity: Identity, *, timeout_s: float = 30.0) -> Identity:
    """Get a new certificate for the pending key over mTLS and swap both files in."""
    key = _pending_key(identity.data_dir)
    req = RenewRequest(csr_pem=_csr(key, identity.device_id))
    ctx = identity.ssl_context()
    body = await _request(
        "POST", identity.hub_url, "/v1/renew", ctx, req.model_dump_json(), timeout_s
    )
    return _install_renewed(identity, key, body)


async def renew_expired(identity: Identity, *, timeout_s: float = 30.0) -> Identity:
    """Renew an expired certificate by proving the device key (no client certificate)."""
    key = _pending_key(identity.data_dir)
    csr_pem = _csr(key, identity.device_id)
    ctx = identity.server_only_ssl_context()
    ask = RenewChallengeRequest(device_id=identity.device_id).model_dump_json()
    body = await _request("POST", identity.hub_url, "/v1/renew/challenge", ctx, ask, timeout_s)
    challenge = RenewChallenge.model_validate_json(body).challenge
    message = renewal_proof_message(identity.device_id, challenge, csr_pem)
    req = ExpiredRenewRequest(
        device_id=identity.device_id,
        certificate_pem=identity.cert_path.read_text(),
        challenge=challenge,
        csr_pem=csr_pem,
        signature_b64=base64.b64encode(_sign(identity.key_path, message)).decode(),
    )
    body = await _request(
        "POST", identity.hub_url, "/v1/renew/expired", ctx, req.model_dump_json(), timeout_s
    )
    return _install_renewed(identity, key, body)


def _install_renewed(identity: Identity, key: ec.EllipticCurvePrivateKey, body: bytes) -> Identity:
    resp = RenewResponse.model_validate_json(body)
    _check_cert_matches(resp.certificate_pem, key)
    d = identity.data_dir
    _write_private(d / (CERT_FILE + ".new"), resp.certificate_pem.encode())
    os.replace(d / PENDING_KEY_FILE, d / KEY_FILE)
    os.replace(d / (CERT_FILE + ".new"), d / CERT_FILE)
    _fsync_dir(d)
    log.info(
        "renewed device certificate, valid until %s", identity.certificate().not_valid_after_utc
    )
    return identity


def _pending_key(d: Path) -> ec.EllipticCurvePrivateKey:
    """Return the key a renewal asks a certificate for, made (and kept) before asking."""
    path = d / PENDING_KEY_FILE
    if path.exists():
        key = _load_ec_key(path)
        if key is not None:
            return key
    key = ec.generate_private_key(ec.SECP256R1())
    _write_private(path, _key_pem(key))
    _fsync_dir(d)
    return key


def _load_ec_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _sign(key_path: Path, message: bytes) -> bytes:
    key = _load_ec_key(key_path)
    if key is None:
        raise ConfigError(f"{key_path}: not an EC private key")
    return key.sign(message, ec.ECDSA(hashes.SHA256()))


async def renew_if_due(
    identity: Identity,
    *,
    now: dt.datetime | None = None,
    margin: float = RENEW_MARGIN,
    timeout_s: float = 30.0,
) -> bool:
    """Renew the certificate if it is within ``margin`` of expiry; return whether it did.

    An expired certificate takes the grace path (``renew_expired``).
    """
    now = now or dt.datetime.now(dt.UTC)
    cert = identity.certificate()
    if now >= cert.not_valid_after_utc:
        log.warning(
            "device certificate expired at %s: renewing by proof of the device key",
            cert.not_valid_after_utc.isoformat(),
        )
        await renew_expired(identity, timeout_s=timeout_s)
        return True
    if not renewal_due(cert, now, margin):
        return False
    await renew(identity, timeout_s=timeout_s)
    return True


async def maintain_certificate(
    identity: Identity,
    on_renewed: Callable[[], Awaitable[None]],
    *,
    margin: float = RENEW_MARGIN,
    check_interval_s: float = 3600.0,
    retry_s: float = 300.0,
) -> None:
    """Renew the certificate whenever it is due, forever; call ``on_renewed`` after each."""
    while True:
        try:
            renewed = await renew_if_due(identity, margin=margin)
        except HubRefused as exc:
            log.error("the hub refused certificate renewal (retry in %s s): %s", retry_s, exc)
            await asyncio.sleep(retry_s)
            continue
        except SyncError as exc:
            log.warning("certificate renewal failed (will retry): %s", exc)
            await asyncio.sleep(retry_s)
            continue
        if renewed:
            await on_renewed()
        await asyncio.sleep(check_interval_s)


def _recover_renewal(d: Path) -> None:
    # Written by agents before the pending key: the old pair is intact without it.
    (d / (KEY_FILE + ".new")).unlink(missing_ok=True)
    new_cert, pending = d / (CERT_FILE + ".new"), d / PENDING_KEY_FILE
    if not new_cert.exists():
        return
    if pending.exists() and _cert_file_matches(new_cert, pending):
        os.replace(pending, d / KEY_FILE)  # cut before the key rename: finish it
    if _cert_file_matches(new_cert, d / KEY_FILE):
        os.replace(new_cert, d / CERT_FILE)  # cut between the renames: the cert follows
    else:
        new_cert.unlink()  # matches neither key: the old pair stays
    _fsync_dir(d)


def _cert_file_matches(cert_path: Path, key_path: Path) -> bool:
    key = _load_ec_key(key_path)
    if key is None:
        return False
    try:
        _check_cert_matches(cert_path.read_text(errors="replace"), key)
    except (ValueError, SyncError):
        return False
    return True


def _csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _check_cert_matches(cert_pem: str, key: ec.EllipticCurvePrivateKey) -> None:
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, pub) != key.public_key().public_bytes(der, pub):
        raise SyncError("the hub returned a certificate for another key")


def _same_cert(a: str, b: str) -> bool:
    try:
        return ca_fingerprint(a) == ca_fingerprint(b)
    except ValueError:
        return False


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ensure_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _request(
    method: str, hub_url: str, path: str, ctx: ssl.SSLContext, body: str | None, timeout_s: float
) -> bytes:
    """Make one HTTPS call; translate failures into HubUnreachable / HubRefused."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.request(
                method, hub_url.rstrip("/") + path, data=body, headers=headers, ssl=ctx
            ) as resp,
        ):
            data = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise HubUnreachable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
    if status >= 400:
        text = data[:500].decode(errors="replace")
        if status >= 500:
            raise HubUnreachable(f"{method} {path}: hub answered {status}: {text}")
        raise HubRefused(f"{method} {path}: hub answered {status}: {text}", status=status)
    return data
