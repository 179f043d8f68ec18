"""Staged rollouts of a release over a group or selector (Bearer token).

    POST /api/v1/rollouts                 {release, group|selector, stages, soak_s,
                                           max_failed, window, tz, supersedes, ...}
                                           -> 201 the rollout          rollouts:write
    GET  /api/v1/rollouts                 every rollout, newest last  devices:read
    GET  /api/v1/rollouts/{id}            spec, status, per-stage progress  devices:read
    POST /api/v1/rollouts/{id}/pause      {reason}                    rollouts:write
    POST /api/v1/rollouts/{id}/resume     {reason}                    rollouts:write
    POST /api/v1/rollouts/{id}/abort      {reason}                    rollouts:write
    POST /api/v1/rollouts/{id}/rollback   {reason}                    rollouts:write

The members are frozen at start: the enabled devices the group's selector (or the given
selector) matches then. A retired or unknown release is refused (409 / 404); a rollout
overlapping an active one is refused (409) unless it names it in ``supersedes``.
The engine (``hub.rollout_engine``) walks the stages; every change is audited.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import Field

from edge_agent.models import Release
from edge_agent.openapi import described
from hub.auth import Permission
from hub.context import HubContext, ctx
from hub.device_policy import check_devices
from hub.errors import Conflict, NotFound
from hub.fleet import connectivity
from hub.operator_calls import Body, audited, json_body, principal
from hub.rollout_engine import (
    ENGINE,
    Loaded,
    apply,
    event_audits,
    load,
    observe,
    to_record,
)
from hub.rollout_models import ACTIVE_STATUSES, Decision, RolloutSpec, RolloutState
from hub.rollouts import abort, check_overlap, pause, plan_rollout, resume, rollback, start_rollout
from hub.rollouts import supersede as supersede_state
from hub.route_access import check_rollout_spec, visible_rollouts
from hub.selector import matches
from hub.selector import parse as parse_selector
from hub.store import DeviceRecord, RolloutRecord
from hub.wire import parse

routes = web.RouteTableDef()
MAX_REASON = 1024
ACTIONS: dict[str, Callable[[RolloutState, datetime, str], Decision]] = {
    "pause": pause,
    "resume": resume,
    "abort": abort,
    "rollback": rollback,
}


class ActionRequest(Body):
    """Body of POST /api/v1/rollouts/{id}/{action} (may be empty)."""

    reason: str = Field("", max_length=MAX_REASON)


async def _members(hub: HubContext, spec: RolloutSpec) -> tuple[list[str], set[str]]:
    """Return the enabled devices the spec names now, and those of them online."""
    if spec.group is not None:
        group = await hub.store.get_group(spec.group)
        if group is None:
            raise NotFound(f"no group {spec.group!r}", fields=[{"field": "group"}])
        selector = parse_selector(group.selector)
    else:
        selector = parse_selector(spec.selector or "")
    now, fleet = hub.now(), hub.config.fleet
    devices = [d for d in await hub.store.list_devices() if not d.disabled]
    members = [d for d in devices if matches(selector, d.tags)]
    online = {
        d.id
        for d in members
        if connectivity(d.last_contact, now, fleet.online_after_s, fleet.stale_after_s).value
        == "online"
    }
    return [d.id for d in members], online


async def _check_release(hub: HubContext, ref: str) -> None:
    name, _, version = ref.partition("@")
    release = await hub.store.get_release(name, version)
    if release is None:
        raise NotFound(f"no release {ref}", fields=[{"field": "release"}])
    if release.retired_at is not None:
        raise Conflict(
            f"release {ref} was retired at {release.retired_at.isoformat()} "
            f"({release.retired_reason}); it cannot be rolled out",
            fields=[{"field": "release", "message": "retired"}],
        )


async def _check_policies(hub: HubContext, ref: str, members: list[str]) -> None:
    """Refuse (422) a release the device policy of any member refuses (hub.device_policy)."""
    wanted = set(members)
    devices = [d for d in await hub.store.list_devices() if d.id in wanted]
    name, _, version = ref.partition("@")
    record = await hub.store.get_release(name, version)
    if record is None:  # _check_release said it exists; a delete in between is a 404
        raise NotFound(f"no release {ref}", fields=[{"field": "release"}])
    release = Release.model_validate_json(record.document)
    await check_devices(hub.store, hub.config.device_policy, devices, release)


async def _superseded(
    request: web.Request, spec: RolloutSpec, members: list[str], new_id: str, now: datetime
) -> list[tuple[RolloutRecord, datetime, Decision]]:
    hub = ctx(request)
    records = await hub.store.list_rollouts([s.value for s in ACTIVE_STATUSES])
    shown = {r.id for r in await visible_rollouts(request, records)}
    hidden = {r.id for r in records} - shown  # a 409 must not name what the caller cannot see
    active = [load(r) for r in records]
    ids = check_overlap(spec, [a.state for a in active], members, hidden)
    limit = hub.config.rollouts.max_active
    if len(active) - len(ids) >= limit:  # a rollout that supersedes one takes its place
        raise Conflict(
            f"the hub runs {len(active)} active rollouts, the bound (rollouts.max_active)"
        )
    out = []
    for a in active:
        if a.record.id in ids:
            decision = supersede_state(a.state, new_id, now)
            out.append((to_record(a, decision.state), a.record.updated_at, decision))
    return out


@routes.post("/api/v1/rollouts")
@described(body=RolloutSpec, status=201, errors=(404, 409))
async def create_rollout(request: web.Request) -> web.Response:
    """Start a rollout; the engine issues its first stage at its next tick."""

    async def read() -> RolloutSpec:
        return parse(RolloutSpec, await json_body(request))

    return web.json_response(await start(request, read), status=201)


async def start(request: web.Request, read: Callable[[], Awaitable[RolloutSpec]]) -> dict[str, Any]:
    """Start the rollout ``read`` returns, checked and audited; return its view. The API
    route and the dashboard's form both start rollouts here."""
    hub = ctx(request)
    engine = request.app[ENGINE]
    async with audited(request, Permission.ROLLOUTS_WRITE, "rollout.start", "-") as act:
        spec = await read()
        await check_rollout_spec(request, spec)
        act.target = rollout_id = "ro-" + uuid.uuid4().hex[:12]
        await _check_release(hub, spec.release)
        async with engine.lock:
            now = hub.now()
            members, online = await _members(hub, spec)
            await _check_policies(hub, spec.release, members)
            superseded = await _superseded(request, spec, members, rollout_id, now)
            state = start_rollout(rollout_id, spec, members, online, now)
            record = RolloutRecord(
                rollout_id,
                spec.release,
                spec.model_dump_json(),
                state.model_dump_json(),
                state.status.value,
                now,
                act.principal.name,
                now,
            )
            audits = [act.ok(release=spec.release, members=len(members))]
            for old, _, decision in superseded:
                audits += event_audits(old.id, decision, act.principal.name, now)
            await hub.store.create_rollout(
                record, [(old, expected) for old, expected, _ in superseded], audits
            )
    engine.wake()
    return await _view(hub, load(record))


