"""A fresh PostgreSQL database per test, on the test server scripts/testenv-postgres.sh starts.

The server is part of the test environment: when it does not answer, the test FAILS (it
does not skip), naming the script that starts it. ``EDGEFLEET_PG_ADMIN_URL`` points at
another server (a maintenance database on it, as a role that may create databases).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from hub.store.postgres import PostgresStore
from hub.store.sqlite import SqliteStore

ADMIN_URL = os.environ.get(
    "EDGEFLEET_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:55432/edgefleet_test"
)


def database_url(name: str) -> str:
    """Return ADMIN_URL with its database replaced by ``name``."""
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(ADMIN_URL, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"the PostgreSQL test server at {ADMIN_URL} does not answer ({exc}); start it "
            "with `bash scripts/testenv-postgres.sh` (part of scripts/testenv.sh)",
            pytrace=False,
        )


async def fresh_database(icu_locale: str | None = None) -> AsyncIterator[str]:
    """Yield the URL of a new, empty database; drop it afterwards.

    ``icu_locale`` (e.g. "en-US"): the database sorts text by that ICU locale, as a
    production database created with the system's language often does (the test server's
    default, C.UTF-8, sorts as SQLite does and would hide a missing ``COLLATE "C"``).
    """
    name = f"edgefleet_t_{uuid.uuid4().hex[:16]}"
    locale = f" LOCALE_PROVIDER icu ICU_LOCALE '{icu_locale}'" if icu_locale else ""
    admin = await _admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0{locale}')
    finally:
        await admin.close()
    try:
        yield database_url(name)
    finally:
        admin = await _admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """Return the URL of a fresh database on the test server (dropped after the test)."""
    async for url in fresh_database():
        yield url


BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """Return an open store of each backend in turn (SQLite file; fresh PostgreSQL database)."""
    if request.param == "sqlite":
        async with _opened(SqliteStore(tmp_path / "hub.db")) as opened:
            yield opened
        return
    async for url in fresh_database():
        async with _opened(PostgresStore(url)) as opened:
            yield opened


@contextlib.asynccontextmanager
async def _opened(store: Any) -> AsyncIterator[Any]:
    await store.open()
    try:
        yield store
    finally:
        await store.close()
