"""Wiring of the dashboard into the hub's application (called once by ``hub.app``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hub import guard
from hub.dashboard import (
    activity,
    audit_pages,
    auth_pages,
    catalog_pages,
    device_pages,
    drift_pages,
    fleet_pages,
    log_pages,
    rollout_pages,
    view_cache,
)


def install(app: web.Application) -> None:
    """Add the dashboard's routes and the state its pages share."""
    app.add_routes(auth_pages.routes)
    app.add_routes(fleet_pages.routes)
    app.add_routes(device_pages.routes)
    app.add_routes(rollout_pages.routes)
    app.add_routes(drift_pages.routes)
    app.add_routes(audit_pages.routes)
    app.add_routes(catalog_pages.routes)
    app.add_routes(log_pages.routes)
    app[activity.ACTIVITY] = activity.ActivityCache()
    app[view_cache.VIEWS] = view_cache.ViewCache()
    app[guard.LIMITED_PAGE] = auth_pages.limited_page
    app[log_pages.FOLLOWS] = log_pages.LogFollows()


def stats(app: web.Application) -> dict[str, Any]:
    """Return the dashboard's counters for /healthz (bounds reached are counted here)."""
    return {"log_follows": app[log_pages.FOLLOWS].stats()}
