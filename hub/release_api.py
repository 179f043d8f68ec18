"""Releases on the hub: immutable ``NAME@VERSION`` with every image pinned to a digest.

    POST /api/v1/releases                         {"release": {...}} or {"compose": {name,
                                                  version, text, env}} -> 201 created,
                                                  200 when the same release exists
    GET  /api/v1/releases                         ?after=id&limit=n (oldest first)
    GET  /api/v1/releases/{name}@{version}        one release, its pinned document
    POST /api/v1/releases/{name}@{version}/retire {"reason": "..."}

Creating resolves every image through its registry (``hub.registry``) before anything
is stored; an image that does not resolve fails the create with the registry's answer
and stores nothing. A second create of the same NAME@VERSION is idempotent when its
release is identical to the first one as submitted (canonical JSON, so key order and
whitespace do not matter): 200 with the stored release, no registry asked. Any other
content is 409: a release never changes. Every call that changes state is audited.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import Field, model_validator

from edge_agent.models import RegistryAuth, Release
from edge_agent.openapi import described
from hub import secret_refs
from hub.auth import Permission
from hub.compose import import_compose
from hub.compose_report import ImportReport
from hub.context import HubContext, ctx
from hub.errors import Conflict, HubError, NotFound
from hub.operator_calls import PAGE_QUERY, Body, audited, json_body, page, principal
from hub.registry import Resolved, resolve_images
from hub.secret_refs import SECRET_BOX
from hub.store import ReleaseRecord
from hub.wire import parse

routes = web.RouteTableDef()
MAX_REASON = 1024
MAX_COMPOSE_CHARS = 1_000_000
REDACTED = "<redacted>"


class ComposeForm(Body):
    """A docker-compose file to import (``hub.compose``) as release NAME@VERSION.

    Variables come from ``env`` only (the hub has no ``.env`` or shell of the operator's);
    a service's ``env_file`` cannot be read over REST and is refused by name — use
    ``edgectl release create -f compose.yaml``, which imports beside the files.
    """

    name: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=128)
    text: str = Field(min_length=1, max_length=MAX_COMPOSE_CHARS)
    env: dict[str, str] = Field(default_factory=dict, max_length=4096)


class CreateReleaseRequest(Body):
    """Body of POST /api/v1/releases: the JSON release form, or a compose file."""

    release: Release | None = None
    compose: ComposeForm | None = None

    @model_validator(mode="after")
    def _one_form(self) -> CreateReleaseRequest:
        if (self.release is None) == (self.compose is None):
            raise ValueError('give exactly one of "release" (JSON form) or "compose"')
        return self


class RetireRequest(Body):
    """Body of POST /api/v1/releases/{ref}/retire."""

    reason: str = Field(min_length=1, max_length=MAX_REASON)


def _release_of(req: CreateReleaseRequest) -> tuple[Release, ImportReport | None]:
    if req.release is not None:
        return req.release, None
    assert req.compose is not None
    form = req.compose
    imported = import_compose(
        form.text, base_dir=None, env=form.env, env_file=None, name=form.name, version=form.version
    )
    return Release.model_validate(imported.release), imported.report


def canonical(release: Release) -> str:
    """Return the release as canonical JSON (sorted keys, no spaces): what is compared."""
    doc = release.model_dump(mode="json")
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


async def pin(
    hub: HubContext, release: Release, auths: list[RegistryAuth] | None = None
) -> tuple[Release, list[dict[str, Any]]]:
    """Return the release with each image pinned to its digest, and per service what was done.

    ``auths``: the release's registry credentials with their passwords (secrets resolved).
    """
    images = [s.image for s in release.services]
    creds = release.registry_auth if auths is None else auths
    try:
        resolved = await resolve_images(images, hub.config.registries, creds)
    except HubError as exc:
        exc.fields = _fields_of(release, exc)
        raise
    services = [s.model_copy(update={"image": resolved[s.image].pinned}) for s in release.services]
    pinned = Release.model_validate(
        {**release.model_dump(), "services": [s.model_dump() for s in services]}
    )
    return pinned, [_image_row(s.name, resolved[s.image]) for s in release.services]


def _image_row(service: str, r: Resolved) -> dict[str, Any]:
    return {
        "service": service,
        "requested": r.requested,
        "pinned": r.pinned,
        "digest": r.digest,
        "media_type": r.media_type,
    }


def _fields_of(release: Release, exc: HubError) -> list[dict[str, Any]]:
    """Name the services whose image failed: ``release.services.N.image``."""
    by_image = {f.get("image"): f for f in exc.fields}
    out = []
    for i, service in enumerate(release.services):
        field = by_image.get(service.image)
        if field is not None:
            out.append({**field, "field": f"release.services.{i}.image"})
    return out or exc.fields


def release_view(r: ReleaseRecord, *, document: bool = True) -> dict[str, Any]:
    """Return a release as the API shows it."""
    view: dict[str, Any] = {
        "id": r.id,
        "name": r.name,
        "version": r.version,
        "ref": r.ref,
        "images": r.images,
        "created_at": r.created_at.isoformat(),
        "created_by": r.created_by,
        "retired": None,
    }
    if r.retired_at is not None:
        view["retired"] = {
            "at": r.retired_at.isoformat(),
            "by": r.retired_by,
            "reason": r.retired_reason,
        }
    if document:
        view["release"] = _redacted(json.loads(r.document))
    return view


def _redacted(doc: dict[str, Any]) -> dict[str, Any]:
    """Return the document with registry passwords replaced (only devices get them)."""
    for auth in doc.get("registry_auth", []):
        if auth.get("password") is not None:  # a release stored before the secret store
            auth["password"] = REDACTED
    return doc


def _ref(request: web.Request) -> tuple[str, str]:
    name, at, version = request.match_info["ref"].partition("@")
    if not at or not name or not version:
        raise NotFound(f"no release {request.match_info['ref']!r} (use NAME@VERSION)")
    return name, version


@routes.post("/api/v1/releases")
@described(body=CreateReleaseRequest, status=201, also=(200,), errors=(409, 502))
async def create_release(request: web.Request) -> web.Response:
    """Resolve every image to a digest and store the release (idempotent, immutable)."""
    hub = ctx(request)
    async with audited(request, Permission.RELEASES_WRITE, "release.create", "-") as act:
        given, report = _release_of(parse(CreateReleaseRequest, await json_body(request)))
        act.target = given.ref
        prepared = await secret_refs.prepare(request.app[SECRET_BOX], hub.store, given)
        release = prepared.release  # clear registry passwords moved to the secret store
        source = canonical(release)
        existing = await hub.store.get_release(release.name, release.version)
        if existing is not None and (
            existing.source != source
            or await secret_refs.moved_differ(request.app[SECRET_BOX], hub.store, prepared)
        ):
            raise Conflict(
                f"release {release.ref} exists with different content; releases are "
                "immutable: create a new version",
                fields=[{"field": "release.version", "message": "already used"}],
            )
        if existing is not None:
            await hub.store.record_audit(act.ok(idempotent=True))
            return web.json_response(_with_report(release_view(existing), report), status=200)
        pinned, images = await pin(hub, release, prepared.auths)
        record = ReleaseRecord(
            release.name,
            release.version,
            pinned.model_dump_json(),
            source,
            images,
            hub.now(),
            act.principal.name,
        )
        digests = {row["service"]: row["digest"] for row in images}
        moved = secret_refs.moved_rows(prepared, act.principal.name, act.source)
        # one transaction: a refused insert leaves no moved secret behind
        stored, created = await hub.store.create_release(record, act.ok(digests=digests), moved)
    view = _with_report(release_view(stored), report)
    return web.json_response(view, status=201 if created else 200)


def _with_report(view: dict[str, Any], report: ImportReport | None) -> dict[str, Any]:
    """Add the compose import report (what was mapped, ignored, warned) to a view."""
    return view if report is None else {**view, "import_report": report.model_dump()}


@routes.get("/api/v1/releases")
@described(query=PAGE_QUERY)
async def list_releases(request: web.Request) -> web.Response:
    """List releases, oldest first (without their documents)."""
    principal(request, Permission.RELEASES_READ)
    hub = ctx(request)
    after, limit = page(request, "after", hub.config.limits.max_events_page)
    found = await hub.store.list_releases(after, limit)
    return web.json_response(
        {
            "releases": [release_view(r, document=False) for r in found],
            "next_after": found[-1].id if found else after,
        }
    )


@routes.get("/api/v1/releases/{ref}")
@described(errors=(404,))
async def show_release(request: web.Request) -> web.Response:
    """Show one release with its pinned document."""
    principal(request, Permission.RELEASES_READ)
    name, version = _ref(request)
    found = await ctx(request).store.get_release(name, version)
    if found is None:
        raise NotFound(f"no release {name}@{version}")
    return web.json_response(release_view(found))


@routes.post("/api/v1/releases/{ref}/retire")
@described(body=RetireRequest, errors=(404, 409))
async def retire_release(request: web.Request) -> web.Response:
    """Retire a release: it stays readable; fleet views flag devices still running it."""
    hub = ctx(request)
    target = request.match_info["ref"]
    async with audited(request, Permission.RELEASES_WRITE, "release.retire", target) as act:
        name, version = _ref(request)
        req = parse(RetireRequest, await json_body(request))
        stored = await hub.store.retire_release(
            name, version, req.reason, act.ok(reason=req.reason)
        )
    return web.json_response(release_view(stored))
