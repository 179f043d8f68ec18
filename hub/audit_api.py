"""The audit listing: hub and device records in one query (Bearer token, audit:read).

    GET /api/v1/audit   ?actor=&action=&device=&group=&since=&until=&source=&cursor=&limit=

``action`` matches exactly, or by prefix when it ends in ``*``; ``device`` selects the
device's own records and the hub's records about it (target = device id); ``group`` the
same for every member of the group's selector at the time of asking; ``since``
(inclusive) and ``until`` (exclusive) are ISO 8601 times (UTC if no offset); ``source``
is all (default), hub or device. Page with ``cursor`` = the previous page's
``next_cursor`` until a page is empty. ``after`` (a hub record id) is the older cursor:
it still pages hub records, and device records that arrived before that hub record.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from edge_agent.openapi import STRING, Query, enum
from hub.auth import Permission
from hub.context import HubContext, ctx
from hub.errors import InvalidRequest
from hub.operator_calls import INT64_MAX, PAGE_QUERY, page, principal
from hub.route_access import audit_group_selector, audit_scope, visible_audit
from hub.selector import matches
from hub.store import AuditCursor, AuditEntry, AuditQuery
from hub.store.records import iso_utc

SOURCES = ("all", "hub", "device")
AUDIT_QUERY = (
    *PAGE_QUERY,
    Query("cursor", STRING, "the next_cursor of the previous page"),
    Query("actor", STRING),
    Query("action", STRING),
    Query("device", STRING),
    Query("group", STRING),
    Query("since", {"type": "string", "format": "date-time"}),
    Query("until", {"type": "string", "format": "date-time"}),
    Query("source", enum(SOURCES)),
)


def _bad(name: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{name}: {message}", fields=[{"field": name}], status=400)


def parse_cursor(text: str) -> AuditCursor:
    """Return the cursor ``pos.rank.id`` (400 naming ``cursor`` when it is not one)."""
    parts = text.split(".")
    try:
        pos, rank, id_ = (int(p) for p in parts)
    except ValueError:
        raise _bad("cursor", "must be a next_cursor of this API") from None
    if not (0 <= pos <= INT64_MAX and rank in (0, 1) and 0 <= id_ <= INT64_MAX):
        raise _bad("cursor", "must be a next_cursor of this API")
    return AuditCursor(pos, rank, id_)


def parse_time(name: str, text: str | None) -> str | None:
    """Return an ISO time parameter as the store's UTC text (400 naming it when bad)."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise _bad(name, f"not an ISO 8601 time: {text[:64]!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return iso_utc(value)


async def _devices(
    request: web.Request, device: str | None, group: str | None
) -> frozenset[str] | None:
    """Return the device ids the query is about (None: any device).

    A group outside the caller's scope is answered as an absent one (404).
    """
    wanted: frozenset[str] | None = None
    if group is not None:
        selector = await audit_group_selector(request, group)
        found = await ctx(request).store.list_devices()
        wanted = frozenset(d.id for d in found if matches(selector, d.tags))
    if device is not None:
        wanted = frozenset({device}) if wanted is None else wanted & {device}
    return wanted


async def build_query(request: web.Request, hub: HubContext) -> AuditQuery:
    """Return the query the request's parameters describe."""
    q = request.query
    after, limit = page(request, "after", hub.config.limits.max_events_page)
    cursor = parse_cursor(q["cursor"]) if "cursor" in q else AuditCursor(after, 1, INT64_MAX)
    if "cursor" not in q and after == 0:
        cursor = AuditCursor()
    source = q.get("source", "all")
    if source not in SOURCES:
        raise _bad("source", f"must be one of {', '.join(SOURCES)}")
    return AuditQuery(
        cursor=cursor,
        limit=limit,
        actor=q.get("actor"),
        action=q.get("action"),
        devices=await _devices(request, q.get("device"), q.get("group")),
        since=parse_time("since", q.get("since")),
        until=parse_time("until", q.get("until")),
        source=source,
        scope=await audit_scope(request),
    )


def entry_view(e: AuditEntry) -> dict[str, Any]:
    """Return one listing record as the API shows it."""
    view: dict[str, Any] = {
        "source": e.source,
        "id": e.id,
        "at": e.at,
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "outcome": e.outcome,
        "detail": e.detail,
        "hash": e.hash,
    }
    if e.source == "hub":
        view["source_addr"] = e.source_addr
    else:
        view.update(
            device_id=e.device_id,
            record_id=e.record_id,
            received_at=e.received_at,
            chain_broken=e.chain_broken,
            held=e.held,  # ahead of a gap, not judged yet: chain_broken is null meanwhile
        )
    return view


async def list_audit(request: web.Request) -> web.Response:
    """Page through hub and device audit records matching the filters."""
    principal(request, Permission.AUDIT_READ)
    hub = ctx(request)
    query = await build_query(request, hub)
    found = await hub.store.query_audit(query)
    last = found[-1].cursor if found else query.cursor
    hub_ids = [e.id for e in found if e.source == "hub"]
    return web.json_response(
        {
            "audit": [entry_view(e) for e in await visible_audit(request, found)],
            "next_cursor": last.text(),
            "next_after": hub_ids[-1] if hub_ids else query.cursor.pos,
        }
    )
