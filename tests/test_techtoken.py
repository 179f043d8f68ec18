"""Technician tokens, pure: encode/verify, expiry with skew, revocation, scope, role (tables)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.errors import TechnicianRefused
from edge_agent.techtoken import (
    Claims,
    Requirement,
    check_claims,
    encode_token,
    scope_matches,
    verify_signature,
)

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
BERLIN = (Requirement("site", "=", ("berlin",)),)


def claims(role: str = "operate", scope: tuple[Requirement, ...] = BERLIN) -> Claims:
    return Claims("tt-1", "alice", role, scope, "site=berlin", 1000, 2000)


@pytest.mark.parametrize(
    ("scope", "tags", "expected"),
    [
        (BERLIN, {"site": "berlin"}, True),
        (BERLIN, {"site": "paris"}, False),
        (BERLIN, {}, False),
        ((Requirement("site", "!=", ("paris",)),), {}, True),
        ((Requirement("site", "in", ("a", "b")),), {"site": "b"}, True),
        ((Requirement("site", "notin", ("a", "b")),), {"site": "b"}, False),
        ((Requirement("beta", "exists"),), {"beta": "1"}, True),
        ((Requirement("beta", "!"),), {"beta": "1"}, False),
        ((*BERLIN, Requirement("role", "=", ("kiosk",))), {"site": "berlin"}, False),
        ((), {}, True),
    ],
)
def test_scope_evaluation_table(
    scope: tuple[Requirement, ...], tags: dict[str, str], expected: bool
) -> None:
    assert scope_matches(scope, tags) is expected


def test_token_round_trips_through_signature() -> None:
    token = encode_token(claims(), KEY)
    assert verify_signature(token, KEY.public_key()) == claims()


def _tamper_role(token: str) -> str:
    import base64
    import json

    body, sig = token[len("eft1.") :].split(".")
    doc = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    doc["role"] = "operate"
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return "eft1." + base64.urlsafe_b64encode(raw).decode().rstrip("=") + "." + sig


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: encode_token(claims(), OTHER), "forged"),
        (lambda: _tamper_role(encode_token(claims("read"), KEY)), "forged"),
        (lambda: encode_token(claims(), KEY)[:-4], "forged"),
        (lambda: "eft1.", "forged"),
        (lambda: "not-a-token", "malformed"),
        (lambda: "eft1." + "A" * 9000, "malformed"),
    ],
)
def test_forged_or_malformed_tokens_are_refused_401(make: object, reason: str) -> None:
    with pytest.raises(TechnicianRefused) as err:
        verify_signature(make(), KEY.public_key())  # type: ignore[operator]
    assert (err.value.reason, err.value.status) == (reason, 401)


@pytest.mark.parametrize(
    ("role", "now", "tags", "revoked", "write", "refusal"),
    [
        ("operate", 1500, {"site": "berlin"}, set(), True, None),
        ("read", 1500, {"site": "berlin"}, set(), False, None),
        ("read", 1500, {"site": "berlin"}, set(), True, ("wrong_role", 403)),
        ("operate", 1500, {"site": "paris"}, set(), False, ("wrong_scope", 403)),
        ("operate", 1500, {"site": "berlin"}, {"tt-1"}, False, ("revoked", 401)),
        ("operate", 2030, {"site": "berlin"}, set(), False, None),  # within the 60 s skew
        ("operate", 2061, {"site": "berlin"}, set(), False, ("expired", 401)),
        ("operate", 939, {"site": "berlin"}, set(), False, ("not_yet_valid", 401)),
    ],
)
def test_claims_check_table(
    role: str,
    now: float,
    tags: dict[str, str],
    revoked: set[str],
    write: bool,
    refusal: tuple[str, int] | None,
) -> None:
    c = claims(role)
    if refusal is None:
        check_claims(c, now=now, skew_s=60, tags=tags, revoked=revoked, write=write)
        return
    with pytest.raises(TechnicianRefused) as err:
        check_claims(c, now=now, skew_s=60, tags=tags, revoked=revoked, write=write)
    assert (err.value.reason, err.value.status) == refusal
    assert "tt-1" in err.value.message


def test_unknown_scope_operator_fails_closed() -> None:
    token = encode_token(claims(scope=(Requirement("site", "~", ("b",)),)), KEY)
    with pytest.raises(TechnicianRefused, match="operator"):
        verify_signature(token, KEY.public_key())
