"""Release signing on the hub: it stores and serves operator-signed documents, never keys.

    GET  /api/v1/trust/roots       the release root chain, oldest first       releases:read
    POST /api/v1/trust/roots       add the next root (init or rotation)       tokens:create
    GET  /api/v1/trust/manifest    the current vouched-release manifest and
                                   the pending one (signatures still missing) releases:read
    POST /api/v1/trust/manifest    add a manifest or signatures to one        releases:write

Root changes are admin work (``tokens:create``, the admin permission until per-route
roles land); adding release signatures is deployer work (``releases:write``). Every
upload is verified with edge_agent/release_trust.py before it is stored: a signature
that does not verify, a key outside the root, a root that does not follow the chain,
a digest that differs from the hub's release — 400 naming what is wrong, nothing stored.

A device checks all of it again itself: the hub is not trusted with release content.
The hub only carries the documents to devices (``trust_for_target``, in the target of
every agent that reports the feature ``release_trust``).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from aiohttp import web

from edge_agent.errors import ReleaseUntrusted
from edge_agent.models import Release
from edge_agent.openapi import described
from edge_agent.release_trust import (
    MANIFEST_TYPE,
    MAX_ROOTS,
    ROOT_TYPE,
    ReleaseTrust,
    RootDoc,
    SignedManifest,
    SignedRoot,
    release_digest,
    valid_signers,
    verify_first_root,
    verify_rotation,
)
from hub.auth import Permission
from hub.context import HubContext, ctx
from hub.errors import Conflict, InvalidRequest
from hub.operator_calls import audited, json_body, principal
from hub.wire import parse

routes = web.RouteTableDef()
FEATURE = "release_trust"
MANIFESTS_SCANNED = 16  # newest manifests searched for the current (fully signed) one
_manifest_lock = asyncio.Lock()  # one signature merge at a time (one hub process)


def _bad(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, fields=[{"field": field, "message": message}], status=400)


async def current_manifest(hub: HubContext, root: RootDoc) -> SignedManifest | None:
    """Return the newest manifest with k valid signatures under ``root``."""
    for m in await hub.store.release_manifests(MANIFESTS_SCANNED):
        if len(valid_signers(MANIFEST_TYPE, m.manifest, m.signatures, root)) >= root.threshold:
            return m
    return None


async def trust_for_target(hub: HubContext, device_id: str) -> ReleaseTrust | None:
    """Return what a target carries for the device: None if its agent cannot read it."""
    features = await hub.store.device_features(device_id)
    if features is None or FEATURE not in features:
        return None
    roots = await hub.store.release_roots()
    if not roots:
        return None
    manifest = await current_manifest(hub, roots[-1].root)
    return ReleaseTrust(roots=roots[-MAX_ROOTS:], manifest=manifest)


@routes.get("/api/v1/trust/roots")
@described()
async def list_roots(request: web.Request) -> web.Response:
    """Return the release root chain."""
    principal(request, Permission.RELEASES_READ)
    roots = await ctx(request).store.release_roots()
    return web.json_response({"roots": [r.model_dump(mode="json") for r in roots]})


@routes.post("/api/v1/trust/roots")
@described(body=SignedRoot, status=201, errors=(409,))
async def add_root(request: web.Request) -> web.Response:
    """Add release root v1, or rotate to the next version (signed by old and new keys)."""
    hub = ctx(request)
    async with audited(request, Permission.TOKENS_CREATE, "trust.root", "release-root") as act:
        signed = parse(SignedRoot, await json_body(request))
        roots = await hub.store.release_roots()
        _check_root(signed, roots[-1].root if roots else None, hub.now())
        act.target = f"release-root:v{signed.root.version}"
        root = signed.root
        signers = sorted(valid_signers(ROOT_TYPE, root, signed.signatures, root))
        audit = act.ok(threshold=root.threshold, keys=len(root.keys), signers=signers)
        await hub.store.add_release_root(signed, audit)
    return web.json_response(signed.model_dump(mode="json"), status=201)


def _check_root(signed: SignedRoot, trusted: RootDoc | None, now: datetime) -> None:
    if signed.root.expires <= now:
        raise _bad("root.expires", f"release root v{signed.root.version} has already expired")
    try:
        if trusted is None:
            if signed.root.version != 1:
                raise _bad("root.version", "the first release root is version 1")
            verify_first_root(signed)
        else:
            verify_rotation(trusted, signed)
    except ReleaseUntrusted as exc:
        raise _bad("signatures", exc.message) from exc


@routes.get("/api/v1/trust/manifest")
@described(errors=(404,))
async def show_manifest(request: web.Request) -> web.Response:
    """Return the current manifest and a newer pending one (both may be null)."""
    principal(request, Permission.RELEASES_READ)
    hub = ctx(request)
    roots = await hub.store.release_roots()
    newest = await hub.store.release_manifests(1)
    current = await current_manifest(hub, roots[-1].root) if roots else None
    pending = newest[0] if newest and (current is None or newest[0] != current) else None
    return web.json_response(
        {
            "root_version": roots[-1].root.version if roots else None,
            "current": current.model_dump(mode="json") if current else None,
            "pending": pending.model_dump(mode="json") if pending else None,
        }
    )


@routes.post("/api/v1/trust/manifest")
@described(body=SignedManifest, errors=(409,))
async def add_manifest(request: web.Request) -> web.Response:
    """Store a manifest, or merge the signatures of one already held for its version."""
    hub = ctx(request)
    async with (
        audited(request, Permission.RELEASES_WRITE, "trust.manifest", "release-manifest") as act,
        _manifest_lock,
    ):
        signed = parse(SignedManifest, await json_body(request))
        act.target = f"release-manifest:v{signed.manifest.version}"
        roots = await hub.store.release_roots()
        if not roots:
            raise Conflict("no release root: run `edgectl trust root init` first")
        root = roots[-1].root
        _check_signatures(signed, root)
        await _check_releases(hub, signed, hub.now())
        merged = await _merge(hub, signed, root)
        good = valid_signers(MANIFEST_TYPE, merged.manifest, merged.signatures, root)
        view = _manifest_view(merged, root, len(good))
        detail = {**view, "releases": len(merged.manifest.releases), "signers": sorted(good)}
        await hub.store.put_release_manifest(merged, act.ok(**detail))
    return web.json_response(view, status=201)


def _manifest_view(signed: SignedManifest, root: RootDoc, good: int) -> dict[str, Any]:
    return {
        "version": signed.manifest.version,
        "releases": sorted(signed.manifest.releases),
        "signatures": good,
        "threshold": root.threshold,
        "complete": good >= root.threshold,
    }


def _check_signatures(signed: SignedManifest, root: RootDoc) -> None:
    keys = root.key_ids()
    for i, s in enumerate(signed.signatures):
        if s.key_id not in keys:
            message = f"key {s.key_id} is not in release root v{root.version}"
            raise _bad(f"signatures.{i}.key_id", message)
        one = SignedManifest(manifest=signed.manifest, signatures=[s])
        if not valid_signers(MANIFEST_TYPE, one.manifest, one.signatures, root):
            raise _bad(f"signatures.{i}.sig", f"signature of key {s.key_id} does not verify")


async def _check_releases(hub: HubContext, signed: SignedManifest, now: datetime) -> None:
    if signed.manifest.expires <= now:
        raise _bad("manifest.expires", "the manifest has already expired")
    for ref, digest in signed.manifest.releases.items():
        name, _, version = ref.partition("@")
        found = await hub.store.get_release(name, version)
        if found is None:
            raise _bad(f"manifest.releases.{ref}", f"the hub has no release {ref}")
        ours = release_digest(Release.model_validate_json(found.document))
        if ours != digest:
            raise _bad(f"manifest.releases.{ref}", f"digest {digest} differs from the hub's {ours}")


async def _merge(hub: HubContext, signed: SignedManifest, root: RootDoc) -> SignedManifest:
    """Return ``signed`` with the signatures already held for the same document."""
    version = signed.manifest.version
    current = await current_manifest(hub, root)
    held = {m.manifest.version: m for m in await hub.store.release_manifests(MANIFESTS_SCANNED)}
    same = held.get(version)
    if same is not None and same.manifest == signed.manifest:
        ids = {s.key_id for s in signed.signatures}
        extra = [s for s in same.signatures if s.key_id not in ids]
        return SignedManifest(manifest=signed.manifest, signatures=[*signed.signatures, *extra])
    top = current.manifest.version if current is not None else 0
    if version <= top:
        raise Conflict(
            f"release manifest v{version} is not newer than the current v{top}",
            fields=[{"field": "manifest.version", "message": f"must be > {top}"}],
        )
    return signed
