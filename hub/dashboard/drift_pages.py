"""Drift and retired in the dashboard: "which hosts run what they should not".

    GET /ui/drift    the devices whose host report differs from their target (what
                     differs), those without a report, and each retired release with the
                     devices still running it

The page shows the API's own answers (``hub.drift_api.drift_report`` and
``retired_report``, i.e. ``GET /api/v1/drift`` and ``/api/v1/retired``) for the viewer's
scope; its route has their permission and scope kind. The overview links here.
"""

from __future__ import annotations

from aiohttp import web

from edge_agent.openapi import described
from hub.dashboard.pages import HTML, render
from hub.drift_api import drift_report, retired_report

routes = web.RouteTableDef()


@routes.get("/ui/drift")
@described(media=HTML, tags=("dashboard",))
async def drift(request: web.Request) -> web.Response:
    """Show the devices that differ from their target and the retired releases still run."""
    found = await drift_report(request)
    retired = await retired_report(request)
    return render(
        request,
        "drift.html",
        title="Drift and retired",
        drift=found,
        retired=retired["releases"],
    )
