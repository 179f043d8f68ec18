"""SqliteStore's part for fleet history (hub migrations 23 and 24): counts and contact spans.

A mixin, like ``hub.store.sqlite_sessions``. ``record_fleet_sample`` counts the devices
by connectivity and drift in the same write as it stores the sample (the connectivity
``CASE`` is ``hub.fleet`` with "never heard from" apart from "stale"; the drift ``CASE``
is ``hub.store.sqlite_stats.DRIFT_SQL``). ``observe_contact`` runs inside every sync's
transaction: it extends the device's newest contact span, or opens a new one after a
silence longer than the gap, and keeps at most ``max_spans`` spans per device (the
oldest go first; the store counts them in ``contact_spans_trimmed``). Deletes by age
are batches of at most ``batch`` rows, each one short write transaction.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.store import sqlite_rows as rows
from hub.store.records import ContactSpan, FleetSample
from hub.store.sqlite_stats import DRIFT_SQL
from hub.store.sync_rules import SyncBounds, extends_span

if TYPE_CHECKING:
    from hub.store.writer import GroupCommitWriter

SAMPLE_COLUMNS = "at, online, offline, stale, never, in_sync, updating, drifted, no_target, total"
COUNT_SAMPLE = f"""INSERT OR REPLACE INTO fleet_history ({SAMPLE_COLUMNS})
    SELECT ?,
        COALESCE(SUM(last_contact >= ?), 0),
        COALESCE(SUM(last_contact < ? AND last_contact >= ?), 0),
        COALESCE(SUM(last_contact < ?), 0),
        COALESCE(SUM(last_contact IS NULL), 0),
        COALESCE(SUM(d = 'in_sync'), 0),
        COALESCE(SUM(d = 'updating'), 0),
        COALESCE(SUM(d = 'drifted'), 0),
        COALESCE(SUM(d = 'no_target'), 0),
        COUNT(*)
    FROM (SELECT last_contact, {DRIFT_SQL} AS d FROM devices)"""


def observe_contact(
    db: sqlite3.Connection, device_id: str, at: datetime, gap_s: float, max_spans: int
) -> int:
    """Record a contact of the device at ``at`` (in the sync's transaction); return how
    many old spans were deleted to stay within ``max_spans``."""
    newest = db.execute(
        "SELECT started_at, last_at FROM device_contacts WHERE device_id = ? "
        "ORDER BY started_at DESC LIMIT 1",
        (device_id,),
    ).fetchone()
    stamp = rows.ts(at)
    if newest is not None and extends_span(newest[1], at, gap_s):
        if stamp > newest[1]:
            db.execute(
                "UPDATE device_contacts SET last_at = ? WHERE device_id = ? AND started_at = ?",
                (stamp, device_id, newest[0]),
            )
        return 0
    db.execute(
        "INSERT OR IGNORE INTO device_contacts (device_id, started_at, last_at) VALUES (?,?,?)",
        (device_id, stamp, stamp),
    )
    return db.execute(
        "DELETE FROM device_contacts WHERE device_id = ? AND started_at <= ("
        "SELECT started_at FROM device_contacts WHERE device_id = ? "
        "ORDER BY started_at DESC LIMIT 1 OFFSET ?)",
        (device_id, device_id, max_spans),
    ).rowcount


class HistoryMixin(SyncBounds):
    """Fleet history and device contact spans on SQLite."""

    if TYPE_CHECKING:
        _w: GroupCommitWriter

        async def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]: ...

    async def record_fleet_sample(
        self, at: datetime, online_since: datetime, stale_since: datetime
    ) -> FleetSample:
        """Count the devices now and store the counts as the sample at ``at``; return it."""
        on, stale, stamp = rows.ts(online_since), rows.ts(stale_since), rows.ts(at)

        def job(db: sqlite3.Connection) -> FleetSample:
            db.execute(COUNT_SAMPLE, (stamp, on, on, stale, stale))
            row = db.execute(
                f"SELECT {SAMPLE_COLUMNS} FROM fleet_history WHERE at = ?", (stamp,)
            ).fetchone()
            return rows.fleet_sample(row)

        return await self._w.submit(job)

    async def fleet_samples(self, since: datetime, limit: int) -> list[FleetSample]:
        """Return the newest ``limit`` samples taken at or after ``since``, oldest first."""
        found = await self._read(
            f"SELECT {SAMPLE_COLUMNS} FROM fleet_history WHERE at >= ? ORDER BY at DESC LIMIT ?",
            (rows.ts(since), limit),
        )
        return [rows.fleet_sample(r) for r in reversed(found)]

    async def trim_fleet_history(self, before: datetime, batch: int) -> int:
        """Delete at most ``batch`` of the oldest samples and contact spans that ended
        before ``before``; return how many rows went."""
        stamp = rows.ts(before)

        def job(db: sqlite3.Connection) -> int:
            samples = db.execute(
                "DELETE FROM fleet_history WHERE at IN "
                "(SELECT at FROM fleet_history WHERE at < ? ORDER BY at LIMIT ?)",
                (stamp, batch),
            ).rowcount
            spans = db.execute(
                "DELETE FROM device_contacts WHERE (device_id, started_at) IN "
                "(SELECT device_id, started_at FROM device_contacts WHERE last_at < ? LIMIT ?)",
                (stamp, batch),
            ).rowcount
            return int(samples + spans)

        return await self._w.submit(job)

    async def contact_spans(self, device_id: str, since: datetime) -> list[ContactSpan]:
        """Return the device's contact spans that reach past ``since``, oldest first."""
        found = await self._read(
            "SELECT started_at, last_at FROM device_contacts WHERE device_id = ? "
            "AND last_at >= ? ORDER BY started_at",
            (device_id, rows.ts(since)),
        )
        return [ContactSpan(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in found]
