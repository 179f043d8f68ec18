"""Release signing with offline operator keys: the documents and every rule that checks them.

The TUF/Uptane split. The hub's online key (edge_agent/signing.py) is the *director*: it
binds a release to a device, a revision and an expiry. Offline operator keys are the
*image repository*: they vouch for what a release contains. A compromised hub can sign
any target, but it cannot make operators vouch for a release.

Documents (all signed over canonical JSON ``{"type": ..., "doc": ...}``, ed25519):

- ``RootDoc`` {version, threshold k, keys, expires}: which operator keys count. Version 1
  needs k of its own keys; version N+1 needs k(N) signatures of root N's keys AND k(N+1)
  of its own (rotation is signed by the old keys; new keys alone cannot rotate).
- ``ManifestDoc`` {version, expires, releases: {name@version: content digest}}: the
  releases the operators vouch for *now*, signed by k keys of the current root. This is
  the "signature document" over release name, version and content digest: one signed
  list rather than one document per release, so that dropping a release from it (a new
  manifest version) withdraws it, and a device that has seen manifest version M refuses
  every older manifest (rollback) — the version is kept in anchor.json beside the
  identity, so a store wipe cannot reset it. A rollout's automatic rollback to the
  previous release keeps working as long as that release is still listed.
- ``release_digest``: sha256 over the canonical release (all services with their image
  references, networks, every option), registry credentials excluded (they are secrets,
  rotate independently and do not change what runs). Fields at their default are left
  out, so a newer model's unused field does not change the digest of an older release.

Pure: no I/O; ``now`` is passed in.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_agent.errors import ReleaseUntrusted

if TYPE_CHECKING:
    from edge_agent.models import Release

MAX_KEYS = 64
MAX_ROOTS = 64  # root versions a target carries (the chain from the device's pin)
MAX_RELEASES = 1024  # releases one manifest vouches for
ROOT_TYPE = "edgefleet.release_root"
MANIFEST_TYPE = "edgefleet.release_manifest"

B64Key = Annotated[str, Field(min_length=44, max_length=44)]
KeyId = Annotated[str, Field(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeySignature(_Doc):
    """One operator key's ed25519 signature (base64) over a document's payload."""

    key_id: KeyId
    sig: str = Field(min_length=1, max_length=128)


class RootDoc(_Doc):
    """Which operator keys vouch for releases, and how many must agree."""

    version: int = Field(ge=1, le=2**31)
    threshold: int = Field(ge=1, le=MAX_KEYS)
    keys: list[B64Key] = Field(min_length=1, max_length=MAX_KEYS)  # raw public keys
    expires: datetime

    @model_validator(mode="after")
    def _sound(self) -> RootDoc:
        if len(set(self.keys)) != len(self.keys):
            raise ValueError("keys: duplicate key")
        if self.threshold > len(self.keys):
            raise ValueError(f"threshold {self.threshold} exceeds the {len(self.keys)} keys")
        for k in self.keys:
            _public_key(k)
        return self

    def key_ids(self) -> dict[str, str]:
        """Return key id -> public key."""
        return {key_id(k): k for k in self.keys}


class SignedRoot(_Doc):
    """A root document with its signatures."""

    root: RootDoc
    signatures: list[KeySignature] = Field(default_factory=list, max_length=2 * MAX_KEYS)


class ManifestDoc(_Doc):
    """The releases the operators vouch for now: ``name@version`` -> content digest."""

    version: int = Field(ge=1, le=2**63 - 1)
    expires: datetime
    releases: dict[
        Annotated[str, Field(max_length=256)],
        Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")],
    ] = Field(default_factory=dict, max_length=MAX_RELEASES)


class SignedManifest(_Doc):
    """A manifest with its signatures."""

    manifest: ManifestDoc
    signatures: list[KeySignature] = Field(default_factory=list, max_length=2 * MAX_KEYS)


class ReleaseTrust(_Doc):
    """What a target carries for a device that checks release signatures."""

    roots: list[SignedRoot] = Field(default_factory=list, max_length=MAX_ROOTS)
    manifest: SignedManifest | None = None


class PinnedTrust(_Doc):
    """What a device remembers (in anchor.json): its root and the newest manifest version."""

    root: SignedRoot
    manifest_version: int = 0
    manifest_expires: datetime | None = None  # of the newest manifest seen (freeze flag)


# ---- keys ---------------------------------------------------------------------------


def generate_key() -> Ed25519PrivateKey:
    """Return a new operator key."""
    return Ed25519PrivateKey.generate()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    """Return the key as unencrypted PKCS8 PEM (the file is the operator's to guard)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    """Load an operator key from PEM; ReleaseUntrusted if it is not ed25519."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ReleaseUntrusted(f"not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseUntrusted("operator keys are ed25519")
    return key


def public_b64(key: Ed25519PrivateKey) -> str:
    """Return the raw public key, base64."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def key_id(public: str) -> str:
    """Return the key id: sha256 (hex) of the raw public key."""
    return hashlib.sha256(base64.b64decode(public)).hexdigest()


def _public_key(public: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(public, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ValueError(f"keys: {public!r} is not a base64 raw ed25519 public key") from exc


# ---- digests and payloads -----------------------------------------------------------


def canonical(doc: Any) -> bytes:
    """Return canonical JSON bytes (sorted keys, no spaces)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def release_digest(release: Release) -> str:
    """Return ``sha256:<hex>`` of everything in the release that affects the device."""
    doc = release.model_dump(mode="json", exclude={"registry_auth"}, exclude_defaults=True)
    doc["name"], doc["version"] = release.name, release.version
    return "sha256:" + hashlib.sha256(canonical(doc)).hexdigest()


def payload(kind: str, doc: _Doc) -> bytes:
    """Return the bytes a signature covers (the type keeps a root from passing as manifest)."""
    return canonical({"type": kind, "doc": doc.model_dump(mode="json")})


def sign(kind: str, doc: _Doc, keys: list[Ed25519PrivateKey]) -> list[KeySignature]:
    """Return one signature per key over ``doc``."""
    data = payload(kind, doc)
    return [
        KeySignature(key_id=key_id(public_b64(k)), sig=base64.b64encode(k.sign(data)).decode())
        for k in keys
    ]


def valid_signers(kind: str, doc: _Doc, sigs: list[KeySignature], root: RootDoc) -> set[str]:
    """Return the ids of ``root``'s keys with a valid signature (each key counts once)."""
    data = payload(kind, doc)
    keys = root.key_ids()
    good: set[str] = set()
    for s in sigs:
        public = keys.get(s.key_id)
        if public is None or s.key_id in good:
            continue
        try:
            _public_key(public).verify(base64.b64decode(s.sig, validate=True), data)
        except (InvalidSignature, ValueError):
            continue
        good.add(s.key_id)
    return good


def _require(kind: str, doc: _Doc, sigs: list[KeySignature], root: RootDoc, what: str) -> None:
    n = len(valid_signers(kind, doc, sigs, root))
    if n < root.threshold:
        raise ReleaseUntrusted(
            f"{what} has {n} valid signature(s) of root v{root.version}'s keys,"
            f" needs {root.threshold}"
        )


# ---- roots --------------------------------------------------------------------------


def verify_first_root(signed: SignedRoot) -> RootDoc:
    """Return a root trusted on its own (install time or first use): k of its own keys."""
    _require(ROOT_TYPE, signed.root, signed.signatures, signed.root, f"root v{signed.root.version}")
    return signed.root


def verify_rotation(trusted: RootDoc, signed: SignedRoot) -> RootDoc:
    """Return root N+1 if k(N) of root N's keys and k(N+1) of its own signed it."""
    new = signed.root
    if new.version != trusted.version + 1:
        raise ReleaseUntrusted(f"root v{new.version} does not follow trusted v{trusted.version}")
    what = f"root v{new.version}"
    _require(ROOT_TYPE, new, signed.signatures, trusted, what)
    _require(ROOT_TYPE, new, signed.signatures, new, what)
    return new


def update_root(pinned: SignedRoot, chain: list[SignedRoot]) -> SignedRoot:
    """Walk ``chain`` from the pinned root; return the newest root it reaches."""
    current = pinned
    for signed in sorted(chain, key=lambda s: s.root.version):
        if signed.root.version <= current.root.version:
            continue
        verify_rotation(current.root, signed)
        current = signed
    return current


# ---- releases -----------------------------------------------------------------------


def check_release(
    trust: ReleaseTrust | None, pinned: PinnedTrust | None, release: Release, now: datetime
) -> PinnedTrust | None:
    """Return the device's new pin if ``release`` is vouched for; raise ReleaseUntrusted."""
    new = verify_trust(trust, pinned, release, now)
    if new is not None and trust is not None and trust.manifest is not None:
        check_listed(trust.manifest.manifest, release)
    return new


def verify_trust(
    trust: ReleaseTrust | None, pinned: PinnedTrust | None, release: Release, now: datetime
) -> PinnedTrust | None:
    """Return the pin the documents sent with ``release`` move the device to; raise.

    ``pinned`` None and no roots in ``trust``: the device does not check signatures
    (returns None). ``pinned`` None and roots sent: trust on first use of the lowest.
    The result does not depend on whether the manifest lists ``release``: a genuine
    newer manifest raises the device's floor even when it withdraws the release sent
    with it (so the withdrawn one cannot come back with an older manifest).
    """
    if pinned is None:
        if trust is None or not trust.roots:
            return None
        first = min(trust.roots, key=lambda s: s.root.version)
        verify_first_root(first)
        pinned = PinnedTrust(root=first)
    if trust is None or trust.manifest is None:
        raise ReleaseUntrusted(
            f"release {release.ref} carries no operator signatures; this device requires"
            f" releases signed under release root v{pinned.root.root.version}"
        )
    new_root = update_root(pinned.root, trust.roots)
    root = new_root.root
    if now >= root.expires:
        raise ReleaseUntrusted(f"release root v{root.version} expired at {root.expires}")
    version = _check_manifest(trust.manifest, root, pinned.manifest_version, now)
    expires = trust.manifest.manifest.expires
    return PinnedTrust(root=new_root, manifest_version=version, manifest_expires=expires)


def _check_manifest(signed: SignedManifest, root: RootDoc, seen: int, now: datetime) -> int:
    m = signed.manifest
    _require(MANIFEST_TYPE, m, signed.signatures, root, f"release manifest v{m.version}")
    if m.version < seen:
        raise ReleaseUntrusted(
            f"release manifest v{m.version} is older than v{seen} already seen (rollback)"
        )
    if now >= m.expires:
        raise ReleaseUntrusted(f"release manifest v{m.version} expired at {m.expires} (stale)")
    return m.version


def check_listed(manifest: ManifestDoc, release: Release) -> None:
    """Raise ReleaseUntrusted unless the manifest lists the release with its digest."""
    want = manifest.releases.get(release.ref)
    if want is None:
        raise ReleaseUntrusted(
            f"release {release.ref} is not vouched for by release manifest v{manifest.version}"
        )
    got = release_digest(release)
    if got != want:
        raise ReleaseUntrusted(
            f"release {release.ref} content digest {got} differs from the signed {want}"
        )
