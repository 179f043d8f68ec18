"""SqliteStore's part for secrets (hub migration 19).

A mixin, like ``hub.store.sqlite_technicians``: ``SqliteStore`` provides ``_w`` (the
group-commit writer) and ``_read``. Values arrive and leave sealed (``hub.secrets``); the
store never sees one in clear. A secret a release names cannot be deleted: the check
reads the releases in the same transaction as the delete.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.errors import NotFound
from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.records import AuditRecord, SealedSecret, SecretRecord

if TYPE_CHECKING:
    from hub.store.writer import GroupCommitWriter

COLUMNS = "name, key_id, created_at, created_by, updated_at, updated_by"


def _upsert(db: sqlite3.Connection, s: SealedSecret, at: str, by: str) -> bool:
    """Store one sealed value; return whether the name is new."""
    found = db.execute("SELECT 1 FROM secrets WHERE name = ?", (s.name,)).fetchone()
    if found:
        db.execute(
            "UPDATE secrets SET sealed = ?, key_id = ?, updated_at = ?, updated_by = ?"
            " WHERE name = ?",
            (s.sealed, s.key_id, at, by, s.name),
        )
        return False
    db.execute(
        f"INSERT INTO secrets (sealed, {COLUMNS}) VALUES (?,?,?,?,?,?,?)",
        (s.sealed, s.name, s.key_id, at, by, at, by),
    )
    return True


def upsert_secret(db: sqlite3.Connection, s: SealedSecret, at: str, by: str) -> bool:
    """Store one sealed value in the caller's transaction; return whether the name is new."""
    return _upsert(db, s, at, by)


def releases_naming(db: sqlite3.Connection, name: str) -> list[str]:
    """Return the refs of the releases that name secret ``name``."""
    found = db.execute(
        "SELECT document FROM releases WHERE document LIKE ? ORDER BY id",
        (f'%"{name}"%',),
    ).fetchall()
    return checks.refs_naming(name, [document for (document,) in found])


class SecretsMixin:
    """Secrets on SQLite."""

    if TYPE_CHECKING:
        _w: GroupCommitWriter

        async def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]: ...

    async def put_secrets(
        self, sealed: Sequence[SealedSecret], at: datetime, by: str, audit: AuditRecord | None
    ) -> list[bool]:
        """Store sealed values (new or replacing) with the audit row; return which were new."""
        when = rows.ts(at)

        def job(db: sqlite3.Connection) -> list[bool]:
            created = [_upsert(db, s, when, by) for s in sealed]
            if audit is not None:
                db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))
            return created

        return await self._w.submit(job)

    async def list_secrets(self) -> list[SecretRecord]:
        """Return every secret's metadata, by name."""
        found = await self._read(f"SELECT {COLUMNS} FROM secrets ORDER BY name")
        return [rows.secret(r) for r in found]

    async def sealed_secrets(self, names: Sequence[str]) -> dict[str, SealedSecret]:
        """Return the sealed values of the named secrets that exist."""
        if not names:
            return {}
        marks = ",".join("?" * len(names))
        found = await self._read(
            f"SELECT name, sealed, key_id FROM secrets WHERE name IN ({marks})", tuple(names)
        )
        return {r[0]: SealedSecret(r[0], r[1], r[2]) for r in found}

    async def delete_secret(self, name: str, audit: AuditRecord) -> None:
        """Delete a secret no release names (Conflict naming them otherwise), audited."""

        def job(db: sqlite3.Connection) -> None:
            if not db.execute("SELECT 1 FROM secrets WHERE name = ?", (name,)).fetchone():
                raise NotFound(f"no secret {name!r}")
            refs = releases_naming(db, name)
            checks.check_secret_unused(name, refs)
            db.execute("DELETE FROM secrets WHERE name = ?", (name,))
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))

        await self._w.submit(job)

    async def reseal_secrets(
        self, reseal: Callable[[SealedSecret], SealedSecret], audit: AuditRecord
    ) -> int:
        """Re-seal every value with ``reseal`` in one transaction; return how many changed."""

        def job(db: sqlite3.Connection) -> int:
            found = db.execute("SELECT name, sealed, key_id FROM secrets").fetchall()
            changed = 0
            for name, sealed, key_id in found:
                new = reseal(SealedSecret(name, sealed, key_id))
                if new.sealed != sealed:
                    db.execute(
                        "UPDATE secrets SET sealed = ?, key_id = ? WHERE name = ?",
                        (new.sealed, new.key_id, name),
                    )
                    changed += 1
            done = replace(audit, detail={**audit.detail, "resealed": changed})
            db.execute(rows.INSERT_AUDIT, rows.audit_args(done))
            return changed

        return await self._w.submit(job)
