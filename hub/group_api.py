"""Device tags, groups (named tag selectors) and environment overrides (Bearer token).

    PATCH  /api/v1/devices/{id}/tags   {set: {k: v}, remove: [k]}         devices:write
    GET    /api/v1/devices/{id}/env    its own, its groups' and resolved  devices:read
    PATCH  /api/v1/devices/{id}/env    {service, set: {VAR: v}, unset}    devices:write
    POST   /api/v1/groups              {name, selector}                   groups:write
    GET    /api/v1/groups              every group with its member count  devices:read
    GET    /api/v1/groups/{name}       the group and its members now      devices:read
    DELETE /api/v1/groups/{name}                                          groups:write
    PATCH  /api/v1/groups/{name}/env   {service, set: {VAR: v}, unset}    groups:write

Membership is not stored: a group's members are the devices whose tags match its
selector at the time of asking. Every change is audited (``hub.operator_api._audited``).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge_agent.models import ENV_KEY_RE, NAME_RE
from edge_agent.openapi import described
from hub.auth import Permission
from hub.context import HubContext, ctx
from hub.errors import InvalidRequest, OverrideConflict
from hub.operator_api import device_view
from hub.operator_calls import audited, device_or_404, group_or_404, json_body, principal
from hub.overrides import GroupOverrides, resolve_overrides
from hub.route_access import check_new_tags, visible_groups
from hub.selector import TAG_KEY_RE, TAG_VALUE_RE, Selector, matches, parse
from hub.store import DeviceRecord, EnvChange, GroupRecord
from hub.wire import parse as parse_body

routes = web.RouteTableDef()
GROUP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _bad(what: str, names: list[str], rule: re.Pattern[str]) -> ValueError:
    return ValueError(f"invalid {what} {', '.join(sorted(names))}: must match {rule.pattern}")


class TagsRequest(Body):
    """Body of PATCH /api/v1/devices/{id}/tags."""

    set: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)

    @field_validator("set")
    @classmethod
    def _set(cls, v: dict[str, str]) -> dict[str, str]:
        if bad := [k for k in v if not TAG_KEY_RE.match(k)]:
            raise _bad("tag key(s)", bad, TAG_KEY_RE)
        if bad := [k for k, val in v.items() if not TAG_VALUE_RE.match(val)]:
            raise _bad("value(s) of tag(s)", bad, TAG_VALUE_RE)
        return v

    @field_validator("remove")
    @classmethod
    def _remove(cls, v: list[str]) -> list[str]:
        if bad := [k for k in v if not TAG_KEY_RE.match(k)]:
            raise _bad("tag key(s)", bad, TAG_KEY_RE)
        return v

    @model_validator(mode="after")
    def _apart(self) -> TagsRequest:
        if not self.set and not self.remove:
            raise ValueError("nothing to change: give set and/or remove")
        if both := sorted(set(self.set) & set(self.remove)):
            raise ValueError(f"tag(s) both set and removed: {', '.join(both)}")
        return self


class EnvRequest(Body):
    """Body of PATCH .../env: set and unset variables of one service's overrides."""

    service: str
    set: dict[str, str] = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list)

    @field_validator("service")
    @classmethod
    def _service(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("must match " + NAME_RE.pattern)
        return v

    @field_validator("set")
    @classmethod
    def _set(cls, v: dict[str, str]) -> dict[str, str]:
        if bad := [k for k in v if not ENV_KEY_RE.match(k)]:
            raise _bad("variable name(s)", bad, ENV_KEY_RE)
        return v

    @model_validator(mode="after")
    def _apart(self) -> EnvRequest:
        if not self.set and not self.unset:
            raise ValueError("nothing to change: give set and/or unset")
        if both := sorted(set(self.set) & set(self.unset)):
            raise ValueError(f"variable(s) both set and unset: {', '.join(both)}")
        return self

    def change(self, max_vars: int, max_value_chars: int) -> EnvChange:
        """Return the store's change, refusing values over ``max_value_chars``."""
        if long := sorted(k for k, val in self.set.items() if len(val) > max_value_chars):
            raise InvalidRequest(
                f"set: value(s) of {', '.join(long)} longer than {max_value_chars} characters "
                "(limits.max_override_value_chars)",
                fields=[{"field": f"set.{k}", "message": "too long"} for k in long],
            )
        return EnvChange(self.service, dict(self.set), tuple(self.unset), max_vars)


class CreateGroupRequest(Body):
    """Body of POST /api/v1/groups."""

    name: str
    selector: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not GROUP_NAME_RE.match(v):
            raise ValueError("must match " + GROUP_NAME_RE.pattern)
        return v


def _members(selector: Selector, devices: list[DeviceRecord]) -> list[str]:
    return [d.id for d in devices if matches(selector, d.tags)]


def group_view(group: GroupRecord, devices: list[DeviceRecord] | None = None) -> dict[str, Any]:
    """Return a group as the API shows it; with ``devices``, its members among them."""
    view: dict[str, Any] = {
        "name": group.name,
        "selector": group.selector,
        "overrides": group.overrides,
        "created_at": group.created_at.isoformat(),
        "created_by": group.created_by,
    }
    if devices is not None:
        members = _members(parse(group.selector), devices)
        view.update(members=members, member_count=len(members))
    return view


@routes.patch("/api/v1/devices/{device_id}/tags")
@described(body=TagsRequest, errors=(404,))
async def change_tags(request: web.Request) -> web.Response:
    """Set and remove a device's tags; answer the device view."""
    hub = ctx(request)
    device_id = request.match_info["device_id"]
    async with audited(request, Permission.DEVICES_WRITE, "device.tag", device_id) as act:
        req = parse_body(TagsRequest, await json_body(request))
        await check_new_tags(request, device_id, req.set, req.remove)
        audit = act.ok(set=req.set, remove=req.remove)
        device = await hub.store.update_device_tags(
            device_id, req.set, req.remove, hub.config.limits.max_device_tags, audit
        )
    return web.json_response(device_view(hub, device, hub.now()))


@routes.get("/api/v1/devices/{device_id}/env")
@described(errors=(404,))
async def show_device_env(request: web.Request) -> web.Response:
    """Show a device's own overrides, its groups' and how they resolve now."""
    principal(request, Permission.DEVICES_READ)
    hub = ctx(request)
    device_id = request.match_info["device_id"]
    device = await device_or_404(hub, device_id)
    own = await hub.store.get_device_overrides(device_id)
    groups = [g for g in await hub.store.list_groups() if matches(parse(g.selector), device.tags)]
    body: dict[str, Any] = {
        "device_id": device_id,
        "tags": device.tags,
        "device": own,
        "groups": [{"name": g.name, "overrides": g.overrides} for g in groups],
    }
    try:
        wanted = [GroupOverrides(g.name, parse(g.selector), g.overrides) for g in groups]
        body["resolved"], body["conflict"] = resolve_overrides(device.tags, own, wanted), None
    except OverrideConflict as exc:  # shown: not an error of this read
        body["resolved"], body["conflict"] = None, exc.message
    return web.json_response(body)


@routes.patch("/api/v1/devices/{device_id}/env")
@described(body=EnvRequest, errors=(404, 409))
async def change_device_env(request: web.Request) -> web.Response:
    """Set/unset a device's own overrides of one service."""
    hub = ctx(request)
    device_id = request.match_info["device_id"]
    async with audited(request, Permission.DEVICES_WRITE, "device.env", device_id) as act:
        change = _env_change(hub, parse_body(EnvRequest, await json_body(request)))
        audit = act.ok(service=change.service, set=sorted(change.set_vars), unset=change.unset)
        own = await hub.store.change_device_env(device_id, change, audit)
    return web.json_response({"device_id": device_id, "device": own})


def _env_change(hub: HubContext, req: EnvRequest) -> EnvChange:
    limits = hub.config.limits
    return req.change(limits.max_override_vars, limits.max_override_value_chars)


@routes.post("/api/v1/groups")
@described(body=CreateGroupRequest, status=201, errors=(409,))
async def create_group(request: web.Request) -> web.Response:
    """Create a group: a name for a tag selector."""
    hub = ctx(request)
    async with audited(request, Permission.GROUPS_WRITE, "group.create", "-") as act:
        req = parse_body(CreateGroupRequest, await json_body(request))
        act.target = f"group:{req.name}"
        selector = str(parse(req.selector))  # canonical form
        now = hub.now()
        group = GroupRecord(req.name, selector, {}, now, act.principal.name)
        audit = act.ok(selector=selector)
        await hub.store.create_group(group, hub.config.limits.max_groups, audit)
    devices = await hub.store.list_devices()
    return web.json_response(group_view(group, devices), status=201)


@routes.get("/api/v1/groups")
@described()
async def list_groups(request: web.Request) -> web.Response:
    """List every group with its member count."""
    principal(request, Permission.DEVICES_READ)
    hub = ctx(request)
    devices = await hub.store.list_devices()
    views = []
    for g in visible_groups(request, await hub.store.list_groups()):
        view = group_view(g, devices)
        del view["members"]
        views.append(view)
    return web.json_response({"groups": views})


@routes.get("/api/v1/groups/{name}")
@described(errors=(404,))
async def show_group(request: web.Request) -> web.Response:
    """Show a group with the devices whose tags match it now."""
    principal(request, Permission.DEVICES_READ)
    hub = ctx(request)
    group = await group_or_404(hub, request.match_info["name"])
    return web.json_response(group_view(group, await hub.store.list_devices()))


@routes.delete("/api/v1/groups/{name}")
@described(errors=(404, 409))
async def delete_group(request: web.Request) -> web.Response:
    """Delete a group and its overrides (devices keep their tags)."""
    hub = ctx(request)
    name = request.match_info["name"]
    async with audited(request, Permission.GROUPS_WRITE, "group.delete", f"group:{name}") as act:
        await hub.store.delete_group(name, act.ok())
    return web.json_response({"deleted": name})


@routes.patch("/api/v1/groups/{name}/env")
@described(body=EnvRequest, errors=(404, 409))
async def change_group_env(request: web.Request) -> web.Response:
    """Set/unset a group's overrides of one service."""
    hub = ctx(request)
    name = request.match_info["name"]
    async with audited(request, Permission.TARGETS_WRITE, "group.env", f"group:{name}") as act:
        change = _env_change(hub, parse_body(EnvRequest, await json_body(request)))
        audit = act.ok(service=change.service, set=sorted(change.set_vars), unset=change.unset)
        group = await hub.store.change_group_env(name, change, audit)
    return web.json_response(group_view(group))
