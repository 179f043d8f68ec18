"""The hub store's reads see every write committed before them, also under read load
(each backend: the ``store`` fixture of tests/pgkit.py)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

from hub.store import AuditRecord, EnrollmentTokenRecord, NewDevice

NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def test_a_read_sees_a_committed_write_while_other_reads_overlap_it(store: Any):
    token = EnrollmentTokenRecord("et_1", "h", 50, 50, NOW + timedelta(hours=1), {}, NOW, "a")
    await store.create_enrollment_token(token, AuditRecord("a", "token.create", "et_1", "ok", NOW))
    for i in range(50):
        device = NewDevice(f"dev-{i}", "h", "1", f"s{i}", "sha256:x", NOW + timedelta(days=1))
        await store.enroll_device("et_1", "h", device, NOW)

    async def other_reads() -> None:  # like a busy hub: syncs and long-polls reading
        while True:
            await asyncio.gather(*(store.list_devices() for _ in range(4)))

    readers = [asyncio.create_task(other_reads()) for _ in range(4)]
    try:
        stale = 0
        for i in range(100):
            audit = AuditRecord("a", "device.disable", "dev-0", "ok", NOW)
            await store.set_device_disabled("dev-0", i % 2 == 0, audit)
            read = await store.get_device("dev-0")
            assert read is not None
            stale += read.disabled != (i % 2 == 0)
        assert stale == 0, f"{stale} of 100 reads missed the write committed before them"
    finally:
        for task in readers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def test_a_locked_database_is_told_apart_from_a_broken_read(tmp_path: Any):
    """Point reads go to the threaded reader only when the database is busy; any other
    error is the caller's (a real lock: a rollback-journal database a writer holds)."""
    import sqlite3

    from hub.store.sqlite import _is_busy

    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("PRAGMA busy_timeout=0")
    try:
        try:
            reader.execute("SELECT nope FROM missing").fetchall()
        except sqlite3.OperationalError as exc:
            assert not _is_busy(exc), exc
        else:
            raise AssertionError("the broken read did not fail")
        holder.execute("BEGIN EXCLUSIVE")
        try:
            reader.execute("SELECT x FROM t").fetchall()
        except sqlite3.OperationalError as exc:
            assert _is_busy(exc), exc
        else:
            raise AssertionError("the read was not locked out")
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
        reader.close()
