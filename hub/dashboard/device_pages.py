"""One device's page (``/ui/devices/{id}``) and its live part, polled by ``live.js``.

The page needs what ``GET /api/v1/devices/{id}`` needs (devices:read on the device); a
device outside the viewer's scope answers 404 as an absent one does. Its audit section
needs audit:read and shows what ``visible_audit`` keeps.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

from aiohttp import web

from edge_agent.openapi import described
from hub.access import Permission
from hub.context import HubContext, ctx
from hub.dashboard import fleet_view
from hub.dashboard.pages import HTML, principal, render
from hub.dashboard.plots import Series, contact_strip, line_chart
from hub.operator_api import device_view
from hub.operator_calls import device_or_404
from hub.route_access import visible_audit
from hub.store import AuditCursor, AuditEntry, AuditQuery, MetricsSample
from hub.store.records import iso_utc

routes = web.RouteTableDef()
EVENTS_SHOWN = 20
AUDIT_SHOWN = 20
AUDIT_DAYS = 7
METRICS_SHOWN = 120
SPANS_LISTED = 10  # the newest contact spans listed in words under the strips


async def _target(hub: HubContext, device_id: str) -> dict[str, Any] | None:
    record = await hub.store.get_target(device_id)
    if record is None:
        return None
    document: dict[str, Any] = json.loads(base64.b64decode(record.signed.payload))
    release = document.get("release", {})
    return {
        "revision": record.revision,
        "release": f"{release.get('name')}@{release.get('version')}",
        "created_by": record.created_by,
        "created_at": record.created_at,
        "services": {s.get("name"): s.get("image", "") for s in release.get("services", [])},
    }


async def live_values(request: web.Request) -> dict[str, Any]:
    """Return what the live part of the page shows: the device's current state."""
    hub = ctx(request)
    device = await device_or_404(hub, request.match_info["device_id"])
    view = device_view(hub, device, hub.now())
    report = await hub.store.device_host_report(device.id)
    return {
        "d": view,
        "health": fleet_view.health(view),
        "target": await _target(hub, device.id),
        "containers": report.containers if report is not None else None,
        "containers_total": report.total if report is not None else 0,
        "report_at": report.reported_at if report is not None else None,
    }


def metrics_plots(samples: list[MetricsSample]) -> dict[str, Any]:
    """Return the CPU and memory plots of the held samples (oldest first)."""
    labels = [s.at.strftime("%H:%M") for s in samples]
    cpu = [_number(s.sample.get("cpu_percent")) for s in samples]
    memory = []
    for s in samples:
        mem = s.sample.get("memory") or {}
        total, used = _number(mem.get("total_bytes")), _number(mem.get("used_bytes"))
        memory.append(100 * used / total if total and used is not None else None)
    return {
        "cpu": line_chart("CPU use (%)", labels, [Series("cpu", cpu)], "%"),
        "memory": line_chart("Memory used (%)", labels, [Series("memory", memory)], "%"),
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


async def _audit(request: web.Request, device_id: str) -> list[AuditEntry] | None:
    if not principal(request).allows(Permission.AUDIT_READ):
        return None
    hub = ctx(request)
    since = iso_utc(hub.now() - timedelta(days=AUDIT_DAYS))
    query = AuditQuery(AuditCursor(), 500, devices=frozenset({device_id}), since=since)
    entries = await visible_audit(request, await hub.store.query_audit(query))
    return list(reversed(entries[-AUDIT_SHOWN:]))


async def connectivity(hub: HubContext, device_id: str) -> dict[str, Any]:
    """Return the strips of when the device was heard from (last 24 h, last 7 d) and its
    newest contact spans. A span counts as heard from until fleet.online_after_s after
    its last sync, as connectivity says "online"."""
    now, grace = hub.now(), timedelta(seconds=hub.config.fleet.online_after_s)
    week = now - timedelta(days=7)
    spans = await hub.store.contact_spans(device_id, week - grace)
    heard = [(s.started_at, min(s.last_at + grace, now)) for s in spans]
    day = now - timedelta(hours=24)
    return {
        "day": contact_strip("Heard from, last 24 h (UTC)", heard, day, now),
        "week": contact_strip("Heard from, last 7 days (UTC)", heard, week, now, "%a %H:%M"),
        "spans": list(reversed(heard[-SPANS_LISTED:])),
    }


@routes.get("/ui/devices/{device_id}")
@described(errors=(404,), media=HTML, tags=("dashboard",))
async def device_page(request: web.Request) -> web.Response:
    """Show one device: state, target vs applied, containers, metrics, events, audit."""
    hub = ctx(request)
    values = await live_values(request)
    device_id = values["d"]["id"]
    history = await hub.store.list_metrics(device_id, None, METRICS_SHOWN)
    return render(
        request,
        "device.html",
        title=f"Device {values['d']['hostname']}",
        **values,
        plots=metrics_plots(history.samples) if history.samples else None,
        events=await hub.store.recent_events(device_id, EVENTS_SHOWN),
        contact=await connectivity(hub, device_id),
        online_after=f"{hub.config.fleet.online_after_s:g}",
        follow_max=hub.config.dashboard.log_follow_max_s,
        tail_max=hub.config.dashboard.log_tail_lines,
        audit=await _audit(request, device_id),
        now=hub.now(),
    )


@routes.get("/ui/devices/{device_id}/live")
@described(errors=(404,), media=HTML, tags=("dashboard",))
async def device_live(request: web.Request) -> web.Response:
    """Return the live part of the device page (HTML), for polling."""
    return render(request, "device_live.html", title="", **await live_values(request))
