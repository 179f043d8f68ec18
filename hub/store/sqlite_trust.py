"""SqliteStore's part for release signing (hub migration 18): roots and manifests.

The hub stores signed documents only — operator private keys never reach it. Documents
are checked (edge_agent/release_trust.py) by hub/trust_api.py before they are stored;
the store keeps the root chain contiguous (version N+1 only after N).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from edge_agent.release_trust import SignedManifest, SignedRoot
from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.records import AuditRecord

if TYPE_CHECKING:
    from hub.store.writer import GroupCommitWriter


class TrustMixin:
    """Release roots and vouched-release manifests on SQLite."""

    if TYPE_CHECKING:
        _w: GroupCommitWriter

        async def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]: ...

    async def release_roots(self) -> list[SignedRoot]:
        """Return every release root, oldest version first."""
        found = await self._read("SELECT document FROM release_roots ORDER BY version")
        return [SignedRoot.model_validate_json(r[0]) for r in found]

    async def add_release_root(self, signed: SignedRoot, audit: AuditRecord) -> None:
        """Store the next root version with its audit row; Conflict if it is not the next."""
        version = signed.root.version

        def job(db: sqlite3.Connection) -> None:
            (top,) = db.execute("SELECT COALESCE(MAX(version), 0) FROM release_roots").fetchone()
            checks.check_next_root(version, top)
            db.execute(
                "INSERT INTO release_roots (version, document, added_at) VALUES (?,?,?)",
                (version, signed.model_dump_json(), rows.ts(audit.at)),
            )
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))

        await self._w.submit(job)

    async def release_manifests(self, limit: int) -> list[SignedManifest]:
        """Return the newest ``limit`` manifests, newest version first."""
        found = await self._read(
            "SELECT document FROM release_manifests ORDER BY version DESC LIMIT ?", (limit,)
        )
        return [SignedManifest.model_validate_json(r[0]) for r in found]

    async def put_release_manifest(self, signed: SignedManifest, audit: AuditRecord) -> None:
        """Store (or replace) the manifest of its version, with the audit row."""

        def job(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO release_manifests (version, document, updated_at) "
                "VALUES (?,?,?)",
                (signed.manifest.version, signed.model_dump_json(), rows.ts(audit.at)),
            )
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))

        await self._w.submit(job)
