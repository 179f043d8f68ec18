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
