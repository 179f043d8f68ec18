"""The people's side of the hub: tokens, devices, targets, events, audit (Bearer token).

    POST /api/v1/enrollment-tokens         {uses, expires_in_s, tags} -> token (shown once)
    GET  /api/v1/devices                   fleet picture
    GET  /api/v1/devices/{id}              one device
    GET  /api/v1/devices/{id}/target       its newest target (decoded) and revision
    POST /api/v1/devices/{id}/target       {release, overrides, apply_deadline_s, min_ready_s,
                                            expires_in_s, window, immediate}
    POST /api/v1/devices/{id}/disable      refuse the device from now on
    POST /api/v1/devices/{id}/enable       accept it again
    GET  /api/v1/devices/{id}/events       ?after=seq&limit=n
    GET  /api/v1/audit                     ?cursor=&limit=n&actor=&action=&device=&group=...

Every state-changing call is audited (actor, action, target, time, outcome): on success
in the same transaction as the change, on refusal or failure as a row of its own.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from pydantic import Field, ValidationInfo, field_validator

from edge_agent.models import ENV_KEY_RE, MaintenanceWindow, Release, Target
from edge_agent.openapi import described
from edge_agent.protocol import BASELINE_FEATURES, required_features
from edge_agent.signing import sign_target
from hub import audit_api, secret_refs
from hub.audit_api import AUDIT_QUERY
from hub.auth import Permission, new_enrollment_token
from hub.context import HubContext, ctx
from hub.device_holds import hold_view
from hub.device_policy import policy_for_target
from hub.errors import Conflict, InvalidRequest, NotFound
from hub.fleet import connectivity, drift
from hub.metrics_api import sample_view
from hub.operator_calls import (
    INT64_MAX,
    PAGE_QUERY,
    Body,
    audited,
    device_or_404,
    json_body,
    page,
    principal,
)
from hub.route_access import visible_devices
from hub.secret_refs import SECRET_BOX
from hub.store import (
    AuditRecord,
    DeviceRecord,
    EnrollmentTokenRecord,
    SealedSecret,
    TargetRecord,
)
from hub.target_overrides import overrides_for_target
from hub.trust_api import trust_for_target
from hub.wire import parse

routes = web.RouteTableDef()
TAG_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$")
TAG_VALUE_MAX = 255
MAX_EXPIRES_IN_S = 100 * 366 * 86400  # a target valid for a century is "no expiry"


class CreateTokenRequest(Body):
    """Body of POST /api/v1/enrollment-tokens."""

    uses: int = Field(1, ge=1, le=INT64_MAX)
    expires_in_s: int = Field(3600, ge=1, le=MAX_EXPIRES_IN_S)
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not TAG_KEY_RE.match(k)]
        if bad:
            raise ValueError(
                f"invalid tag key(s) {', '.join(sorted(bad))}: must match " + TAG_KEY_RE.pattern
            )
        long = [k for k, val in v.items() if len(val) > TAG_VALUE_MAX]
        if long:
            raise ValueError(f"tag value(s) longer than {TAG_VALUE_MAX}: {', '.join(long)}")
        return v


class SetTargetRequest(Body):
    """Body of POST /api/v1/devices/{id}/target."""

    release: Release
    overrides: dict[str, dict[str, str]] = Field(default_factory=dict)
    apply_deadline_s: float = Field(120.0, gt=0, le=86400)
    min_ready_s: float = Field(5.0, ge=0, le=3600)
    expires_in_s: int | None = Field(None, ge=60, le=MAX_EXPIRES_IN_S)
    # Signed into the target: the agent starts applying only inside the window (its local
    # time, also offline); ``immediate`` applies at once (a return to a previous release).
    window: MaintenanceWindow | None = None
    immediate: bool = False

    @field_validator("overrides")
    @classmethod
    def _known_services(
        cls, v: dict[str, dict[str, str]], info: ValidationInfo
    ) -> dict[str, dict[str, str]]:
        release = info.data.get("release")
        if release is not None:
            unknown = sorted(set(v) - {s.name for s in release.services})
            if unknown:
                raise ValueError(f"unknown service(s): {', '.join(unknown)}")
        for svc, env in v.items():
            bad = [k for k in env if not ENV_KEY_RE.match(k)]
            if bad:
                raise ValueError(f"{svc}: invalid variable name(s): {', '.join(bad)}")
        return v


def device_view(hub: HubContext, d: DeviceRecord, now: datetime) -> dict[str, Any]:
    """Return a device as the API shows it, with connectivity and drift."""
    fleet = hub.config.fleet
    return {
        "id": d.id,
        "hostname": d.hostname,
        "tags": d.tags,
        "disabled": d.disabled,
        "enrolled_at": d.enrolled_at.isoformat(),
        "last_contact": d.last_contact.isoformat() if d.last_contact else None,
        "connectivity": connectivity(
            d.last_contact, now, fleet.online_after_s, fleet.stale_after_s
        ).value,
        "agent_version": d.agent_version,
        "target_revision": d.target_revision,
        "applied_revision": d.applied_revision,
        "running_revision": d.running_revision,
        "running_local_seq": d.running_local_seq,
        "applying_revision": d.applying_revision,
        "rollout_state": d.rollout_state,
        "window_opens_at": d.window_opens_at.isoformat() if d.window_opens_at else None,
        "release_trust_stale": d.release_trust_stale,
        "drift": drift(
            d.target_revision,
            d.applied_revision,
            running_revision=d.running_revision,
            running_local_seq=d.running_local_seq,
            applying_revision=d.applying_revision,
            rollout_state=d.rollout_state,
        ).value,
        "acked_seq": d.acked_seq,
        "state": d.state,
        "release": d.release,
        "services": d.services,
        "counters": d.counters,
        "last_error": d.last_error,
        "status_at": d.status_at.isoformat() if d.status_at else None,
        "certificate": {
            "serial": d.cert_serial,
            "fingerprint": d.cert_fingerprint,
            "not_after": d.cert_not_after.isoformat(),
        },
    }


@routes.post("/api/v1/enrollment-tokens")
@described(body=CreateTokenRequest, status=201)
async def create_token(request: web.Request) -> web.Response:
    """Create an enrollment token; the secret is in this response only."""
    hub = ctx(request)
    async with audited(request, Permission.TOKENS_CREATE, "token.create", "-") as act:
        req = parse(CreateTokenRequest, await json_body(request))
        limits = hub.config.limits
        if req.uses > limits.max_token_uses or req.expires_in_s > limits.max_token_lifetime_s:
            raise InvalidRequest(
                f"uses must be <= {limits.max_token_uses} and expires_in_s <= "
                f"{limits.max_token_lifetime_s}",
                fields=[{"field": "uses"}, {"field": "expires_in_s"}],
            )
        new = new_enrollment_token()
        now = hub.now()
        record = EnrollmentTokenRecord(
            new.token_id,
            new.secret_hash,
            req.uses,
            req.uses,
            now + timedelta(seconds=req.expires_in_s),
            req.tags,
            now,
            act.principal.name,
        )
        act.target = new.token_id
        audit = act.ok(uses=req.uses, expires_at=record.expires_at.isoformat(), tags=req.tags)
        await hub.store.create_enrollment_token(record, audit)
    body = {
        "id": new.token_id,
        "token": new.token,
        "uses": req.uses,
        "expires_at": record.expires_at.isoformat(),
        "tags": req.tags,
    }
    return web.json_response(body, status=201)


@routes.get("/api/v1/devices")
@described()
async def list_devices(request: web.Request) -> web.Response:
    """List every device with its fleet state."""
    principal(request, Permission.DEVICES_READ)
    hub = ctx(request)
    now = hub.now()
    devices = [
        device_view(hub, d, now) for d in visible_devices(request, await hub.store.list_devices())
    ]
    return web.json_response({"devices": devices})


@routes.get("/api/v1/devices/{device_id}")
@described(errors=(404,))
async def show_device(request: web.Request) -> web.Response:
    """Show one device."""
    principal(request, Permission.DEVICES_READ)
    hub = ctx(request)
    device = await device_or_404(hub, request.match_info["device_id"])
    view = device_view(hub, device, hub.now())
    view["audit_chain"] = asdict(await hub.store.device_audit_chain(device.id))
    latest = await hub.store.latest_metrics(device.id)
    view["metrics"] = sample_view(latest) if latest is not None else None
    view["hold"] = hold_view(await hub.store.latest_status_report(device.id), hub.now())
    return web.json_response(view)


@routes.get("/api/v1/devices/{device_id}/target")
@described(errors=(404,))
async def show_target(request: web.Request) -> web.Response:
    """Show the device's newest target, decoded, and its signed form."""
    principal(request, Permission.DEVICES_READ)
    hub = ctx(request)
    device_id = request.match_info["device_id"]
    await device_or_404(hub, device_id)
    record = await hub.store.get_target(device_id)
    if record is None:
        raise NotFound(f"device {device_id!r} has no target")
    document = json.loads(base64.b64decode(record.signed.payload))
    return web.json_response(
        {
            "revision": record.revision,
            "created_by": record.created_by,
            "created_at": record.created_at.isoformat(),
            "target": document,
            "signed": record.signed.model_dump(),
        }
    )


