"""PostgresStore's part for device tags, groups and environment overrides (pg migration 2).

A mixin: ``PostgresStore`` provides ``_tx`` (a pooled connection in a transaction) and
``_read``. Each change and its audit row are written in one transaction; the row changed
is locked first (``FOR UPDATE``), and group creation takes an advisory lock so the
``max_groups`` bound holds across hub processes.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.pg_core import insert_audit
from hub.store.records import AuditRecord, DeviceRecord, EnvChange, GroupRecord
from hub.store.sqlite_groups import GROUP_COLUMNS

if TYPE_CHECKING:
    import asyncpg

GROUPS_LOCK = 0x6564_6765_0003
SELECT_GROUP = f"SELECT {GROUP_COLUMNS} FROM groups WHERE name = $1"


class PgGroupsMixin:
    """Tags, groups and overrides on PostgreSQL."""

    if TYPE_CHECKING:

        def _tx(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...

        async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]: ...

    async def update_device_tags(
        self,
        device_id: str,
        set_tags: dict[str, str],
        remove: list[str],
        max_tags: int,
        audit: AuditRecord,
    ) -> DeviceRecord:
        """Set and remove the device's tags, with the audit row."""
        async with self._tx() as conn:
            row = await conn.fetchrow(
                "SELECT tags FROM devices WHERE id = $1 FOR UPDATE", device_id
            )
            if row is None:
                raise checks.no_device(device_id)
            tags = checks.changed_tags(rows.loads(row[0]), set_tags, remove, max_tags)
            updated = await conn.fetchrow(
                f"UPDATE devices SET tags = $1 WHERE id = $2 RETURNING {rows.DEVICE_COLUMNS}",
                rows.dumps(tags),
                device_id,
            )
            await insert_audit(conn, audit)
            return rows.device(tuple(updated))

    async def create_group(self, group: GroupRecord, max_groups: int, audit: AuditRecord) -> None:
        """Store a new group, with the audit row."""
        async with self._tx() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", GROUPS_LOCK)
            if await conn.fetchval("SELECT 1 FROM groups WHERE name = $1", group.name):
                raise checks.group_exists(group.name)
            held = await conn.fetchval("SELECT COUNT(*) FROM groups")
            checks.check_groups(held, max_groups)
            await conn.execute(
                f"INSERT INTO groups ({GROUP_COLUMNS}) VALUES ($1, $2, $3, $4, $5)",
                group.name,
                group.selector,
                rows.dumps(group.overrides),
                rows.ts(group.created_at),
                group.created_by,
            )
            await insert_audit(conn, audit)

    async def get_group(self, name: str) -> GroupRecord | None:
        """Return a group by name."""
        found = await self._read(SELECT_GROUP, name)
        return rows.group(tuple(found[0])) if found else None

    async def list_groups(self) -> list[GroupRecord]:
        """Return every group, ordered by name."""
        found = await self._read(f'SELECT {GROUP_COLUMNS} FROM groups ORDER BY name COLLATE "C"')
        return [rows.group(tuple(r)) for r in found]

    async def delete_group(self, name: str, audit: AuditRecord) -> None:
        """Delete a group and its overrides, with the audit row."""
        async with self._tx() as conn:
            if await conn.execute("DELETE FROM groups WHERE name = $1", name) == "DELETE 0":
                raise checks.no_group(name)
            await insert_audit(conn, audit)

    async def change_group_env(
        self, name: str, change: EnvChange, audit: AuditRecord
    ) -> GroupRecord:
        """Set/unset the group's overrides of one service, with the audit row."""
        async with self._tx() as conn:
            row = await conn.fetchrow(
                "SELECT overrides FROM groups WHERE name = $1 FOR UPDATE", name
            )
            if row is None:
                raise checks.no_group(name)
            new = rows.dumps(rows.changed_overrides(row[0], change))
            updated = await conn.fetchrow(
                f"UPDATE groups SET overrides = $1 WHERE name = $2 RETURNING {GROUP_COLUMNS}",
                new,
                name,
            )
            await insert_audit(conn, audit)
            return rows.group(tuple(updated))

    async def change_device_env(
        self, device_id: str, change: EnvChange, audit: AuditRecord
    ) -> dict[str, dict[str, str]]:
        """Set/unset the device's own overrides of one service, with the audit row."""
        async with self._tx() as conn:
            # The device row's lock serializes changes of its overrides (also the first).
            if (
                await conn.fetchval("SELECT 1 FROM devices WHERE id = $1 FOR UPDATE", device_id)
                is None
            ):
                raise checks.no_device(device_id)
            current = await conn.fetchval(
                "SELECT overrides FROM device_overrides WHERE device_id = $1", device_id
            )
            new = rows.changed_overrides(current or "{}", change)
            await conn.execute(
                "INSERT INTO device_overrides VALUES ($1, $2) "
                "ON CONFLICT (device_id) DO UPDATE SET overrides = excluded.overrides",
                device_id,
                rows.dumps(new),
            )
            await insert_audit(conn, audit)
            return new

    async def get_device_overrides(self, device_id: str) -> dict[str, dict[str, str]]:
        """Return the device's own overrides (empty if none)."""
        found = await self._read(
            "SELECT overrides FROM device_overrides WHERE device_id = $1", device_id
        )
        return dict(rows.loads(found[0][0])) if found else {}
