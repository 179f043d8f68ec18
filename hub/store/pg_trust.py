"""PostgresStore's part for release signing (pg migration 4), twin of ``sqlite_trust``.

A mixin: ``PostgresStore`` provides ``_tx`` and ``_read``. The hub stores signed
documents only. Adding a root takes an advisory lock, so the chain stays contiguous
(version N+1 only after N) when several hub processes add roots at once.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from edge_agent.release_trust import SignedManifest, SignedRoot
from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.pg_core import insert_audit
from hub.store.records import AuditRecord

if TYPE_CHECKING:
    import asyncpg

ROOTS_LOCK = 0x6564_6765_0402


class PgTrustMixin:
    """Release roots and vouched-release manifests on PostgreSQL."""

    if TYPE_CHECKING:

        def _tx(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...

        async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]: ...

    async def release_roots(self) -> list[SignedRoot]:
        """Return every release root, oldest version first."""
        found = await self._read("SELECT document FROM release_roots ORDER BY version")
        return [SignedRoot.model_validate_json(r[0]) for r in found]

    async def add_release_root(self, signed: SignedRoot, audit: AuditRecord) -> None:
        """Store the next root version with its audit row; Conflict if it is not the next."""
        version = signed.root.version
        async with self._tx() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", ROOTS_LOCK)
            top = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM release_roots")
            checks.check_next_root(version, top)
            await conn.execute(
                "INSERT INTO release_roots (version, document, added_at) VALUES ($1, $2, $3)",
                version,
                signed.model_dump_json(),
                rows.ts(audit.at),
            )
            await insert_audit(conn, audit)

    async def release_manifests(self, limit: int) -> list[SignedManifest]:
        """Return the newest ``limit`` manifests, newest version first."""
        found = await self._read(
            "SELECT document FROM release_manifests ORDER BY version DESC LIMIT $1", limit
        )
        return [SignedManifest.model_validate_json(r[0]) for r in found]

    async def put_release_manifest(self, signed: SignedManifest, audit: AuditRecord) -> None:
        """Store (or replace) the manifest of its version, with the audit row."""
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO release_manifests (version, document, updated_at) "
                "VALUES ($1, $2, $3) ON CONFLICT (version) DO UPDATE SET "
                "document = excluded.document, updated_at = excluded.updated_at",
                signed.manifest.version,
                signed.model_dump_json(),
                rows.ts(audit.at),
            )
            await insert_audit(conn, audit)
