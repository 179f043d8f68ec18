"""The fleet history sampler: fleet counts every ``dashboard.history_interval_s``, kept by age.

A supervised background task of the hub (like ``hub.retention``): each pass stores one
``FleetSample`` (devices online / offline / stale / never heard from, and in sync /
updating / drifted / without a target; ``HubStore.record_fleet_sample`` counts and stores
in one write), then deletes samples and device contact spans older than
``dashboard.history_days``, at most ``dashboard.history_trim_batch`` rows a write and at
most ``MAX_TRIM_BATCHES`` writes a pass (the rest goes at the next pass). Deleted rows
are counted. A failing pass is counted, logged once when it starts failing and once when
it recovers, and retried at the next interval. ``sample_once`` is the unit tests call;
the counters are on ``/healthz`` (``fleet_history``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web

from hub.background import BackgroundTask, run_passes
from hub.context import HubContext
from hub.store import FleetSample

log = logging.getLogger(__name__)
MAX_TRIM_BATCHES = 10  # trim writes per pass: a pass never holds the writer long


@dataclass
class HistoryStats:
    """What the sampler did so far (shown on /healthz)."""

    samples: int = 0
    trimmed: int = 0  # samples and contact spans deleted by age
    failures: int = 0
    last_error: str | None = None
    last_sample_at: str | None = None
    failing: bool = False


class FleetHistory:
    """Samples the fleet's counts into the store, supervised; see the module docstring."""

    def __init__(self, hub: HubContext) -> None:
        self.hub = hub
        self.stats = HistoryStats()
        self._task = BackgroundTask("hub-fleet-history", self._run)

    def start(self) -> None:
        """Start the background task."""
        self._task.start()

    async def stop(self) -> None:
        """Cancel the background task and wait for it."""
        await self._task.stop()

    def view(self) -> dict[str, Any]:
        """Return the counters and bounds for /healthz."""
        s, c = self.stats, self.hub.config.dashboard
        return {
            "samples": s.samples,
            "trimmed": s.trimmed,
            "failures": s.failures,
            "last_error": s.last_error,
            "last_sample_at": s.last_sample_at,
            "interval_s": c.history_interval_s,
            "history_days": c.history_days,
            "contact_spans_trimmed": getattr(self.hub.store, "contact_spans_trimmed", 0),
            "contact_spans_per_device": c.contact_spans_per_device,
        }

    async def _run(self) -> None:
        await run_passes(
            "fleet history sample",
            self.sample_once,
            lambda: self.hub.config.dashboard.history_interval_s,
            self.stats,
            log,
        )

    async def sample_once(self) -> FleetSample:
        """Store the fleet's counts now, then delete what is older than the history keeps."""
        now, fleet, cfg = self.hub.now(), self.hub.config.fleet, self.hub.config.dashboard
        sample = await self.hub.store.record_fleet_sample(
            now,
            now - timedelta(seconds=fleet.online_after_s),
            now - timedelta(seconds=fleet.stale_after_s),
        )
        self.stats.samples += 1
        self.stats.last_sample_at = now.isoformat()
        before = now - timedelta(days=cfg.history_days)
        for _ in range(MAX_TRIM_BATCHES):
            gone = await self.hub.store.trim_fleet_history(before, cfg.history_trim_batch)
            self.stats.trimmed += gone
            if gone < cfg.history_trim_batch:
                break
        return sample


FLEET_HISTORY = web.AppKey("fleet_history", FleetHistory)
