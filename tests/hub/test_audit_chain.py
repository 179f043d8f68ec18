"""The hub's audit hash chain: written by the store's one writer, verified offline by
``edge-hub audit verify`` against the database of a stopped hub (SQLite, or PostgreSQL under
EDGEFLEET_TEST_STORE=postgres); secrets redacted."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hubdb import copy_hub, run_sql

from hub.audit_chain import REDACTED, backfill, record_hash, redact, verify
from hub.testing import REPO_ROOT, RunningHub, start_hub


@pytest.fixture(scope="module")
def stopped_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A hub that audited some operator actions (ok and refused), then stopped: its work dir."""
    work = tmp_path_factory.mktemp("chainhub")
    running = start_hub(work)
    try:
        _act(running)
    finally:
        assert running.stop() == 0
    yield work


def _act(running: RunningHub) -> None:
    import asyncio

    async def go() -> None:
        for uses in range(1, 6):
            await running.create_token(uses=uses)
        status, _ = await running.api("POST", "/api/v1/devices/dev-none/disable", {})
        assert status == 404  # a rejected action, audited too

    asyncio.run(go())


def _copy(work: Path, dest: Path) -> Path:
    """Copy the stopped hub's config, data and database; return the copy's hub.toml."""
    return copy_hub(work, dest)


def _verify(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", "audit", "verify", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )


def _tamper(config: Path, *statements: str) -> None:
    for statement in statements:
        run_sql(config.parent, statement)


def test_untouched_hub_audit_chain_verifies(stopped_hub: Path, tmp_path: Path) -> None:
    config = _copy(stopped_hub, tmp_path)
    done = _verify(config)
    assert done.returncode == 0, done.stdout + done.stderr
    [(count, sources)] = run_sql(
        tmp_path, "SELECT COUNT(*), COUNT(DISTINCT source_addr) FROM audit WHERE source_addr != ''"
    )
    [(total,)] = run_sql(tmp_path, "SELECT COUNT(*) FROM audit")
    assert f"{total} records verified" in done.stdout
    assert total >= 6
    assert count == total and sources == 1  # every operator row names 127.0.0.1


@pytest.mark.parametrize(
    ("statements", "broken", "why"),
    [
        (["UPDATE audit SET detail = '{\"uses\":99}' WHERE id = 3"], 3, "altered"),
        (["DELETE FROM audit WHERE id = 3"], 4, "deleted: record(s) 3 before"),
        (
            [
                "UPDATE audit SET id = -1 WHERE id = 3",
                "UPDATE audit SET id = 3 WHERE id = 4",
                "UPDATE audit SET id = 4 WHERE id = -1",
            ],
            3,
            "reordered",
        ),
        (["UPDATE audit SET source_addr = '10.0.0.9' WHERE id = 5"], 5, "altered"),
    ],
    ids=["altered", "deleted", "swapped", "source_altered"],
)
def test_audit_verify_names_first_broken_hub_record(
    stopped_hub: Path, tmp_path: Path, statements: list[str], broken: int, why: str
) -> None:
    config = _copy(stopped_hub, tmp_path)
    _tamper(config, *statements)
    done = _verify(config)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"BROKEN at record {broken}: {why}" in done.stdout


def test_audit_verify_refuses_missing_store(tmp_path: Path) -> None:
    (tmp_path / "hub.toml").write_text(f'[server]\ndata_dir = "{tmp_path / "none"}"\n')
    done = _verify(tmp_path / "hub.toml")
    assert done.returncode == 2 and "no database" in done.stderr


def test_migration_backfill_chains_existing_rows() -> None:
    db = sqlite3.connect(":memory:")
    db.execute(
        "CREATE TABLE audit (id INTEGER PRIMARY KEY, at TEXT, actor TEXT, action TEXT, "
        "target TEXT, outcome TEXT, detail TEXT, source_addr TEXT DEFAULT '', "
        "prev_hash TEXT DEFAULT '', hash TEXT DEFAULT '')"
    )
    for i in range(1, 5):
        db.execute(
            "INSERT INTO audit (id, at, actor, action, target, outcome, detail) "
            "VALUES (?, 't', 'admin', 'x', '-', 'ok', '{}')",
            (i,),
        )
    backfill(db)
    rows = db.execute("SELECT * FROM audit ORDER BY id").fetchall()
    verdict = verify(rows, lambda h: None)
    assert verdict.ok and verdict.count == 4
    assert rows[0][8] == "" and rows[1][8] == rows[0][9]
    assert rows[3][9] == record_hash(4, rows[2][9], "t", "admin", "x", "-", "ok", "{}", "")


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        ({"password": "p", "user": "u"}, {"password": REDACTED, "user": "u"}),
        (
            {"registry_auth": [{"host": "r", "username": "u", "password": "p"}]},
            {"registry_auth": [{"host": "r", "username": "u", "password": REDACTED}]},
        ),
        ({"token": "abc", "uses": 3}, {"token": REDACTED, "uses": 3}),
        ({"Authorization": "Bearer x"}, {"Authorization": REDACTED}),
        (
            {"env": {"DB_PASSWORD": "s", "MODE": "x"}},
            {"env": {"DB_PASSWORD": REDACTED, "MODE": "x"}},
        ),
        ({"api_key": "k", "client_secret": "c"}, {"api_key": REDACTED, "client_secret": REDACTED}),
        ({"reason": "token expired", "tokens": 2}, {"reason": "token expired", "tokens": 2}),
        ({"password": ""}, {"password": ""}),
    ],
)
def test_audit_parameters_with_secrets_redacted_by_key_name(
    detail: dict[str, object], expected: dict[str, object]
) -> None:
    assert redact(detail) == expected
