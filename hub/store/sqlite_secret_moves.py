"""Registry passwords stored in clear before the secret store existed (hub migration 22).

Before migration 19 a release's registry password sat in clear in the ``releases`` row
(document and source) and in every ``targets`` row that carried the release. Migration
22 lists each such row in ``secret_moves`` (``queue_clear_passwords``); sealing needs the
hub's secret keys, which the store never holds, so the hub moves them at start
(``hub.secret_moves``): each row is rewritten with the secret's name, the value is
sealed into ``secrets`` and an audit row written, all in one transaction that also
removes the row from ``secret_moves``. A crash in between leaves the row listed.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hub.store import sqlite_rows as rows
from hub.store.records import AuditRecord, SealedSecret
from hub.store.sqlite_secrets import upsert_secret

if TYPE_CHECKING:
    from hub.store.writer import GroupCommitWriter

RELEASE = "release"  # key: the releases row id
TARGET = "target"  # key: "<device_id> <revision>"


def has_clear_password(release: Any) -> bool:
    """Return whether a release document carries a registry password in clear."""
    auths = release.get("registry_auth") if isinstance(release, dict) else None
    return any(isinstance(a, dict) and a.get("password") is not None for a in auths or [])


def target_release(document: str) -> Any:
    """Return the release inside a stored signed target's payload (None: unreadable)."""
    try:
        payload = json.loads(base64.b64decode(json.loads(document)["payload"]))
    except (ValueError, KeyError, TypeError):
        return None
    return payload.get("release") if isinstance(payload, dict) else None


def queue_clear_passwords(db: sqlite3.Connection) -> None:
    """Migration 22: list every release and target row holding a clear registry password."""
    found: list[tuple[str, str]] = []
    for rid, document in db.execute("SELECT id, document FROM releases"):
        if has_clear_password(json.loads(document)):
            found.append((RELEASE, str(rid)))
    for device_id, revision, document in db.execute(
        "SELECT device_id, revision, document FROM targets"
    ):
        if has_clear_password(target_release(document)):
            found.append((TARGET, f"{device_id} {revision}"))
    db.executemany("INSERT INTO secret_moves (kind, key) VALUES (?, ?)", found)


class SecretMovesMixin:
    """SqliteStore's part for moving clear registry passwords (``secret_moves``)."""

    _w: GroupCommitWriter

    async def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        raise NotImplementedError  # provided by SqliteStore

    async def pending_secret_moves(self) -> list[tuple[str, str, str, str]]:
        """Return the rows still holding a clear password: (kind, key, document, source)."""
        releases = await self._read(
            "SELECT 'release', m.key, r.document, r.source FROM secret_moves m "
            "JOIN releases r ON m.kind = 'release' AND r.id = CAST(m.key AS INTEGER) "
            "ORDER BY r.id"
        )
        targets = await self._read(
            "SELECT 'target', m.key, t.document, '' FROM secret_moves m JOIN targets t "
            "ON m.kind = 'target' AND m.key = t.device_id || ' ' || t.revision ORDER BY m.key"
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
        """Rewrite one listed row with names only, store its values and audit, unlist it."""

        def job(db: sqlite3.Connection) -> None:
            if kind == RELEASE:
                db.execute(
                    "UPDATE releases SET document = ?, source = ? WHERE id = ?",
                    (document, source, int(key)),
                )
            else:
                device_id, _, revision = key.partition(" ")
                db.execute(
                    "UPDATE targets SET document = ? WHERE device_id = ? AND revision = ?",
                    (document, device_id, int(revision)),
                )
            for s, audit in zip(sealed, audits, strict=True):
                upsert_secret(db, s, rows.ts(audit.at), audit.actor)
                db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))
            db.execute("DELETE FROM secret_moves WHERE kind = ? AND key = ?", (kind, key))

        await self._w.submit(job)
