"""PostgresStore's part for secrets and the clear-password moves (pg migration 6).

A mixin, like ``hub.store.pg_groups``: ``PostgresStore`` provides ``_tx`` and ``_read``.
The twin of ``hub.store.sqlite_secrets`` and ``sqlite_secret_moves``: same records,
errors and audit rows. Values arrive and leave sealed; the store never sees one in clear.

Across hub processes: a value is stored by UPDATE-else-INSERT (``ON CONFLICT DO
NOTHING``, retried), so two processes writing one new name both succeed, one as the
creator; a delete locks the secret row before it reads the releases naming it; a reseal
locks every secret row; a move claims its ``secret_moves`` row first (deletes it), so a
row is moved by one process only and the other gets Conflict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.errors import Conflict, NotFound
from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.pg_core import insert_audit
from hub.store.records import AuditRecord, SealedSecret, SecretRecord
from hub.store.sqlite_secret_moves import RELEASE
from hub.store.sqlite_secrets import COLUMNS

if TYPE_CHECKING:
    import asyncpg


async def upsert_secret(conn: asyncpg.Connection, s: SealedSecret, at: str, by: str) -> bool:
    """Store one sealed value in the caller's transaction; return whether the name is new."""
    while True:
        updated = await conn.execute(
            "UPDATE secrets SET sealed = $1, key_id = $2, updated_at = $3, updated_by = $4 "
            "WHERE name = $5",
            s.sealed,
            s.key_id,
            at,
            by,
            s.name,
        )
        if updated != "UPDATE 0":
            return False
        inserted = await conn.execute(
            f"INSERT INTO secrets (sealed, {COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) "
            "ON CONFLICT (name) DO NOTHING",
            s.sealed,
            s.name,
            s.key_id,
            at,
            by,
            at,
            by,
        )
        if inserted != "INSERT 0 0":
            return True
        # Another transaction inserted the name and committed meanwhile: update it.


async def releases_naming(conn: asyncpg.Connection, name: str) -> list[str]:
    """Return the refs of the releases that name secret ``name``."""
    found = await conn.fetch(
        "SELECT document FROM releases WHERE document LIKE $1 ORDER BY id", f'%"{name}"%'
    )
    return checks.refs_naming(name, [document for (document,) in found])


class PgSecretsMixin:
    """Secrets and the clear-password moves on PostgreSQL."""

    if TYPE_CHECKING:

        def _tx(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...

        async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]: ...

    async def put_secrets(
        self, sealed: Sequence[SealedSecret], at: datetime, by: str, audit: AuditRecord | None
    ) -> list[bool]:
        """Store sealed values (new or replacing) with the audit row; return which were new."""
        when = rows.ts(at)
        async with self._tx() as conn:
            created = [await upsert_secret(conn, s, when, by) for s in sealed]
            if audit is not None:
                await insert_audit(conn, audit)
            return created

    async def list_secrets(self) -> list[SecretRecord]:
        """Return every secret's metadata, by name."""
        found = await self._read(f'SELECT {COLUMNS} FROM secrets ORDER BY name COLLATE "C"')
        return [rows.secret(tuple(r)) for r in found]

    async def sealed_secrets(self, names: Sequence[str]) -> dict[str, SealedSecret]:
        """Return the sealed values of the named secrets that exist."""
        if not names:
            return {}
        found = await self._read(
            "SELECT name, sealed, key_id FROM secrets WHERE name = ANY($1::text[])", list(names)
        )
        return {r[0]: SealedSecret(r[0], r[1], r[2]) for r in found}

    async def delete_secret(self, name: str, audit: AuditRecord) -> None:
        """Delete a secret no release names (Conflict naming them otherwise), audited."""
        async with self._tx() as conn:
            if (
                await conn.fetchval("SELECT 1 FROM secrets WHERE name = $1 FOR UPDATE", name)
                is None
            ):
                raise NotFound(f"no secret {name!r}")
            refs = await releases_naming(conn, name)
            checks.check_secret_unused(name, refs)
            await conn.execute("DELETE FROM secrets WHERE name = $1", name)
            await insert_audit(conn, audit)

    async def reseal_secrets(
        self, reseal: Callable[[SealedSecret], SealedSecret], audit: AuditRecord
    ) -> int:
        """Re-seal every value with ``reseal`` in one transaction; return how many changed."""
        async with self._tx() as conn:
            found = await conn.fetch(
                'SELECT name, sealed, key_id FROM secrets ORDER BY name COLLATE "C" FOR UPDATE'
            )
            changed = 0
            for name, sealed, key_id in found:
                new = reseal(SealedSecret(name, sealed, key_id))
                if new.sealed != sealed:
                    await conn.execute(
                        "UPDATE secrets SET sealed = $1, key_id = $2 WHERE name = $3",
                        new.sealed,
                        new.key_id,
                        name,
                    )
                    changed += 1
            await insert_audit(conn, replace(audit, detail={**audit.detail, "resealed": changed}))
            return changed

    # clear registry passwords from before the secret store (hub.secret_moves) -------

    async def pending_secret_moves(self) -> list[tuple[str, str, str, str]]:
        """Return the rows still holding a clear password: (kind, key, document, source)."""
        releases = await self._read(
            "SELECT 'release', m.key, r.document, r.source FROM secret_moves m "
            "JOIN releases r ON m.kind = 'release' AND m.key = r.id::text ORDER BY r.id"
        )
        targets = await self._read(
            "SELECT 'target', m.key, t.document, '' FROM secret_moves m JOIN targets t "
            "ON m.kind = 'target' AND m.key = t.device_id || ' ' || t.revision "
            'ORDER BY m.key COLLATE "C"'
        )
        return [(r[0], r[1], r[2], r[3]) for r in [*releases, *targets]]

    async def move_secrets(
        self,
        kind: str,
        key: str,
        document: str,
        source: str,
        sealed: Sequence[SealedSecret],
        audits: Sequence[AuditRecord],
    ) -> None:
        """Rewrite one listed row with names only, store its values and audit, unlist it.

        Conflict when the row is not listed (any more): another hub process moved it.
        """
        async with self._tx() as conn:
            # Claimed first: a second process moving the same row waits here, then finds
            # it gone and changes nothing.
            claimed = await conn.execute(
                "DELETE FROM secret_moves WHERE kind = $1 AND key = $2", kind, key
            )
            if claimed == "DELETE 0":
                raise Conflict(f"{kind} {key} is not listed in secret_moves (moved already)")
            if kind == RELEASE:
                await conn.execute(
                    "UPDATE releases SET document = $1, source = $2 WHERE id = $3",
                    document,
                    source,
                    int(key),
                )
            else:
                device_id, _, revision = key.partition(" ")
                await conn.execute(
                    "UPDATE targets SET document = $1 WHERE device_id = $2 AND revision = $3",
                    document,
                    device_id,
                    int(revision),
                )
            for s, audit in zip(sealed, audits, strict=True):
                await upsert_secret(conn, s, rows.ts(audit.at), audit.actor)
                await insert_audit(conn, audit)
