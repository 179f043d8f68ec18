"""Prometheus scrape endpoint (``devices:read`` on scope ALL: a viewer of the whole fleet).

    GET /metrics    the text exposition format 0.0.4 (``hub.prom`` says what is in it)

Access: the figures are fleet-wide aggregates, so only a principal that may read every
device may read them (a viewer grant on scope ``all``; a scoped viewer is refused 403,
as for every ``Kind.ADMIN`` route). Prometheus sends a user token of its own as
``authorization: {credentials_file: ...}``: revocable, expiring, audited when refused,
rate-limited like every other operator credential. A second, unauthenticated listener
was not added: one more port to protect, and it would show fleet-wide numbers to anyone
who reaches the host.
"""

from __future__ import annotations

import time
from datetime import timedelta

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edge_agent.openapi import described
from hub import guard
from hub.context import ctx
from hub.prom import METRICS, Exposition, Snapshot, snapshot_families

routes = web.RouteTableDef()


@routes.get("/metrics")
@described(media="text/plain", tags=("meta",))
async def metrics(request: web.Request) -> web.Response:
    """The hub's metrics in the Prometheus text format."""
    snap = await read_snapshot(request)
    families = Exposition((request.app[METRICS].registry.collect(), snapshot_families(snap)))
    body = generate_latest(families)  # type: ignore[arg-type]  # any object with collect()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def read_snapshot(request: web.Request) -> Snapshot:
    """Read what the scrape shows from the store (two aggregate queries) and the hub."""
    hub = ctx(request)
    started = time.perf_counter()
    now, fleet = hub.now(), hub.config.fleet
    devices = await hub.store.fleet_counts(
        now - timedelta(seconds=fleet.online_after_s), now - timedelta(seconds=fleet.stale_after_s)
    )
    rollouts = await hub.store.rollout_counts()
    return Snapshot(
        devices=devices,
        rollouts=rollouts,
        writer=hub.store.writer_stats(),
        long_polls=hub.notifier.stats(),
        refusals=dict(request.app[guard.REFUSALS].by_action),
        read_seconds=time.perf_counter() - started,
    )
