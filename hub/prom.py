"""The hub's Prometheus metrics: what is counted as it happens, and what is read at a scrape.

Counted as it happens (``HubMetrics``, one registry per application, never the process
global one: tests run several hubs in one process): sync requests by status code and
their latency, outbox entries stored, and the store writer's group-commit latency.
Read at a scrape (``snapshot_families``): devices by connectivity and drift, rollouts by
status (one aggregate query each: ``hub.store.sqlite_stats``), long-polls held, the
writer's queue and the database's size, refusals (enrollment, authentication, access)
by action and outcome.

Conventions: units in names (``_seconds``, ``_bytes``), counters end in ``_total``,
every label's values come from a fixed set in the code; a device id is never a label.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

import hub
from hub.fleet import Connectivity, Drift
from hub.rollout_models import RolloutStatus
from hub.store import WriterStats

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PREFIX = "edgefleet_hub"
SYNC_PATH = "/v1/sync"
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class HubMetrics:
    """The instruments the hub updates as it works, in a registry of their own."""

    def __init__(self) -> None:
        disable_created_metrics()  # no ``_created`` series: one scrape line per value
        self.registry = CollectorRegistry(auto_describe=True)
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds (one
        # per device connection), ... read from /proc at each scrape
        ProcessCollector(registry=self.registry)
        self.sync_requests = Counter(
            f"{PREFIX}_sync_requests",
            "Device sync requests (POST /v1/sync) answered, by HTTP status code.",
            ["code"],
            registry=self.registry,
        )
        self.sync_duration = Histogram(
            f"{PREFIX}_sync_duration_seconds",
            "Time the hub spent answering a device sync request.",
            registry=self.registry,
        )
        self.entries_stored = Counter(
            f"{PREFIX}_sync_entries_stored",
            "Outbox entries (events, logs, audit, metrics) stored from syncs; repeats excluded.",
            registry=self.registry,
        )
        self.commit_duration = Histogram(
            f"{PREFIX}_store_commit_duration_seconds",
            "Time of one group commit of the store writer (its jobs and one COMMIT).",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )

    def observe_commit(self, jobs: int, seconds: float) -> None:
        """Record one group commit (the store writer calls this)."""
        self.commit_duration.observe(seconds)


METRICS = web.AppKey("prom_metrics", HubMetrics)


def install(app: web.Application, metrics: HubMetrics, watch: Callable[..., None]) -> None:
    """Keep ``metrics`` in the app and let the store writer report its commits to it."""
    app[METRICS] = metrics
    watch(metrics.observe_commit)


@web.middleware
async def sync_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count device syncs by status code and time them (outside the error middleware)."""
    if request.path != SYNC_PATH:
        return await handler(request)
    metrics = request.app[METRICS]
    started = time.perf_counter()
    code = "aborted"  # the connection went away (or the loop stopped) mid-request
    try:
        response = await handler(request)
        code = str(response.status)
        return response
    except web.HTTPException as exc:
        code = str(exc.status)
        raise
    finally:
        metrics.sync_requests.labels(code).inc()
        metrics.sync_duration.observe(time.perf_counter() - started)


def count_stored(request: web.Request, entries: int) -> None:
    """Count outbox entries a sync stored."""
    if entries > 0:
        request.app[METRICS].entries_stored.inc(entries)


@dataclass(frozen=True)
class Snapshot:
    """What a scrape read from the store and the hub's state."""

    devices: dict[tuple[str, str], tuple[int, int]]
    rollouts: dict[str, int]
    writer: WriterStats
    long_polls: dict[str, int]
    refusals: dict[tuple[str, str], int]
    read_seconds: float


def snapshot_families(snap: Snapshot) -> Iterator[Metric]:
    """Yield the metric families read at scrape time."""
    yield from _fleet_families(snap)
    yield from _store_families(snap.writer)
    yield from _long_poll_families(snap.long_polls)
    refusals = CounterMetricFamily(
        f"{PREFIX}_refusals",
        "Refused credentials and access: device.enroll, device.renew (devices), "
        "operator.access and operator.request (operators), by outcome (denied, limited).",
        labels=["action", "outcome"],
    )
    for (action, outcome), n in sorted(snap.refusals.items()):
        refusals.add_metric([action, outcome], n)
    yield refusals
    scrape = GaugeMetricFamily(
        f"{PREFIX}_scrape_read_seconds", "Time this scrape spent reading the store."
    )
    scrape.add_metric([], snap.read_seconds)
    yield scrape
    info = GaugeMetricFamily(f"{PREFIX}_info", "The hub's version.", labels=["version"])
    info.add_metric([hub.__version__], 1)
    yield info


def _fleet_families(snap: Snapshot) -> Iterator[Metric]:
    devices = GaugeMetricFamily(
        f"{PREFIX}_devices",
        "Enrolled devices by connectivity (fleet.online_after_s, stale_after_s) and drift.",
        labels=["connectivity", "drift"],
    )
    disabled = 0
    for c in Connectivity:
        for d in Drift:
            count, off = snap.devices.get((c.value, d.value), (0, 0))
            devices.add_metric([c.value, d.value], count)
            disabled += off
    yield devices
    yield _gauge("devices_disabled", "Enrolled devices that are disabled.", disabled)
    rollouts = GaugeMetricFamily(f"{PREFIX}_rollouts", "Rollouts by status.", labels=["status"])
    for status in RolloutStatus:
        rollouts.add_metric([status.value], snap.rollouts.get(status.value, 0))
    yield rollouts


def _store_families(w: WriterStats) -> Iterator[Metric]:
    yield _gauge("store_writer_queue_depth", "Write jobs waiting for a group.", w.queue_depth)
    yield _counter("store_commit_groups", "Group commits of the store writer.", w.groups)
    yield _counter("store_commit_jobs", "Write jobs committed by the store writer.", w.jobs)
    yield _counter(
        "store_wal_truncations", "WAL truncations at store.wal_max_bytes.", w.wal_truncations
    )
    yield _counter(
        "store_point_read_fallbacks",
        "Point reads on the event loop that found the database busy and went to the reader thread.",
        w.point_read_fallbacks,
    )
    size = GaugeMetricFamily(
        f"{PREFIX}_store_size_bytes", "Size of the SQLite database files.", labels=["file"]
    )
    size.add_metric(["db"], w.db_bytes)
    size.add_metric(["wal"], w.wal_bytes)
    yield size


def _long_poll_families(stats: dict[str, int]) -> Iterator[Metric]:
    yield _gauge("long_polls_held", "Device long-polls (GET /v1/target) held open.", stats["held"])
    yield _gauge("long_polls_max", "The bound limits.max_long_polls (0: none).", stats["max_held"])
    yield _counter(
        "long_polls_refused", "Long-polls refused at limits.max_long_polls.", stats["refused"]
    )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


@dataclass(frozen=True)
class Exposition:
    """Every family of one scrape, as ``prometheus_client.generate_latest`` takes them."""

    parts: tuple[Iterable[Metric], ...]

    def collect(self) -> Iterator[Metric]:
        """Yield the families of every part."""
        for part in self.parts:
            yield from part
