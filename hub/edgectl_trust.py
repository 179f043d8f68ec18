"""``edgectl release keygen|sign|revoke`` and ``edgectl trust ...``: release signing.

Runs on the operator's machine: private keys are read from local files and never sent;
the hub gets public keys and signatures only.

    release keygen --out FILE                       a new ed25519 operator key (0600)
    release sign NAME@VERSION --key F [--key F2]    vouch for a release (locally digested)
    release revoke NAME@VERSION --key F [...]       stop vouching for it
    trust root init --key F [...] --threshold K [--member F|PUB ...] [--expires 365d]
    trust root rotate --key F [...] --member F|PUB [...] --threshold K [--expires 365d]
    trust root show [--out FILE]                    the chain; FILE: the newest root, for
                                                    agent config ``[trust] release_root``
    trust manifest show                             the vouched releases, current and pending

``sign`` and ``revoke`` fetch the release and the current manifest, check both locally
(the release's digest is computed here, the manifest's signatures verified against the
root), then upload the next manifest version with this operator's signatures. When a
pending manifest already holds exactly that change, they add signatures to it instead:
k operators each run ``sign`` with their own key.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.errors import ReleaseUntrusted
from edge_agent.models import Release
from edge_agent.release_trust import (
    MANIFEST_TYPE,
    ROOT_TYPE,
    ManifestDoc,
    RootDoc,
    SignedManifest,
    SignedRoot,
    generate_key,
    key_id,
    load_private_key,
    private_pem,
    public_b64,
    release_digest,
    sign,
    valid_signers,
)

Call = Callable[..., Any]


class UsageError(Exception):
    """A local problem: a key file, an argument, a document that does not verify."""


def add_release_parsers(release: Any) -> None:
    """Add ``keygen``, ``sign`` and ``revoke`` to the ``release`` command."""
    keygen = release.add_parser("keygen", help="write a new operator signing key (offline)")
    keygen.add_argument("--out", required=True, help="private key file to create (0600)")
    for name, text in (("sign", "vouch for a release"), ("revoke", "stop vouching for one")):
        p = release.add_parser(name, help=f"{text}: a new signed manifest of vouched releases")
        p.add_argument("ref", metavar="NAME@VERSION")
        _key_args(p)
        p.add_argument("--expires", default="30d", help="manifest validity (default 30d)")


def add_parser(sub: Any) -> None:
    """Add the ``trust`` command: the release root and the manifest."""
    trust = sub.add_parser(
        "trust", help="release signing: the operator key root and the vouched releases"
    ).add_subparsers(dest="action", required=True)
    root = trust.add_parser("root", help="the release root: init, rotate, show")
    root_sub = root.add_subparsers(dest="root_action", required=True)
    for name in ("init", "rotate"):
        p = root_sub.add_parser(name, help=f"{name} the release root (signed here)")
        _key_args(p)
        p.add_argument("--threshold", type=int, required=True, help="signatures required (k)")
        p.add_argument(
            "--member",
            action="append",
            default=[],
            help="a key of the new root: a key file or a base64 public key (default: --key)",
        )
        p.add_argument("--expires", default="365d", help="root validity (default 365d)")
    show = root_sub.add_parser("show", help="show the root chain")
    show.add_argument("--out", help="write the newest signed root here (agent [trust])")
    manifest = trust.add_parser("manifest", help="the vouched releases")
    manifest.add_subparsers(dest="manifest_action", required=True).add_parser(
        "show", help="the current and pending manifests"
    )


def _key_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", action="append", required=True, help="operator key file")


def is_offline(args: argparse.Namespace) -> bool:
    """Return whether the command runs without a hub (key generation)."""
    return args.command == "release" and getattr(args, "action", None) == "keygen"


def keygen(args: argparse.Namespace) -> dict[str, Any]:
    """Write a new key file (never overwriting one); return its public key and id."""
    key = generate_key()
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot create {args.out}: {exc}") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem(key))
    return {"key_file": args.out, "public_key": public_b64(key), "key_id": key_id(public_b64(key))}


def run(args: argparse.Namespace, call: Call, parse_duration: Callable[[str], int]) -> Any:
    """Run one ``release sign|revoke`` or ``trust`` action against the hub."""
    if args.command == "release":
        return _propose(args, call, parse_duration)
    if args.action == "manifest":
        return call("GET", "/api/v1/trust/manifest")
    if args.root_action == "show":
        return _show_root(args, call)
    return _new_root(args, call, parse_duration)


def _keys(files: list[str]) -> list[Ed25519PrivateKey]:
    keys = []
    for f in files:
        try:
            keys.append(load_private_key(Path(f).read_bytes()))
        except (OSError, ReleaseUntrusted) as exc:
            raise UsageError(f"key {f}: {exc}") from exc
    return keys


def _expiry(text: str, parse_duration: Callable[[str], int]) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=parse_duration(text))


def _roots(call: Call) -> list[SignedRoot]:
    return [SignedRoot.model_validate(r) for r in call("GET", "/api/v1/trust/roots")["roots"]]


def _new_root(args: argparse.Namespace, call: Call, parse_duration: Callable[[str], int]) -> Any:
    keys = _keys(args.key)
    members = [_member(m) for m in args.member] or [public_b64(k) for k in keys]
    roots = _roots(call)
    if args.root_action == "init" and roots:
        raise UsageError(f"the hub holds release root v{roots[-1].root.version}: use rotate")
    if args.root_action == "rotate" and not roots:
        raise UsageError("the hub holds no release root: use init")
    try:
        doc = RootDoc(
            version=roots[-1].root.version + 1 if roots else 1,
            threshold=args.threshold,
            keys=members,
            expires=_expiry(args.expires, parse_duration),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    body = SignedRoot(root=doc, signatures=sign(ROOT_TYPE, doc, keys))
    return call("POST", "/api/v1/trust/roots", body.model_dump(mode="json"))


def _member(text: str) -> str:
    path = Path(text)
    if path.exists():
        return public_b64(_keys([text])[0])
    return text


def _show_root(args: argparse.Namespace, call: Call) -> Any:
    roots = _roots(call)
    if args.out:
        if not roots:
            raise UsageError("the hub holds no release root")
        Path(args.out).write_text(roots[-1].model_dump_json(indent=2) + "\n")
    return {
        "roots": [
            {
                "version": r.root.version,
                "threshold": r.root.threshold,
                "keys": sorted(r.root.key_ids()),
                "expires": r.root.expires.isoformat(),
            }
            for r in roots
        ]
    }


def _propose(args: argparse.Namespace, call: Call, parse_duration: Callable[[str], int]) -> Any:
    """Sign the next manifest (``sign`` adds the release, ``revoke`` drops it)."""
    keys = _keys(args.key)
    roots = _roots(call)
    if not roots:
        raise UsageError("the hub holds no release root: run `edgectl trust root init` first")
    root = roots[-1].root
    outsiders = [key_id(public_b64(k)) for k in keys if key_id(public_b64(k)) not in root.key_ids()]
    if outsiders:
        raise UsageError(f"key(s) {', '.join(outsiders)} are not in release root v{root.version}")
    state = call("GET", "/api/v1/trust/manifest")
    current = _verified(state.get("current"), root)
    wanted = dict(current.manifest.releases) if current else {}
    if args.action == "sign":
        wanted[args.ref] = _digest(args.ref, call)
    elif wanted.pop(args.ref, None) is None:
        raise UsageError(f"{args.ref} is not in the current manifest")
    pending = SignedManifest.model_validate(state["pending"]) if state.get("pending") else None
    doc = _next_doc(current, pending, wanted, _expiry(args.expires, parse_duration))
    body = SignedManifest(manifest=doc, signatures=sign(MANIFEST_TYPE, doc, keys))
    return call("POST", "/api/v1/trust/manifest", body.model_dump(mode="json"))


def _next_doc(
    current: SignedManifest | None,
    pending: SignedManifest | None,
    wanted: dict[str, str],
    expires: datetime,
) -> ManifestDoc:
    """Return the pending manifest if it is exactly the wanted change, else a new version."""
    base = current.manifest.version if current is not None else 0
    if pending is not None:
        p = pending.manifest
        # Co-sign only exactly our change, as the next version, expiring no later than
        # ours: the hub serves the pending manifest and is not trusted with it.
        if p.releases == wanted and p.version == base + 1 and p.expires <= expires:
            return p
    top = max((m.manifest.version for m in (current, pending) if m is not None), default=0)
    return ManifestDoc(version=top + 1, expires=expires, releases=wanted)


def _verified(raw: dict[str, Any] | None, root: RootDoc) -> SignedManifest | None:
    if raw is None:
        return None
    m = SignedManifest.model_validate(raw)
    if len(valid_signers(MANIFEST_TYPE, m.manifest, m.signatures, root)) < root.threshold:
        raise UsageError(f"the hub's current manifest v{m.manifest.version} does not verify")
    return m


def _digest(ref: str, call: Call) -> str:
    """Fetch the release and digest it here (the hub's word is not taken for it)."""
    found = call("GET", f"/api/v1/releases/{urllib.parse.quote(ref, safe='@')}")
    return release_digest(Release.model_validate(found["release"]))


def show(args: argparse.Namespace, result: Any, sanitize: Callable[[str], str]) -> None:
    """Print one action's result (JSON; keys and signatures are public)."""
    print(sanitize(json.dumps(result, indent=2, sort_keys=True)))
