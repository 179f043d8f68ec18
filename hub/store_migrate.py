"""``edge-hub store migrate --to postgresql://...``: copy a stopped hub's SQLite database into an
empty PostgreSQL database, and prove the copy.

One PostgreSQL transaction does it all: the schema (hub.store.pg_schema's migrations), every
table's rows (parents before children, in batches of ``--batch`` rows with COPY), the identity
sequences moved past the copied ids, then the checks: per table, the row count and a SHA-256
over the rows in primary-key order (text compared bytewise on both sides) must be the same on
both sides, and the hub audit chain must verify on the copy. Any difference rolls everything
back: the target database is left empty, the SQLite file untouched (it is only read, under
a write lock that keeps a hub from writing meanwhile). The device certificates, keys and
tokens stay in the data directory; the hub then runs with ``store.url`` set to the database.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sqlite3
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.audit_chain import Verdict, verify_on_postgres
from hub.config import HubConfig
from hub.errors import HubError

SQLITE_ONLY = frozenset({"sqlite_sequence", "schema_migrations"})  # each backend keeps its own
DEFAULT_BATCH = 1000


class MigrateError(HubError):
    """The migration was refused or failed; nothing was written to the target."""


@dataclass(frozen=True)
class TableCheck:
    """One table's rows on both sides."""

    name: str
    source_rows: int
    copied_rows: int
    source_sum: str
    copied_sum: str

    @property
    def ok(self) -> bool:
        return self.source_rows == self.copied_rows and self.source_sum == self.copied_sum


def add_parser(sub: Any) -> None:
    """Add ``store migrate`` to edge-hub's subcommands."""
    store = sub.add_parser("store", help="the hub's database")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    migrate = store_sub.add_parser(
        "migrate",
        help="copy this (stopped) hub's SQLite database into an empty PostgreSQL database",
    )
    migrate.add_argument("--to", required=True, help="postgresql://user@host:port/database")
    migrate.add_argument("--config", help="TOML config file (of the SQLite hub)")
    migrate.add_argument("--data-dir", help="override server.data_dir")
    migrate.add_argument(
        "--batch", type=int, default=DEFAULT_BATCH, help="rows per COPY (default 1000)"
    )


def run(config: HubConfig, args: argparse.Namespace) -> None:
    """Run ``edge-hub store migrate``: exit 0 when the copy checks out, 1 on a mismatch,
    2 when refused."""
    if args.batch < 1:
        _refuse("--batch: must be at least 1")
    if not args.to.startswith(("postgresql://", "postgres://")):
        _refuse(f"--to: expected a postgresql:// URL, got {_safe_url(args.to)!r}")
    if config.postgres_url is not None:
        _refuse("store.url names a PostgreSQL database already: this hub is not on SQLite")
    path = config.sqlite_path
    if not path.is_file():
        _refuse(f"no SQLite database at {path}")
    if (listener := _hub_listening(config)) is not None:
        _refuse(f"something listens on {listener} (the hub?): stop the hub before migrating")
    try:
        checks, verdict = asyncio.run(migrate(path, args.to, args.batch))
    except MigrateError as exc:
        _refuse(exc.message)
    except Mismatch as exc:
        _print(exc.checks, exc.verdict)
        print(f"edge-hub: the copy differs ({exc}); nothing was committed", file=sys.stderr)
        raise SystemExit(1) from None
    _print(checks, verdict)
    print(f"copied into {_safe_url(args.to)}: set store.url to it and start the hub")


def _hub_listening(config: HubConfig) -> str | None:
    """Return the hub's configured address when something accepts connections on it."""
    import socket

    if config.server.port == 0:
        return None
    host = config.server.host if config.server.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    try:
        with socket.create_connection((host, config.server.port), timeout=1):
            return f"{host}:{config.server.port}"
    except OSError:
        return None


def verify_postgres_audit(url: str) -> Verdict:
    """Verify the audit chain of a PostgreSQL hub database (``edge-hub audit verify``)."""
    import asyncpg

    async def main() -> Verdict:
        conn = await asyncpg.connect(url, timeout=30)
        try:
            # One snapshot for the whole walk: rows a running hub appends meanwhile are not seen.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await verify_on_postgres(conn)
        finally:
            await conn.close()

    try:
        return asyncio.run(main())
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"edge-hub: cannot read the audit table of {_safe_url(url)}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


