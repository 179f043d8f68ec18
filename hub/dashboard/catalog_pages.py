"""Releases and groups in the dashboard.

    GET /ui/releases   releases, oldest first, ``dashboard.page_size`` a page (``after``:
                       a release id); each retired one flagged, with the devices (in the
                       viewer's scope) still running it
    GET /ui/groups     groups in the viewer's scope: selector, members, overrides

The rows are the API's views (``hub.release_api.release_view``,
``hub.group_api.group_view``) and the routes have the permission and scope kind of
``GET /api/v1/releases`` and ``GET /api/v1/groups``.
"""

from __future__ import annotations

from collections import Counter

from aiohttp import web

from edge_agent.openapi import Query, described
from hub.context import ctx
from hub.dashboard.fleet_pages import scoped_views
from hub.dashboard.pages import HTML, query_int, render
from hub.drift_api import retired_report
from hub.group_api import group_view
from hub.release_api import release_view
from hub.route_access import visible_groups

routes = web.RouteTableDef()
MAX_ID = 2**63 - 1


@routes.get("/ui/releases")
@described(
    query=(Query("after", {"type": "integer", "minimum": 1, "maximum": MAX_ID}),),
    media=HTML,
    tags=("dashboard",),
)
async def releases(request: web.Request) -> web.Response:
    """List releases; retired ones flagged with the devices still running them."""
    hub = ctx(request)
    after = query_int(request, "after", 0, MAX_ID) if "after" in request.query else 0
    found = await hub.store.list_releases(after, hub.config.dashboard.page_size)
    running = Counter(v["release"] for v in await scoped_views(request) if v.get("release"))
    holders = {r["ref"]: r["devices"] for r in (await retired_report(request))["releases"]}
    rows = [release_view(r, document=False) for r in found]
    return render(
        request,
        "releases.html",
        title="Releases",
        rows=rows,
        running=running,
        holders=holders,
        next_after=found[-1].id if len(found) == hub.config.dashboard.page_size else None,
    )


@routes.get("/ui/groups")
@described(media=HTML, tags=("dashboard",))
async def groups(request: web.Request) -> web.Response:
    """List the groups the viewer may see: selector, member count, overrides."""
    hub = ctx(request)
    devices = await hub.store.list_devices()
    rows = [group_view(g, devices) for g in visible_groups(request, await hub.store.list_groups())]
    return render(request, "groups.html", title="Groups", rows=rows)
