"""SQLite queries of the releases table (migration 5); jobs run on the store's writer."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from hub.errors import NotFound
from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.records import AuditRecord, ReleaseRecord, SealedSecret
from hub.store.sqlite_secrets import upsert_secret

COLUMNS = (
    "id, name, version, document, source, images, created_at, created_by, "
    "retired_at, retired_by, retired_reason"
)
SELECT_ONE = f"SELECT {COLUMNS} FROM releases WHERE name = ? AND version = ?"
SELECT_PAGE = f"SELECT {COLUMNS} FROM releases WHERE id > ? ORDER BY id LIMIT ?"


def create(
    db: sqlite3.Connection,
    release: ReleaseRecord,
    audit: AuditRecord,
    secrets: Sequence[tuple[SealedSecret, AuditRecord]] = (),
) -> tuple[ReleaseRecord, bool]:
    """Insert the release (or find the identical one) and write the audit row.

    ``secrets`` are stored (each with its audit row) only with a new release, in this
    transaction: a refused insert leaves none behind, nor replaces another's value.
    """
    found = db.execute(SELECT_ONE, (release.name, release.version)).fetchone()
    if found is not None:
        existing = rows.release(found)
        checks.check_same_release(existing, release)
        db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))
        return existing, False
    db.execute(
        "INSERT INTO releases (name, version, document, source, images, created_at, "
        "created_by) VALUES (?,?,?,?,?,?,?)",
        rows.release_values(release),
    )
    for sealed, secret_audit in secrets:
        upsert_secret(db, sealed, rows.ts(secret_audit.at), secret_audit.actor)
        db.execute(rows.INSERT_AUDIT, rows.audit_args(secret_audit))
    db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))
    stored = db.execute(SELECT_ONE, (release.name, release.version)).fetchone()
    return rows.release(stored), True


def retire(
    db: sqlite3.Connection, name: str, version: str, reason: str, audit: AuditRecord
) -> ReleaseRecord:
    """Mark the release retired and write the audit row."""
    found = db.execute(SELECT_ONE, (name, version)).fetchone()
    if found is None:
        raise NotFound(f"no release {name}@{version}")
    existing = rows.release(found)
    checks.check_not_retired(existing)
    db.execute(
        "UPDATE releases SET retired_at = ?, retired_by = ?, retired_reason = ? WHERE id = ?",
        (rows.ts(audit.at), audit.actor, reason, existing.id),
    )
    db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))
    return rows.release(db.execute(SELECT_ONE, (name, version)).fetchone())
