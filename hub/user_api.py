"""Operator users, teams, grants and API tokens (admin on ALL only; ``hub.route_access``).

    GET  /api/v1/users                                  users
    POST /api/v1/users                                  {name}
    POST /api/v1/users/{name}/disable | enable          a disabled user's tokens answer 401
    GET  /api/v1/users/{name}/tokens                    id, created, expires, last used
    POST /api/v1/users/{name}/tokens                    {expires_in_s} -> token (shown once)
    POST /api/v1/users/{name}/tokens/{token_id}/revoke
    GET  /api/v1/teams                                  teams with members and grants
    POST /api/v1/teams                                  {name}
    DELETE /api/v1/teams/{name}
    PUT | DELETE /api/v1/teams/{name}/members/{user}
    POST | DELETE /api/v1/teams/{name}/grants           {role, scope}

Every change is audited with the acting principal, in the change's transaction.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from aiohttp import web
from pydantic import Field, field_validator

from edge_agent.openapi import described
from hub.access import Grant, Permission, Role
from hub.auth import new_user_token
from hub.context import ctx
from hub.errors import InvalidRequest, InvalidSelector
from hub.operator_calls import Body, audited, json_body, principal
from hub.store import TeamRecord, UserRecord, UserTokenRecord
from hub.wire import parse as parse_body

routes = web.RouteTableDef()
NAME_RE = re.compile(r"^[a-z][a-z0-9_.\-]{0,62}$")
RESERVED = {"admin", "anonymous"}  # principal names the hub itself uses
TOKEN_ID_RE = re.compile(r"^ut_[0-9a-f]{12}$")


def _check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError("must match " + NAME_RE.pattern)
    if value in RESERVED:
        raise ValueError(f"{value!r} is reserved")
    return value


class NameRequest(Body):
    """Body of POST /api/v1/users and /api/v1/teams."""

    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value)


class TokenRequest(Body):
    """Body of POST /api/v1/users/{name}/tokens."""

    expires_in_s: int = Field(90 * 86400, ge=1)


class GrantRequest(Body):
    """Body of POST/DELETE /api/v1/teams/{name}/grants."""

    role: str
    scope: str = Field(min_length=1, max_length=1024)

    def grant(self) -> Grant:
        """Return the grant (role and scope checked, scope canonical)."""
        try:
            return Grant.of(self.role, self.scope.strip())
        except ValueError as exc:
            raise InvalidRequest(f"role: {exc}", fields=[{"field": "role"}]) from None
        except InvalidSelector as exc:
            raise InvalidRequest(f"scope: {exc.message}", fields=[{"field": "scope"}]) from None


def _path_name(request: web.Request, key: str = "name") -> str:
    value = request.match_info[key]
    if not NAME_RE.match(value):
        raise InvalidRequest(
            f"{key} must match {NAME_RE.pattern}", fields=[{"field": key}], status=400
        )
    return value


def user_view(u: UserRecord) -> dict[str, Any]:
    """Return a user as the API shows it."""
    return {
        "name": u.name,
        "disabled": u.disabled,
        "created_at": u.created_at.isoformat(),
        "created_by": u.created_by,
    }


def team_view(t: TeamRecord) -> dict[str, Any]:
    """Return a team as the API shows it."""
    return {
        "name": t.name,
        "created_at": t.created_at.isoformat(),
        "members": list(t.members),
        "grants": [{"role": r, "scope": s} for r, s in t.grants],
    }


def token_view(t: UserTokenRecord) -> dict[str, Any]:
    """Return a token's record (never a secret or its hash)."""

    def iso(v: Any) -> str | None:
        return v.isoformat() if v is not None else None

    return {
        "id": t.id,
        "user": t.user,
        "created_at": t.created_at.isoformat(),
        "expires_at": iso(t.expires_at),
        "last_used_at": iso(t.last_used_at),
        "revoked_at": iso(t.revoked_at),
    }


@routes.get("/api/v1/users")
@described()
async def list_users(request: web.Request) -> web.Response:
    """List the users."""
    principal(request, Permission.USERS_READ)
    users = await ctx(request).store.list_users()
    return web.json_response({"users": [user_view(u) for u in users]})


@routes.post("/api/v1/users")
@described(body=NameRequest, status=201, errors=(409,))
async def create_user(request: web.Request) -> web.Response:
    """Create a user (no tokens, no teams yet)."""
    hub = ctx(request)
    async with audited(request, Permission.USERS_WRITE, "user.create", "-") as act:
        req = parse_body(NameRequest, await json_body(request))
        act.target = f"user:{req.name}"
        user = UserRecord(req.name, hub.now(), act.principal.name)
        await hub.store.add_user(user, act.ok())
    return web.json_response(user_view(user), status=201)


async def _set_disabled(request: web.Request, disabled: bool) -> web.Response:
    hub = ctx(request)
    name = _path_name(request)
    action = "user.disable" if disabled else "user.enable"
    async with audited(request, Permission.USERS_WRITE, action, f"user:{name}") as act:
        await hub.store.set_user_disabled(name, disabled, act.ok())
    user = await hub.store.get_user(name)
    return web.json_response(user_view(user) if user else {})


@routes.post("/api/v1/users/{name}/disable")
@described(errors=(404,))
async def disable_user(request: web.Request) -> web.Response:
    """Disable a user: every token of it answers 401 from now on."""
    return await _set_disabled(request, True)


@routes.post("/api/v1/users/{name}/enable")
@described(errors=(404,))
async def enable_user(request: web.Request) -> web.Response:
    """Enable a disabled user."""
    return await _set_disabled(request, False)


