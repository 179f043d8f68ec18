"""One writer connection with group commit: many callers' jobs, one durable COMMIT.

Each job runs inside its own SAVEPOINT within a shared ``BEGIN IMMEDIATE`` transaction:
a job that raises is rolled back alone and its caller gets the exception; the others
commit together. Callers are answered only after COMMIT returns, so an acknowledgement
is never sent for data that is not durable. Under load this turns N fsyncs into one;
with one caller at a time it is an ordinary transaction per job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiosqlite

from hub.errors import StoreError

T = TypeVar("T")
Job = Callable[[aiosqlite.Connection], Awaitable[Any]]

log = logging.getLogger(__name__)


class GroupCommitWriter:
    """Serialize writes through one connection, committing queued jobs together."""

    def __init__(self, conn: aiosqlite.Connection, max_group: int = 256) -> None:
        self._conn = conn
        self._max_group = max_group
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future[Any]] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.groups = 0
        self.jobs = 0

    def start(self) -> None:
        """Start the writer task."""
        self._task = asyncio.create_task(self._run(), name="hub-store-writer")

    async def stop(self) -> None:
        """Finish queued jobs, then stop."""
        if self._task is None:
            return
        self._queue.put_nowait(None)
        await self._task
        self._task = None

    async def submit(self, job: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run ``job`` in the next group and return its result after COMMIT."""
        if self._task is None:
            raise StoreError("store is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((job, future))
        return await future

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            item = await self._queue.get()
            if item is None:
                break
            group = [item]
            while len(group) < self._max_group and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stopping = True
                    break
                group.append(nxt)
            await self._commit_group(group)

    async def _commit_group(self, group: list[tuple[Job, asyncio.Future[Any]]]) -> None:
        outcomes: list[tuple[asyncio.Future[Any], BaseException | None, Any]] = []
        try:
            await self._conn.execute("BEGIN IMMEDIATE")
            for job, future in group:
                outcomes.append((future, *await self._run_job(job)))
            await self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("store commit failed for %d job(s): %s", len(group), exc)
            await self._rollback()
            err = StoreError(f"database write failed: {exc}")
            for _, future in group:
                if not future.done():
                    future.set_exception(err)
            return
        except BaseException:
            # Cancelled (or a bug): nothing of this group is committed; tell every caller.
            await asyncio.shield(self._rollback())
            for _, future in group:
                if not future.done():
                    future.set_exception(StoreError("store writer stopped"))
            raise
        self.groups += 1
        self.jobs += len(group)
        for future, error, result in outcomes:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    async def _run_job(self, job: Job) -> tuple[BaseException | None, Any]:
        await self._conn.execute("SAVEPOINT job")
        try:
            result = await job(self._conn)
        except sqlite3.Error as exc:
            if not isinstance(exc, sqlite3.IntegrityError):
                raise  # the connection or the disk failed: the whole group fails
            await self._conn.execute("ROLLBACK TO job")
            await self._conn.execute("RELEASE job")
            return StoreError(f"constraint violated: {exc}"), None
        except Exception as exc:
            await self._conn.execute("ROLLBACK TO job")
            await self._conn.execute("RELEASE job")
            return exc, None
        await self._conn.execute("RELEASE job")
        return None, result

    async def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            await self._conn.execute("ROLLBACK")
