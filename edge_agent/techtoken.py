"""Technician tokens: issued and signed by the hub, verified offline by the agent. Pure.

A contract module (the hub imports it to issue tokens, as it imports ``signing``)::

    token   = "eft1." base64url(payload JSON) "." base64url(Ed25519 signature)
    payload = {"v": 1, "id", "name", "role": "read"|"operate",
               "scope": [{"key", "op", "values"}...], "scope_text",
               "issued_at", "expires_at"}                      (unix seconds)

The signature covers ``SIGNED_PREFIX`` + the payload's base64 text, so a token can never
be taken for a signed target or the reverse. The scope is the hub's tag selector
(``hub/selector.py`` grammar), parsed on the hub and carried as its requirements, so the
agent evaluates it here without a parser: every requirement must hold for the device's
tags; an operator the agent does not know refuses the token (fail closed).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.errors import TechnicianRefused

TOKEN_PREFIX = "eft1."
SIGNED_PREFIX = b"edgefleet-technician-v1\n"
ROLES = ("read", "operate")
SCOPE_OPS = ("=", "!=", "in", "notin", "exists", "!")
MAX_TOKEN_CHARS = 8192


@dataclass(frozen=True)
class Requirement:
    """One condition of a scope on one tag key (as ``hub.selector.Requirement``)."""

    key: str
    op: str
    values: tuple[str, ...] = ()

    def matches(self, tags: dict[str, str]) -> bool:
        """Return whether ``tags`` satisfy this requirement."""
        value = tags.get(self.key)
        if self.op == "exists":
            return value is not None
        if self.op == "!":
            return value is None
        if self.op in ("=", "in"):
            return value in self.values
        return value not in self.values  # != and notin: absent keys match too


@dataclass(frozen=True)
class Claims:
    """What a technician token says."""

    id: str
    name: str
    role: str
    scope: tuple[Requirement, ...]
    scope_text: str
    issued_at: int
    expires_at: int

    def to_payload(self) -> dict[str, Any]:
        """Return the JSON payload of the token."""
        return {
            "v": 1,
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "scope": [{"key": r.key, "op": r.op, "values": list(r.values)} for r in self.scope],
            "scope_text": self.scope_text,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
        }


def scope_matches(scope: tuple[Requirement, ...], tags: dict[str, str]) -> bool:
    """Return whether every requirement of ``scope`` holds for ``tags``."""
    return all(r.matches(tags) for r in scope)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_token(claims: Claims, private_key: Ed25519PrivateKey) -> str:
    """Return the signed token text for ``claims``."""
    body = _b64(json.dumps(claims.to_payload(), sort_keys=True, separators=(",", ":")).encode())
    signature = private_key.sign(SIGNED_PREFIX + body.encode())
    return f"{TOKEN_PREFIX}{body}.{_b64(signature)}"


def is_hub_token(text: str) -> bool:
    """Return whether ``text`` has the form of a hub-issued technician token."""
    return text.startswith(TOKEN_PREFIX)


def verify_signature(token: str, public_key: Ed25519PublicKey) -> Claims:
    """Return the claims of a token signed by ``public_key``; refuse anything else (401)."""
    if len(token) > MAX_TOKEN_CHARS or not is_hub_token(token):
        raise TechnicianRefused("malformed", "technician token is malformed")
    body, _dot, sig = token[len(TOKEN_PREFIX) :].partition(".")
    try:
        signature = _unb64(sig)
        public_key.verify(signature, SIGNED_PREFIX + body.encode())
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise TechnicianRefused(
            "forged", "technician token signature does not verify with the pinned hub key"
        ) from exc
    try:
        return _claims(json.loads(_unb64(body)))
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise TechnicianRefused("malformed", f"technician token payload is invalid: {exc}") from exc


def _claims(doc: dict[str, Any]) -> Claims:
    if doc["v"] != 1 or doc["role"] not in ROLES:
        raise ValueError(f"version {doc['v']!r} or role {doc['role']!r} not known")
    scope = tuple(
        Requirement(str(r["key"]), str(r["op"]), tuple(str(v) for v in r["values"]))
        for r in doc["scope"]
    )
    if bad := [r.op for r in scope if r.op not in SCOPE_OPS]:
        raise ValueError(f"scope operator(s) not known: {', '.join(bad)}")
    return Claims(
        id=str(doc["id"]),
        name=str(doc["name"]),
        role=doc["role"],
        scope=scope,
        scope_text=str(doc.get("scope_text", "")),
        issued_at=int(doc["issued_at"]),
        expires_at=int(doc["expires_at"]),
    )


def check_claims(
    claims: Claims,
    *,
    now: float,
    skew_s: float,
    tags: dict[str, str],
    revoked: frozenset[str] | set[str],
    write: bool,
) -> None:
    """Refuse a verified token that is revoked or expired (401), out of scope or role (403)."""
    if claims.id in revoked:
        raise TechnicianRefused("revoked", f"technician token {claims.id} has been revoked")
    if now > claims.expires_at + skew_s:
        raise TechnicianRefused("expired", f"technician token {claims.id} has expired")
    if now + skew_s < claims.issued_at:
        raise TechnicianRefused("not_yet_valid", f"technician token {claims.id} is not valid yet")
    if not scope_matches(claims.scope, tags):
        raise TechnicianRefused(
            "wrong_scope",
            f"technician token {claims.id} is scoped to {claims.scope_text!r}, "
            "which this device's tags do not match",
            status=403,
        )
    if write and claims.role != "operate":
        raise TechnicianRefused(
            "wrong_role",
            f"technician token {claims.id} has role {claims.role!r}; this needs 'operate'",
            status=403,
        )
