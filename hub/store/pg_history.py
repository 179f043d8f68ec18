"""PostgresStore's part for fleet history (pg migration 7; SQLite 23 and 24).

The same rows and rules as ``hub.store.sqlite_history``: ``record_fleet_sample`` counts
the devices and stores the sample in one statement; ``observe_contact`` runs in every
sync's transaction (under the batch's device row lock, so two hub processes extend one
span, never open two), keeping at most ``max_spans`` spans per device.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.store import sqlite_rows as rows
from hub.store.records import ContactSpan, FleetSample
from hub.store.sqlite_history import SAMPLE_COLUMNS
from hub.store.sqlite_stats import DRIFT_SQL
from hub.store.sync_rules import SyncBounds, extends_span

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    import asyncpg

COUNT_SAMPLE = f"""INSERT INTO fleet_history ({SAMPLE_COLUMNS})
    SELECT $1,
        COUNT(*) FILTER (WHERE last_contact >= $2),
        COUNT(*) FILTER (WHERE last_contact < $2 AND last_contact >= $3),
        COUNT(*) FILTER (WHERE last_contact < $3),
        COUNT(*) FILTER (WHERE last_contact IS NULL),
        COUNT(*) FILTER (WHERE d = 'in_sync'),
        COUNT(*) FILTER (WHERE d = 'updating'),
        COUNT(*) FILTER (WHERE d = 'drifted'),
        COUNT(*) FILTER (WHERE d = 'no_target'),
        COUNT(*)
    FROM (SELECT last_contact, {DRIFT_SQL} AS d FROM devices) AS counted
    ON CONFLICT (at) DO UPDATE SET (online, offline, stale, never, in_sync, updating, drifted,
        no_target, total) = (excluded.online, excluded.offline, excluded.stale, excluded.never,
        excluded.in_sync, excluded.updating, excluded.drifted, excluded.no_target,
        excluded.total)
    RETURNING {SAMPLE_COLUMNS}"""


async def observe_contact(
    conn: asyncpg.Connection, device_id: str, at: datetime, gap_s: float, max_spans: int
) -> int:
    """Record a contact of the device at ``at`` (in the sync's transaction); return how
    many old spans were deleted to stay within ``max_spans``."""
    newest = await conn.fetchrow(
        "SELECT started_at, last_at FROM device_contacts WHERE device_id = $1 "
        "ORDER BY started_at DESC LIMIT 1",
        device_id,
    )
    stamp = rows.ts(at)
    if newest is not None and extends_span(newest[1], at, gap_s):
        if stamp > newest[1]:
            await conn.execute(
                "UPDATE device_contacts SET last_at = $1 WHERE device_id = $2 AND started_at = $3",
                stamp,
                device_id,
                newest[0],
            )
        return 0
    await conn.execute(
        "INSERT INTO device_contacts (device_id, started_at, last_at) VALUES ($1, $2, $2) "
        "ON CONFLICT DO NOTHING",
        device_id,
        stamp,
    )
    status = await conn.execute(
        "DELETE FROM device_contacts WHERE device_id = $1 AND started_at <= ("
        "SELECT started_at FROM device_contacts WHERE device_id = $1 "
        "ORDER BY started_at DESC LIMIT 1 OFFSET $2)",
        device_id,
        max_spans,
    )
    return int(status.split()[-1])


class PgHistoryMixin(SyncBounds):
    """Fleet history and device contact spans on PostgreSQL."""

    if TYPE_CHECKING:

        def _tx(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...

        async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]: ...

    async def _observe_contact(
        self, conn: asyncpg.Connection, device_id: str, at: datetime
    ) -> None:
        self.contact_spans_trimmed += await observe_contact(
            conn, device_id, at, self.contact_gap_s, self.contact_max_spans
        )

    async def record_fleet_sample(
        self, at: datetime, online_since: datetime, stale_since: datetime
    ) -> FleetSample:
        """Count the devices now and store the counts as the sample at ``at``; return it."""
        async with self._tx() as conn:
            row = await conn.fetchrow(
                COUNT_SAMPLE, rows.ts(at), rows.ts(online_since), rows.ts(stale_since)
            )
        return rows.fleet_sample(row)

    async def fleet_samples(self, since: datetime, limit: int) -> list[FleetSample]:
        """Return the newest ``limit`` samples taken at or after ``since``, oldest first."""
        found = await self._read(
            f"SELECT {SAMPLE_COLUMNS} FROM fleet_history WHERE at >= $1 ORDER BY at DESC LIMIT $2",
            rows.ts(since),
            limit,
        )
        return [rows.fleet_sample(r) for r in reversed(found)]

    async def trim_fleet_history(self, before: datetime, batch: int) -> int:
        """Delete at most ``batch`` of the oldest samples and contact spans that ended
        before ``before``; return how many rows went."""
        stamp = rows.ts(before)
        async with self._tx() as conn:
            samples = await conn.execute(
                "DELETE FROM fleet_history WHERE at IN "
                "(SELECT at FROM fleet_history WHERE at < $1 ORDER BY at LIMIT $2)",
                stamp,
                batch,
            )
            spans = await conn.execute(
                "DELETE FROM device_contacts WHERE (device_id, started_at) IN "
                "(SELECT device_id, started_at FROM device_contacts WHERE last_at < $1 LIMIT $2)",
                stamp,
                batch,
            )
        return int(samples.split()[-1]) + int(spans.split()[-1])

    async def contact_spans(self, device_id: str, since: datetime) -> list[ContactSpan]:
        """Return the device's contact spans that reach past ``since``, oldest first."""
        found = await self._read(
            "SELECT started_at, last_at FROM device_contacts WHERE device_id = $1 "
            "AND last_at >= $2 ORDER BY started_at",
            device_id,
            rows.ts(since),
        )
        return [ContactSpan(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in found]
