"""The hub's keys and certificates: CA, server certificate, device certificates, signing key.

Files in the data directory (directory 0700, every file 0600)::

    ca.key / ca.pem           EC P-256 certificate authority (signs server and device certs)
    server.key / server.pem   the hub's TLS certificate (SANs: 127.0.0.1, ::1, localhost,
                              and ``server.public_names``); re-issued when the names change
                              or a third of its lifetime is left
    signing.key               Ed25519 key that signs targets (agents pin its public key)

P-256 rather than Ed25519 for the CA and TLS: every OpenSSL build and TLS stack the
agents may meet supports it. Ed25519 is used where only our own code verifies.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hub.errors import BadCSR, ConfigError

DEVICE_URI_PREFIX = "urn:edgefleet:device:"
BASE_SERVER_NAMES = ("127.0.0.1", "::1", "localhost")
CLOCK_SKEW = dt.timedelta(minutes=5)


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable only by its owner, atomically (tmp + fsync + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_private_dir(path: Path) -> None:
    """Create the directory (0700) if needed and tighten its mode."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def fingerprint(cert: x509.Certificate) -> str:
    """Return ``sha256:<hex>`` of the certificate's DER encoding."""
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def _pem_key(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(path: Path) -> object:
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: not a readable private key: {exc}") from exc


@dataclass(frozen=True)
class IssuedCert:
    """A certificate the hub just issued."""

    pem: str
    serial: str
    fingerprint: str
    not_after: dt.datetime
    key_sha256: str


class HubPKI:
    """The CA, the server certificate files and the target-signing key of one hub."""

    def __init__(
        self,
        data_dir: Path,
        ca_cert: x509.Certificate,
        ca_key: ec.EllipticCurvePrivateKey,
        signing_key: ed25519.Ed25519PrivateKey,
    ) -> None:
        self.data_dir = data_dir
        self.ca_cert = ca_cert
        self.ca_key = ca_key
        self.signing_key = signing_key
        self._challenge_secret: bytes | None = None
        self.ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode()
        self.signing_public_pem = (
            signing_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    @property
    def server_cert_path(self) -> Path:
        """Return the server certificate file."""
        return self.data_dir / "server.pem"

    @property
    def server_key_path(self) -> Path:
        """Return the server key file."""
        return self.data_dir / "server.key"

    @property
    def ca_path(self) -> Path:
        """Return the CA certificate file."""
        return self.data_dir / "ca.pem"

    def ca_fingerprint(self) -> str:
        """Return the CA certificate's ``sha256:<hex>`` fingerprint (what agents pin)."""
        return fingerprint(self.ca_cert)

    def challenge_secret(self) -> bytes:
        """Return the HMAC key of renewal challenges (derived from the CA key: stable
        across restarts, never stored, unknown to anyone without the CA key)."""
        if self._challenge_secret is None:
            der = self.ca_key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            self._challenge_secret = hashlib.sha256(b"edgefleet renewal v1\0" + der).digest()
        return self._challenge_secret

    @classmethod
    def ensure(
        cls,
        data_dir: Path,
        public_names: list[str],
        *,
        ca_days: int = 3650,
        server_days: int = 365,
        now: dt.datetime | None = None,
    ) -> HubPKI:
        """Load the hub's keys from data_dir, creating whatever is missing."""
        now = now or dt.datetime.now(dt.UTC)
        ensure_private_dir(data_dir)
        ca_key_path, ca_path = data_dir / "ca.key", data_dir / "ca.pem"
        if ca_key_path.exists() and ca_path.exists():
            ca_key = _load_key(ca_key_path)
            if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
                raise ConfigError(f"{ca_key_path}: CA key must be an EC key")
            ca_cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
        else:
            ca_key, ca_cert = _new_ca(now, ca_days)
            write_private(ca_key_path, _pem_key(ca_key))
            write_private(ca_path, ca_cert.public_bytes(serialization.Encoding.PEM))
        signing_path = data_dir / "signing.key"
        if signing_path.exists():
            signing_key = _load_key(signing_path)
            if not isinstance(signing_key, ed25519.Ed25519PrivateKey):
                raise ConfigError(f"{signing_path}: target-signing key must be Ed25519")
        else:
            signing_key = ed25519.Ed25519PrivateKey.generate()
            write_private(signing_path, _pem_key(signing_key))
        pki = cls(data_dir, ca_cert, ca_key, signing_key)
        pki._ensure_server_cert(public_names, server_days, now)
        return pki

    def _ensure_server_cert(self, public_names: list[str], days: int, now: dt.datetime) -> None:
        names = sorted({*BASE_SERVER_NAMES, *public_names})
        if self.server_cert_path.exists() and self.server_key_path.exists():
            cert = x509.load_pem_x509_certificate(self.server_cert_path.read_bytes())
            if not _server_cert_stale(cert, self.ca_cert, names, now):
                return
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._server_cert(key, names, days, now)
        write_private(self.server_key_path, _pem_key(key))
        write_private(self.server_cert_path, cert.public_bytes(serialization.Encoding.PEM))

    def _server_cert(
        self, key: ec.EllipticCurvePrivateKey, names: list[str], days: int, now: dt.datetime
    ) -> x509.Certificate:
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        builder = (
            _base_builder(self.ca_cert, key.public_key(), "edge-hub", now, days)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        return builder.sign(self.ca_key, hashes.SHA256())

    def issue_device_cert(
        self, csr: x509.CertificateSigningRequest, device_id: str, days: float, now: dt.datetime
    ) -> IssuedCert:
        """Issue a client certificate for ``device_id`` (CN and URI SAN) to the CSR's key."""
        public_key = csr.public_key()
        if not isinstance(
            public_key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, rsa.RSAPublicKey)
        ):
            raise BadCSR("CSR key must be EC, Ed25519 or RSA")
        cert = (
            _base_builder(self.ca_cert, public_key, device_id, now, days)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(DEVICE_URI_PREFIX + device_id)]
                ),
                critical=False,
            )
            # serverAuth too: the agent's LAN API serves this certificate to technicians
            # (no DNS/IP name in it, so it can never pass for the hub's server certificate)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        return IssuedCert(
            pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            serial=serial_hex(cert.serial_number),
            fingerprint=fingerprint(cert),
            not_after=cert.not_valid_after_utc,
            key_sha256=public_key_sha256(public_key),
        )

    def server_ssl_context(self) -> ssl.SSLContext:
        """Return the TLS context: our server cert; client certs optional, verified by our CA.

        CERT_OPTIONAL lets /v1/enroll, /v1/ca and the operator API work without a client
        certificate; a client certificate from another CA fails the handshake. Routes that
        need a device identity check it in the handler (``hub.auth.peer_device_id``).
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.server_cert_path, self.server_key_path)
        ctx.load_verify_locations(cadata=self.ca_pem)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx


def load_csr(pem: str) -> x509.CertificateSigningRequest:
    """Parse a PEM CSR and check its self-signature, or raise BadCSR."""
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BadCSR(f"csr_pem is not a PEM certificate signing request: {exc}") from None
    try:
        valid = csr.is_signature_valid
    except (InvalidSignature, UnsupportedAlgorithm, ValueError):
        valid = False
    if not valid:
        raise BadCSR("csr_pem: the CSR's signature does not verify with its own key")
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise BadCSR("csr_pem: RSA keys must be at least 2048 bits")
    if not isinstance(key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, rsa.RSAPublicKey)):
        raise BadCSR("csr_pem: key must be EC (P-256/P-384), Ed25519 or RSA")
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name not in (
        "secp256r1",
        "secp384r1",
    ):
        raise BadCSR(f"csr_pem: unsupported EC curve {key.curve.name}")
    return csr


def _new_ca(now: dt.datetime, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, "edgefleet hub CA"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _base_builder(
    ca_cert: x509.Certificate,
    public_key: object,
    common_name: str,
    now: dt.datetime,
    days: float,
) -> x509.CertificateBuilder:
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )


def _server_cert_stale(
    cert: x509.Certificate, ca_cert: x509.Certificate, names: list[str], now: dt.datetime
) -> bool:
    if cert.issuer != ca_cert.subject:
        return True
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    if cert.not_valid_after_utc - now < lifetime / 3:
        return True
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    have = {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    have |= set(san.get_values_for_type(x509.DNSName))
    want = set()
    for n in names:
        try:
            want.add(str(ipaddress.ip_address(n)))
        except ValueError:
            want.add(n)
    return have != want


def public_key_sha256(key: object) -> str:
    """Return the SHA-256 hex of a public key's SubjectPublicKeyInfo DER."""
    der = key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def serial_hex(serial_number: int) -> str:
    """Return a certificate serial as the hub stores it (lower-case hex, no leading 0s)."""
    return format(serial_number, "x")


def device_csr_fingerprint(csr_pem: str) -> str:
    """Return a short hash of a CSR (for logs: never log the CSR itself)."""
    return hashlib.sha256(csr_pem.encode()).hexdigest()[:16]
