"""PostgresStore's part for rollouts (pg migration 4), twin of ``sqlite_rollouts``.

A mixin: ``PostgresStore`` provides ``_tx`` and ``_read``. A rollout's state is saved
only over the state it was planned from: ``UPDATE ... WHERE updated_at = expected`` is a
compare-and-set across hub processes too (a concurrent writer's UPDATE waits for the row
lock, then re-checks the condition against the committed row and changes nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.pg_core import insert_audit
from hub.store.records import AuditRecord, RolloutRecord
from hub.store.sqlite_rollouts import COLUMNS

if TYPE_CHECKING:
    import asyncpg

EXISTS = "SELECT 1 FROM rollouts WHERE id = $1"


async def _save(
    conn: asyncpg.Connection, saved: RolloutRecord, expected_updated_at: datetime
) -> None:
    status = await conn.execute(
        "UPDATE rollouts SET state = $1, status = $2, updated_at = $3 "
        "WHERE id = $4 AND updated_at = $5",
        saved.state,
        saved.status,
        rows.ts(saved.updated_at),
        saved.id,
        rows.ts(expected_updated_at),
    )
    if status == "UPDATE 0":
        exists = await conn.fetchval(EXISTS, saved.id)
        raise checks.rollout_not_saved(saved.id, exists is not None)


class PgRolloutsMixin:
    """Rollouts on PostgreSQL."""

    if TYPE_CHECKING:

        def _tx(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...

        async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]: ...

    async def create_rollout(
        self,
        rollout: RolloutRecord,
        superseded: Sequence[tuple[RolloutRecord, datetime]],
        audits: Sequence[AuditRecord],
    ) -> None:
        """Store a new rollout, end the ones it supersedes, and write the audit rows."""
        taken = checks.rollout_exists(rollout.id)
        async with self._tx() as conn:
            if await conn.fetchval(EXISTS, rollout.id):
                raise taken
            for saved, expected in superseded:
                await _save(conn, saved, expected)
            # A create of the same id committed meanwhile: the same Conflict, not a
            # unique violation.
            inserted = await conn.execute(
                f"INSERT INTO rollouts ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                "ON CONFLICT (id) DO NOTHING",
                *rows.rollout_values(rollout),
            )
            if inserted == "INSERT 0 0":
                raise taken
            for audit in audits:
                await insert_audit(conn, audit)

    async def save_rollout(
        self, rollout: RolloutRecord, expected_updated_at: datetime, audits: Sequence[AuditRecord]
    ) -> None:
        """Replace the rollout's state if it is still the one planned from, with audit rows.

        Conflict if another writer saved it meanwhile; NotFound if unknown.
        """
        async with self._tx() as conn:
            await _save(conn, rollout, expected_updated_at)
            for audit in audits:
                await insert_audit(conn, audit)

    async def get_rollout(self, rollout_id: str) -> RolloutRecord | None:
        """Return a rollout by id."""
        found = await self._read(f"SELECT {COLUMNS} FROM rollouts WHERE id = $1", rollout_id)
        return rows.rollout(tuple(found[0])) if found else None

    async def list_rollouts(self, statuses: Sequence[str] | None = None) -> list[RolloutRecord]:
        """Return rollouts (only those in ``statuses`` if given), oldest first."""
        if statuses is None:
            found = await self._read(
                f'SELECT {COLUMNS} FROM rollouts ORDER BY created_at, id COLLATE "C"'
            )
        else:
            found = await self._read(
                f"SELECT {COLUMNS} FROM rollouts WHERE status = ANY($1::text[]) "
                'ORDER BY created_at, id COLLATE "C"',
                list(statuses),
            )
        return [rows.rollout(tuple(r)) for r in found]

    async def rollout_counts(self) -> dict[str, int]:
        """Return status -> how many rollouts are in it."""
        found = await self._read("SELECT status, COUNT(*) FROM rollouts GROUP BY status")
        return {status: int(n) for status, n in found}
