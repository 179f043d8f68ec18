"""Log shipping policies of groups, and the one a device resolves to (Bearer token).

    PUT    /api/v1/groups/{name}/log-policy   {mode, pattern?}            groups:write
    DELETE /api/v1/groups/{name}/log-policy   the group sets none again   groups:write
    GET    /api/v1/groups/{name}/log-policy   the group's policy (or null) devices:read
    GET    /api/v1/devices/{id}/log-policy    resolved, and from which groups  devices:read

``pattern`` only with mode ``errors`` (absent: the hub's default pattern); a regular
expression of at most ``MAX_LOG_PATTERN_CHARS`` characters, else 422 naming it.
Resolution and delivery: ``hub.log_policy``. Changes are audited (``group.log_policy``).
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import field_validator, model_validator

from edge_agent.openapi import described
from edge_agent.protocol import check_log_pattern
from hub.auth import Permission
from hub.context import ctx
from hub.log_policy import LOG_POLICIES, resolve
from hub.operator_calls import Body, audited, device_or_404, group_or_404, json_body, principal
from hub.wire import parse as parse_body

routes = web.RouteTableDef()


class LogPolicyRequest(Body):
    """Body of PUT /api/v1/groups/{name}/log-policy."""

    mode: Literal["none", "errors", "all"]
    pattern: str | None = None

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        return check_log_pattern(v) if v is not None else None

    @model_validator(mode="after")
    def _only_errors(self) -> LogPolicyRequest:
        if self.pattern is not None and self.mode != "errors":
            raise ValueError("pattern: only with mode errors")
        return self

    def stored(self) -> dict[str, Any]:
        return {"mode": self.mode, "pattern": self.pattern}


def _invalidate(request: web.Request) -> None:
    cache = request.app.get(LOG_POLICIES)
    if cache is not None:
        cache.invalidate()


@routes.put("/api/v1/groups/{name}/log-policy")
@described(body=LogPolicyRequest, errors=(404,))
async def set_log_policy(request: web.Request) -> web.Response:
    """Set a group's log shipping policy."""
    hub = ctx(request)
    name = request.match_info["name"]
    target = f"group:{name}"
    async with audited(request, Permission.GROUPS_WRITE, "group.log_policy", target) as act:
        req = parse_body(LogPolicyRequest, await json_body(request))
        await hub.store.set_group_log_policy(name, req.stored(), act.ok(**req.stored()))
    _invalidate(request)
    return web.json_response({"group": name, "log_policy": req.stored()})


@routes.delete("/api/v1/groups/{name}/log-policy")
@described(errors=(404,))
async def clear_log_policy(request: web.Request) -> web.Response:
    """Clear a group's log policy: its devices follow their other groups or the default."""
    hub = ctx(request)
    name = request.match_info["name"]
    target = f"group:{name}"
    async with audited(request, Permission.GROUPS_WRITE, "group.log_policy", target) as act:
        await hub.store.set_group_log_policy(name, None, act.ok(mode=None))
    _invalidate(request)
    return web.json_response({"group": name, "log_policy": None})


@routes.get("/api/v1/groups/{name}/log-policy")
@described(errors=(404,))
async def show_log_policy(request: web.Request) -> web.Response:
    """Show a group's own log policy (null: it sets none)."""
    principal(request, Permission.DEVICES_READ)
    hub = ctx(request)
    name = (await group_or_404(hub, request.match_info["name"])).name
    policies = {n: p for n, _, p in await hub.store.group_log_policies()}
    return web.json_response({"group": name, "log_policy": policies.get(name)})


@routes.get("/api/v1/devices/{device_id}/log-policy")
@described(errors=(404,))
async def show_device_log_policy(request: web.Request) -> web.Response:
    """Show the policy a device resolves to now, and the groups that decide it."""
    principal(request, Permission.DEVICES_READ)
    hub = ctx(request)
    device = await device_or_404(hub, request.match_info["device_id"])
    device_id = device.id
    cache = request.app[LOG_POLICIES]
    cache.invalidate()  # an operator's read: exact, not up to CACHE_S old
    groups_now = await cache.groups(hub.store)
    policy, groups = resolve(dict(device.tags), groups_now, hub.config.log_policy)
    features = await hub.store.device_features(device_id)
    return web.json_response(
        {
            "device_id": device_id,
            "log_policy": policy.model_dump(mode="json"),
            "groups": groups,
            "default": not groups,
            # An agent without the feature ships every line, whatever is resolved here.
            "applied": features is not None and "log_policy" in features,
        }
    )
