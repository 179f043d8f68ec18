"""The audit in the dashboard: search, paging, export.

    GET /ui/audit          search by actor, action (exact, or a prefix ending in *),
                           device, time and source; one page of
                           ``dashboard.page_size`` records in the API's order (oldest
                           first; ``cursor``: the previous page's next one)
    GET /ui/audit/export.jsonl, .csv   every matching record as a download

Both take the API's own query (``hub.audit_api.build_query``: the same parameters, the
same 400s), read with the same store query, keep the same rows
(``hub.route_access.visible_audit``) and need ``audit:read`` as ``GET /api/v1/audit``
does. The export is written page by page with edgectl's writer
(``hub.edgectl_audit.write``, the same columns), so memory stays flat.
"""

from __future__ import annotations

import dataclasses
import io
from urllib.parse import urlencode

from aiohttp import web

from edge_agent.openapi import STRING, Query, described
from hub.audit_api import AUDIT_QUERY, SOURCES, build_query, entry_view
from hub.context import ctx
from hub.dashboard.pages import HTML, choice_query, render
from hub.edgectl_audit import write
from hub.route_access import visible_audit

routes = web.RouteTableDef()
MEDIA = {"jsonl": "application/x-ndjson", "csv": "text/csv"}
FILTERS = ("actor", "action", "device", "since", "until", "source")


# The search form sends every field; an empty one is no filter (declared as such below).
PAGE_QUERY = (
    *(q for q in AUDIT_QUERY if q.name not in FILTERS),
    *(Query(name, STRING, "empty: no filter") for name in FILTERS if name != "source"),
    choice_query("source", SOURCES, "empty: all"),
)


def _filled(request: web.Request) -> web.Request:
    """Return the request without its empty filters."""
    kept = {
        k: v for k, v in request.query.items() if k != "format" and (k not in FILTERS or v.strip())
    }
    return request.clone(rel_url=request.rel_url.with_query(kept))


@routes.get("/ui/audit")
@described(query=PAGE_QUERY, errors=(400, 404), media=HTML, tags=("dashboard",))
async def audit(request: web.Request) -> web.Response:
    """Search the audit: one page of matching records, a link to the next, export links."""
    hub = ctx(request)
    filled = _filled(request)
    query = await build_query(filled, hub)
    if "limit" not in filled.query:
        query = dataclasses.replace(query, limit=hub.config.dashboard.page_size)
    found = await hub.store.query_audit(query)
    rows = [entry_view(e) for e in await visible_audit(request, found)]
    filters = {k: v for k, v in filled.query.items() if k in FILTERS}
    older = urlencode({**filters, "cursor": found[-1].cursor.text()}) if found else None
    return render(
        request,
        "audit.html",
        title="Audit",
        rows=rows,
        f=filters,
        sources=SOURCES,
        older=older,
        export=urlencode(filters),
    )


@routes.get("/ui/audit/export.jsonl")
@described(query=PAGE_QUERY, errors=(400, 404), media=MEDIA["jsonl"], tags=("dashboard",))
async def export_jsonl(request: web.Request) -> web.StreamResponse:
    """Download every matching record as JSON Lines (one record a line, as the API's)."""
    return await export(request, "jsonl")


@routes.get("/ui/audit/export.csv")
@described(query=PAGE_QUERY, errors=(400, 404), media=MEDIA["csv"], tags=("dashboard",))
async def export_csv(request: web.Request) -> web.StreamResponse:
    """Download every matching record as CSV (the columns of edgectl audit --format csv)."""
    return await export(request, "csv")


async def export(request: web.Request, fmt: str) -> web.StreamResponse:
    """Stream every matching record in ``fmt``, page by page (flat memory)."""
    hub = ctx(request)
    query = await build_query(_filled(request), hub)
    response = web.StreamResponse(
        headers={
            "Content-Type": f"{MEDIA[fmt]}; charset=utf-8",
            "Content-Disposition": f'attachment; filename="audit.{fmt}"',
            "Cache-Control": "no-store",
        }
    )
    await response.prepare(request)
    first = True
    while found := await hub.store.query_audit(query):
        rows = [entry_view(e) for e in await visible_audit(request, found)]
        buf = io.StringIO()
        write(iter(rows), fmt, buf)
        text = buf.getvalue()
        if fmt == "csv" and not first:
            text = text.split("\n", 1)[1]  # the header row once, on the first page
        await response.write(text.encode())
        first = False
        query = dataclasses.replace(query, cursor=found[-1].cursor)
    await response.write_eof()
    return response
