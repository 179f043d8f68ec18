"""The fleet's drift and retired-release views (read-only; permission ``devices:read``).

    GET /api/v1/drift     devices whose host report differs from their target, or stale
    GET /api/v1/retired   per retired release, the devices still holding it, since when

Both are computed by ``hub.drift`` from each device's latest host container report, its
newest target and the releases; nothing is stored here.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from aiohttp import web

from edge_agent.openapi import described
from edge_agent.protocol import HostContainerReport
from hub.auth import Permission
from hub.context import HubContext, ctx
from hub.drift import DeviceFacts, RetiredRelease, differences, retired_on
from hub.operator_calls import principal
from hub.route_access import keep_in_scope
from hub.store import DeviceRecord, HostReport, ReleaseRecord

routes = web.RouteTableDef()
RELEASE_PAGE = 1000


async def _target_images(hub: HubContext, device: DeviceRecord) -> dict[str, str] | None:
    """Return service -> image of the device's newest target (None: it has none)."""
    if device.target_revision <= 0:
        return None
    record = await hub.store.get_target(device.id)
    if record is None:
        return None
    document = json.loads(base64.b64decode(record.signed.payload))
    return {s["name"]: s["image"] for s in document["release"]["services"]}


async def _facts(hub: HubContext) -> list[tuple[DeviceRecord, DeviceFacts]]:
    reports = await hub.store.list_host_reports()
    out = []
    for d in await hub.store.list_devices():
        if d.disabled:
            continue
        images = await _target_images(hub, d)
        out.append((d, DeviceFacts(d.id, d.last_contact, images, d.release, reports.get(d.id))))
    return out


def _report_view(report: HostReport | None) -> dict[str, Any]:
    if report is None:
        return {"reported_at": None, "host_containers_total": None}
    return {
        "reported_at": report.reported_at.isoformat(),
        "host_containers_total": report.total,
    }


@routes.get("/api/v1/drift")
@described()
async def list_drift(request: web.Request) -> web.Response:
    """List the devices that differ from their target, with what differs."""
    principal(request, Permission.DEVICES_READ)
    return web.json_response(await drift_report(request))


async def drift_report(request: web.Request) -> dict[str, Any]:
    """Return the drift answer for the caller's scope (the API's body; the dashboard's
    drift page shows the same)."""
    hub = ctx(request)
    now = hub.now()
    stale_after_s = hub.config.fleet.stale_after_s
    devices, unreported = [], []
    for d, facts in keep_in_scope(request, await _facts(hub), lambda p: p[0].tags):
        found = differences(facts, now, stale_after_s)
        if facts.report is None and facts.target_images is not None:
            unreported.append(d.id)
        if found:
            devices.append(
                {
                    "device_id": d.id,
                    "hostname": d.hostname,
                    "last_contact": d.last_contact.isoformat() if d.last_contact else None,
                    "target_revision": d.target_revision,
                    "release": d.release,
                    **_report_view(facts.report),
                    "differences": found,
                }
            )
    return {"devices": devices, "not_reported": unreported, "stale_after_s": stale_after_s}


async def _retired_releases(hub: HubContext) -> list[ReleaseRecord]:
    out: list[ReleaseRecord] = []
    after = 0
    while page := await hub.store.list_releases(after, RELEASE_PAGE):
        out += [r for r in page if r.retired_at is not None]
        after = page[-1].id
    return out


def _container_view(c: HostContainerReport) -> dict[str, Any]:
    return {
        "name": c.name,
        "image": c.image,
        "digest": c.digest,
        "state": c.state,
        "managed": c.managed,
    }


def _holders(release: ReleaseRecord, facts: list[DeviceFacts]) -> list[dict[str, Any]]:
    digests = frozenset(i["digest"] for i in release.images if i.get("digest"))
    retired = RetiredRelease(release.ref, digests)
    out = []
    for f in facts:
        found = retired_on(retired, f)
        if found is not None:
            since, containers = found
            out.append(
                {
                    "device_id": f.device_id,
                    "since": since.isoformat(),
                    "containers": [_container_view(c) for c in containers],
                }
            )
    return out


def _release_row(release: ReleaseRecord, devices: list[dict[str, Any]]) -> dict[str, Any]:
    at: datetime = release.retired_at  # type: ignore[assignment]
    return {
        "ref": release.ref,
        "retired_at": at.isoformat(),
        "retired_by": release.retired_by,
        "reason": release.retired_reason,
        "digests": sorted({i["digest"] for i in release.images if i.get("digest")}),
        "devices": devices,
    }


@routes.get("/api/v1/retired")
@described()
async def list_retired(request: web.Request) -> web.Response:
    """List every retired release with the devices still holding it, and since when."""
    principal(request, Permission.DEVICES_READ)
    return web.json_response(await retired_report(request))


async def retired_report(request: web.Request) -> dict[str, Any]:
    """Return the retired answer for the caller's scope (the API's body and the page's)."""
    hub = ctx(request)
    facts = [f for _, f in keep_in_scope(request, await _facts(hub), lambda p: p[0].tags)]
    releases = [_release_row(r, _holders(r, facts)) for r in await _retired_releases(hub)]
    return {"releases": releases}
