"""Checkpoint the WAL from a connection of its own, so commits never pay for it.

With SQLite's automatic checkpoint, the commit that crosses 1,000 WAL pages copies them
into the database and fsyncs it, stalling every sync waiting on that group. Here the
writer has ``wal_autocheckpoint=0`` and this task runs ``wal_checkpoint(PASSIVE)`` on
its own thread every ``interval_s``: PASSIVE never takes the write lock, so the writer
keeps committing while pages are copied (the same split litestream makes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hub.background import BackgroundTask

log = logging.getLogger(__name__)


class WalCheckpointer:
    """Run PASSIVE checkpoints periodically; TRUNCATE once at stop."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str,
        interval_s: float = 1.0,
        lock: threading.Lock | None = None,
    ) -> None:
        self._path = path
        self._lock = lock or threading.Lock()  # shared with the writer's WAL truncation
        self._synchronous = synchronous
        self._interval_s = interval_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-db-ckpt")
        self._conn: sqlite3.Connection | None = None
        self._task = BackgroundTask("hub-store-checkpoint", self._run)
        self._failing = False

    def _open(self) -> None:
        self._conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.execute(f"PRAGMA synchronous={self._synchronous}")

    def _checkpoint(self, mode: str) -> tuple[int, int, int]:
        assert self._conn is not None
        with self._lock:
            row = self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    async def start(self) -> None:
        """Open the connection and start the periodic task."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._open)
        self._task.start()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await loop.run_in_executor(self._executor, self._checkpoint, "PASSIVE")
            except sqlite3.Error as exc:
                if not self._failing:
                    log.warning("WAL checkpoint failing: %s", exc)
                self._failing = True
                continue
            if self._failing:
                log.info("WAL checkpoint recovered")
                self._failing = False

    async def stop(self) -> None:
        """Stop the task, checkpoint everything (TRUNCATE) and close."""
        await self._task.stop()
        loop = asyncio.get_running_loop()
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                await loop.run_in_executor(self._executor, self._checkpoint, "TRUNCATE")
            await loop.run_in_executor(self._executor, self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)
