"""SqliteStore's part for queued device actions (hub migration 12).

A mixin, like ``hub.store.sqlite_technicians``: ``SqliteStore`` provides ``_w`` and
``_read``. State changes follow ``edge_agent.actiondoc.next_state``. The device's
receipts and results arrive as outbox entries (kind ``event``, type ``action``);
``observe`` applies them inside the sync's writer transaction, so each entry is taken
once however often it is sent (a re-delivered entry is a no-op by the state machine).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from edge_agent.actiondoc import RESULTS, next_state
from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.records import ActionPart, ActionRecord, AuditRecord, PartsBound, PartTotals
from hub.store.sync_rules import SyncBounds, action_docs, lines_within, part_lines, result_values

if TYPE_CHECKING:
    from hub.store.writer import GroupCommitWriter

COLUMNS = (
    "id, device_id, kind, args, created_by, created_at, expires_at, signed, state, state_at, "
    "delivered_at, received_at, reason, result, group_name"
)
UNFINISHED = "('queued', 'delivered')"


def _expire(db: sqlite3.Connection, now: str, device_id: str | None = None) -> None:
    """Mark unfinished actions past their expiry expired (by the state machine)."""
    where = f"state IN {UNFINISHED} AND expires_at <= ?"
    args: tuple[Any, ...] = (now,)
    if device_id is not None:
        where += " AND device_id = ?"
        args += (device_id,)
    db.execute(f"UPDATE actions SET state = 'expired', state_at = ? WHERE {where}", (now, *args))


class ActionsMixin(SyncBounds):
    """Queued device actions on SQLite."""

    if TYPE_CHECKING:
        _w: GroupCommitWriter

        async def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]: ...

        async def _point_read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]: ...

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

        def job(db: sqlite3.Connection) -> None:
            _forget_parts(db, rows.ts(forget_before))
            db.execute(
                f"DELETE FROM actions WHERE state NOT IN {UNFINISHED} AND state_at < ?",
                (rows.ts(forget_before),),
            )
            for r in records:
                _expire(db, rows.ts(r.created_at), r.device_id)
                (held,) = db.execute(
                    f"SELECT COUNT(*) FROM actions WHERE device_id = ? AND state IN {UNFINISHED}",
                    (r.device_id,),
                ).fetchone()
                checks.check_queued_actions(r.device_id, held, max_queued)
                db.execute(
                    f"INSERT INTO actions ({COLUMNS}) VALUES "
                    "(?,?,?,?,?,?,?,?,'queued',?,NULL,NULL,NULL,NULL,?)",
                    rows.action_values(r),
                )
            for a in audit:
                db.execute(rows.INSERT_AUDIT, rows.audit_args(a))

        await self._w.submit(job)

    async def get_action(self, action_id: str, now: datetime) -> ActionRecord | None:
        """Return one action (past its expiry without a result: expired)."""
        await self._w.submit(lambda db: _expire(db, rows.ts(now)))
        found = await self._read(f"SELECT {COLUMNS} FROM actions WHERE id = ?", (action_id,))
        return rows.action(found[0]) if found else None

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
        await self._w.submit(lambda db: _expire(db, rows.ts(now)))
        where, args = ["1 = 1"], []
        if device_ids is not None:  # in the query, so a scoped page is full (not cut after)
            where.append("device_id IN (SELECT value FROM json_each(?))")
            args.append(json.dumps(sorted(device_ids)))
        if device_id is not None:
            where.append("device_id = ?")
            args.append(device_id)
        if state is not None:
            where.append("state = ?")
            args.append(state)
        found = await self._read(
            f"SELECT {COLUMNS} FROM actions WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, id LIMIT ?",
            (*args, limit),
        )
        return [rows.action(r) for r in found]

    async def take_actions(
        self, device_id: str, now: datetime, *, redeliver_before: datetime, limit: int
    ) -> list[ActionRecord]:
        """Mark delivered and return what this device's sync answer carries."""
        at = rows.ts(now)
        pick = (
            f"SELECT {COLUMNS} FROM actions WHERE device_id = ? AND expires_at > ? AND "
            "(state = 'queued' OR (state = 'delivered' AND received_at IS NULL AND "
            "delivered_at <= ?)) ORDER BY created_at, id LIMIT ?"
        )
        pick_args = (device_id, at, rows.ts(redeliver_before), limit)
        if not await self._point_read(pick, pick_args):
            return []  # the common sync: one indexed read, no write

        def job(db: sqlite3.Connection) -> list[ActionRecord]:
            _expire(db, at, device_id)
            found = db.execute(pick, pick_args).fetchall()
            db.executemany(
                "UPDATE actions SET state = 'delivered', state_at = ?, delivered_at = ? "
                "WHERE id = ?",
                [(at, at, r[0]) for r in found],
            )
            return [rows.action(r) for r in found]

        return await self._w.submit(job)

    async def has_queued_actions(self, device_id: str, now: datetime) -> bool:
        """Return whether an unexpired action waits to be delivered to the device."""
        found = await self._point_read(
            "SELECT 1 FROM actions WHERE device_id = ? AND state = 'queued' AND expires_at > ? "
            "LIMIT 1",
            (device_id, rows.ts(now)),
        )
        return bool(found)

    async def list_action_parts(
        self, action_id: str, *, after: int, limit: int
    ) -> tuple[list[ActionPart], PartTotals]:
        """Return an action's result parts above ``after`` (in order) and their totals."""
        found = await self._read(
            "SELECT part_no, lines, received_at FROM action_parts WHERE action_id = ? AND "
            "part_no > ? ORDER BY part_no LIMIT ?",
            (action_id, after, limit),
        )
        totals = await self._read(
            "SELECT parts, lines, bytes, cut_lines FROM action_part_totals WHERE action_id = ?",
            (action_id,),
        )
        parts = [ActionPart(n, json.loads(t), datetime.fromisoformat(at)) for n, t, at in found]
        return parts, PartTotals(*totals[0]) if totals else PartTotals()


