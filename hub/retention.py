"""Retention of what devices send (logs, events, status history, metrics): by age and size.

A background task of the hub runs a pass every ``retention.interval_s``: for each device,
rows received longer than ``max_age_s`` ago are deleted, then, if the device's data still
exceeds ``max_bytes_per_device``, its oldest rows until it does not. Every delete is a
batch of at most ``batch_rows`` rows in one short write transaction, with ``pause_s``
between batches, so syncs are never held behind a long write lock. Device metrics samples
(kept apart, bounded in count by ``metrics.history_per_device``) are deleted by the same
age (counted also as ``metrics_deleted_by_age``). Audit records (the
device's ``audit`` entries and ``device_audit``) are never deleted. A failing pass is
counted, logged once when it starts failing and once when it recovers, and retried at
the next interval; the task itself never dies of it. Counters are on ``/healthz``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from hub.background import BackgroundTask, run_passes
from hub.config import RetentionConfig
from hub.context import HubContext

log = logging.getLogger(__name__)


@dataclass
class RetentionStats:
    """What retention did so far (shown on /healthz)."""

    passes: int = 0
    deleted_by_age: int = 0
    deleted_by_size: int = 0
    metrics_deleted_by_age: int = 0  # device metrics samples (kept apart from events)
    batches: int = 0
    failures: int = 0
    last_error: str | None = None
    last_pass_s: float | None = None
    last_pass_at: str | None = None
    failing: bool = field(default=False, repr=False)


class Retention:
    """Deletes old and excess device data in bounded batches, supervised."""

    def __init__(self, hub: HubContext) -> None:
        self.hub = hub
        self.stats = RetentionStats()
        self._task = BackgroundTask("hub-retention", self._run)

    @property
    def config(self) -> RetentionConfig:
        return self.hub.config.retention

    def start(self) -> None:
        """Start the background task."""
        self._task.start()

    async def stop(self) -> None:
        """Cancel the background task and wait for it."""
        await self._task.stop()

    def view(self) -> dict[str, Any]:
        """Return the counters and bounds for /healthz."""
        s, c = self.stats, self.config
        return {
            "passes": s.passes,
            "deleted_by_age": s.deleted_by_age,
            "deleted_by_size": s.deleted_by_size,
            "metrics_deleted_by_age": s.metrics_deleted_by_age,
            "batches": s.batches,
            "failures": s.failures,
            "last_error": s.last_error,
            "last_pass_s": s.last_pass_s,
            "last_pass_at": s.last_pass_at,
            "max_age_s": c.max_age_s,
            "max_bytes_per_device": c.max_bytes_per_device,
        }

    async def _run(self) -> None:
        await run_passes(
            "retention pass", self.run_once, lambda: self.config.interval_s, self.stats, log
        )

    async def run_once(self) -> tuple[int, int]:
        """Run one pass over every device; return rows deleted (by age, by size)."""
        started = time.monotonic()
        by_age = by_size = 0
        for device_id in await self.hub.store.retention_devices():
            by_age += await self._trim_age(device_id)
            by_age += await self._trim_metrics_age(device_id)
            by_size += await self._trim_size(device_id)
        self.stats.passes += 1
        self.stats.last_pass_s = round(time.monotonic() - started, 3)
        self.stats.last_pass_at = self.hub.now().isoformat()
        if by_age or by_size:
            log.info("retention deleted %d rows by age, %d by size", by_age, by_size)
        return by_age, by_size

    async def _trim_age(self, device_id: str) -> int:
        """Delete the device's entries received before ``max_age_s`` ago."""
        return await self._by_age(device_id, self.hub.store.trim_device_by_age, "deleted_by_age")

    async def _trim_metrics_age(self, device_id: str) -> int:
        """Delete the device's metrics samples received before ``max_age_s`` ago."""
        trim = self.hub.store.trim_metrics_by_age
        return await self._by_age(device_id, trim, "metrics_deleted_by_age")

    async def _by_age(
        self,
        device_id: str,
        trim: Callable[[str, datetime, int], Awaitable[int]],
        counter: str,
    ) -> int:
        """Delete in batches of ``batch_rows`` (pausing between them) with ``trim``."""
        c = self.config
        if c.max_age_s <= 0:
            return 0
        before = self.hub.now() - timedelta(seconds=c.max_age_s)
        total = 0
        while True:
            n = await trim(device_id, before, c.batch_rows)
            total += n
            self._count(counter, n)
            if n < c.batch_rows:
                return total
            await asyncio.sleep(c.pause_s)

    async def _trim_size(self, device_id: str) -> int:
        c = self.config
        if c.max_bytes_per_device <= 0:
            return 0
        cut = await self.hub.store.device_data_cut(device_id, c.max_bytes_per_device)
        total = 0
        while cut is not None:
            n = await self.hub.store.trim_device_upto(device_id, cut, c.batch_rows)
            total += n
            self._count("deleted_by_size", n)
            if n < c.batch_rows:
                return total
            await asyncio.sleep(c.pause_s)
        return total

    def _count(self, name: str, n: int) -> None:
        if n:
            setattr(self.stats, name, getattr(self.stats, name) + n)
            self.stats.batches += 1


RETENTION = web.AppKey("retention", Retention)
