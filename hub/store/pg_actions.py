"""PostgresStore's part for queued device actions (pg migration 5; SQLite's sqlite_actions).

State changes follow ``edge_agent.actiondoc.next_state``; receipts, parts and results
arrive through sync (``pg_ingest_side.observe_actions``). Across hub processes:

- ``add_actions`` takes a transaction advisory lock per device (in device order, so two
  writers never wait on each other crosswise): the ``max_queued`` bound holds.
- ``take_actions`` picks with ``SELECT ... FOR UPDATE SKIP LOCKED`` and marks what it
  picked in the same statement: two processes taking for one device at once deliver each
  action once (a row another process is taking is skipped; one it took is no longer
  pickable once committed, as PostgreSQL re-checks the condition on the new row).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.pg_core import insert_audit
from hub.store.records import ActionPart, ActionRecord, AuditRecord, PartTotals
from hub.store.sqlite_actions import COLUMNS, UNFINISHED

if TYPE_CHECKING:
    import asyncpg

ACTIONS_LOCK_CLASS = 0x0B02  # pg_advisory_xact_lock(class, hashtext(device_id))
PICK = (
    "FROM actions WHERE device_id = $1 AND expires_at > $2 AND (state = 'queued' OR "
    "(state = 'delivered' AND received_at IS NULL AND delivered_at <= $3))"
)


async def _expire(conn: asyncpg.Connection, now: str, device_id: str | None = None) -> None:
    """Mark unfinished actions past their expiry expired (by the state machine)."""
    where = f"state IN {UNFINISHED} AND expires_at <= $1"
    args: list[Any] = [now]
    if device_id is not None:
        where += " AND device_id = $2"
        args.append(device_id)
    await conn.execute(f"UPDATE actions SET state = 'expired', state_at = $1 WHERE {where}", *args)


async def _forget(conn: asyncpg.Connection, before: str) -> None:
    """Delete finished actions older than ``before`` and their parts."""
    old = f"SELECT id FROM actions WHERE state NOT IN {UNFINISHED} AND state_at < $1"
    await conn.execute(f"DELETE FROM action_parts WHERE action_id IN ({old})", before)
    await conn.execute(f"DELETE FROM action_part_totals WHERE action_id IN ({old})", before)
    await conn.execute(
        f"DELETE FROM actions WHERE state NOT IN {UNFINISHED} AND state_at < $1", before
    )


class PgActionsMixin:
    """Queued device actions on PostgreSQL."""

    if TYPE_CHECKING:

        def _tx(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...

        async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]: ...

    async def add_actions(
        self,
        records: Sequence[ActionRecord],
        max_queued: int,
        audit: Sequence[AuditRecord],
        *,
        forget_before: datetime,
    ) -> None:
        """Queue actions (all or none, bounded per device) with their audit rows; forget
        finished ones older than ``forget_before`` (the table stays bounded)."""
        async with self._tx() as conn:
            for device_id in sorted({r.device_id for r in records}):
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))", ACTIONS_LOCK_CLASS, device_id
                )
            await _forget(conn, rows.ts(forget_before))
            for r in records:
                await _expire(conn, rows.ts(r.created_at), r.device_id)
                held = await conn.fetchval(
                    f"SELECT COUNT(*) FROM actions WHERE device_id = $1 AND state IN {UNFINISHED}",
                    r.device_id,
                )
                checks.check_queued_actions(r.device_id, held, max_queued)
                await conn.execute(
                    f"INSERT INTO actions ({COLUMNS}) VALUES "
                    "($1, $2, $3, $4, $5, $6, $7, $8, 'queued', $9, NULL, NULL, NULL, NULL, $10)",
                    *rows.action_values(r),
                )
            for a in audit:
                await insert_audit(conn, a)

    async def get_action(self, action_id: str, now: datetime) -> ActionRecord | None:
        """Return one action (past its expiry without a result: expired)."""
        async with self._tx() as conn:
            await _expire(conn, rows.ts(now))
            row = await conn.fetchrow(f"SELECT {COLUMNS} FROM actions WHERE id = $1", action_id)
        return rows.action(tuple(row)) if row is not None else None

    async def list_actions(
        self,
        now: datetime,
        *,
        device_id: str | None,
        state: str | None,
        limit: int,
        device_ids: frozenset[str] | None = None,
    ) -> list[ActionRecord]:
        """Return actions, newest first, filtered by device, state and a device set (scope)."""
        where, args = ["TRUE"], []
        if device_ids is not None:  # in the query, so a scoped page is full (not cut after)
            args.append(sorted(device_ids))
            where.append(f"device_id = ANY(${len(args)}::text[])")
        if device_id is not None:
            args.append(device_id)
            where.append(f"device_id = ${len(args)}")
        if state is not None:
            args.append(state)
            where.append(f"state = ${len(args)}")
        async with self._tx() as conn:
            await _expire(conn, rows.ts(now))
            found = await conn.fetch(
                f"SELECT {COLUMNS} FROM actions WHERE {' AND '.join(where)} "
                f'ORDER BY created_at DESC, id COLLATE "C" LIMIT ${len(args) + 1}',
                *args,
                limit,
            )
        return [rows.action(tuple(r)) for r in found]

    async def take_actions(
        self, device_id: str, now: datetime, *, redeliver_before: datetime, limit: int
    ) -> list[ActionRecord]:
        """Mark delivered and return what this device's sync answer carries (each action
        once across hub processes taking at the same time)."""
        at = rows.ts(now)
        args = (device_id, at, rows.ts(redeliver_before))
        if not await self._read(f"SELECT 1 {PICK} LIMIT 1", *args):
            return []  # the common sync: one indexed read, no write
        async with self._tx() as conn:
            await _expire(conn, at, device_id)
            # The rows as picked (before the update), as SQLite's take_actions returns them.
            found = await conn.fetch(
                f"WITH picked AS (SELECT {COLUMNS} {PICK} "
                'ORDER BY created_at, id COLLATE "C" LIMIT $4 '
                "FOR UPDATE SKIP LOCKED), marked AS (UPDATE actions SET state = 'delivered', "
                "state_at = $2, delivered_at = $2 FROM picked WHERE actions.id = picked.id) "
                'SELECT * FROM picked ORDER BY created_at, id COLLATE "C"',
                *args,
                limit,
            )
        return [rows.action(tuple(r)) for r in found]

    async def has_queued_actions(self, device_id: str, now: datetime) -> bool:
        """Return whether an unexpired action waits to be delivered to the device."""
        found = await self._read(
            "SELECT 1 FROM actions WHERE device_id = $1 AND state = 'queued' "
            "AND expires_at > $2 LIMIT 1",
            device_id,
            rows.ts(now),
        )
        return bool(found)

    async def list_action_parts(
        self, action_id: str, *, after: int, limit: int
    ) -> tuple[list[ActionPart], PartTotals]:
        """Return an action's result parts above ``after`` (in order) and their totals."""
        found = await self._read(
            "SELECT part_no, lines, received_at FROM action_parts WHERE action_id = $1 AND "
            "part_no > $2 ORDER BY part_no LIMIT $3",
            action_id,
            after,
            limit,
        )
        totals = await self._read(
            "SELECT parts, lines, bytes, cut_lines FROM action_part_totals WHERE action_id = $1",
            action_id,
        )
        parts = [ActionPart(n, rows.loads(t), datetime.fromisoformat(a)) for n, t, a in found]
        return parts, PartTotals(*totals[0]) if totals else PartTotals()