@routes.get("/api/v1/users/{name}/tokens")
@described(errors=(404,))
async def list_tokens(request: web.Request) -> web.Response:
    """List a user's tokens (never the tokens themselves)."""
    principal(request, Permission.USERS_READ)
    tokens = await ctx(request).store.list_user_tokens(_path_name(request))
    return web.json_response({"tokens": [token_view(t) for t in tokens]})


@routes.post("/api/v1/users/{name}/tokens")
@described(body=TokenRequest, status=201, errors=(404, 409))
async def create_token(request: web.Request) -> web.Response:
    """Create a token for a user; answer it once (only its hash is kept)."""
    hub = ctx(request)
    name = _path_name(request)
    async with audited(request, Permission.USERS_WRITE, "user.token.create", f"user:{name}") as act:
        req = parse_body(TokenRequest, await json_body(request))
        limit = hub.config.access.max_token_lifetime_s
        if req.expires_in_s > limit:
            raise InvalidRequest(
                f"expires_in_s: at most {limit:g} s (access.max_token_lifetime_s)",
                fields=[{"field": "expires_in_s", "message": f"at most {limit:g}"}],
            )
        new, now = new_user_token(), hub.now()
        record = UserTokenRecord(
            new.token_id, name, new.secret_hash, now, now + timedelta(seconds=req.expires_in_s)
        )
        audit = act.ok(token_id=new.token_id, expires_at=token_view(record)["expires_at"])
        await hub.store.add_user_token(record, hub.config.access.max_tokens_per_user, audit)
    return web.json_response({**token_view(record), "token": new.token}, status=201)


@routes.post("/api/v1/users/{name}/tokens/{token_id}/revoke")
@described(errors=(404,))
async def revoke_token(request: web.Request) -> web.Response:
    """Revoke a user's token: it answers 401 from now on."""
    hub = ctx(request)
    name, token_id = _path_name(request), request.match_info["token_id"]
    target = f"user:{name}"
    async with audited(request, Permission.USERS_WRITE, "user.token.revoke", target) as act:
        if not TOKEN_ID_RE.match(token_id):
            raise InvalidRequest(
                f"token id must match {TOKEN_ID_RE.pattern}", fields=[{"field": "id"}], status=400
            )
        await hub.store.revoke_user_token(name, token_id, act.ok(token_id=token_id))
    found = await hub.store.get_user_token(token_id)
    return web.json_response(token_view(found) if found else {})


@routes.get("/api/v1/teams")
@described()
async def list_teams(request: web.Request) -> web.Response:
    """List the teams with their members and grants."""
    principal(request, Permission.USERS_READ)
    teams = await ctx(request).store.list_teams()
    return web.json_response({"teams": [team_view(t) for t in teams], "roles": _roles()})


def _roles() -> list[str]:
    return [r.label for r in Role]


@routes.post("/api/v1/teams")
@described(body=NameRequest, status=201, errors=(409,))
async def create_team(request: web.Request) -> web.Response:
    """Create a team (no members, no grants)."""
    hub = ctx(request)
    async with audited(request, Permission.USERS_WRITE, "team.create", "-") as act:
        req = parse_body(NameRequest, await json_body(request))
        act.target = f"team:{req.name}"
        now = hub.now()
        await hub.store.add_team(req.name, now, act.ok())
    return web.json_response(team_view(TeamRecord(req.name, now)), status=201)


@routes.delete("/api/v1/teams/{name}")
@described(errors=(404,))
async def delete_team(request: web.Request) -> web.Response:
    """Delete a team: its members lose its grants."""
    hub = ctx(request)
    name = _path_name(request)
    async with audited(request, Permission.USERS_WRITE, "team.delete", f"team:{name}") as act:
        await hub.store.delete_team(name, act.ok())
    return web.json_response({"deleted": name})


async def _member(request: web.Request, member: bool) -> web.Response:
    hub = ctx(request)
    team, user = _path_name(request), _path_name(request, "user")
    action = "team.member.add" if member else "team.member.remove"
    async with audited(request, Permission.USERS_WRITE, action, f"team:{team}") as act:
        await hub.store.set_team_member(team, user, member, act.ok(user=user))
    return await _team_answer(request, team)


@routes.put("/api/v1/teams/{name}/members/{user}")
@described(errors=(404,))
async def add_member(request: web.Request) -> web.Response:
    """Add a user to a team."""
    return await _member(request, True)


@routes.delete("/api/v1/teams/{name}/members/{user}")
@described(errors=(404,))
async def remove_member(request: web.Request) -> web.Response:
    """Remove a user from a team."""
    return await _member(request, False)


async def _grant(request: web.Request, granted: bool) -> web.Response:
    hub = ctx(request)
    team = _path_name(request)
    action = "team.grant.add" if granted else "team.grant.remove"
    async with audited(request, Permission.USERS_WRITE, action, f"team:{team}") as act:
        grant = parse_body(GrantRequest, await json_body(request)).grant()
        role, scope = grant.role.label, grant.scope_text
        audit = act.ok(role=role, scope=scope)
        await hub.store.set_team_grant(team, role, scope, granted, audit)
    return await _team_answer(request, team)


@routes.post("/api/v1/teams/{name}/grants")
@described(body=GrantRequest, errors=(404, 409))
async def add_grant(request: web.Request) -> web.Response:
    """Grant a team a role on a scope (a selector or ``all``)."""
    return await _grant(request, True)


@routes.delete("/api/v1/teams/{name}/grants")
@described(body=GrantRequest, errors=(404,))
async def remove_grant(request: web.Request) -> web.Response:
    """Take a role on a scope from a team."""
    return await _grant(request, False)


async def _team_answer(request: web.Request, name: str) -> web.Response:
    teams = await ctx(request).store.list_teams()
    return web.json_response(next((team_view(t) for t in teams if t.name == name), {}))
