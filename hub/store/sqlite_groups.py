"""SqliteStore's part for device tags, groups and environment overrides (migration 6).

A mixin: ``SqliteStore`` provides ``_w`` (the group-commit writer) and ``_read``. Each
change and its audit row are written in one transaction.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.records import AuditRecord, DeviceRecord, EnvChange, GroupRecord

if TYPE_CHECKING:
    from hub.store.writer import GroupCommitWriter

GROUP_COLUMNS = "name, selector, overrides, created_at, created_by"
SELECT_DEVICE = f"SELECT {rows.DEVICE_COLUMNS} FROM devices WHERE id = ?"


class GroupsMixin:
    """Tags, groups and overrides on SQLite."""

    if TYPE_CHECKING:
        _w: GroupCommitWriter

        async def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]: ...

    async def update_device_tags(
        self,
        device_id: str,
        set_tags: dict[str, str],
        remove: list[str],
        max_tags: int,
        audit: AuditRecord,
    ) -> DeviceRecord:
        """Set and remove the device's tags, with the audit row."""

        def job(db: sqlite3.Connection) -> DeviceRecord:
            row = db.execute("SELECT tags FROM devices WHERE id = ?", (device_id,)).fetchone()
            if row is None:
                raise checks.no_device(device_id)
            tags = checks.changed_tags(rows.loads(row[0]), set_tags, remove, max_tags)
            db.execute("UPDATE devices SET tags = ? WHERE id = ?", (rows.dumps(tags), device_id))
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))
            return rows.device(db.execute(SELECT_DEVICE, (device_id,)).fetchone())

        return await self._w.submit(job)

    async def create_group(self, group: GroupRecord, max_groups: int, audit: AuditRecord) -> None:
        """Store a new group, with the audit row."""

        def job(db: sqlite3.Connection) -> None:
            if db.execute("SELECT 1 FROM groups WHERE name = ?", (group.name,)).fetchone():
                raise checks.group_exists(group.name)
            (held,) = db.execute("SELECT COUNT(*) FROM groups").fetchone()
            checks.check_groups(held, max_groups)
            db.execute(
                f"INSERT INTO groups ({GROUP_COLUMNS}) VALUES (?,?,?,?,?)",
                (
                    group.name,
                    group.selector,
                    rows.dumps(group.overrides),
                    rows.ts(group.created_at),
                    group.created_by,
                ),
            )
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))

        await self._w.submit(job)

    async def get_group(self, name: str) -> GroupRecord | None:
        """Return a group by name."""
        found = await self._read(f"SELECT {GROUP_COLUMNS} FROM groups WHERE name = ?", (name,))
        return rows.group(found[0]) if found else None

    async def list_groups(self) -> list[GroupRecord]:
        """Return every group, ordered by name."""
        found = await self._read(f"SELECT {GROUP_COLUMNS} FROM groups ORDER BY name")
        return [rows.group(r) for r in found]

    async def delete_group(self, name: str, audit: AuditRecord) -> None:
        """Delete a group and its overrides, with the audit row."""

        def job(db: sqlite3.Connection) -> None:
            if db.execute("DELETE FROM groups WHERE name = ?", (name,)).rowcount == 0:
                raise checks.no_group(name)
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))

        await self._w.submit(job)

    async def change_group_env(
        self, name: str, change: EnvChange, audit: AuditRecord
    ) -> GroupRecord:
        """Set/unset the group's overrides of one service, with the audit row."""

        def job(db: sqlite3.Connection) -> GroupRecord:
            row = db.execute("SELECT overrides FROM groups WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise checks.no_group(name)
            new = rows.dumps(rows.changed_overrides(row[0], change))
            db.execute("UPDATE groups SET overrides = ? WHERE name = ?", (new, name))
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))
            select = f"SELECT {GROUP_COLUMNS} FROM groups WHERE name = ?"
            return rows.group(db.execute(select, (name,)).fetchone())

        return await self._w.submit(job)

    async def change_device_env(
        self, device_id: str, change: EnvChange, audit: AuditRecord
    ) -> dict[str, dict[str, str]]:
        """Set/unset the device's own overrides of one service, with the audit row."""

        def job(db: sqlite3.Connection) -> dict[str, dict[str, str]]:
            if db.execute("SELECT 1 FROM devices WHERE id = ?", (device_id,)).fetchone() is None:
                raise checks.no_device(device_id)
            row = db.execute(
                "SELECT overrides FROM device_overrides WHERE device_id = ?", (device_id,)
            ).fetchone()
            new = rows.changed_overrides(row[0] if row else "{}", change)
            db.execute(
                "INSERT INTO device_overrides VALUES (?,?) "
                "ON CONFLICT(device_id) DO UPDATE SET overrides = excluded.overrides",
                (device_id, rows.dumps(new)),
            )
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))
            return new

        return await self._w.submit(job)

    async def get_device_overrides(self, device_id: str) -> dict[str, dict[str, str]]:
        """Return the device's own overrides (empty if none)."""
        found = await self._read(
            "SELECT overrides FROM device_overrides WHERE device_id = ?", (device_id,)
        )
        return dict(rows.loads(found[0][0])) if found else {}
