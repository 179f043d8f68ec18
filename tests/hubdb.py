"""Read or change a test hub's database directly, on whichever backend it runs
(``EDGEFLEET_TEST_STORE``): the hub's ``hub.toml`` in its work dir names it (``store.url``:
PostgreSQL; none: ``<data_dir>/hub.db``). Statements are written with ``?`` placeholders and
the SQL both backends share."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import tomllib
from pathlib import Path
from typing import Any

import asyncpg

from hub import testing as hub_testing


def store_url(work_dir: Path) -> str | None:
    """Return the PostgreSQL URL the hub in ``work_dir`` stores in (None: SQLite)."""
    config = tomllib.loads((work_dir / "hub.toml").read_text())
    url = str(config.get("store", {}).get("url", ""))
    return url if url.startswith(("postgresql://", "postgres://")) else None


def sqlite_path(work_dir: Path) -> Path:
    """Return the hub's SQLite file (when it runs on SQLite)."""
    config = tomllib.loads((work_dir / "hub.toml").read_text())
    url = str(config.get("store", {}).get("url", ""))
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite://"))
    return Path(config["server"]["data_dir"]) / "hub.db"


def run_sql(work_dir: Path, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one statement on the hub's database (committed); return its rows."""
    url = store_url(work_dir)
    if url is None:
        db = sqlite3.connect(sqlite_path(work_dir), timeout=10)
        try:
            with db:
                return [tuple(r) for r in db.execute(statement, args).fetchall()]
        finally:
            db.close()
    n = 0
    while "?" in statement:
        n += 1
        statement = statement.replace("?", f"${n}", 1)

    async def run() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return [tuple(r) for r in await conn.fetch(statement, *args)]
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # also from inside a running loop
        return pool.submit(asyncio.run, run()).result()


def dump_text(work_dir: Path) -> str:
    """Return every row of every table of the hub's database as text."""
    url = store_url(work_dir)
    if url is None:
        db = sqlite3.connect(f"file:{sqlite_path(work_dir)}?mode=ro", uri=True, timeout=10)
        try:
            return "\n".join(db.iterdump())
        finally:
            db.close()
    tables = run_sql(
        work_dir,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()",
    )
    return "\n".join(
        str(row[0]) for (t,) in tables for row in run_sql(work_dir, f'SELECT x::text FROM "{t}" x')
    )


def copy_hub(work_dir: Path, dest: Path) -> Path:
    """Copy a STOPPED hub's config, data dir and database to ``dest``; return its hub.toml."""
    import shutil

    shutil.copytree(work_dir / "data", dest / "data")
    toml = (work_dir / "hub.toml").read_text().replace(str(work_dir / "data"), str(dest / "data"))
    if (url := store_url(work_dir)) is not None:
        toml = toml.replace(url, hub_testing.clone_test_database(url, dest))
    (dest / "hub.toml").write_text(toml)
    return dest / "hub.toml"
