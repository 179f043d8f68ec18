"""PostgresStore's writer statistics and commit observers: the pool and this process's commits.

SQLite has one writer with group commit (``hub.store.writer``); PostgreSQL has a pool of
connections, each write one transaction on one of them. ``PoolMeter`` stands where the
writer's counters stand, for this hub process only (each process has its own pool):

- queue depth: calls waiting for a pooled connection now (writes and reads), the
  pool's backlog as the writer's queue is the writer's;
- groups and jobs: transactions this process committed, and the writes they held (one
  each, but a group of sync batches, ``hub.store.pg_group_commit``, holds several);
- the commit observers (``watch_commits``, hub.prom's commit histogram) are called after
  each commit with ``(jobs, seconds)``, the seconds from BEGIN to COMMIT's answer;
- no WAL truncations and no file sizes (the server's files are not the hub's): zeros.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from hub.store.records import WriterStats

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)
Observer = Callable[[int, float], None]


class PoolMeter:
    """Count waiters for the pool and committed transactions; tell the observer of each."""

    def __init__(self) -> None:
        self.waiting = 0
        self.commits = 0
        self.jobs = 0
        self.observer: Observer | None = None

    @asynccontextmanager
    async def connection(self, pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
        """Yield a pooled connection, counted as waiting until the pool hands it over."""
        self.waiting += 1
        try:
            conn = await pool.acquire()
        finally:
            self.waiting -= 1
        try:
            yield conn
        finally:
            await pool.release(conn)

    @asynccontextmanager
    async def transaction(self, conn: asyncpg.Connection, jobs: int = 1) -> AsyncIterator[None]:
        """Run the body (``jobs`` writes) in a transaction; count it and tell the observer
        once it committed."""
        started = time.perf_counter()
        async with conn.transaction():
            yield
        self.committed(time.perf_counter() - started, jobs)

    def committed(self, seconds: float, jobs: int = 1) -> None:
        """Count one commit of ``jobs`` writes that took ``seconds`` and tell the observer
        (never raises)."""
        self.commits += 1
        self.jobs += jobs
        if self.observer is None:
            return
        try:
            self.observer(jobs, seconds)
        except Exception:  # the write committed: its caller must not see an error
            log.exception("store commit observer failed")

    def stats(self) -> WriterStats:
        """Return the counts as the writer's statistics (see the module docstring)."""
        return WriterStats(
            queue_depth=self.waiting,
            groups=self.commits,
            jobs=self.jobs,
            wal_truncations=0,
            db_bytes=0,
            wal_bytes=0,
        )


class PgWriterMixin:
    """``writer_stats`` and ``watch_commits`` of PostgresStore, from its ``PoolMeter``."""

    _meter: PoolMeter

    def writer_stats(self) -> WriterStats:
        """Return this process's pool backlog and commit counts (no file sizes: zeros)."""
        return self._meter.stats()

    def watch_commits(self, observer: Observer) -> None:
        """Call ``observer(1, seconds)`` after every transaction this process commits."""
        self._meter.observer = observer
