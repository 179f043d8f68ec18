"""SqliteStore's part for group log policies (migration 13) and retention of device data.

A mixin: ``SqliteStore`` provides ``_w`` (the group-commit writer) and ``_read``.
Retention deletes rows of ``events`` (logs, events, status history, drop markers a device
sent) in batches of at most ``batch`` rows, each batch one short write transaction.
Rows of kind ``audit`` are never deleted, and neither is ``device_audit``; the size bound
counts only what retention may delete. Sizes are the payload's bytes.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.records import AuditRecord

if TYPE_CHECKING:
    from hub.store.writer import GroupCommitWriter

# What retention may delete: everything a device sent but its audit records.
DELETABLE = "kind != 'audit'"


class LogsMixin:
    """Group log policies and retention of device data on SQLite."""

    if TYPE_CHECKING:
        _w: GroupCommitWriter

        async def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]: ...

    async def set_group_log_policy(
        self, name: str, policy: dict[str, Any] | None, audit: AuditRecord
    ) -> None:
        """Set (or with None clear) a group's log policy, with the audit row."""

        def job(db: sqlite3.Connection) -> None:
            value = rows.dumps(policy) if policy is not None else None
            cur = db.execute("UPDATE groups SET log_policy = ? WHERE name = ?", (value, name))
            if cur.rowcount == 0:
                raise checks.no_group(name)
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))

        await self._w.submit(job)

    async def group_log_policies(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Return (name, selector, policy) of every group that sets a log policy, by name."""
        found = await self._read(
            "SELECT name, selector, log_policy FROM groups WHERE log_policy IS NOT NULL"
            " ORDER BY name"
        )
        return [(name, selector, rows.loads(policy)) for name, selector, policy in found]

    async def retention_devices(self) -> list[str]:
        """Return every device id (retention walks them one by one)."""
        return [r[0] for r in await self._read("SELECT id FROM devices ORDER BY id")]

    async def trim_device_by_age(self, device_id: str, before: datetime, batch: int) -> int:
        """Delete up to ``batch`` of the device's oldest rows received before ``before``."""
        cutoff = rows.ts(before)

        def job(db: sqlite3.Connection) -> int:
            # Oldest first by seq, which follows arrival: stop at the first young row.
            seqs = []
            for seq, received in db.execute(
                f"SELECT seq, received_at FROM events WHERE device_id = ? AND {DELETABLE}"
                " ORDER BY seq LIMIT ?",
                (device_id, batch),
            ):
                if received >= cutoff:
                    break
                seqs.append(seq)
            return _delete(db, device_id, seqs)

        return int(await self._w.submit(job))

    async def device_data_cut(self, device_id: str, max_bytes: int) -> int | None:
        """Return the highest seq whose deletion brings the device within ``max_bytes``
        (None: within it). A read, off the write path."""
        found = await self._read(
            "SELECT seq FROM (SELECT seq, SUM(length(CAST(payload AS BLOB)))"
            f" OVER (ORDER BY seq DESC) AS newer FROM events WHERE device_id = ? AND {DELETABLE})"
            " WHERE newer > ? ORDER BY seq DESC LIMIT 1",
            (device_id, max_bytes),
        )
        return int(found[0][0]) if found else None

    async def trim_device_upto(self, device_id: str, cut: int, batch: int) -> int:
        """Delete up to ``batch`` of the device's oldest deletable rows with seq <= ``cut``."""

        def job(db: sqlite3.Connection) -> int:
            seqs = [
                r[0]
                for r in db.execute(
                    f"SELECT seq FROM events WHERE device_id = ? AND seq <= ? AND {DELETABLE}"
                    " ORDER BY seq LIMIT ?",
                    (device_id, cut, batch),
                )
            ]
            return _delete(db, device_id, seqs)

        return int(await self._w.submit(job))

    async def device_data_size(self, device_id: str) -> tuple[int, int]:
        """Return (rows, bytes) the device's deletable data holds."""
        found = await self._read(
            "SELECT COUNT(*), COALESCE(SUM(length(CAST(payload AS BLOB))), 0) FROM events"
            f" WHERE device_id = ? AND {DELETABLE}",
            (device_id,),
        )
        return int(found[0][0]), int(found[0][1])


def _delete(db: sqlite3.Connection, device_id: str, seqs: list[int]) -> int:
    if not seqs:
        return 0
    db.executemany(
        "DELETE FROM events WHERE device_id = ? AND seq = ?", [(device_id, s) for s in seqs]
    )
    return len(seqs)