@routes.post("/api/v1/devices/{device_id}/target")
@described(body=SetTargetRequest, status=201, errors=(404, 409, 502))
async def set_target(request: web.Request) -> web.Response:
    """Sign and store the device's next target revision, then wake its long-poll."""
    hub = ctx(request)
    device_id = request.match_info["device_id"]
    async with audited(request, Permission.TARGETS_WRITE, "target.set", device_id) as act:
        req = parse(SetTargetRequest, await json_body(request))
        prepared = await secret_refs.prepare(request.app[SECRET_BOX], hub.store, req.release)
        req = req.model_copy(update={"release": prepared.release})  # names, never values
        moved = secret_refs.moved_rows(prepared, act.principal.name, act.source)
        now = hub.now()
        expires_at = now + timedelta(seconds=req.expires_in_s) if req.expires_in_s else None
        options = TargetOptions(
            req.apply_deadline_s, req.min_ready_s, expires_at, req.window, req.immediate
        )
        record = await issue_target(
            hub,
            device_id,
            req.release,
            req.overrides,
            options,
            act.ok(release=req.release.ref),
            secrets=moved,  # stored with the target, in its transaction
        )
    return web.json_response(
        {
            "device_id": device_id,
            "revision": record.revision,
            "release": req.release.ref,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
        status=201,
    )


@dataclass(frozen=True)
class TargetOptions:
    """How a target is applied: the agent's deadlines, and when it expires."""

    apply_deadline_s: float = 120.0
    min_ready_s: float = 5.0
    expires_at: datetime | None = None
    window: MaintenanceWindow | None = None
    immediate: bool = False  # apply at once, whatever the window (a rollback)


async def issue_target(
    hub: HubContext,
    device_id: str,
    release: Release,
    explicit: dict[str, dict[str, str]],
    options: TargetOptions,
    audit: AuditRecord,
    secrets: Sequence[tuple[SealedSecret, AuditRecord]] = (),
) -> TargetRecord:
    """Sign and store the device's next target with ``audit``, then wake its long-poll.

    The target carries the device's group and own overrides under ``explicit``. NotFound
    if the device is unknown; Conflict if it is disabled or its agent lacks a feature the
    release needs; OverrideConflict if its groups disagree.
    """
    now = audit.at
    overrides = await overrides_for_target(hub.store, device_id, release, explicit)
    release_trust = await trust_for_target(hub, device_id)
    policy = await policy_for_target(hub.store, hub.config.device_policy, device_id, release)

    def make(revision: int) -> Target:
        return Target(
            device_id=device_id,
            revision=revision,
            release=release,
            overrides=overrides,
            issued_at=now,
            expires_at=options.expires_at,
            apply_deadline_s=options.apply_deadline_s,
            min_ready_s=options.min_ready_s,
            window=options.window,
            immediate=options.immediate,
            release_trust=release_trust,
            policy=policy,
        )

    def build(revision: int) -> Any:
        return sign_target(make(revision), hub.pki.signing_key)

    await _check_features(hub, device_id, make(1))
    record = await hub.store.put_target(device_id, build, audit, now, secrets)
    hub.notifier.notify(device_id)  # after commit
    return record


async def _check_features(hub: HubContext, device_id: str, target: Target) -> None:
    """Refuse (409) a target that uses a feature the device's agent has not reported."""
    known = await hub.store.device_features(device_id)
    missing = sorted(required_features(target) - (BASELINE_FEATURES if known is None else known))
    if missing:
        raise Conflict(
            f"device {device_id!r} runs an agent without target feature(s) "
            f"{', '.join(missing)}; update its agent first",
            fields=[{"field": "release", "message": f"needs feature {m}"} for m in missing],
        )


async def _set_disabled(request: web.Request, disabled: bool) -> web.Response:
    hub = ctx(request)
    device_id = request.match_info["device_id"]
    action = "device.disable" if disabled else "device.enable"
    async with audited(request, Permission.DEVICES_WRITE, action, device_id) as act:
        device = await hub.store.set_device_disabled(device_id, disabled, act.ok())
    hub.notifier.notify(device_id)  # an open long-poll re-checks and is refused
    return web.json_response(device_view(hub, device, hub.now()))


@routes.post("/api/v1/devices/{device_id}/disable")
@described(errors=(404,))
async def disable_device(request: web.Request) -> web.Response:
    """Refuse the device from its next request on."""
    return await _set_disabled(request, True)


@routes.post("/api/v1/devices/{device_id}/enable")
@described(errors=(404,))
async def enable_device(request: web.Request) -> web.Response:
    """Accept a disabled device again."""
    return await _set_disabled(request, False)


@routes.get("/api/v1/devices/{device_id}/events")
@described(query=PAGE_QUERY, errors=(404,))
async def list_events(request: web.Request) -> web.Response:
    """Page through the entries a device sent, in seq order."""
    principal(request, Permission.DEVICES_READ)
    hub = ctx(request)
    device_id = request.match_info["device_id"]
    await device_or_404(hub, device_id)
    after, limit = page(request, "after", hub.config.limits.max_events_page)
    events = await hub.store.list_events(device_id, after, limit)
    return web.json_response(
        {
            "events": [
                {
                    "seq": e.seq,
                    "kind": e.kind,
                    "created_at": e.created_at.isoformat(),
                    "received_at": e.received_at.isoformat(),
                    "payload": e.payload,
                }
                for e in events
            ],
            "next_after": events[-1].seq if events else after,
        }
    )


@routes.get("/api/v1/audit")
@described(query=AUDIT_QUERY, errors=(404,))
async def list_audit(request: web.Request) -> web.Response:
    """Page through hub and device audit records (filters: ``hub.audit_api``)."""
    return await audit_api.list_audit(request)
