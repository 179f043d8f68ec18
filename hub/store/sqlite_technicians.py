"""SqliteStore's part for technician tokens (hub migration 11).

A mixin, like ``hub.store.sqlite_groups``: ``SqliteStore`` provides ``_w`` (the
group-commit writer) and ``_read``. The hub keeps what it issued, never the token: the
token is shown once. A revoked token is kept (and listed to every device at sync) until
it expires; expired rows are deleted when a new token is issued.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.errors import NotFound
from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.records import AuditRecord, TechnicianRecord

if TYPE_CHECKING:
    from hub.store.writer import GroupCommitWriter

COLUMNS = "id, name, role, scope, issued_at, expires_at, created_by, revoked_at, revoked_by"


class TechniciansMixin:
    """Technician tokens on SQLite."""

    if TYPE_CHECKING:
        _w: GroupCommitWriter

        async def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]: ...

        async def _point_read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]: ...

    async def add_technician(
        self, record: TechnicianRecord, max_active: int, audit: AuditRecord
    ) -> None:
        """Store an issued token (bounded: at most ``max_active`` unexpired), with the audit row."""
        now = rows.ts(record.issued_at)

        def job(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM technician_tokens WHERE expires_at <= ?", (now,))
            (held,) = db.execute("SELECT COUNT(*) FROM technician_tokens").fetchone()
            checks.check_technicians(held, max_active)
            db.execute(
                f"INSERT INTO technician_tokens ({COLUMNS}) VALUES (?,?,?,?,?,?,?,NULL,NULL)",
                rows.technician_values(record),
            )
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))

        await self._w.submit(job)

    async def list_technicians(self, now: datetime) -> list[TechnicianRecord]:
        """Return the unexpired tokens, oldest first."""
        found = await self._read(
            f"SELECT {COLUMNS} FROM technician_tokens WHERE expires_at > ? ORDER BY issued_at, id",
            (rows.ts(now),),
        )
        return [rows.technician(r) for r in found]

    async def revoke_technician(self, token_id: str, audit: AuditRecord) -> TechnicianRecord:
        """Mark a token revoked (idempotent), with the audit row; NotFound if unknown."""
        at = rows.ts(audit.at)

        def job(db: sqlite3.Connection) -> TechnicianRecord:
            db.execute(
                "UPDATE technician_tokens SET revoked_at = ?, revoked_by = ? "
                "WHERE id = ? AND revoked_at IS NULL",
                (at, audit.actor, token_id),
            )
            row = db.execute(
                f"SELECT {COLUMNS} FROM technician_tokens WHERE id = ?", (token_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no technician token {token_id!r}")
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))
            return rows.technician(row)

        return await self._w.submit(job)

    async def revoked_technicians(self, now: datetime) -> list[tuple[str, datetime]]:
        """Return (id, expires_at) of every revoked token that has not expired."""
        found = await self._point_read(  # every sync: the expiry index keeps it short
            "SELECT id, expires_at FROM technician_tokens "
            "WHERE revoked_at IS NOT NULL AND expires_at > ? ORDER BY id",
            (rows.ts(now),),
        )
        return [(r[0], datetime.fromisoformat(r[1])) for r in found]
