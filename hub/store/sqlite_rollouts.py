"""SqliteStore's part for rollouts (migration 7).

A mixin: ``SqliteStore`` provides ``_w`` (the group-commit writer) and ``_read``. A
rollout's state is saved only over the state it was planned from (compare-and-set on
``updated_at``), together with the audit rows of what the decision did.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.records import AuditRecord, RolloutRecord

if TYPE_CHECKING:
    from hub.store.writer import GroupCommitWriter

COLUMNS = "id, release, spec, state, status, created_at, created_by, updated_at"


def _save(db: sqlite3.Connection, saved: RolloutRecord, expected_updated_at: datetime) -> None:
    changed = db.execute(
        "UPDATE rollouts SET state = ?, status = ?, updated_at = ? WHERE id = ? AND updated_at = ?",
        (
            saved.state,
            saved.status,
            rows.ts(saved.updated_at),
            saved.id,
            rows.ts(expected_updated_at),
        ),
    ).rowcount
    if changed == 0:
        exists = db.execute("SELECT 1 FROM rollouts WHERE id = ?", (saved.id,)).fetchone()
        raise checks.rollout_not_saved(saved.id, exists is not None)


class RolloutsMixin:
    """Rollouts on SQLite."""

    if TYPE_CHECKING:
        _w: GroupCommitWriter

        async def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]: ...

    async def create_rollout(
        self,
        rollout: RolloutRecord,
        superseded: Sequence[tuple[RolloutRecord, datetime]],
        audits: Sequence[AuditRecord],
    ) -> None:
        """Store a new rollout, end the ones it supersedes, and write the audit rows."""

        def job(db: sqlite3.Connection) -> None:
            if db.execute("SELECT 1 FROM rollouts WHERE id = ?", (rollout.id,)).fetchone():
                raise checks.rollout_exists(rollout.id)
            for saved, expected in superseded:
                _save(db, saved, expected)
            db.execute(
                f"INSERT INTO rollouts ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
                rows.rollout_values(rollout),
            )
            for audit in audits:
                db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))

        await self._w.submit(job)

    async def save_rollout(
        self, rollout: RolloutRecord, expected_updated_at: datetime, audits: Sequence[AuditRecord]
    ) -> None:
        """Replace the rollout's state if it is still the one planned from, with audit rows.

        Conflict if another writer saved it meanwhile; NotFound if unknown.
        """

        def job(db: sqlite3.Connection) -> None:
            _save(db, rollout, expected_updated_at)
            for audit in audits:
                db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))

        await self._w.submit(job)

    async def get_rollout(self, rollout_id: str) -> RolloutRecord | None:
        """Return a rollout by id."""
        found = await self._read(f"SELECT {COLUMNS} FROM rollouts WHERE id = ?", (rollout_id,))
        return rows.rollout(found[0]) if found else None

    async def list_rollouts(self, statuses: Sequence[str] | None = None) -> list[RolloutRecord]:
        """Return rollouts (only those in ``statuses`` if given), oldest first."""
        if statuses is None:
            found = await self._read(f"SELECT {COLUMNS} FROM rollouts ORDER BY created_at, id")
        else:
            marks = ",".join("?" * len(statuses))
            found = await self._read(
                f"SELECT {COLUMNS} FROM rollouts WHERE status IN ({marks}) ORDER BY created_at, id",
                tuple(statuses),
            )
        return [rows.rollout(r) for r in found]