async def _view(hub: HubContext, loaded: Loaded) -> dict[str, Any]:
    """Return the rollout as the API shows it, with its progress judged now."""
    now = hub.now()
    devices = await hub.store.list_devices()
    observed = await observe(hub, loaded, now, devices=devices)
    decision = plan_rollout(loaded.spec, loaded.state, observed, now)
    state = loaded.state
    return {
        **_summary(loaded),
        "spec": loaded.spec.model_dump(mode="json"),
        "members": len(state.members),
        "current_stage": state.current_stage,
        "failed_stage": state.failed_stage,
        "reason": state.reason,
        "progress": [p.model_dump() for p in decision.progress],
        "devices": {d: v.value for d, v in sorted(decision.verdicts.items())},
        "failed_reasons": {  # why each failed device failed the gate (e.g. a metric bound)
            d: a.failed_reason
            for d, a in sorted(decision.state.assignments.items())
            if a.failed_reason
        },
        "waiting_window": _waiting(devices, set(state.members)),
    }


def _waiting(devices: list[DeviceRecord], members: set[str]) -> dict[str, str | None]:
    """Return the members holding a target for their maintenance window, and when it opens."""
    return {
        d.id: d.window_opens_at.isoformat() if d.window_opens_at else None
        for d in devices
        if d.id in members and d.rollout_state == "waiting_window"
    }


