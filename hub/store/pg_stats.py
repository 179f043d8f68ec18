"""PostgresStore's reads for the dashboard and monitoring (SQLite's sqlite_stats,
sqlite_sessions' activity reads, sqlite_holds, sqlite_hosts' reads).

``fleet_counts`` is read at every Prometheus scrape: one aggregate query, SQLite's own
drift and connectivity ``CASE`` (``sqlite_stats``), never a row per device. Payloads are
JSON text; ``events_per_hour`` reads them as ``jsonb`` with SQLite's three-valued logic
(an hour whose events carry neither field counts NULL errors, as on SQLite).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.store import sqlite_rows as rows
from hub.store.records import EventRecord, HostReport
from hub.store.sqlite_hosts import host_reports
from hub.store.sqlite_stats import CONNECTIVITY_SQL, DRIFT_SQL

if TYPE_CHECKING:
    import asyncpg

FLEET_COUNTS = (
    f"SELECT {CONNECTIVITY_SQL.replace('?', '$1', 1).replace('?', '$2', 1)} AS c, "
    f"{DRIFT_SQL} AS d, SUM(disabled), COUNT(*) FROM devices GROUP BY c, d"
)
EVENTS_PER_HOUR = (
    "SELECT device_id, substr(received_at, 1, 13) AS hour, COUNT(*), "
    "SUM(((payload::jsonb ->> 'type') = 'error' "
    "OR (payload::jsonb ->> 'action') IN ('die', 'oom', 'crash_loop'))::int) "
    "FROM events WHERE kind = 'event' AND received_at >= $1 GROUP BY device_id, hour"
)


class PgStatsMixin:
    """Dashboard and monitoring reads on PostgreSQL."""

    if TYPE_CHECKING:

        async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]: ...

    async def fleet_counts(
        self, online_since: datetime, stale_since: datetime
    ) -> dict[tuple[str, str], tuple[int, int]]:
        """Return (connectivity, drift) -> (devices, of them disabled), in one query."""
        found = await self._read(FLEET_COUNTS, rows.ts(online_since), rows.ts(stale_since))
        return {(c, d): (int(n), int(off or 0)) for c, d, off, n in found}

    async def latest_status_report(self, device_id: str) -> dict[str, Any] | None:
        """Return the payload of the device's newest status entry (None: none kept)."""
        found = await self._read(
            "SELECT payload FROM events WHERE device_id = $1 AND kind = 'status' "
            "ORDER BY seq DESC LIMIT 1",
            device_id,
        )
        if not found:
            return None
        payload = json.loads(found[0][0])
        return payload if isinstance(payload, dict) else None

    async def recent_events(self, device_id: str, limit: int) -> list[EventRecord]:
        """Return the device's newest ``limit`` event entries, newest first."""
        found = await self._read(
            f"SELECT {rows.EVENT_COLUMNS} FROM events WHERE device_id = $1 AND kind = 'event' "
            "ORDER BY seq DESC LIMIT $2",
            device_id,
            limit,
        )
        return [rows.event(tuple(r)) for r in found]

    async def events_per_hour(self, since: datetime) -> list[tuple[str, str, int, int]]:
        """Return (device_id, hour, events, errors) of event entries received since ``since``.

        An error is an event of type ``error`` (the agent's failed steps) or a container
        event that died, ran out of memory or entered a crash loop.
        """
        found = await self._read(EVENTS_PER_HOUR, rows.ts(since))
        return [(d, h, int(n), int(bad) if bad is not None else bad) for d, h, n, bad in found]

    async def list_host_reports(self) -> dict[str, HostReport]:
        """Return the latest host report of every device that sent one."""
        reports = await self._read(
            "SELECT device_id, containers, total, reported_at FROM host_reports"
        )
        sightings = await self._read("SELECT device_id, key, first_seen FROM host_sightings")
        return host_reports([tuple(r) for r in reports], [tuple(r) for r in sightings])

    async def device_host_report(self, device_id: str) -> HostReport | None:
        """Return the device's latest host container report, or None."""
        reports = await self._read(
            "SELECT device_id, containers, total, reported_at FROM host_reports "
            "WHERE device_id = $1",
            device_id,
        )
        sightings = await self._read(
            "SELECT device_id, key, first_seen FROM host_sightings WHERE device_id = $1",
            device_id,
        )
        return host_reports([tuple(r) for r in reports], [tuple(r) for r in sightings]).get(
            device_id
        )
