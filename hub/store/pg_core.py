"""Shared pieces of PostgresStore: migrations, the audit chain insert, placeholders. No pool.

The audit chain is total across hub processes: ``insert_audit`` takes a transaction-level
advisory lock, reads the last row's id and hash, and inserts the next row in the caller's
transaction, so audited writes from every process are serialized at their audit insert
(which every caller does last, holding no lock another audited writer waits for).
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from hub.audit_chain import record_hash
from hub.store import sqlite_rows as rows
from hub.store.pg_schema import MIGRATIONS
from hub.store.records import AuditRecord

# pg_advisory_*lock keys (bigint); arbitrary, fixed, distinct.
MIGRATION_LOCK = 0x6564_6765_0001
AUDIT_LOCK = 0x6564_6765_0002

INSERT_AUDIT = (
    "INSERT INTO audit (id, at, actor, action, target, outcome, detail, source_addr, "
    "prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
)


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply pending migrations, each with its record in one transaction; return them.

    A session advisory lock lets several hub processes start against one database at once.
    """
    applied: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, statements in MIGRATIONS:
            if version in done:
                continue
            async with conn.transaction():
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations VALUES ($1, $2, $3)",
                    version,
                    name,
                    rows.ts(datetime.now(UTC)),
                )
            applied.append(version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied


async def insert_audit(conn: asyncpg.Connection, audit: AuditRecord) -> int:
    """Append ``audit`` to the hub chain in the caller's transaction; return its id."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK)
    last = await conn.fetchrow("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")
    next_id = (last[0] if last else 0) + 1
    prev = last[1] if last else ""
    fields = rows.audit_args(audit)
    await conn.execute(INSERT_AUDIT, next_id, *fields, prev, record_hash(next_id, prev, *fields))
    return next_id


def dollar(sets: list[str], start: int) -> list[str]:
    """Return SET clauses written with ``?`` numbered as $start, $start+1, ... instead."""
    out: list[str] = []
    n = start
    for clause in sets:
        while "?" in clause:
            clause = clause.replace("?", f"${n}", 1)
            n += 1
        out.append(clause)
    return out
