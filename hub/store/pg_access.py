"""PostgresStore's part for operator access: users, teams, grants, API tokens (pg migration 6).

A mixin, like ``hub.store.pg_groups``: ``PostgresStore`` provides ``_tx`` and ``_read``.
The twin of ``hub.store.sqlite_access``: same records, errors and audit rows. Every change
is written with its audit row in one transaction. Across hub processes: a name is taken
once (``ON CONFLICT DO NOTHING``, then Conflict), a team row is share-locked while a member
or grant is added (a concurrent delete waits), and the user row is locked while a token is
added, so the ``access.max_tokens_per_user`` bound holds. A token's secret is never stored.

``user`` is a reserved word in PostgreSQL: the column is always written quoted.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.errors import Conflict, NotFound
from hub.store import checks
from hub.store import sqlite_rows as rows
from hub.store.pg_core import insert_audit
from hub.store.records import AuditRecord, TeamRecord, UserRecord, UserTokenRecord
from hub.store.sqlite_access import USER_COLUMNS

if TYPE_CHECKING:
    import asyncpg

TOKEN_COLUMNS = 'id, "user", secret_hash, created_at, expires_at, last_used_at, revoked_at'


async def _need(conn: asyncpg.Connection, table: str, name: str, what: str, lock: str) -> None:
    """Raise NotFound unless the row exists; lock it (``lock``: "" or a FOR clause)."""
    if await conn.fetchval(f"SELECT 1 FROM {table} WHERE name = $1 {lock}", name) is None:
        raise NotFound(f"no {what} {name!r}")


class PgAccessMixin:
    """Users, teams, grants and user tokens on PostgreSQL."""

    if TYPE_CHECKING:

        def _tx(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...

        async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]: ...

    async def add_user(self, user: UserRecord, audit: AuditRecord) -> None:
        """Create a user (Conflict if the name is taken), with the audit row."""
        async with self._tx() as conn:
            status = await conn.execute(
                f"INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (name) DO NOTHING",
                user.name,
                rows.ts(user.created_at),
                user.created_by,
                int(user.disabled),
            )
            if status == "INSERT 0 0":
                raise Conflict(f"user {user.name!r} exists")
            await insert_audit(conn, audit)

    async def set_user_disabled(self, name: str, disabled: bool, audit: AuditRecord) -> None:
        """Disable or enable a user (NotFound if unknown), with the audit row."""
        async with self._tx() as conn:
            status = await conn.execute(
                "UPDATE users SET disabled = $1 WHERE name = $2", int(disabled), name
            )
            if status == "UPDATE 0":
                raise NotFound(f"no user {name!r}")
            await insert_audit(conn, audit)

    async def get_user(self, name: str) -> UserRecord | None:
        """Return the user called ``name``, or None."""
        found = await self._read(f"SELECT {USER_COLUMNS} FROM users WHERE name = $1", name)
        return rows.user(tuple(found[0])) if found else None

    async def list_users(self) -> list[UserRecord]:
        """Return every user by name."""
        found = await self._read(f'SELECT {USER_COLUMNS} FROM users ORDER BY name COLLATE "C"')
        return [rows.user(tuple(r)) for r in found]

    async def add_team(self, name: str, at: datetime, audit: AuditRecord) -> None:
        """Create a team (Conflict if the name is taken), with the audit row."""
        async with self._tx() as conn:
            status = await conn.execute(
                "INSERT INTO teams (name, created_at) VALUES ($1, $2) "
                "ON CONFLICT (name) DO NOTHING",
                name,
                rows.ts(at),
            )
            if status == "INSERT 0 0":
                raise Conflict(f"team {name!r} exists")
            await insert_audit(conn, audit)

    async def delete_team(self, name: str, audit: AuditRecord) -> None:
        """Delete a team with its members and grants (NotFound if unknown)."""
        async with self._tx() as conn:
            if await conn.execute("DELETE FROM teams WHERE name = $1", name) == "DELETE 0":
                raise NotFound(f"no team {name!r}")
            await insert_audit(conn, audit)

    async def set_team_member(self, team: str, user: str, member: bool, audit: AuditRecord) -> None:
        """Add (``member``) or remove a user of a team, with the audit row."""
        async with self._tx() as conn:
            await _need(conn, "teams", team, "team", "FOR SHARE")
            await _need(conn, "users", user, "user", "FOR SHARE")
            if member:
                await conn.execute(
                    'INSERT INTO team_members (team, "user") VALUES ($1, $2) '
                    "ON CONFLICT DO NOTHING",
                    team,
                    user,
                )
            else:
                await conn.execute(
                    'DELETE FROM team_members WHERE team = $1 AND "user" = $2', team, user
                )
            await insert_audit(conn, audit)

    async def set_team_grant(
        self, team: str, role: str, scope: str, granted: bool, audit: AuditRecord
    ) -> None:
        """Add (``granted``) or remove a team's grant of ``role`` on ``scope``."""
        async with self._tx() as conn:
            await _need(conn, "teams", team, "team", "FOR SHARE")
            if granted:
                await conn.execute(
                    "INSERT INTO team_grants (team, role, scope) VALUES ($1, $2, $3) "
                    "ON CONFLICT DO NOTHING",
                    team,
                    role,
                    scope,
                )
            else:
                gone = await conn.execute(
                    "DELETE FROM team_grants WHERE team = $1 AND role = $2 AND scope = $3",
                    team,
                    role,
                    scope,
                )
                if gone == "DELETE 0":
                    raise NotFound(f"team {team!r} has no grant {role} on {scope!r}")
            await insert_audit(conn, audit)

    async def list_teams(self) -> list[TeamRecord]:
        """Return every team with its members and grants, by name."""
        teams = await self._read('SELECT name, created_at FROM teams ORDER BY name COLLATE "C"')
        members = await self._read(
            'SELECT team, "user" FROM team_members ORDER BY team COLLATE "C", "user" COLLATE "C"'
        )
        grants = await self._read(
            "SELECT team, role, scope FROM team_grants "
            'ORDER BY team COLLATE "C", role COLLATE "C", scope COLLATE "C"'
        )
        return rows.teams(teams, members, grants)

    async def user_grants(self, user: str) -> list[tuple[str, str, str]]:
        """Return the (team, role, scope) grants of every team ``user`` belongs to."""
        found = await self._read(
            "SELECT g.team, g.role, g.scope FROM team_members m "
            'JOIN team_grants g ON g.team = m.team WHERE m."user" = $1 '
            'ORDER BY g.team COLLATE "C", g.role COLLATE "C", g.scope COLLATE "C"',
            user,
        )
        return [(t, r, s) for t, r, s in found]

    async def add_user_token(
        self, token: UserTokenRecord, max_active: int, audit: AuditRecord
    ) -> None:
        """Store a new token of an existing user (NotFound if unknown), with the audit row.

        Conflict when the user holds ``max_active`` unrevoked, unexpired tokens; the user
        row is locked while counting, so the bound holds across hub processes.
        """
        now = rows.ts(token.created_at)
        async with self._tx() as conn:
            await _need(conn, "users", token.user, "user", "FOR UPDATE")
            held = await conn.fetchval(
                'SELECT COUNT(*) FROM user_tokens WHERE "user" = $1 AND revoked_at IS NULL '
                "AND (expires_at IS NULL OR expires_at > $2)",
                token.user,
                now,
            )
            checks.check_user_tokens(token.user, held, max_active)
            await conn.execute(
                f"INSERT INTO user_tokens ({TOKEN_COLUMNS}) "
                "VALUES ($1, $2, $3, $4, $5, NULL, NULL)",
                token.id,
                token.user,
                token.secret_hash,
                now,
                rows.ts(token.expires_at) if token.expires_at else None,
            )
            await insert_audit(conn, audit)

    async def get_user_token(self, token_id: str) -> UserTokenRecord | None:
        """Return the token with ``token_id``, or None."""
        found = await self._read(f"SELECT {TOKEN_COLUMNS} FROM user_tokens WHERE id = $1", token_id)
        return rows.user_token(tuple(found[0])) if found else None

    async def list_user_tokens(self, user: str) -> list[UserTokenRecord]:
        """Return a user's tokens, oldest first."""
        found = await self._read(
            f'SELECT {TOKEN_COLUMNS} FROM user_tokens WHERE "user" = $1 ORDER BY created_at, '
            'id COLLATE "C"',
            user,
        )
        return [rows.user_token(tuple(r)) for r in found]

    async def revoke_user_token(self, user: str, token_id: str, audit: AuditRecord) -> None:
        """Revoke a user's token (idempotent; NotFound if it is not the user's)."""
        async with self._tx() as conn:
            found = await conn.fetchval(
                'SELECT 1 FROM user_tokens WHERE id = $1 AND "user" = $2 FOR UPDATE',
                token_id,
                user,
            )
            if found is None:
                raise NotFound(f"user {user!r} has no token {token_id!r}")
            await conn.execute(
                "UPDATE user_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                rows.ts(audit.at),
                token_id,
            )
            await insert_audit(conn, audit)

    async def touch_user_token(self, token_id: str, at: datetime) -> None:
        """Record that the token was used at ``at``."""
        async with self._tx() as conn:
            await conn.execute(
                "UPDATE user_tokens SET last_used_at = $1 WHERE id = $2", rows.ts(at), token_id
            )
