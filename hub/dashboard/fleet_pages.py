"""The fleet overview (``/ui/``) and the devices table (``/ui/devices``).

Both show only the devices in the viewer's read scope (``visible_devices``), counted
from the same device views the API answers with; the table is filtered, sorted and
paged on the server, so a page carries ``dashboard.page_size`` rows at any fleet size.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from edge_agent.openapi import STRING, Query, described
from hub.access import Permission
from hub.context import HubContext, ctx
from hub.dashboard import activity, fleet_view
from hub.dashboard.fleet_view import ORDERS, SORTS, DeviceFilter
from hub.dashboard.pages import (
    HTML,
    bad_query,
    choice_query,
    principal,
    query_choice,
    query_int,
    query_text,
    render,
)
from hub.dashboard.plots import Series, bar_chart, line_chart
from hub.dashboard.view_cache import VIEWS
from hub.errors import InvalidSelector, NotFound
from hub.fleet import Connectivity, Drift
from hub.route_access import keep_in_scope, visible_groups
from hub.selector import Selector, parse

routes = web.RouteTableDef()
CONNECTIVITY = tuple(c.value for c in Connectivity)
DRIFT = tuple(d.value for d in Drift)
MAX_PAGE = 1_000_000
HISTORY_HOURS = 24  # the fleet history plot's window
HISTORY_POINTS = 2000  # at most this many samples are read for it (the newest)
DEVICES_QUERY = (
    Query("selector", STRING, "a tag selector, e.g. site=berlin"),
    Query("group", STRING, "a group's name: its selector"),
    choice_query("connectivity", CONNECTIVITY),
    choice_query("drift", DRIFT),
    choice_query("health", fleet_view.HEALTH),
    Query("release", STRING, "name@version"),
    Query("q", STRING, "free text: id, hostname, release, tags"),
    choice_query("sort", SORTS),
    choice_query("order", ORDERS),
    Query("page", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}),
)


async def scoped_views(request: web.Request) -> list[dict[str, Any]]:
    """Return the API's views of the devices the viewer may read (built once per device
    change, shared by every viewer: ``hub.dashboard.view_cache``)."""
    hub = ctx(request)
    views = request.app[VIEWS].views(hub, await hub.store.list_devices(), hub.now())
    return keep_in_scope(request, views, lambda v: v["tags"])


@routes.get("/ui/")
@described(media=HTML, tags=("dashboard",))
async def overview(request: web.Request) -> web.Response:
    """Show the fleet overview: counts, activity plots, links into the table."""
    hub = ctx(request)
    views = await scoped_views(request)
    now = hub.now()
    hours = activity.hour_labels(now)
    rows = await request.app[activity.ACTIVITY].rows(hub.store, now)
    ids = {v["id"] for v in views}
    short = [h[-2:] + "h" for h in hours]
    plots = {
        "contact": bar_chart(
            "Devices by the hour they were last heard from (UTC, last 24 h)",
            short,
            activity.contact_series((v["last_contact"] for v in views), hours),
        ),
        "events": bar_chart(
            "Events and errors per hour (UTC, last 24 h)",
            short,
            activity.events_series(rows, ids, hours),
        ),
    }
    # The samples count the whole fleet: shown only to who may read every device.
    if principal(request).sees_all(Permission.DEVICES_READ):
        plots["history"] = await history_plot(hub)
    return render(
        request,
        "overview.html",
        title="Fleet",
        counts=fleet_view.counts(views),
        plots=plots,
        history_interval=f"{hub.config.dashboard.history_interval_s:g}",
    )


async def history_plot(hub: HubContext) -> Any:
    """Return the plot of devices online, offline, in sync and drifted over the samples
    of the last ``HISTORY_HOURS`` (None before the first sample)."""
    since = hub.now() - timedelta(hours=HISTORY_HOURS)
    samples = await hub.store.fleet_samples(since, HISTORY_POINTS)
    if not samples:
        return None
    short = samples[-1].at - samples[0].at < timedelta(hours=1)  # seconds tell them apart
    labels = [s.at.strftime("%H:%M:%S" if short else "%H:%M") for s in samples]
    series = [
        Series("online", [s.online for s in samples]),
        Series("offline", [s.offline for s in samples]),
        Series("in sync", [s.in_sync for s in samples]),
        Series("drifted", [s.drifted for s in samples]),
    ]
    title = f"Devices online and in sync (UTC, last {HISTORY_HOURS} h, {len(samples)} samples)"
    return line_chart(title, labels, series)


def _parse(text: str) -> Selector:
    try:
        return parse(text)
    except InvalidSelector as exc:
        raise bad_query("selector", exc.message) from None


async def _selectors(request: web.Request) -> tuple[Selector, ...]:
    text, group = query_text(request, "selector", 1000), query_text(request, "group")
    found: list[Selector] = [_parse(text)] if text else []
    if group:
        groups = visible_groups(request, await ctx(request).store.list_groups())
        named = next((g for g in groups if g.name == group), None)
        if named is None:
            raise NotFound(f"no group {group!r}", fields=[{"field": "group"}])
        found.append(parse(named.selector))
    return tuple(found)


async def device_filter(request: web.Request) -> DeviceFilter:
    """Return the table's filter from the query (400 naming a bad parameter)."""
    return DeviceFilter(
        selectors=await _selectors(request),
        connectivity=query_choice(request, "connectivity", CONNECTIVITY),
        drift=query_choice(request, "drift", DRIFT),
        health=query_choice(request, "health", fleet_view.HEALTH),
        release=query_text(request, "release"),
        text=query_text(request, "q"),
        sort=query_choice(request, "sort", SORTS) or "id",
        order=query_choice(request, "order", ORDERS) or "asc",
    )


@routes.get("/ui/devices")
@described(query=DEVICES_QUERY, errors=(404,), media=HTML, tags=("dashboard",))
async def devices(request: web.Request) -> web.Response:
    """Show the devices table: filtered, sorted and paged on the server."""
    hub = ctx(request)
    f = await device_filter(request)
    page_no = query_int(request, "page", 1, MAX_PAGE)
    views = await scoped_views(request)
    page = fleet_view.select(views, f, page_no, hub.config.dashboard.page_size)
    groups = visible_groups(request, await hub.store.list_groups())
    kept = {k: v for k, v in request.query.items() if k != "page" and v}

    def link(**change: Any) -> str:
        return "/ui/devices?" + urlencode({**kept, **{k: str(v) for k, v in change.items()}})

    return render(
        request,
        "devices.html",
        title="Devices",
        page=page,
        f=f,
        query=dict(request.query),
        groups=[g.name for g in groups],
        releases=sorted({v["release"] for v in views if v.get("release")}),
        choices={"connectivity": CONNECTIVITY, "drift": DRIFT, "health": fleet_view.HEALTH},
        sorts=SORTS,
        link=link,
        health=fleet_view.health,
    )