def _summary(loaded: Loaded) -> dict[str, Any]:
    r = loaded.record
    return {
        "id": r.id,
        "release": r.release,
        "status": r.status,
        "group": loaded.spec.group,
        "selector": loaded.spec.selector,
        "created_at": r.created_at.isoformat(),
        "created_by": r.created_by,
        "updated_at": r.updated_at.isoformat(),
        "current_stage": loaded.state.current_stage,
        "stages": len(loaded.spec.stages),
        "members": len(loaded.state.members),
    }


async def _rollout_or_404(hub: HubContext, rollout_id: str) -> Loaded:
    record = await hub.store.get_rollout(rollout_id)
    if record is None:
        raise NotFound(f"no rollout {rollout_id!r}")
    return load(record)


@routes.get("/api/v1/rollouts")
@described()
async def list_rollouts(request: web.Request) -> web.Response:
    """List every rollout, oldest first."""
    principal(request, Permission.DEVICES_READ)
    records = await visible_rollouts(request, await ctx(request).store.list_rollouts())
    return web.json_response({"rollouts": [_summary(load(r)) for r in records]})


@routes.get("/api/v1/rollouts/{rollout_id}")
@described(errors=(404,))
async def show_rollout(request: web.Request) -> web.Response:
    """Show one rollout with its per-stage progress."""
    principal(request, Permission.DEVICES_READ)
    hub = ctx(request)
    loaded = await _rollout_or_404(hub, request.match_info["rollout_id"])
    return web.json_response(await _view(hub, loaded))


@routes.post("/api/v1/rollouts/{rollout_id}/{action:pause|resume|abort|rollback}")
@described(body=ActionRequest, errors=(404, 409))
async def act_on_rollout(request: web.Request) -> web.Response:
    """Pause, resume, abort or roll back a rollout by hand."""
    rollout_id, action = request.match_info["rollout_id"], request.match_info["action"]

    async def read() -> ActionRequest:
        raw = await json_body(request)
        return parse(ActionRequest, raw) if raw.strip() else ActionRequest()

    return web.json_response(await perform_action(request, rollout_id, action, read))


async def perform_action(
    request: web.Request,
    rollout_id: str,
    action: str,
    read: Callable[[], Awaitable[ActionRequest]],
) -> dict[str, Any]:
    """Run ``action`` on the rollout, audited (a refused ``read`` of the request too);
    return the rollout's view. The API route and the dashboard's form both act here."""
    hub = ctx(request)
    engine = request.app[ENGINE]
    async with audited(request, Permission.ROLLOUTS_WRITE, f"rollout.{action}", rollout_id) as act:
        req = await read()
        async with engine.lock:
            loaded = await _rollout_or_404(hub, rollout_id)
            now = hub.now()
            decision = ACTIONS[action](loaded.state, now, req.reason)
            audit = act.ok(reason=req.reason, was=loaded.state.status.value)
            await apply(hub, loaded, decision, act.principal.name, now, [audit])
            loaded = await _rollout_or_404(hub, rollout_id)
    engine.wake()
    return await _view(hub, loaded)


rollout_view = _view  # the dashboard's rollout page shows what the API answers
rollout_summary = _summary
