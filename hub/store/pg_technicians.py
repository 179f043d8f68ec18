"""PostgresStore's part for technician tokens (pg migration 5; SQLite's sqlite_technicians).

The hub keeps what it issued, never the token. Issuing takes an advisory lock, so the
``max_active`` bound holds across hub processes; expired rows are deleted then.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.errors import NotFound
from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.pg_core import insert_audit
from hub.store.records import AuditRecord, TechnicianRecord
from hub.store.sqlite_technicians import COLUMNS

if TYPE_CHECKING:
    import asyncpg

TECHNICIANS_LOCK = 0x6564_6765_0B01  # B-series: keys of this part (pg migration 5)
SELECT_ONE = f"SELECT {COLUMNS} FROM technician_tokens WHERE id = $1"


class PgTechniciansMixin:
    """Technician tokens on PostgreSQL."""

    if TYPE_CHECKING:

        def _tx(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...

        async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]: ...

    async def add_technician(
        self, record: TechnicianRecord, max_active: int, audit: AuditRecord
    ) -> None:
        """Store an issued token (bounded: at most ``max_active`` unexpired), with the audit row."""
        now = rows.ts(record.issued_at)
        async with self._tx() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", TECHNICIANS_LOCK)
            await conn.execute("DELETE FROM technician_tokens WHERE expires_at <= $1", now)
            held = await conn.fetchval("SELECT COUNT(*) FROM technician_tokens")
            checks.check_technicians(held, max_active)
            await conn.execute(
                f"INSERT INTO technician_tokens ({COLUMNS}) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL)",
                *rows.technician_values(record),
            )
            await insert_audit(conn, audit)

    async def list_technicians(self, now: datetime) -> list[TechnicianRecord]:
        """Return the unexpired tokens, oldest first."""
        found = await self._read(
            f"SELECT {COLUMNS} FROM technician_tokens WHERE expires_at > $1 "
            'ORDER BY issued_at, id COLLATE "C"',
            rows.ts(now),
        )
        return [rows.technician(tuple(r)) for r in found]

    async def revoke_technician(self, token_id: str, audit: AuditRecord) -> TechnicianRecord:
        """Mark a token revoked (idempotent), with the audit row; NotFound if unknown."""
        async with self._tx() as conn:
            await conn.execute(
                "UPDATE technician_tokens SET revoked_at = $1, revoked_by = $2 "
                "WHERE id = $3 AND revoked_at IS NULL",
                rows.ts(audit.at),
                audit.actor,
                token_id,
            )
            row = await conn.fetchrow(SELECT_ONE, token_id)
            if row is None:
                raise NotFound(f"no technician token {token_id!r}")
            await insert_audit(conn, audit)
            return rows.technician(tuple(row))

    async def revoked_technicians(self, now: datetime) -> list[tuple[str, datetime]]:
        """Return (id, expires_at) of every revoked token that has not expired."""
        found = await self._read(
            "SELECT id, expires_at FROM technician_tokens "
            'WHERE revoked_at IS NOT NULL AND expires_at > $1 ORDER BY id COLLATE "C"',
            rows.ts(now),
        )
        return [(r[0], datetime.fromisoformat(r[1])) for r in found]
