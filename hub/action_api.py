"""Queued device actions: queued by operators, signed per device, delivered by sync.

    POST /api/v1/devices/{id}/actions   {kind, args, expires_in_s}  -> the action   devices:write
    POST /api/v1/groups/{name}/actions  the same, for each member now -> the actions devices:write
    GET  /api/v1/actions?device=&state=&limit=                      -> newest first devices:read
    GET  /api/v1/actions/{id}                                       -> one action   devices:read
    GET  /api/v1/actions/{id}/parts?after=N&limit=   -> result parts above N, state devices:read
    POST /api/v1/actions/{id}/cancel                 -> a ``cancel`` action for it devices:write

Every create is audited (one row per device). An action is signed with the key that
signs targets (``edge_agent.actiondoc``: its own signed prefix, so it never passes for a
target), bound to one device, with an id and an expiry. ``take_for_sync`` is what a
sync answer carries to an agent listing the ``actions`` feature; the long-poll returns
(204 with ``X-Edgefleet-Actions``) when one is queued, so the agent syncs at once.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from pydantic import Field, field_validator

from edge_agent.actiondoc import FINAL, KINDS, STATES, ActionDoc, check_args, sign_action
from edge_agent.openapi import INT64, STRING, Query, described, enum
from edge_agent.protocol import SignedAction
from edge_agent.signing import key_id
from hub.auth import Permission
from hub.context import HubContext, ctx
from hub.errors import Conflict, InvalidRequest, NotFound
from hub.operator_calls import (
    Action,
    Body,
    audited,
    device_or_404,
    group_or_404,
    json_body,
    principal,
)
from hub.part_order import readable_parts
from hub.route_access import visible_actions, visible_device_ids
from hub.selector import matches, parse
from hub.store import ActionRecord, DeviceRecord
from hub.wire import parse as parse_body

routes = web.RouteTableDef()
FEATURE = "actions"
WAKE_HEADER = "X-Edgefleet-Actions"
ACTION_ID_RE = re.compile(r"^act-[0-9a-f]{16}$")
MAX_LIST = 1000


class ActionRequest(Body):
    """Body of POST .../actions."""

    kind: str
    args: dict[str, Any] = Field(default_factory=dict)
    expires_in_s: float | None = Field(None, gt=0)

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in KINDS:
            raise ValueError(f"must be one of {', '.join(KINDS)}")
        return v


def _checked(hub: HubContext, req: ActionRequest) -> tuple[dict[str, Any], float]:
    """Return the normalized args and the expiry in seconds; 422 naming the field."""
    try:
        args = check_args(req.kind, req.args)
    except ValueError as exc:
        field, _, message = str(exc).partition(": ")
        raise InvalidRequest(str(exc), fields=[{"field": field, "message": message}]) from exc
    limit = hub.config.actions.max_expires_s
    expires = req.expires_in_s or hub.config.actions.default_expires_s
    if expires > limit:
        raise InvalidRequest(
            f"expires_in_s: at most {limit:g} s (actions.max_expires_s)",
            fields=[{"field": "expires_in_s", "message": f"at most {limit:g}"}],
        )
    return args, expires


def _result_bound(hub: HubContext, kind: str) -> int:
    """Return the byte bound signed into an action: for ``logs``, that of all its parts."""
    cfg = hub.config.actions
    return cfg.logs_max_bytes if kind == "logs" else cfg.max_result_bytes


def _new_action(
    hub: HubContext, device_id: str, req: ActionRequest, act: Action, group: str | None
) -> tuple[ActionRecord, dict[str, Any]]:
    """Return a signed action for one device and the detail of its audit row."""
    args, expires_s = _checked(hub, req)
    now = hub.now()
    doc = ActionDoc(
        id="act-" + secrets.token_hex(8),
        device_id=device_id,
        kind=req.kind,
        args=args,
        issued_at=int(now.timestamp()),
        expires_at=int(now.timestamp() + expires_s),
        max_result_bytes=_result_bound(hub, req.kind),
    )
    key = hub.pki.signing_key
    signed = sign_action(doc, key, key_id(key.public_key()))
    record = ActionRecord(
        doc.id,
        device_id,
        doc.kind,
        args,
        act.principal.name,
        now,
        now + timedelta(seconds=expires_s),
        signed.model_dump_json(),
        group=group,
    )
    detail = {"id": doc.id, "kind": doc.kind, "args": args, "expires_at": doc.expires_at}
    return record, detail


def action_view(record: ActionRecord) -> dict[str, Any]:
    """Return an action as the API shows it."""
    return {
        "id": record.id,
        "device_id": record.device_id,
        "kind": record.kind,
        "args": record.args,
        "group": record.group,
        "created_by": record.created_by,
        "created_at": record.created_at.isoformat(),
        "expires_at": record.expires_at.isoformat(),
        "state": record.state,
        "state_at": record.state_at.isoformat() if record.state_at else None,
        "delivered_at": record.delivered_at.isoformat() if record.delivered_at else None,
        "received_at": record.received_at.isoformat() if record.received_at else None,
        "reason": record.reason,
        "result": record.result,
    }


async def _queue(hub: HubContext, act: Action, records: list[tuple[ActionRecord, Any]]) -> None:
    audits = []
    for record, detail in records:
        act.target = f"device:{record.device_id}"
        audits.append(act.ok(**detail))
    cfg = hub.config.actions
    await hub.store.add_actions(
        [r for r, _ in records],
        cfg.max_queued_per_device,
        audits,
        forget_before=hub.now() - timedelta(seconds=cfg.keep_finished_s),
    )
    for record, _ in records:
        hub.notifier.notify(record.device_id)  # a held long-poll returns: the agent syncs


@routes.post("/api/v1/devices/{device_id}/actions")
@described(body=ActionRequest, status=201, errors=(404,))
async def create_for_device(request: web.Request) -> web.Response:
    """Queue one action for one device."""
    device_id = request.match_info["device_id"]
    record = await queue_for_device(request, device_id, lambda: json_body(request))
    return web.json_response(action_view(record), status=201)


async def queue_for_device(
    request: web.Request,
    device_id: str,
    body: Callable[[], Awaitable[bytes | dict[str, Any]]],
) -> ActionRecord:
    """Check, sign, queue and audit (``action.create``) one action for one device; the
    request (``body()``, read inside the audit) is an ``ActionRequest``. The API and the
    dashboard's log requests both queue through here."""
    hub = ctx(request)
    async with audited(
        request, Permission.DEVICES_WRITE, "action.create", f"device:{device_id[:64]}"
    ) as act:
        req = parse_body(ActionRequest, await body())
        await device_or_404(hub, device_id)
        record, detail = _new_action(hub, device_id, req, act, None)
        await _queue(hub, act, [(record, detail)])
    return record


