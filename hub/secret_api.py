"""Secrets on the hub: named values, write-only over the API, sealed at rest.

    PUT    /api/v1/secrets/{name}   {"value": "..."} -> 201 created | 200 replaced (metadata)
    POST   /api/v1/secrets/{name}   the same
    GET    /api/v1/secrets          every secret's name and history, never a value
    DELETE /api/v1/secrets/{name}   -> 200; 409 naming the releases while any names it

A value is sealed (``hub.secrets``) before it reaches the store and is never in an
answer, an audit record or a log line: the audit row of a set names the secret and
whether it was new. Releases name secrets (``hub.secret_refs``); devices get the values
in the targets that need them and nowhere else.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import Field

from edge_agent.models import SECRET_NAME_RE
from edge_agent.openapi import described
from hub.auth import Permission
from hub.context import ctx
from hub.errors import InvalidRequest
from hub.operator_calls import Body, audited, json_body, principal
from hub.secret_refs import SECRET_BOX
from hub.store import SealedSecret, SecretRecord
from hub.wire import parse

routes = web.RouteTableDef()
MAX_VALUE_CHARS = 65536


class SetSecretRequest(Body):
    """Body of PUT/POST /api/v1/secrets/{name}."""

    value: str = Field(min_length=1, max_length=MAX_VALUE_CHARS, repr=False)


def secret_view(r: SecretRecord) -> dict[str, Any]:
    """Return a secret as the API shows it: never its value."""
    return {
        "name": r.name,
        "key_id": r.key_id,
        "created_at": r.created_at.isoformat(),
        "created_by": r.created_by,
        "updated_at": r.updated_at.isoformat(),
        "updated_by": r.updated_by,
    }


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not SECRET_NAME_RE.match(name):
        raise InvalidRequest(
            f"secret name must match {SECRET_NAME_RE.pattern}",
            fields=[{"field": "name", "message": "invalid secret name"}],
        )
    return name


async def _set(request: web.Request) -> web.Response:
    hub = ctx(request)
    box = request.app[SECRET_BOX]
    name = request.match_info["name"]
    async with audited(request, Permission.RELEASES_WRITE, "secret.set", name[:128]) as act:
        _name(request)
        req = parse(SetSecretRequest, await json_body(request))
        sealed = SealedSecret(name, box.seal(name, req.value), box.current)
        row = act.ok(key_id=box.current)  # names the secret, never its value
        (created,) = await hub.store.put_secrets([sealed], row.at, act.principal.name, row)
    found = [r for r in await hub.store.list_secrets() if r.name == name]
    return web.json_response(secret_view(found[0]), status=201 if created else 200)


@routes.put("/api/v1/secrets/{name}")
@described(body=SetSecretRequest, status=201, also=(200,), errors=(422,))
async def put_secret(request: web.Request) -> web.Response:
    """Create or replace a secret's value (write-only: the answer has no value)."""
    return await _set(request)


@routes.post("/api/v1/secrets/{name}")
@described(body=SetSecretRequest, status=201, also=(200,), errors=(422,))
async def post_secret(request: web.Request) -> web.Response:
    """Create or replace a secret's value, as PUT."""
    return await _set(request)


@routes.get("/api/v1/secrets")
@described()
async def list_secrets(request: web.Request) -> web.Response:
    """List every secret's name and history, never a value."""
    principal(request, Permission.RELEASES_READ)
    found = await ctx(request).store.list_secrets()
    return web.json_response({"secrets": [secret_view(r) for r in found]})


@routes.delete("/api/v1/secrets/{name}")
@described(errors=(404, 409, 422))
async def delete_secret(request: web.Request) -> web.Response:
    """Delete a secret no release names (409 naming the releases otherwise)."""
    hub = ctx(request)
    name = request.match_info["name"]
    async with audited(request, Permission.RELEASES_WRITE, "secret.delete", name[:128]) as act:
        _name(request)
        await hub.store.delete_secret(name, act.ok())
    return web.json_response({"deleted": name})
