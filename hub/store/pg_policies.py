"""PostgresStore's part for group device and log policies (pg migration 4).

Twin of ``sqlite_policies`` (device policies) and of the policy half of ``sqlite_logs``
(log policies): a JSON column of ``groups`` each, NULL when the group sets none. A mixin:
``PostgresStore`` provides ``_tx`` and ``_read``. Each change and its audit row are one
transaction; groups are listed by name in byte order (``COLLATE "C"``), as SQLite does.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.pg_core import insert_audit
from hub.store.records import AuditRecord

if TYPE_CHECKING:
    import asyncpg

# The column name is one of these constants, never a caller's text.
DEVICE_POLICY = "device_policy"
LOG_POLICY = "log_policy"


class PgPoliciesMixin:
    """Group device and log policies on PostgreSQL."""

    if TYPE_CHECKING:

        def _tx(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...

        async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]: ...

    async def set_group_device_policy(
        self, name: str, policy: dict[str, Any] | None, audit: AuditRecord
    ) -> None:
        """Set (or with None clear) a group's device policy, with the audit row."""
        await self._set_policy(DEVICE_POLICY, name, policy, audit)

    async def group_device_policies(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Return (name, selector, policy) of every group that sets a device policy, by name."""
        return await self._policies(DEVICE_POLICY)

    async def set_group_log_policy(
        self, name: str, policy: dict[str, Any] | None, audit: AuditRecord
    ) -> None:
        """Set (or with None clear) a group's log policy, with the audit row."""
        await self._set_policy(LOG_POLICY, name, policy, audit)

    async def group_log_policies(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Return (name, selector, policy) of every group that sets a log policy, by name."""
        return await self._policies(LOG_POLICY)

    async def _set_policy(
        self, column: str, name: str, policy: dict[str, Any] | None, audit: AuditRecord
    ) -> None:
        value = rows.dumps(policy) if policy is not None else None
        async with self._tx() as conn:
            status = await conn.execute(
                f"UPDATE groups SET {column} = $1 WHERE name = $2", value, name
            )
            if status == "UPDATE 0":
                raise checks.no_group(name)
            await insert_audit(conn, audit)

    async def _policies(self, column: str) -> list[tuple[str, str, dict[str, Any]]]:
        found = await self._read(
            f"SELECT name, selector, {column} FROM groups WHERE {column} IS NOT NULL "
            'ORDER BY name COLLATE "C"'
        )
        return [(name, selector, rows.loads(policy)) for name, selector, policy in found]
