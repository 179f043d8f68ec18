"""SqliteStore's part for the dashboard (hub migration 21): sessions and fleet activity.

A mixin, like ``hub.store.sqlite_technicians``. A session row holds the sha256 of the
session id the browser keeps (the cookie), never the id. Expired rows are deleted when a
session is created; a session over its idle or absolute lifetime is refused by
``hub.dashboard.session`` whatever the table still holds.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.records import EventRecord, HostReport, SessionRecord
from hub.store.sqlite_hosts import host_reports

if TYPE_CHECKING:
    from hub.store.writer import GroupCommitWriter

COLUMNS = "id_hash, principal, token_id, csrf, created_at, last_seen_at"


class SessionsMixin:
    """Dashboard sessions and activity reads on SQLite."""

    if TYPE_CHECKING:
        _w: GroupCommitWriter

        async def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]: ...

    async def add_session(
        self,
        record: SessionRecord,
        max_sessions: int,
        *,
        idle_before: datetime,
        created_before: datetime,
    ) -> None:
        """Store a session, deleting expired ones first; Conflict at ``max_sessions``."""

        def job(db: sqlite3.Connection) -> None:
            db.execute(
                "DELETE FROM ui_sessions WHERE last_seen_at < ? OR created_at < ?",
                (rows.ts(idle_before), rows.ts(created_before)),
            )
            (held,) = db.execute("SELECT COUNT(*) FROM ui_sessions").fetchone()
            checks.check_sessions(held, max_sessions)
            db.execute(
                f"INSERT INTO ui_sessions ({COLUMNS}) VALUES (?,?,?,?,?,?)",
                (
                    record.id_hash,
                    record.principal,
                    record.token_id,
                    record.csrf,
                    rows.ts(record.created_at),
                    rows.ts(record.last_seen_at),
                ),
            )

        await self._w.submit(job)

    async def get_session(self, id_hash: str) -> SessionRecord | None:
        """Return the session whose id hashes to ``id_hash``, or None."""
        found = await self._read(f"SELECT {COLUMNS} FROM ui_sessions WHERE id_hash = ?", (id_hash,))
        return rows.session(found[0]) if found else None

    async def touch_session(self, id_hash: str, at: datetime) -> None:
        """Record that the session was used at ``at``."""

        def job(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE ui_sessions SET last_seen_at = ? WHERE id_hash = ?", (rows.ts(at), id_hash)
            )

        await self._w.submit(job)

    async def delete_session(self, id_hash: str) -> None:
        """Forget a session (sign-out or expiry; idempotent)."""

        def job(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM ui_sessions WHERE id_hash = ?", (id_hash,))

        await self._w.submit(job)

    async def recent_events(self, device_id: str, limit: int) -> list[EventRecord]:
        """Return the device's newest ``limit`` event entries, newest first."""
        found = await self._read(
            f"SELECT {rows.EVENT_COLUMNS} FROM events WHERE device_id = ? AND kind = 'event' "
            "ORDER BY seq DESC LIMIT ?",
            (device_id, limit),
        )
        return [rows.event(r) for r in found]

    async def events_per_hour(self, since: datetime) -> list[tuple[str, str, int, int]]:
        """Return (device_id, hour, events, errors) of event entries received since ``since``.

        An error is an event of type ``error`` (the agent's failed steps) or a container
        event that died, ran out of memory or entered a crash loop.
        """
        return await self._read(
            "SELECT device_id, substr(received_at, 1, 13) AS hour, COUNT(*), "
            "SUM(json_extract(payload, '$.type') = 'error' "
            "OR json_extract(payload, '$.action') IN ('die', 'oom', 'crash_loop')) "
            "FROM events WHERE kind = 'event' AND received_at >= ? "
            "GROUP BY device_id, hour",
            (rows.ts(since),),
        )

    async def device_host_report(self, device_id: str) -> HostReport | None:
        """Return the device's latest host container report, or None."""
        reports = await self._read(
            "SELECT device_id, containers, total, reported_at FROM host_reports "
            "WHERE device_id = ?",
            (device_id,),
        )
        sightings = await self._read(
            "SELECT device_id, key, first_seen FROM host_sightings WHERE device_id = ?",
            (device_id,),
        )
        return host_reports(reports, sightings).get(device_id)