class Mismatch(Exception):
    """The copy does not match its source (raised inside the transaction: it rolls back)."""

    def __init__(self, why: str, checks: list[TableCheck], verdict: Verdict | None) -> None:
        super().__init__(why)
        self.checks = checks
        self.verdict = verdict


async def migrate(
    path: Path, url: str, batch: int = DEFAULT_BATCH
) -> tuple[list[TableCheck], Verdict]:
    """Copy the SQLite database at ``path`` into the empty database at ``url``; return each
    table's check and the copy's audit chain verdict. Raises MigrateError (refused) or
    Mismatch (copied, differs: rolled back)."""
    import asyncpg

    from hub.store.pg_core import migrate as pg_migrate
    from hub.store.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS

    source = _open_source(path)
    try:
        version = source.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]
        latest = max(n for n, _, _ in SQLITE_MIGRATIONS)
        if version != latest:
            raise MigrateError(
                f"{path} is at schema version {version}, this hub's is {latest}: start and stop "
                "this version's hub on it once, then migrate"
            )
        try:
            conn = await asyncpg.connect(url, timeout=30)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise MigrateError(f"cannot connect to {_safe_url(url)}: {exc}") from exc
        try:
            if tables := await _user_tables(conn):
                shown = ", ".join(tables[:8]) + (", ..." if len(tables) > 8 else "")
                raise MigrateError(
                    f"database {_safe_url(url)} is not empty ({len(tables)} tables: {shown}): "
                    "migrate into an empty database"
                )
            try:
                async with conn.transaction():
                    await pg_migrate(conn)
                    return await _copy_and_check(source, conn, batch)
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise MigrateError(f"copy into {_safe_url(url)} failed: {exc}") from exc
        finally:
            await conn.close()
    finally:
        source.rollback()
        source.close()


def _open_source(path: Path) -> sqlite3.Connection:
    """Open the SQLite file holding its write lock (no hub writes while it is copied)."""
    source = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        source.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        source.close()
        raise MigrateError(
            f"{path} is being written ({exc}): stop the hub before migrating its database"
        ) from exc
    return source


async def _user_tables(conn: Any) -> list[str]:
    found = await conn.fetch(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = current_schema() ORDER BY table_name"
    )
    return [r[0] for r in found]


async def _copy_and_check(
    source: sqlite3.Connection, conn: Any, batch: int
) -> tuple[list[TableCheck], Verdict]:
    lite = {
        r[0]
        for r in source.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if r[0] not in SQLITE_ONLY
    }
    order = await _parents_first(conn)
    if unknown := sorted(lite - set(order)):
        raise MigrateError(f"tables the PostgreSQL store does not have: {', '.join(unknown)}")
    checks = []
    for table in order:
        if table not in lite:
            continue  # a PostgreSQL-only table (none today): starts empty
        columns, key = await _columns(conn, table)
        names = ", ".join(f'"{c}"' for c in columns)
        cursor = source.execute(f'SELECT {names} FROM "{table}"')
        while chunk := cursor.fetchmany(batch):
            await conn.copy_records_to_table(table, records=chunk, columns=columns)
        await _advance_identity(conn, table)
        checks.append(await _check(source, conn, table, columns, key, batch))
    verdict = await verify_on_postgres(conn)
    bad = [c.name for c in checks if not c.ok]
    if bad or not verdict.ok:
        why = f"tables differ: {', '.join(bad)}" if bad else "the audit chain does not verify"
        raise Mismatch(why, checks, verdict)
    return checks, verdict


async def _parents_first(conn: Any) -> list[str]:
    """Return the store's tables, each after the tables its foreign keys name."""
    tables = [t for t in await _user_tables(conn) if t not in SQLITE_ONLY]
    edges = await conn.fetch(
        "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c "
        "WHERE c.contype = 'f'"
    )
    parents: dict[str, set[str]] = {t: set() for t in tables}
    for child, parent in edges:
        if child != parent:
            parents.setdefault(child.strip('"'), set()).add(parent.strip('"'))
    order: list[str] = []
    while len(order) < len(tables):
        ready = sorted(t for t in tables if t not in order and parents[t] <= set(order))
        if not ready:
            raise MigrateError("the PostgreSQL schema's foreign keys form a cycle")
        order += ready
    return order