@routes.post("/api/v1/groups/{name}/actions")
@described(body=ActionRequest, status=201, errors=(404,))
async def create_for_group(request: web.Request) -> web.Response:
    """Queue the action for each device in the group now (all or none)."""
    hub = ctx(request)
    name = request.match_info["name"]
    async with audited(request, Permission.DEVICES_WRITE, "action.create", f"group:{name}") as act:
        req = parse_body(ActionRequest, await json_body(request))
        group = await group_or_404(hub, name)
        members = _members(group.selector, await hub.store.list_devices())
        limit = hub.config.actions.max_group_devices
        if len(members) > limit:
            raise InvalidRequest(
                f"group {name} has {len(members)} devices, over actions.max_group_devices "
                f"({limit})",
                fields=[{"field": "group", "message": "too many devices"}],
            )
        records = [_new_action(hub, d, req, act, name) for d in members]
        await _queue(hub, act, records)
    return web.json_response({"actions": [action_view(r) for r, _ in records]}, status=201)


def _members(selector: str, devices: list[DeviceRecord]) -> list[str]:
    parsed = parse(selector)
    return [d.id for d in devices if not d.disabled and matches(parsed, d.tags)]


@routes.get("/api/v1/actions")
@described(
    query=(
        Query("device", STRING),
        Query("state", enum(STATES)),
        Query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIST}),
    )
)
async def list_actions(request: web.Request) -> web.Response:
    """List actions, newest first (``device``, ``state`` and ``limit`` filter)."""
    principal(request, Permission.DEVICES_READ)
    hub = ctx(request)
    state = request.query.get("state")
    if state is not None and state not in STATES:
        raise InvalidRequest(
            f"state: one of {', '.join(STATES)}", fields=[{"field": "state"}], status=400
        )
    raw = request.query.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST:
        raise InvalidRequest(
            f"limit: an integer from 1 to {MAX_LIST}", fields=[{"field": "limit"}], status=400
        )
    found = await hub.store.list_actions(
        hub.now(),
        device_id=request.query.get("device"),
        state=state,
        limit=int(raw),
        device_ids=await visible_device_ids(request),
    )
    found = await visible_actions(request, found)
    return web.json_response({"actions": [action_view(r) for r in found]})


def _check_action_id(action_id: str) -> str:
    """Return ``action_id`` if it is well-formed; else 400 naming the field."""
    if not ACTION_ID_RE.match(action_id):
        raise InvalidRequest(
            f"action id must match {ACTION_ID_RE.pattern}", fields=[{"field": "id"}], status=400
        )
    return action_id


