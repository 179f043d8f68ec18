"""Technician tokens: issued and signed by the hub, verified offline by the agents (Bearer).

    POST /api/v1/technicians              {name, role, scope, expires_in_s} -> token (shown once)
    GET  /api/v1/technicians              the unexpired tokens (never the tokens themselves)
    POST /api/v1/technicians/{id}/revoke  refused by every device from its next sync on

All three need ``tokens:create`` (a technician token is a credential); issue and revoke
are audited. The token is ``edge_agent.techtoken``'s, signed with the key that signs
targets (the one each agent pinned at enrollment). The scope is a tag selector
(``hub.selector`` grammar), carried in the token as its requirements.

``technician_update`` is what a sync answer carries to an agent that lists the
``technicians`` feature: the revoked, unexpired ids and the device's tags.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge_agent.openapi import described
from edge_agent.protocol import RevokedTechnician, TechnicianUpdate
from edge_agent.techtoken import ROLES, Claims, Requirement, encode_token
from hub.auth import Permission
from hub.context import HubContext, ctx
from hub.errors import InvalidRequest, InvalidSelector
from hub.operator_calls import audited, json_body, principal
from hub.selector import Selector, parse
from hub.store import DeviceRecord, TechnicianRecord
from hub.wire import parse as parse_body

routes = web.RouteTableDef()
TECHNICIAN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")
TOKEN_ID_RE = re.compile(r"^tt-[0-9a-f]{12}$")
FEATURE = "technicians"


class IssueRequest(BaseModel):
    """Body of POST /api/v1/technicians."""

    model_config = ConfigDict(extra="forbid")

    name: str
    role: str
    scope: str = Field(min_length=1, max_length=1024)
    expires_in_s: int = Field(8 * 3600, ge=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not TECHNICIAN_NAME_RE.match(v):
            raise ValueError("must match " + TECHNICIAN_NAME_RE.pattern)
        return v

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        if v not in ROLES:
            raise ValueError(f"must be one of {', '.join(ROLES)}")
        return v


def _scope(text: str) -> Selector:
    try:
        return parse(text)
    except InvalidSelector as exc:
        raise InvalidRequest(
            f"scope: {exc.message}", fields=[{"field": "scope", "message": exc.message}]
        ) from exc


def _claims(req: IssueRequest, selector: Selector, now: datetime) -> Claims:
    scope = tuple(Requirement(r.key, r.op.value, r.values) for r in selector.requirements)
    issued = int(now.timestamp())
    return Claims(
        id="tt-" + secrets.token_hex(6),
        name=req.name,
        role=req.role,
        scope=scope,
        scope_text=str(selector),
        issued_at=issued,
        expires_at=issued + req.expires_in_s,
    )


def technician_view(record: TechnicianRecord, now: datetime) -> dict[str, Any]:
    """Return a token's record as the API shows it."""
    return {
        "id": record.id,
        "name": record.name,
        "role": record.role,
        "scope": record.scope,
        "issued_at": record.issued_at.isoformat(),
        "expires_at": record.expires_at.isoformat(),
        "created_by": record.created_by,
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
        "revoked_by": record.revoked_by,
        "state": "revoked" if record.revoked_at else "active",
    }


@routes.post("/api/v1/technicians")
@described(body=IssueRequest, status=201)
async def issue(request: web.Request) -> web.Response:
    """Issue a technician token; answer it once (the hub keeps only its record)."""
    hub = ctx(request)
    async with audited(request, Permission.TOKENS_CREATE, "technician.issue", "-") as act:
        req = parse_body(IssueRequest, await json_body(request))
        limit = hub.config.technicians.max_expires_s
        if req.expires_in_s > limit:
            raise InvalidRequest(
                f"expires_in_s: at most {limit:g} s (technicians.max_expires_s)",
                fields=[{"field": "expires_in_s", "message": f"at most {limit:g}"}],
            )
        now = hub.now()
        claims = _claims(req, _scope(req.scope), now)
        record = TechnicianRecord(
            claims.id,
            claims.name,
            claims.role,
            claims.scope_text,
            now,
            now + timedelta(seconds=req.expires_in_s),
            act.principal.name,
        )
        act.target = f"technician:{claims.id}"
        audit = act.ok(
            name=claims.name,
            role=claims.role,
            scope=claims.scope_text,
            expires_at=record.expires_at.isoformat(),
        )
        await hub.store.add_technician(record, hub.config.technicians.max_active, audit)
    token = encode_token(claims, hub.pki.signing_key)
    return web.json_response({**technician_view(record, now), "token": token}, status=201)


@routes.get("/api/v1/technicians")
@described()
async def list_technicians(request: web.Request) -> web.Response:
    """List the unexpired technician tokens (revoked ones included, marked)."""
    principal(request, Permission.TOKENS_CREATE)
    hub = ctx(request)
    now = hub.now()
    found = await hub.store.list_technicians(now)
    return web.json_response({"technicians": [technician_view(r, now) for r in found]})


@routes.post("/api/v1/technicians/{token_id}/revoke")
@described(errors=(404,))
async def revoke(request: web.Request) -> web.Response:
    """Revoke a technician token: devices refuse it from their next sync on."""
    hub = ctx(request)
    token_id = request.match_info["token_id"]
    target = f"technician:{token_id[:64]}"
    async with audited(request, Permission.TOKENS_CREATE, "technician.revoke", target) as act:
        if not TOKEN_ID_RE.match(token_id):
            raise InvalidRequest(
                f"token id must match {TOKEN_ID_RE.pattern}", fields=[{"field": "id"}], status=400
            )
        record = await hub.store.revoke_technician(token_id, act.ok())
    return web.json_response(technician_view(record, hub.now()))


async def technician_update(
    hub: HubContext, device: DeviceRecord, features: frozenset[str] | list[str] | None
) -> TechnicianUpdate | None:
    """Return what a sync answer tells this device's agent; None if it would not read it."""
    if features is None or FEATURE not in features:
        return None  # an older agent: it would count the field as unknown
    revoked = await hub.store.revoked_technicians(hub.now())
    return TechnicianUpdate(
        revoked=[RevokedTechnician(id=i, expires_at=int(e.timestamp())) for i, e in revoked],
        tags=dict(device.tags),
    )
