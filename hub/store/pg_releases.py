"""PostgresStore's part for releases (pg migration 4), twin of ``sqlite_releases``.

A mixin: ``PostgresStore`` provides ``_tx`` (a pooled connection in a transaction) and
``_read``. Creating a release takes an advisory lock: the "same name and version" check
and the insert are one step across hub processes (a repeated create finds the first one),
and release ids commit in id order, so paging by id never skips a release that commits
late. The registry passwords a new release gave in clear are sealed into ``secrets`` in
the same transaction, each with its audit row, as on SQLite.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from hub.errors import NotFound
from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.pg_core import insert_audit
from hub.store.records import AuditRecord, ReleaseRecord, SealedSecret
from hub.store.sqlite_releases import COLUMNS

if TYPE_CHECKING:
    import asyncpg

RELEASES_LOCK = 0x6564_6765_0401
SELECT_ONE = f"SELECT {COLUMNS} FROM releases WHERE name = $1 AND version = $2"
SELECT_PAGE = f"SELECT {COLUMNS} FROM releases WHERE id > $1 ORDER BY id LIMIT $2"


async def upsert_secret(conn: asyncpg.Connection, s: SealedSecret, at: str, by: str) -> bool:
    """Store one sealed value in the caller's transaction; return whether the name is new."""
    # xmax is 0 on a row this statement inserted, the updater's id on one it updated.
    return bool(
        await conn.fetchval(
            "INSERT INTO secrets (name, sealed, key_id, created_at, created_by, updated_at, "
            "updated_by) VALUES ($1, $2, $3, $4, $5, $4, $5) ON CONFLICT (name) DO UPDATE SET "
            "sealed = excluded.sealed, key_id = excluded.key_id, "
            "updated_at = excluded.updated_at, updated_by = excluded.updated_by "
            "RETURNING xmax = 0",
            s.name,
            s.sealed,
            s.key_id,
            at,
            by,
        )
    )


class PgReleasesMixin:
    """Releases on PostgreSQL."""

    if TYPE_CHECKING:

        def _tx(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...

        async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]: ...

    async def create_release(
        self,
        release: ReleaseRecord,
        audit: AuditRecord,
        secrets: Sequence[tuple[SealedSecret, AuditRecord]] = (),
    ) -> tuple[ReleaseRecord, bool]:
        """Store a new release (or find the identical one) with its audit row and secrets."""
        async with self._tx() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", RELEASES_LOCK)
            found = await conn.fetchrow(SELECT_ONE, release.name, release.version)
            if found is not None:
                existing = rows.release(tuple(found))
                checks.check_same_release(existing, release)
                await insert_audit(conn, audit)
                return existing, False
            stored = await conn.fetchrow(
                "INSERT INTO releases (name, version, document, source, images, created_at, "
                f"created_by) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}",
                *rows.release_values(release),
            )
            for sealed, secret_audit in secrets:
                await upsert_secret(conn, sealed, rows.ts(secret_audit.at), secret_audit.actor)
                await insert_audit(conn, secret_audit)
            await insert_audit(conn, audit)
            return rows.release(tuple(stored)), True

    async def get_release(self, name: str, version: str) -> ReleaseRecord | None:
        """Return a release by name and version."""
        found = await self._read(SELECT_ONE, name, version)
        return rows.release(tuple(found[0])) if found else None

    async def list_releases(self, after_id: int, limit: int) -> list[ReleaseRecord]:
        """Return releases with id > after_id, oldest first."""
        found = await self._read(SELECT_PAGE, after_id, limit)
        return [rows.release(tuple(r)) for r in found]

    async def retire_release(
        self, name: str, version: str, reason: str, audit: AuditRecord
    ) -> ReleaseRecord:
        """Mark a release retired (row locked), with its audit row."""
        async with self._tx() as conn:
            found = await conn.fetchrow(SELECT_ONE + " FOR UPDATE", name, version)
            if found is None:
                raise NotFound(f"no release {name}@{version}")
            existing = rows.release(tuple(found))
            checks.check_not_retired(existing)
            retired = await conn.fetchrow(
                "UPDATE releases SET retired_at = $1, retired_by = $2, retired_reason = $3 "
                f"WHERE id = $4 RETURNING {COLUMNS}",
                rows.ts(audit.at),
                audit.actor,
                reason,
                existing.id,
            )
            await insert_audit(conn, audit)
            return rows.release(tuple(retired))