def _action_id(request: web.Request) -> str:
    return _check_action_id(request.match_info["action_id"])


@routes.get("/api/v1/actions/{action_id}")
@described(errors=(404,))
async def show_action(request: web.Request) -> web.Response:
    """Show one action, its state and its result."""
    principal(request, Permission.DEVICES_READ)
    hub = ctx(request)
    action_id = _action_id(request)
    record = await hub.store.get_action(action_id, hub.now())
    if record is None:
        raise NotFound(f"no action {action_id!r}")
    return web.json_response(action_view(record))


@routes.post("/api/v1/actions/{action_id}/cancel")
@described(status=201, errors=(404, 409))
async def cancel_action(request: web.Request) -> web.Response:
    """Queue a ``cancel`` action for an unfinished action's device (delivered like any)."""
    hub = ctx(request)
    action_id = request.match_info["action_id"]
    async with audited(
        request, Permission.DEVICES_WRITE, "action.cancel", f"action:{action_id[:64]}"
    ) as act:
        _check_action_id(action_id)
        found = await hub.store.get_action(action_id, hub.now())
        if found is None:
            raise NotFound(f"no action {action_id!r}")
        if found.state in FINAL:
            raise Conflict(f"action {action_id} is {found.state} already")
        req = ActionRequest(kind="cancel", args={"action": action_id})
        record, detail = _new_action(hub, found.device_id, req, act, None)
        await _queue(hub, act, [(record, detail)])
    return web.json_response(action_view(record), status=201)


def _int_query(request: web.Request, name: str, default: int, top: int) -> int:
    raw = request.query.get(name, str(default))
    if not raw.isdigit() or int(raw) > top:
        raise InvalidRequest(
            f"{name}: an integer from 0 to {top}", fields=[{"field": name}], status=400
        )
    return int(raw)


@routes.get("/api/v1/actions/{action_id}/parts")
@described(
    query=(
        Query("after", INT64),
        Query("limit", {"type": "integer", "minimum": 0, "maximum": MAX_LIST}),
    ),
    errors=(404,),
)
async def action_parts(request: web.Request) -> web.Response:
    """Show an action's state and its result parts numbered on from ``after`` without a
    gap, in order; ``pending``: a part is still owed (hub.part_order), ask again."""
    principal(request, Permission.DEVICES_READ)
    hub = ctx(request)
    action_id = _action_id(request)
    after = _int_query(request, "after", 0, 2**62)
    limit = max(1, _int_query(request, "limit", 100, MAX_LIST))
    record = await hub.store.get_action(action_id, hub.now())
    if record is None:
        raise NotFound(f"no action {action_id!r}")
    stored, totals = await hub.store.list_action_parts(action_id, after=after, limit=limit)
    parts, pending = readable_parts(
        stored,
        after,
        state=record.state,
        state_at=record.state_at,
        result=record.result,
        now=hub.now(),
        grace_s=hub.config.actions.parts_gap_grace_s,
        full_page=len(stored) >= limit,
    )
    return web.json_response(
        {
            "action": action_view(record),
            "parts": [{"part": p.part, "lines": p.lines} for p in parts],
            "next": parts[-1].part if parts else after,
            "pending": pending,
            "totals": {
                "parts": totals.parts,
                "lines": totals.lines,
                "bytes": totals.bytes,
                "cut_lines": totals.cut_lines,
            },
        }
    )


def reads_actions(features: frozenset[str] | list[str] | None) -> bool:
    """Return whether the agent reads actions (lists the feature)."""
    return features is not None and FEATURE in features


async def take_for_sync(
    hub: HubContext, device_id: str, features: frozenset[str] | list[str] | None
) -> list[SignedAction] | None:
    """Return the actions a sync answer carries to this device; None if it would not read them."""
    if not reads_actions(features):
        return None  # an older agent: it would count the field as unknown
    cfg = hub.config.actions
    now = hub.now()
    taken = await hub.store.take_actions(
        device_id,
        now,
        redeliver_before=now - timedelta(seconds=cfg.redeliver_after_s),
        limit=cfg.max_per_sync,
    )
    return [SignedAction.model_validate_json(r.signed) for r in taken] or None


async def wake_header(
    hub: HubContext, device_id: str, features: frozenset[str] | None, now: datetime
) -> dict[str, str] | None:
    """Return the long-poll's wake-up header if an action waits for this device."""
    if reads_actions(features) and await hub.store.has_queued_actions(device_id, now):
        return {WAKE_HEADER: "queued"}
    return None
