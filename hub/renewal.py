"""Device certificate renewal rules: lineage, the grace of an expired certificate, proofs.

Only the newest certificate the hub issued to a device works on its mTLS routes. Two
exceptions, both for renewal only:

- **Lost answer.** The certificate a renewal replaced (the *previous*) may renew again,
  but only for the newest certificate's key: a device whose renewal answer was lost
  retries with the same pending key and gets a certificate for it; a copy of the old key
  elsewhere gains nothing (it cannot use a certificate for a key it lacks).
- **Expired certificate.** A device offline past its certificate's ``not_after`` cannot
  complete a TLS handshake with it, so it renews without a client certificate: it asks
  for a challenge (``issue_challenge``: an HMAC-authenticated nonce bound to its device
  id, valid ``CHALLENGE_TTL``, no state on the hub) and signs ``renewal_proof_message``
  (challenge + device id + SHA-256 of the new CSR) with the expired certificate's key.
  The hub checks that it issued that certificate, that it is still the device's newest
  (or previous, as above), the signature, and that it expired no longer ago than
  ``pki.renew_grace_days``.

Everything here is pure (no I/O); ``hub.device_api`` wires it to the store.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import secrets

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from edge_agent.protocol import RenewChallenge
from hub.errors import CertificateExpired, Unauthenticated
from hub.store.records import CertLineage

CHALLENGE_TTL = dt.timedelta(minutes=2)


def _challenge_mac(secret: bytes, payload: str) -> str:
    return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()


def issue_challenge(secret: bytes, device_id: str, now: dt.datetime) -> RenewChallenge:
    """Return a challenge for ``device_id`` that ``check_challenge`` accepts until expiry."""
    expires_at = now + CHALLENGE_TTL
    payload = f"{device_id}|{int(expires_at.timestamp())}|{secrets.token_hex(16)}"
    encoded = base64.urlsafe_b64encode(payload.encode()).decode()
    return RenewChallenge(
        challenge=f"{encoded}.{_challenge_mac(secret, payload)}", expires_at=expires_at
    )


def check_challenge(secret: bytes, challenge: str, device_id: str, now: dt.datetime) -> None:
    """Raise Unauthenticated unless the hub issued ``challenge`` for this device, unexpired."""
    encoded, _, mac = challenge.partition(".")
    try:
        payload = base64.urlsafe_b64decode(encoded.encode()).decode()
        owner, expires, _nonce = payload.split("|")
        expires_at = int(expires)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _bad("challenge", "is not one this hub issued") from None
    if not hmac.compare_digest(_challenge_mac(secret, payload), mac):
        raise _bad("challenge", "is not one this hub issued")
    if owner != device_id:
        raise _bad("challenge", "was issued for another device")
    if now.timestamp() > expires_at:
        raise _bad("challenge", "has expired: ask for a new one")


def load_issued_cert(pem: str, ca_cert: x509.Certificate, device_id: str) -> x509.Certificate:
    """Return the certificate if this hub's CA issued it to ``device_id``; else raise."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise _bad("certificate_pem", "is not a certificate this hub issued") from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or names[0].value != device_id:
        raise _bad("certificate_pem", f"was not issued to {device_id}")
    return cert


def verify_proof(cert: x509.Certificate, message: bytes, signature_b64: str) -> None:
    """Raise Unauthenticated unless ``signature_b64`` is the certificate key's over message."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        key = cert.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise InvalidSignature
    except (ValueError, binascii.Error, InvalidSignature):
        raise _bad("signature_b64", "does not verify with the certificate's key") from None


def check_grace(not_after: dt.datetime, now: dt.datetime, grace: dt.timedelta) -> None:
    """Raise CertificateExpired if the certificate expired longer than ``grace`` ago."""
    if now - not_after > grace:
        raise CertificateExpired(
            f"the device certificate expired at {not_after.isoformat()}, more than "
            f"{grace} ago (pki.renew_grace_days): it cannot be renewed; re-enroll the device"
        )


def check_lineage(presented_serial: str, csr_key_sha256: str, lineage: CertLineage) -> bool:
    """Return whether a renewal comes from the previous certificate; raise if from neither.

    From the newest certificate: any new key. From the previous one: only the newest
    certificate's key (the retry of a renewal whose answer was lost).
    """
    if presented_serial == lineage.serial:
        return False
    if presented_serial and presented_serial == lineage.previous_serial:
        if csr_key_sha256 == lineage.key_sha256:
            return True
        raise Unauthenticated(
            "this certificate was replaced by a renewal: it may only renew again for the "
            "key of the certificate that replaced it"
        )
    raise Unauthenticated("this certificate was replaced by a renewal; use the newest one")


def _bad(field: str, problem: str) -> Unauthenticated:
    return Unauthenticated(f"{field} {problem}", fields=[{"field": field, "message": problem}])
