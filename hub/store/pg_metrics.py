"""PostgresStore's part for device metrics reads (pg migration 5; SQLite's sqlite_metrics).

Samples are stored by sync (``pg_ingest_side.save_metrics``), at most
``metrics.history_per_device`` per device; retention trims them by age
(``trim_metrics_by_age``, in ``pg_retention``).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.store import sqlite_rows as rows
from hub.store.records import MetricsHistory, MetricsSample
from hub.store.sqlite_metrics import COLUMNS

if TYPE_CHECKING:
    import asyncpg


class PgMetricsMixin:
    """Device metrics history on PostgreSQL."""

    if TYPE_CHECKING:

        async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]: ...

    async def list_metrics(
        self, device_id: str, since: datetime | None, limit: int
    ) -> MetricsHistory:
        """Return the device's newest ``limit`` samples taken at or after ``since``, oldest
        first, with the counts of its bounds."""
        found = await self._read(
            f"SELECT {COLUMNS} FROM (SELECT {COLUMNS} FROM device_metrics "
            "WHERE device_id = $1 AND at >= $2 ORDER BY seq DESC LIMIT $3) AS newest "
            "ORDER BY seq",
            device_id,
            rows.ts(since) if since is not None else "",
            limit,
        )
        state = await self._read(
            "SELECT held, trimmed, oversize FROM device_metrics_state WHERE device_id = $1",
            device_id,
        )
        held, trimmed, oversize = tuple(state[0]) if state else (0, 0, 0)
        return MetricsHistory(
            [rows.metrics_sample(tuple(r)) for r in found], held, trimmed, oversize
        )

    async def latest_metrics(self, device_id: str) -> MetricsSample | None:
        """Return the device's newest sample."""
        found = await self._read(
            f"SELECT {COLUMNS} FROM device_metrics WHERE device_id = $1 ORDER BY seq DESC LIMIT 1",
            device_id,
        )
        return rows.metrics_sample(tuple(found[0])) if found else None
