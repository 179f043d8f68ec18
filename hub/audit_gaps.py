"""The audit gap sweep: gaps in device audit chains declared once their grace is over.

A device audit record that arrives ahead of a gap in its device's chain is held (stored,
not judged) for ``audit.device_gap_grace_s`` (``hub.device_audit``): an older agent may
send two batches at once and have the later one stored first. A device's next batch with
audit records declares an expired gap; this supervised background task (like
``hub.fleet_history``, run by the leader on PostgreSQL) declares those of devices that
send nothing more, every ``audit.gap_sweep_interval_s``, so the break of records deleted
before they shipped is recorded either way. A failing pass is counted, logged once when
it starts failing and once when it recovers, and retried at the next interval. Counters
are on ``/healthz`` (``audit_gaps``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from hub.background import BackgroundTask, run_passes
from hub.context import HubContext

log = logging.getLogger(__name__)


@dataclass
class SweepStats:
    """What the sweep did so far (shown on /healthz)."""

    passes: int = 0
    declared: int = 0  # gaps declared by the sweep (not by a device's next batch)
    failures: int = 0
    last_error: str | None = None
    last_pass_at: str | None = None
    failing: bool = False


class AuditGapSweep:
    """Declares expired device audit gaps, supervised; see the module docstring."""

    def __init__(self, hub: HubContext) -> None:
        self.hub = hub
        self.stats = SweepStats()
        self._task = BackgroundTask("hub-audit-gaps", self._run)

    def start(self) -> None:
        """Start the background task."""
        self._task.start()

    async def stop(self) -> None:
        """Cancel the background task and wait for it."""
        await self._task.stop()

    def view(self) -> dict[str, Any]:
        """Return the counters and bounds for /healthz."""
        s, c = self.stats, self.hub.config.audit
        return {
            "passes": s.passes,
            "declared": s.declared,
            "failures": s.failures,
            "last_error": s.last_error,
            "last_pass_at": s.last_pass_at,
            "interval_s": c.gap_sweep_interval_s,
            "device_gap_grace_s": c.device_gap_grace_s,
            "device_max_held": c.device_max_held,
        }

    async def _run(self) -> None:
        await run_passes(
            "audit gap sweep",
            self.sweep_once,
            lambda: self.hub.config.audit.gap_sweep_interval_s,
            self.stats,
            log,
        )

    async def sweep_once(self) -> int:
        """Declare every gap past its grace now; return how many."""
        now = self.hub.now()
        declared = await self.hub.store.settle_audit_gaps(
            now, self.hub.config.audit.device_gap_grace_s
        )
        self.stats.passes += 1
        self.stats.declared += declared
        self.stats.last_pass_at = now.isoformat()
        if declared:
            log.info("audit gap sweep declared %d device audit gap(s)", declared)
        return declared


AUDIT_GAPS = web.AppKey("audit_gaps", AuditGapSweep)
