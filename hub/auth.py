"""Who is calling: enrollment tokens, the operator token, and device identity from mTLS.

Enrollment tokens look like ``et_<id>.<secret>``; only ``sha256(secret)`` is stored, so
the database never holds a usable token. The secret carries 256 bits, so a fast hash is
enough (nothing to brute-force).

Operators authenticate with ``Authorization: Bearer <token>``: ``data_dir/admin.token``,
created at first start, whose principal is admin on all devices, or a user's API token
``ut_<id>.<secret>`` (stored as ``sha256(secret)``; ``hub.route_access`` checks it and the
user's grants, see ``hub.access``). Handlers ask for a *permission*
(``require(principal, Permission.X)``), never for "is admin".

A device is identified only by the client certificate the TLS layer verified against
the hub CA: its CN is the device id.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import ssl
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from hub.access import ADMIN, Principal
from hub.access import Permission as Permission  # re-exported: handlers import it from here
from hub.access import require as require
from hub.errors import TokenExpired, TokenUsedUp, Unauthenticated, UnknownToken
from hub.pki import serial_hex, write_private
from hub.store.records import EnrollmentTokenRecord

if TYPE_CHECKING:
    from hub.store import HubStore

ENROLLMENT_PREFIX = "et_"
USER_TOKEN_PREFIX = "ut_"


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class OperatorAuth:
    """Check operator Bearer tokens; holds only hashes of the tokens it accepts."""

    def __init__(self, tokens: dict[str, Principal]) -> None:
        self._by_hash = {_sha256(t): p for t, p in tokens.items()}

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> OperatorAuth:
        """Load (creating on first start) ``admin.token`` and accept it as the admin."""
        return cls({ensure_admin_token(data_dir): ADMIN})

    def authenticate(self, request: web.Request) -> Principal:
        """Return the caller's principal, or raise Unauthenticated."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("missing 'Authorization: Bearer <token>' header")
        return self.principal_for(token)

    def principal_for(self, token: str) -> Principal:
        """Return the principal of a presented token, or raise Unauthenticated."""
        if not token.isascii():  # undecodable bytes arrive as surrogates: never a token
            raise Unauthenticated("unknown operator token")
        digest = _sha256(token.strip())
        for known, principal in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return principal
        raise Unauthenticated("unknown operator token")


def ensure_admin_token(data_dir: Path) -> str:
    """Return the admin token from ``data_dir/admin.token``, creating it (0600) if absent."""
    path = data_dir / "admin.token"
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = "adm_" + secrets.token_urlsafe(32)
    write_private(path, (token + "\n").encode())
    return token


@dataclass(frozen=True)
class NewEnrollmentToken:
    """A freshly generated enrollment token: ``token`` is shown once, then forgotten."""

    token_id: str
    token: str
    secret_hash: str


def new_enrollment_token() -> NewEnrollmentToken:
    """Generate an enrollment token."""
    token_id = ENROLLMENT_PREFIX + secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewEnrollmentToken(token_id, f"{token_id}.{secret}", _sha256(secret))


def new_user_token() -> NewEnrollmentToken:
    """Generate an operator API token ``ut_<id>.<secret>`` (same shape as enrollment's)."""
    token_id = USER_TOKEN_PREFIX + secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewEnrollmentToken(token_id, f"{token_id}.{secret}", _sha256(secret))


def split_user_token(token: str) -> tuple[str, str] | None:
    """Return ``(token_id, sha256(secret))`` of a user token, or None if it is not one."""
    token_id, sep, secret = token.strip().partition(".")
    if not sep or not token_id.startswith(USER_TOKEN_PREFIX) or not secret:
        return None
    return token_id, _sha256(secret)


def split_enrollment_token(token: str) -> tuple[str, str]:
    """Return ``(token_id, sha256(secret))`` of a presented token, or raise UnknownToken."""
    token_id, sep, secret = token.strip().partition(".")
    if not sep or not token_id.startswith(ENROLLMENT_PREFIX) or not secret:
        raise UnknownToken("enrollment token is not one this hub issued")
    return token_id, _sha256(secret)


def check_enrollment_token(
    token: EnrollmentTokenRecord | None, secret_hash: str, now: datetime
) -> EnrollmentTokenRecord:
    """Return the token if it can enroll a device now; else raise why not."""
    if token is None or not hmac.compare_digest(token.secret_hash, secret_hash):
        raise UnknownToken("enrollment token is not known to this hub")
    if token.expires_at <= now:
        raise TokenExpired(f"enrollment token {token.id} expired at {token.expires_at}")
    if token.uses_left <= 0:
        raise TokenUsedUp(f"enrollment token {token.id} has no uses left")
    return token


@dataclass(frozen=True)
class PeerCert:
    """The verified client certificate of a connection (serial as ``pki.serial_hex``)."""

    device_id: str
    serial: str


def peer_cert(request: web.Request) -> PeerCert | None:
    """Return the verified client certificate's identity, or None if none was presented.

    The TLS context verifies every presented certificate against the hub CA during the
    handshake (a certificate from another CA never gets here), so a non-empty peercert
    is one the hub issued.
    """
    transport = request.transport
    if transport is None:
        return None
    ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    subject = cert.get("subject", ())
    common_names = [
        attr[1]
        for rdn in (subject if isinstance(subject, tuple) else ())
        for attr in rdn
        if attr[0] == "commonName"
    ]
    if len(common_names) != 1:
        return None
    try:
        serial = serial_hex(int(str(cert.get("serialNumber", "")), 16))
    except ValueError:
        return None
    return PeerCert(device_id=common_names[0], serial=serial)


def require_cert(request: web.Request) -> PeerCert:
    """Return the caller's device certificate identity, or raise Unauthenticated."""
    peer = peer_cert(request)
    if peer is None:
        raise Unauthenticated("this route needs a client certificate issued by this hub")
    return peer


def require_newest(peer: PeerCert, newest_serial: str, previous_serial: str = "") -> None:
    """Refuse a certificate other than the newest the hub issued (or ``previous_serial``)."""
    if peer.serial == newest_serial or (previous_serial and peer.serial == previous_serial):
        return
    raise Unauthenticated(
        f"certificate {peer.serial} of {peer.device_id} was replaced by a renewal; "
        "use the newest one"
    )


async def require_peer(
    request: web.Request, store: HubStore, *, renewing: bool = False
) -> PeerCert:
    """Return the caller's device certificate identity, or raise Unauthenticated.

    Only the newest certificate the hub issued to the device is accepted; when
    ``renewing``, also the one it replaced (``hub.renewal.check_lineage`` decides).
    An unknown device passes here and is refused (403) by the caller.
    """
    peer = require_cert(request)
    lineage = await store.get_cert_lineage(peer.device_id)
    if lineage is not None:
        require_newest(peer, lineage.serial, lineage.previous_serial if renewing else "")
    return peer