def _forget_parts(db: sqlite3.Connection, before: str) -> None:
    """Delete the parts of the finished actions about to be forgotten (migration 15)."""
    old = f"SELECT id FROM actions WHERE state NOT IN {UNFINISHED} AND state_at < ?"
    db.execute(f"DELETE FROM action_parts WHERE action_id IN ({old})", (before,))
    db.execute(f"DELETE FROM action_part_totals WHERE action_id IN ({old})", (before,))


def _add_part(
    db: sqlite3.Connection, device_id: str, doc: dict[str, Any], at: str, bound: PartsBound
) -> int:
    """Store one result part once, within the action's bound; return the lines cut."""
    if (numbered := part_lines(doc)) is None:
        return 0
    part, lines = numbered
    if (
        db.execute(
            "SELECT 1 FROM actions WHERE id = ? AND device_id = ?", (doc["id"], device_id)
        ).fetchone()
        is None
        or db.execute(
            "SELECT 1 FROM action_parts WHERE action_id = ? AND part_no = ?", (doc["id"], part)
        ).fetchone()
    ):
        return 0  # not this device's action, or a part taken before
    row = db.execute(
        "SELECT lines, bytes FROM action_part_totals WHERE action_id = ?", (doc["id"],)
    ).fetchone()
    held_lines, held_bytes = row or (0, 0)
    kept, size = lines_within(lines, bound.max_lines - held_lines, bound.max_bytes - held_bytes)
    cut = len(lines) - len(kept)
    db.execute(
        "INSERT INTO action_parts (action_id, part_no, received_at, lines, n_lines, n_bytes) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (doc["id"], part, at, rows.dumps(kept), len(kept), size),
    )
    db.execute(
        "INSERT INTO action_part_totals (action_id, parts, lines, bytes, cut_lines) "
        "VALUES (?, 1, ?, ?, ?) ON CONFLICT (action_id) DO UPDATE SET parts = parts + 1, "
        "lines = lines + excluded.lines, bytes = bytes + excluded.bytes, "
        "cut_lines = cut_lines + excluded.cut_lines",
        (doc["id"], len(kept), size, cut),
    )
    return cut


def observe(
    db: sqlite3.Connection,
    device_id: str,
    entries: Sequence[tuple[int, str, str, str]],
    floor: int,
    received: str,
    max_result_bytes: int,
    parts_bound: PartsBound | None = None,
) -> int:
    """Apply the batch's action receipts, result parts and results (in the sync's
    transaction).

    Only the device's own actions change; returns how many results were cut to
    ``max_result_bytes`` (the device bounds them too; this holds for any agent). Parts
    are kept within ``parts_bound`` per action; the lines cut are counted in its totals."""
    cut = 0
    for doc in action_docs(entries, floor):
        if doc.get("state") == "received":
            db.execute(
                "UPDATE actions SET received_at = COALESCE(received_at, ?) "
                "WHERE id = ? AND device_id = ?",
                (received, doc["id"], device_id),
            )
        elif doc.get("state") == "part":
            _add_part(db, device_id, doc, received, parts_bound or PartsBound())
        elif doc.get("state") in RESULTS:
            cut += _finish(db, device_id, doc, received, max_result_bytes)
    return cut


def _finish(
    db: sqlite3.Connection, device_id: str, doc: dict[str, Any], at: str, max_bytes: int
) -> int:
    row = db.execute(
        "SELECT state, delivered_at FROM actions WHERE id = ? AND device_id = ?",
        (doc["id"], device_id),
    ).fetchone()
    if row is None:
        return 0
    state = next_state(row[0], doc["state"], delivered=row[1] is not None)
    if state is None:
        return 0  # final already: a result is taken once
    reason, text, cut = result_values(doc, max_bytes)
    db.execute(
        "UPDATE actions SET state = ?, state_at = ?, reason = ?, result = ?, "
        "received_at = COALESCE(received_at, ?) WHERE id = ?",
        (state, at, reason, text, at, doc["id"]),
    )
    return cut
