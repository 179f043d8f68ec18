"""Decode large sync bodies in worker processes, so the event loop never parses them.

Parsing JSON holds the GIL however it is called: a thread would still stall every other
request for as long as a hostile 16 MiB body takes. A body whose decoded size is at most
``limits.inline_body_bytes`` is cheap and decoded inline; anything larger is decoded
(inflated, parsed, validated) in one of ``limits.parse_workers`` processes, at most
two jobs per worker queued at once (others wait their turn; the wait is bounded by the
jobs ahead, each bounded by ``limits.max_decompressed_bytes``).

The workers are started with the hub (``start``), not by the first large body: a worker
takes 1-2 s to spawn and import, which the first catch-up request after a hub restart —
when the whole fleet catches up — used to wait for.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import zlib
from concurrent.futures import ProcessPoolExecutor

from hub.sync_decode import Decoded, SyncBounds, decode_sync_body, decode_sync_job, job_result

log = logging.getLogger(__name__)


class SyncDecoder:
    """Decode sync bodies inline when small, in a process pool when large."""

    def __init__(self, bounds: SyncBounds, *, inline_bytes: int, workers: int) -> None:
        self.bounds = bounds
        self.inline_bytes = inline_bytes
        self.workers = workers
        self.offloaded = 0  # bodies decoded in a worker (visible in tests and logs)
        self._pool: ProcessPoolExecutor | None = None
        self._slots = asyncio.Semaphore(2 * workers)

    def start(self) -> None:
        """Start every worker process now, in the background (spawned, never waited for)."""
        pool = self._executor()
        for _ in range(self.workers):  # a job while no worker is idle spawns one more
            pool.submit(_ready)

    async def decode(self, raw: bytes, encoding: str, *, lines: bool = False) -> Decoded:
        """Return the request and rows of one sync body (``lines``: in the lines format);
        raise HubError if refused."""
        small = _small_body(raw, encoding, min(self.inline_bytes, self.bounds.max_decompressed))
        if small is not None:
            return decode_sync_body(small, self.bounds, lines=lines)
        async with self._slots:
            self.offloaded += 1
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(
                self._executor(), decode_sync_job, raw, encoding, self.bounds, lines
            )
        return job_result(result)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: the hub has threads (store writer, aiosqlite); forking them is unsafe.
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx)
        return self._pool

    def close(self) -> None:
        """Stop the worker processes."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _ready() -> None:
    """The job that starts a worker: its imports are the work (``hub.sync_decode``)."""


def _small_body(raw: bytes, encoding: str, limit: int) -> bytes | None:
    """Return the decoded body if it is at most ``limit`` bytes (cheap to find out), else None.

    Unknown encodings and broken gzip also return None: the worker refuses them by name.
    """
    if encoding == "identity":
        return raw if len(raw) <= limit else None
    if encoding != "gzip":
        return None
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error:
        return None
    if len(out) > limit or inflater.unconsumed_tail or not inflater.eof:
        return None
    return out
