"""PostgresStore's part for dashboard sessions (pg migration 6).

A mixin, like ``hub.store.pg_groups``: ``PostgresStore`` provides ``_tx`` and ``_read``.
The twin of the session methods of ``hub.store.sqlite_sessions``: a row holds the sha256
of the session id the browser keeps, never the id; expired rows are deleted when a
session is created. Creation takes an advisory lock, so the ``dashboard.max_sessions``
bound holds across hub processes.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.errors import StoreError
from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.records import SessionRecord
from hub.store.sqlite_sessions import COLUMNS

if TYPE_CHECKING:
    import asyncpg

SESSIONS_LOCK = 0x6564_6765_0601  # 06-series: keys of this part (pg migration 6)


class PgSessionsMixin:
    """Dashboard sessions on PostgreSQL."""

    if TYPE_CHECKING:

        def _tx(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...

        async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]: ...

    async def add_session(
        self,
        record: SessionRecord,
        max_sessions: int,
        *,
        idle_before: datetime,
        created_before: datetime,
    ) -> None:
        """Store a session, deleting expired ones first; Conflict at ``max_sessions``."""
        async with self._tx() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SESSIONS_LOCK)
            await conn.execute(
                "DELETE FROM ui_sessions WHERE last_seen_at < $1 OR created_at < $2",
                rows.ts(idle_before),
                rows.ts(created_before),
            )
            held = await conn.fetchval("SELECT COUNT(*) FROM ui_sessions")
            checks.check_sessions(held, max_sessions)
            inserted = await conn.execute(
                f"INSERT INTO ui_sessions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT (id_hash) DO NOTHING",
                record.id_hash,
                record.principal,
                record.token_id,
                record.csrf,
                rows.ts(record.created_at),
                rows.ts(record.last_seen_at),
            )
            if inserted == "INSERT 0 0":  # as SQLite's writer reports a constraint failure
                raise StoreError("constraint violated: ui_sessions.id_hash exists")

    async def get_session(self, id_hash: str) -> SessionRecord | None:
        """Return the session whose id hashes to ``id_hash``, or None."""
        found = await self._read(f"SELECT {COLUMNS} FROM ui_sessions WHERE id_hash = $1", id_hash)
        return rows.session(tuple(found[0])) if found else None

    async def touch_session(self, id_hash: str, at: datetime) -> None:
        """Record that the session was used at ``at``."""
        async with self._tx() as conn:
            await conn.execute(
                "UPDATE ui_sessions SET last_seen_at = $1 WHERE id_hash = $2", rows.ts(at), id_hash
            )

    async def delete_session(self, id_hash: str) -> None:
        """Forget a session (sign-out or expiry; idempotent)."""
        async with self._tx() as conn:
            await conn.execute("DELETE FROM ui_sessions WHERE id_hash = $1", id_hash)
