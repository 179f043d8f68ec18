"""SqliteStore's part for group device policies (migration 17).

A mixin: ``SqliteStore`` provides ``_w`` (the group-commit writer) and ``_read``.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.records import AuditRecord

if TYPE_CHECKING:
    from hub.store.writer import GroupCommitWriter


class PoliciesMixin:
    """Group device policies on SQLite."""

    if TYPE_CHECKING:
        _w: GroupCommitWriter

        async def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]: ...

    async def set_group_device_policy(
        self, name: str, policy: dict[str, Any] | None, audit: AuditRecord
    ) -> None:
        """Set (or with None clear) a group's device policy, with the audit row."""

        def job(db: sqlite3.Connection) -> None:
            value = rows.dumps(policy) if policy is not None else None
            cur = db.execute("UPDATE groups SET device_policy = ? WHERE name = ?", (value, name))
            if cur.rowcount == 0:
                raise checks.no_group(name)
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))

        await self._w.submit(job)

    async def group_device_policies(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Return (name, selector, policy) of every group that sets a device policy, by name."""
        found = await self._read(
            "SELECT name, selector, device_policy FROM groups WHERE device_policy IS NOT NULL"
            " ORDER BY name"
        )
        return [(name, selector, rows.loads(policy)) for name, selector, policy in found]
