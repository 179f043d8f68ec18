"""Item 20: every store file (the database, its -wal and -shm) is 0600, data dirs 0700.

The agent's WAL once held a registry password readable by any local user: SQLite gives
-wal/-shm the database file's mode at the time they are created, which was 0644 under
the usual umask until the store chmod-ed the database after opening it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edge_agent.store import Store
from hub.testing import start_hub


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _store_files(directory: Path, name: str) -> list[Path]:
    files = [directory / name, directory / f"{name}-wal", directory / f"{name}-shm"]
    missing = [f for f in files if not f.exists()]
    assert not missing, f"expected the store to be open in WAL mode: {missing}"
    return files


async def test_hub_store_wal_and_shm_are_not_world_readable(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual default, whatever the test runner has
    try:
        hub = start_hub(tmp_path / "hub")
    finally:
        os.umask(old)
    try:
        await hub.create_token()  # a real write through the store
        files = _store_files(hub.data_dir, "hub.db")
        assert {f.name: oct(_mode(f)) for f in files} == {f.name: "0o600" for f in files}
        assert _mode(hub.data_dir) == 0o700
    finally:
        assert hub.stop() == 0


async def test_agent_store_wal_and_shm_are_not_world_readable(tmp_path: Path) -> None:
    data_dir = tmp_path / "standalone" / "data"
    old = os.umask(0o022)
    try:
        store = await Store(data_dir / "agent.db").open()
        try:
            await store.set_meta("probe", "a registry password")
            files = _store_files(data_dir, "agent.db")
            assert {f.name: oct(_mode(f)) for f in files} == {f.name: "0o600" for f in files}
            assert _mode(data_dir) == 0o700
        finally:
            await store.close()
    finally:
        os.umask(old)
