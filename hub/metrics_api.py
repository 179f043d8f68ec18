"""Device metrics history (read-only; permission ``devices:read``).

    GET /api/v1/devices/{id}/metrics   ?since=ISO-8601&limit=N   the held samples, oldest first

The hub keeps the latest ``metrics.history_per_device`` samples per device (hub migration
14, ``hub.store.sqlite_metrics``); the answer says how many are held and how many the
bounds cost (trimmed, oversize). ``entry_kinds`` is what a sync answer tells an agent
that lists the ``entry_kinds`` feature: the additive outbox kinds this hub stores (an
agent sends a ``metrics`` entry only to a hub that lists it; an older hub would refuse
the whole batch).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from edge_agent.openapi import Query, described
from hub.auth import Permission
from hub.context import ctx
from hub.errors import InvalidRequest
from hub.operator_calls import device_or_404, principal
from hub.store import MetricsHistory, MetricsSample

routes = web.RouteTableDef()
FEATURE = "entry_kinds"
ENTRY_KINDS = ["metrics"]


def entry_kinds(features: list[str] | tuple[str, ...] | None) -> list[str] | None:
    """Return the sync answer's ``entry_kinds`` for an agent reporting ``features``."""
    return list(ENTRY_KINDS) if features is not None and FEATURE in features else None


def sample_view(s: MetricsSample) -> dict[str, Any]:
    """Return one sample as the API shows it."""
    return {
        "seq": s.seq,
        "at": s.at.isoformat(),
        "received_at": s.received_at.isoformat(),
        "sample": s.sample,
    }


def history_view(device_id: str, h: MetricsHistory) -> dict[str, Any]:
    """Return a device's history as the API shows it."""
    return {
        "device_id": device_id,
        "held": h.held,
        "trimmed": h.trimmed,
        "oversize": h.oversize,
        "samples": [sample_view(s) for s in h.samples],
    }


def _bad(name: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{name}: {message}", fields=[{"field": name}], status=400)


def parse_since(text: str | None) -> datetime | None:
    """Return ``since`` as an aware time (400 naming it when it is not ISO 8601)."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise _bad("since", f"not an ISO 8601 time: {text[:64]!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def parse_limit(text: str | None, high: int) -> int:
    """Return ``limit`` within 1..high (400 naming it otherwise); default ``high``."""
    if text is None:
        return high
    if not (text.isascii() and text.isdigit() and len(text) <= 9) or not 1 <= int(text) <= high:
        raise _bad("limit", f"must be an integer from 1 to {high}")
    return int(text)


@routes.get("/api/v1/devices/{device_id}/metrics")
@described(
    query=(
        Query("since", {"type": "string", "format": "date-time"}),
        Query("limit", {"type": "integer", "minimum": 1}),
    ),
    errors=(404,),
)
async def device_metrics(request: web.Request) -> web.Response:
    """Return the device's held metrics samples."""
    principal(request, Permission.DEVICES_READ)
    hub = ctx(request)
    device_id = request.match_info["device_id"]
    since = parse_since(request.query.get("since"))
    limit = parse_limit(request.query.get("limit"), hub.config.metrics.max_listed)
    await device_or_404(hub, device_id)
    history = await hub.store.list_metrics(device_id, since, limit)
    return web.json_response(history_view(device_id, history))
