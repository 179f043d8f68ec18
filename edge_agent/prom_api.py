"""The agent's Prometheus metrics on its local API: ``GET /v1/prometheus``.

Read from memory and two cheap store reads (the outbox's per-kind totals are kept in
memory; the oldest queued entry is the first row by seq): converges (duration, outcome),
containers by state, restarts and crash loops per service, outbox depth and bytes per
kind, drops, the age of the oldest entry not yet acknowledged by the hub (sync lag) and
the time of the last completed sync. Labels are bounded: states, kinds and outcomes are
fixed sets; ``service`` is a service of the device's own release. The exposition is
written by ``edge_agent.prom`` (no client library on the device).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, get_args

from aiohttp import web

from edge_agent import __version__
from edge_agent.executor import ReconcileState
from edge_agent.models import ContainerStatus
from edge_agent.openapi import described
from edge_agent.prom import CONTENT_TYPE, Exposition
from edge_agent.protocol import OutboxKind

if TYPE_CHECKING:
    from edge_agent.agent import Agent

PREFIX = "edgefleet_agent"
FINISHED = (ReconcileState.CONVERGED, ReconcileState.NOT_CONVERGED, ReconcileState.FAILED)
DROP_PREFIX = "dropped_"  # store counters "dropped_<kind>": entries dropped at a quota


@described(media="text/plain")
async def prometheus(request: web.Request) -> web.Response:
    """Return the agent's metrics in the Prometheus text format."""
    from edge_agent.api import AGENT_KEY  # api imports this module: resolved at call time

    text = await collect(request.app[AGENT_KEY])
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


async def collect(agent: Agent) -> str:
    """Return the exposition text of ``agent`` now."""
    out = Exposition(PREFIX)
    out.gauge("info", "The agent's version.", [({"version": __version__}, 1)])
    _converges(out, agent)
    _containers(out, agent)
    await _outbox(out, agent)
    _sync(out, agent)
    return out.render()


def _converges(out: Exposition, agent: Agent) -> None:
    reconciler = agent.reconciler
    if reconciler is None:
        return
    out.histogram(
        "converge_duration_seconds",
        "Time of one converge (read, plan, execute until the plan is empty).",
        reconciler.durations,
    )
    out.counter(
        "converges",
        "Finished converges by outcome.",
        [({"outcome": s.value}, reconciler.outcomes.get(s, 0)) for s in FINISHED],
    )


def _containers(out: Exposition, agent: Agent) -> None:
    current = agent.current_services()
    by_state = {s.value: 0 for s in ContainerStatus}
    for c in current:
        by_state[c.status.value] = by_state.get(c.status.value, 0) + 1
    out.gauge(
        "containers",
        "Managed containers by engine state (as last observed).",
        [({"state": state}, n) for state, n in by_state.items()],
    )
    supervisor = agent.supervisor
    states = supervisor.states() if supervisor is not None else {}
    totals = supervisor.restart_totals() if supervisor is not None else {}
    out.counter(
        "service_restarts",
        "Restarts of a service's container by the agent (crash or unhealthy) since it started.",
        [({"service": name}, n) for name, n in totals.items()],
    )
    out.gauge(
        "services_crash_looping",
        "Services in a crash loop.",
        [({}, sum(1 for s in states.values() if s.crash_loop))],
    )


async def _outbox(out: Exposition, agent: Agent) -> None:
    stats = await agent.store.outbox_stats()
    kinds = list(get_args(OutboxKind))
    queued = [(k, stats.get(k, {"entries": 0, "bytes": 0})) for k in kinds]
    out.gauge(
        "outbox_entries",
        "Entries queued for the hub, by kind.",
        [({"kind": k}, s["entries"]) for k, s in queued],
    )
    out.gauge(
        "outbox_bytes",
        "Bytes queued for the hub, by kind.",
        [({"kind": k}, s["bytes"]) for k, s in queued],
    )
    counters = await agent.store.counters()
    out.counter(
        "outbox_dropped",
        "Entries dropped at their kind's outbox quota (a 'dropped' marker says how many).",
        [({"kind": k}, counters.get(DROP_PREFIX + k, 0)) for k in kinds if k != "audit"],
    )
    out.counter(
        "logs_refused_disk_reserve",
        "Log lines refused because free disk was below the reserve.",
        [({}, counters.get("log_refused_disk_reserve", 0))],
    )
    oldest = await agent.store.oldest_queued_at()
    age = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0
    out.gauge(
        "outbox_oldest_age_seconds",
        "Age of the oldest entry the hub has not acknowledged (0: none queued): sync lag.",
        [({}, max(age, 0.0))],
    )


def _sync(out: Exposition, agent: Agent) -> None:
    link = agent.hub_link
    if link is None:
        return
    syncer = link.syncer
    out.gauge(
        "last_sync_timestamp_seconds",
        "Unix time of the last completed sync (0: none since the agent started).",
        [({}, syncer.last_synced_at or 0.0)],
    )
    out.gauge(
        "hub_failures",
        "Failed calls to the hub in a row (0: the last call succeeded).",
        [({}, syncer.reach.failures)],
    )
