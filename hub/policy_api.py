"""Device policies of groups, and the one a device resolves to (Bearer token).

    PUT    /api/v1/groups/{name}/policy   a DevicePolicy document       groups:write
    DELETE /api/v1/groups/{name}/policy   the group sets none again     groups:write
    GET    /api/v1/groups/{name}/policy   the group's policy (or null)  devices:read
    GET    /api/v1/devices/{id}/policy    resolved, and from which groups  devices:read

Setting and clearing need ``groups:write`` for now (the admin role of the access-control
work replaces it). The body is strict: an unknown field or a relative path is a 422
naming it. Resolution and checks: ``hub.device_policy``. Changes are audited
(``group.device_policy``); a policy applies to targets issued after it is set.
"""

from __future__ import annotations

from aiohttp import web

from edge_agent.device_policy import DevicePolicy
from edge_agent.openapi import described
from hub.auth import Permission
from hub.context import ctx
from hub.device_policy import effective_policy, is_read_by
from hub.operator_calls import audited, device_or_404, group_or_404, json_body, principal
from hub.wire import parse as parse_body

routes = web.RouteTableDef()


@routes.put("/api/v1/groups/{name}/policy")
@described(body=DevicePolicy, errors=(404,))
async def set_policy(request: web.Request) -> web.Response:
    """Set a group's device policy."""
    hub = ctx(request)
    name = request.match_info["name"]
    async with audited(
        request, Permission.GROUPS_WRITE, "group.device_policy", f"group:{name}"
    ) as act:
        policy = parse_body(DevicePolicy, await json_body(request))
        doc = policy.model_dump(mode="json")
        await hub.store.set_group_device_policy(name, doc, act.ok(policy=doc))
    return web.json_response({"group": name, "policy": doc})


@routes.delete("/api/v1/groups/{name}/policy")
@described(errors=(404,))
async def clear_policy(request: web.Request) -> web.Response:
    """Clear a group's device policy: its devices follow their other groups or the default."""
    hub = ctx(request)
    name = request.match_info["name"]
    async with audited(
        request, Permission.GROUPS_WRITE, "group.device_policy", f"group:{name}"
    ) as act:
        await hub.store.set_group_device_policy(name, None, act.ok(policy=None))
    return web.json_response({"group": name, "policy": None})


@routes.get("/api/v1/groups/{name}/policy")
@described(errors=(404,))
async def show_policy(request: web.Request) -> web.Response:
    """Show a group's own device policy (null: it sets none)."""
    principal(request, Permission.DEVICES_READ)
    hub = ctx(request)
    name = (await group_or_404(hub, request.match_info["name"])).name
    policies = {n: p for n, _, p in await hub.store.group_device_policies()}
    return web.json_response({"group": name, "policy": policies.get(name)})


@routes.get("/api/v1/devices/{device_id}/policy")
@described(errors=(404,))
async def show_device_policy(request: web.Request) -> web.Response:
    """Show the device policy a device resolves to now, and the groups that decide it."""
    principal(request, Permission.DEVICES_READ)
    hub = ctx(request)
    device = await device_or_404(hub, request.match_info["device_id"])
    device_id = device.id
    policy, groups = await effective_policy(hub.store, hub.config.device_policy, device)
    features = await hub.store.device_features(device_id)
    return web.json_response(
        {
            "device_id": device_id,
            "policy": policy.model_dump(mode="json"),
            "groups": groups,
            "default": not groups,
            # An agent without the feature holds targets to its own local policy.
            "applied": is_read_by(features),
        }
    )
