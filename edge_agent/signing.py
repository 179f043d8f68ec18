"""Ed25519 signing and verification of targets (canonical JSON, base64 on the wire)."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.errors import InvalidDocument, TargetRejected
from edge_agent.models import Target, parse_document, strip_unknown
from edge_agent.protocol import SignedTarget

# Target fields left out of the document when unset: an agent that predates one never
# sees it (a hub sends a field only to agents that can read it).
OMITTED_WHEN_NONE = ("policy", "release_trust")


def canonical_json(target: Target) -> bytes:
    """Return the target as canonical JSON bytes (sorted keys, no spaces)."""
    doc = target.model_dump(mode="json")
    for name in OMITTED_WHEN_NONE:
        if doc.get(name) is None:
            doc.pop(name, None)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    """Return a short fingerprint of a public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_target(target: Target, private_key: Ed25519PrivateKey) -> SignedTarget:
    """Sign a target with the hub's key."""
    payload = canonical_json(target)
    return SignedTarget(
        payload=base64.b64encode(payload).decode(),
        signature=base64.b64encode(private_key.sign(payload)).decode(),
        key_id=key_id(private_key.public_key()),
    )


def load_public_key(pem: str | bytes) -> Ed25519PublicKey:
    """Load a PEM Ed25519 public key."""
    key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    if not isinstance(key, Ed25519PublicKey):
        raise TargetRejected("pinned signing key is not an Ed25519 key")
    return key


def verify_target(
    signed: SignedTarget,
    public_key: Ed25519PublicKey,
    *,
    device_id: str,
    applied_revision: int,
    now: datetime,
) -> Target:
    """Return the target if it is signed by the pinned key, ours, newer and unexpired."""
    target, _ = read_target(
        signed, public_key, device_id=device_id, applied_revision=applied_revision, now=now
    )
    return target


def read_target(
    signed: SignedTarget,
    public_key: Ed25519PublicKey,
    *,
    device_id: str,
    applied_revision: int,
    now: datetime,
) -> tuple[Target, list[str]]:
    """Verify a target as ``verify_target``; also return the fields it carried we do not know.

    The signature covers the exact payload bytes; only after it verifies is the payload
    read, tolerantly: fields this agent does not know (a newer hub's optional ones) are
    left out and named, everything it knows is validated as strictly as ever.
    """
    try:
        payload = base64.b64decode(signed.payload, validate=True)
        signature = base64.b64decode(signed.signature, validate=True)
    except ValueError as exc:
        raise TargetRejected("target is not valid base64") from exc
    try:
        public_key.verify(signature, payload)
    except InvalidSignature as exc:
        raise TargetRejected("target signature does not verify with the pinned hub key") from exc
    try:
        doc, unknown = strip_unknown(Target, json.loads(payload))
        target: Target = parse_document(Target, doc)
    except (InvalidDocument, ValueError) as exc:
        message = exc.message if isinstance(exc, InvalidDocument) else str(exc)
        raise TargetRejected(f"signed target is invalid: {message}") from exc
    if target.device_id != device_id:
        raise TargetRejected(f"target is addressed to {target.device_id!r}, not {device_id!r}")
    if target.revision <= applied_revision:
        raise TargetRejected(
            f"target revision {target.revision} is not newer than {applied_revision} (replay)"
        )
    if target.is_expired(now):
        raise TargetRejected(f"target revision {target.revision} expired at {target.expires_at}")
    missing = target.missing_secrets()
    if missing:  # names only: a refusal is audited
        raise TargetRejected(f"target carries no value for secret(s) {', '.join(missing)}")
    return target, unknown
