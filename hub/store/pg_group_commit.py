"""Group commit of sync batches on PostgreSQL: several devices' batches in one transaction.

A sync starts its transaction at once while fewer than ``max_tx`` of them run (the pool's
size): alone, it waits for nothing. When every slot is busy, the syncs that arrive queue,
and the next slot to free takes up to ``group_max`` of them into one transaction: one
BEGIN and one COMMIT (one WAL flush) for the group instead of one each. Measured with
benchmarks/bench_pg_commit.py (the store's ingest alone, 50 in flight, pool of 10): 1.28-1.35x
the syncs/s, 0.54-0.74x this process's CPU and 0.39x the server's per sync (docs/scaling.md).

Each batch is applied exactly as alone (``pg_sync.ingest`` and the contact span), in the
group's one transaction. The group first locks its devices' rows in id order, so groups
(of this process or another) cannot deadlock one another. If anything in a group fails
(a disabled device, a deadlock with another kind of transaction, a lost connection), the
group's transaction is rolled back and each batch of it is applied again on its own, so
every caller gets exactly the result or error it would get without grouping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hub.store.records import SyncBatch


@dataclass
class _Job:
    device_id: str
    batch: SyncBatch
    now: datetime
    done: asyncio.Future[Any]


@dataclass
class IngestGroups:
    """Queues sync batches and applies them in groups (see the module docstring).

    ``run_group(jobs)`` applies several batches in one transaction and returns their
    results in order; ``run_alone(device_id, batch, now)`` applies one batch in a
    transaction of its own. ``group_max`` 1 applies every batch alone.
    """

    group_max: int
    max_tx: int
    run_group: Callable[[list[tuple[str, SyncBatch, datetime]]], Awaitable[list[Any]]]
    run_alone: Callable[[str, SyncBatch, datetime], Awaitable[Any]]
    _queue: list[_Job] = field(default_factory=list)
    _running: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    groups: int = 0  # transactions of more than one batch that committed
    grouped: int = 0  # batches they held
    fallbacks: int = 0  # groups rolled back and applied one by one

    async def submit(self, device_id: str, batch: SyncBatch, now: datetime) -> Any:
        """Apply one batch (alone or in a group); return what applying it returned."""
        if self.group_max <= 1:
            return await self.run_alone(device_id, batch, now)
        job = _Job(device_id, batch, now, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        if self._running < self.max_tx:
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._drain())
            self._tasks.add(task)  # held until done: a task only the loop knows may vanish
            task.add_done_callback(self._tasks.discard)
        return await job.done

    async def _drain(self) -> None:
        jobs: list[_Job] = []
        try:
            while self._queue:
                jobs = self._queue[: self.group_max]
                del self._queue[: self.group_max]
                await self._apply(jobs)
        except BaseException:
            # Cancelled (the loop is closing): no caller waits for an answer that never comes.
            left = jobs + (self._queue if self._running == 1 else [])
            for job in left:
                job.done.cancel()
            raise
        finally:
            self._running -= 1

    async def _apply(self, jobs: list[_Job]) -> None:
        if len(jobs) > 1:
            try:
                results = await self.run_group([(j.device_id, j.batch, j.now) for j in jobs])
            except Exception:
                self.fallbacks += 1
            else:
                self.groups += 1
                self.grouped += len(jobs)
                for job, result in zip(jobs, results, strict=True):
                    _answer(job, result)
                return
        for job in jobs:
            try:
                _answer(job, await self.run_alone(job.device_id, job.batch, job.now))
            except Exception as exc:  # handed to its caller, as it would be alone
                if not job.done.done():
                    job.done.set_exception(exc)


def _answer(job: _Job, result: Any) -> None:
    if not job.done.done():  # its caller may have been cancelled meanwhile
        job.done.set_result(result)
