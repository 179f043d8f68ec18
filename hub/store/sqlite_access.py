"""SqliteStore's part for operator access: users, teams, grants, API tokens (migration 16).

A mixin, like ``hub.store.sqlite_technicians``: ``SqliteStore`` provides ``_w`` (the
group-commit writer) and ``_read``. Every change is written with its audit row in one
transaction. A token's secret is never stored: only its sha256.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.errors import Conflict, NotFound
from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.records import AuditRecord, TeamRecord, UserRecord, UserTokenRecord

if TYPE_CHECKING:
    from hub.store.writer import GroupCommitWriter

USER_COLUMNS = "name, created_at, created_by, disabled"
TOKEN_COLUMNS = "id, user, secret_hash, created_at, expires_at, last_used_at, revoked_at"


def _exists(db: sqlite3.Connection, table: str, name: str) -> bool:
    return db.execute(f"SELECT 1 FROM {table} WHERE name = ?", (name,)).fetchone() is not None


def _need(db: sqlite3.Connection, table: str, name: str, what: str) -> None:
    if not _exists(db, table, name):
        raise NotFound(f"no {what} {name!r}")


class AccessMixin:
    """Users, teams, grants and user tokens on SQLite."""

    if TYPE_CHECKING:
        _w: GroupCommitWriter

        async def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]: ...

    async def add_user(self, user: UserRecord, audit: AuditRecord) -> None:
        """Create a user (Conflict if the name is taken), with the audit row."""

        def job(db: sqlite3.Connection) -> None:
            if _exists(db, "users", user.name):
                raise Conflict(f"user {user.name!r} exists")
            db.execute(
                f"INSERT INTO users ({USER_COLUMNS}) VALUES (?,?,?,?)",
                (user.name, rows.ts(user.created_at), user.created_by, int(user.disabled)),
            )
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))

        await self._w.submit(job)

    async def set_user_disabled(self, name: str, disabled: bool, audit: AuditRecord) -> None:
        """Disable or enable a user (NotFound if unknown), with the audit row."""

        def job(db: sqlite3.Connection) -> None:
            _need(db, "users", name, "user")
            db.execute("UPDATE users SET disabled = ? WHERE name = ?", (int(disabled), name))
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))

        await self._w.submit(job)

    async def get_user(self, name: str) -> UserRecord | None:
        """Return the user called ``name``, or None."""
        found = await self._read(f"SELECT {USER_COLUMNS} FROM users WHERE name = ?", (name,))
        return rows.user(found[0]) if found else None

    async def list_users(self) -> list[UserRecord]:
        """Return every user by name."""
        return [
            rows.user(r)
            for r in await self._read(f"SELECT {USER_COLUMNS} FROM users ORDER BY name")
        ]

    async def add_team(self, name: str, at: datetime, audit: AuditRecord) -> None:
        """Create a team (Conflict if the name is taken), with the audit row."""

        def job(db: sqlite3.Connection) -> None:
            if _exists(db, "teams", name):
                raise Conflict(f"team {name!r} exists")
            db.execute("INSERT INTO teams (name, created_at) VALUES (?, ?)", (name, rows.ts(at)))
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))

        await self._w.submit(job)

    async def delete_team(self, name: str, audit: AuditRecord) -> None:
        """Delete a team with its members and grants (NotFound if unknown)."""

        def job(db: sqlite3.Connection) -> None:
            _need(db, "teams", name, "team")
            db.execute("DELETE FROM teams WHERE name = ?", (name,))
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))

        await self._w.submit(job)

    async def set_team_member(self, team: str, user: str, member: bool, audit: AuditRecord) -> None:
        """Add (``member``) or remove a user of a team, with the audit row."""

        def job(db: sqlite3.Connection) -> None:
            _need(db, "teams", team, "team")
            _need(db, "users", user, "user")
            if member:
                db.execute("INSERT OR IGNORE INTO team_members VALUES (?, ?)", (team, user))
            else:
                db.execute("DELETE FROM team_members WHERE team = ? AND user = ?", (team, user))
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))

        await self._w.submit(job)

    async def set_team_grant(
        self, team: str, role: str, scope: str, granted: bool, audit: AuditRecord
    ) -> None:
        """Add (``granted``) or remove a team's grant of ``role`` on ``scope``."""

        def job(db: sqlite3.Connection) -> None:
            _need(db, "teams", team, "team")
            if granted:
                db.execute(
                    "INSERT OR IGNORE INTO team_grants VALUES (?, ?, ?)", (team, role, scope)
                )
            else:
                gone = db.execute(
                    "DELETE FROM team_grants WHERE team = ? AND role = ? AND scope = ?",
                    (team, role, scope),
                ).rowcount
                if not gone:
                    raise NotFound(f"team {team!r} has no grant {role} on {scope!r}")
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))

        await self._w.submit(job)

    async def list_teams(self) -> list[TeamRecord]:
        """Return every team with its members and grants, by name."""
        teams = await self._read("SELECT name, created_at FROM teams ORDER BY name")
        members = await self._read("SELECT team, user FROM team_members ORDER BY team, user")
        grants = await self._read("SELECT team, role, scope FROM team_grants ORDER BY 1, 2, 3")
        return rows.teams(teams, members, grants)

    async def user_grants(self, user: str) -> list[tuple[str, str, str]]:
        """Return the (team, role, scope) grants of every team ``user`` belongs to."""
        found = await self._read(
            "SELECT g.team, g.role, g.scope FROM team_members m "
            "JOIN team_grants g ON g.team = m.team WHERE m.user = ? ORDER BY 1, 2, 3",
            (user,),
        )
        return [(t, r, s) for t, r, s in found]

    async def add_user_token(
        self, token: UserTokenRecord, max_active: int, audit: AuditRecord
    ) -> None:
        """Store a new token of an existing user (NotFound if unknown), with the audit row.

        Conflict when the user holds ``max_active`` unrevoked, unexpired tokens.
        """
        now = rows.ts(token.created_at)

        def job(db: sqlite3.Connection) -> None:
            _need(db, "users", token.user, "user")
            (held,) = db.execute(
                "SELECT COUNT(*) FROM user_tokens WHERE user = ? AND revoked_at IS NULL "
                "AND (expires_at IS NULL OR expires_at > ?)",
                (token.user, now),
            ).fetchone()
            checks.check_user_tokens(token.user, held, max_active)
            db.execute(
                f"INSERT INTO user_tokens ({TOKEN_COLUMNS}) VALUES (?,?,?,?,?,NULL,NULL)",
                (
                    token.id,
                    token.user,
                    token.secret_hash,
                    rows.ts(token.created_at),
                    rows.ts(token.expires_at) if token.expires_at else None,
                ),
            )
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))

        await self._w.submit(job)

    async def get_user_token(self, token_id: str) -> UserTokenRecord | None:
        """Return the token with ``token_id``, or None."""
        found = await self._read(
            f"SELECT {TOKEN_COLUMNS} FROM user_tokens WHERE id = ?", (token_id,)
        )
        return rows.user_token(found[0]) if found else None

    async def list_user_tokens(self, user: str) -> list[UserTokenRecord]:
        """Return a user's tokens, oldest first."""
        found = await self._read(
            f"SELECT {TOKEN_COLUMNS} FROM user_tokens WHERE user = ? ORDER BY created_at, id",
            (user,),
        )
        return [rows.user_token(r) for r in found]

    async def revoke_user_token(self, user: str, token_id: str, audit: AuditRecord) -> None:
        """Revoke a user's token (idempotent; NotFound if it is not the user's)."""
        at = rows.ts(audit.at)

        def job(db: sqlite3.Connection) -> None:
            found = db.execute(
                "SELECT 1 FROM user_tokens WHERE id = ? AND user = ?", (token_id, user)
            ).fetchone()
            if found is None:
                raise NotFound(f"user {user!r} has no token {token_id!r}")
            db.execute(
                "UPDATE user_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (at, token_id),
            )
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))

        await self._w.submit(job)

    async def touch_user_token(self, token_id: str, at: datetime) -> None:
        """Record that the token was used at ``at``."""
        when = rows.ts(at)

        def job(db: sqlite3.Connection) -> None:
            db.execute("UPDATE user_tokens SET last_used_at = ? WHERE id = ?", (when, token_id))

        await self._w.submit(job)