async def _columns(conn: Any, table: str) -> tuple[list[str], list[str]]:
    """Return the table's columns in order and its primary key (all columns if none)."""
    columns = [
        r[0]
        for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
            table,
        )
    ]
    key = [
        r[0]
        for r in await conn.fetch(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = $1::regclass AND i.indisprimary "
            "ORDER BY array_position(i.indkey, a.attnum)",
            f'"{table}"',
        )
    ]
    return columns, key or columns


async def _advance_identity(conn: Any, table: str) -> None:
    for (column,) in await conn.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = $1 AND is_identity = 'YES'",
        table,
    ):
        top = await conn.fetchval(f'SELECT COALESCE(MAX("{column}"), 0) FROM "{table}"')
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence($1, $2), $3, false)",
            f'"{table}"',
            column,
            top + 1,
        )


async def _check(
    source: sqlite3.Connection,
    conn: Any,
    table: str,
    columns: list[str],
    key: list[str],
    batch: int,
) -> TableCheck:
    """Count and checksum the table's rows on both sides, in primary-key order."""
    names = ", ".join(f'"{c}"' for c in columns)
    lite_rows = source.execute(
        f'SELECT {names} FROM "{table}" ORDER BY ' + ", ".join(f'"{k}" COLLATE BINARY' for k in key)
    )
    text = await conn.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = $1 AND data_type = 'text'",
        table,
    )
    texts = {r[0] for r in text}
    order = ", ".join(
        f'"{k}"' + (' COLLATE "C"' if k in texts else "") + " NULLS FIRST" for k in key
    )  # as SQLite orders: bytes, NULL first
    lite_count, lite_sum = _digest(iter(lambda: lite_rows.fetchmany(batch), []))

    digest, count = hashlib.sha256(), 0
    async for record in conn.cursor(
        f'SELECT {names} FROM "{table}" ORDER BY {order}', prefetch=batch
    ):
        digest.update(_canonical(tuple(record)))
        count += 1
    return TableCheck(table, lite_count, count, lite_sum, digest.hexdigest())


def _digest(pages: Iterable[list[Any]]) -> tuple[int, str]:
    digest, count = hashlib.sha256(), 0
    for page in pages:
        for row in page:
            digest.update(_canonical(tuple(row)))
            count += 1
    return count, digest.hexdigest()


def _canonical(row: tuple[Any, ...]) -> bytes:
    """Return one row as canonical bytes (JSON; bytes as hex; bools as ints)."""
    values = [
        {"hex": v.hex()}
        if isinstance(v, bytes | bytearray | memoryview)
        else int(v)
        if isinstance(v, bool)
        else v
        for v in row
    ]
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _print(checks: list[TableCheck], verdict: Verdict | None) -> None:
    width = max((len(c.name) for c in checks), default=5)
    print(f"{'table':<{width}}  {'sqlite':>9}  {'postgres':>9}  sha256 (rows in key order)")
    for c in checks:
        same = c.copied_sum[:16] if c.ok else f"{c.source_sum[:16]} != {c.copied_sum[:16]}"
        mark = "ok" if c.ok else "MISMATCH"
        print(f"{c.name:<{width}}  {c.source_rows:>9}  {c.copied_rows:>9}  {same}  {mark}")
    if verdict is not None:
        if verdict.ok:
            print(f"audit chain ok: {verdict.count} records verified, head {verdict.head or '-'}")
        else:
            print(f"audit chain BROKEN at record {verdict.broken_id}: {verdict.reason}")


def _refuse(message: str) -> None:
    print(f"edge-hub: store migrate: {message}", file=sys.stderr)
    raise SystemExit(2)


def _safe_url(url: str) -> str:
    from hub.store.postgres import _safe_url as safe

    return safe(url)
