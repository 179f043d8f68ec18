"""The answer to a ``logs`` action: lines in bounded batches, each a durable result part.

``answer`` reads lines (``logread.read_lines``) and hands them to ``emit`` in batches of
at most ``Batching.lines`` lines and ``Batching.bytes`` bytes, a batch leaving at the
latest ``Batching.flush_s`` after its first line (so followed lines arrive promptly).
Lines over the action's byte bound are not sent but counted (``cut_lines``); with
``follow`` the answer ends at the follow deadline, else when the read ends — or, either
way, when ``stop`` is set (a ``cancel`` action): the lines read by then still leave.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Emit = Callable[[int, list[str]], Awaitable[None]]
_END = object()
_STOP = object()


@dataclass(frozen=True)
class Batching:
    """How one part is bounded."""

    lines: int = 500
    bytes: int = 64 * 1024
    flush_s: float = 0.2


@dataclass
class Tally:
    """What an answer sent and what it cut."""

    parts: int = 0
    lines: int = 0
    bytes: int = 0
    cut_lines: int = 0
    batch: list[str] = field(default_factory=list)
    batch_bytes: int = 0

    def result(self, ended: str) -> dict[str, Any]:
        """Return the action's result."""
        out: dict[str, Any] = {
            "parts": self.parts,
            "lines": self.lines,
            "bytes": self.bytes,
            "ended": ended,
        }
        if self.cut_lines:
            out.update(truncated=True, cut_lines=self.cut_lines)
        return out


async def _pump(lines: AsyncIterator[str], queue: asyncio.Queue[object]) -> None:
    try:
        async for line in lines:
            await queue.put(line)
    except Exception as exc:  # handed to the reader, which raises it in the action
        await queue.put(exc)
        return
    await queue.put(_END)


async def _stop_when(stop: asyncio.Event, queue: asyncio.Queue[object]) -> None:
    await stop.wait()
    await queue.put(_STOP)  # after the lines already read: they still leave


async def answer(
    lines: AsyncIterator[str],
    emit: Emit,
    batching: Batching,
    *,
    max_bytes: int,
    follow_s: float = 0.0,
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    """Send ``lines`` as parts through ``emit``; return the result (see module docstring)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=max(16, 2 * batching.lines))
    pump = asyncio.create_task(_pump(lines, queue))
    stopper = asyncio.create_task(_stop_when(stop or asyncio.Event(), queue))
    deadline = loop.time() + follow_s if follow_s else None
    tally, first_at, ended = Tally(), 0.0, "end"
    try:
        while True:
            limits = [first_at + batching.flush_s] if tally.batch else []
            limits += [deadline] if deadline is not None else []
            timeout = max(0.0, min(limits) - loop.time()) if limits else None
            try:
                item = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline:
                    ended = "follow_deadline"
                    break
                await _flush(tally, emit)
                continue
            if item is _END:
                break
            if item is _STOP:
                ended = "cancelled"
                break
            if isinstance(item, BaseException):
                raise item
            if not tally.batch:
                first_at = loop.time()
            if _add(tally, str(item), max_bytes) and _full(tally, batching):
                await _flush(tally, emit)
        await _flush(tally, emit)
    finally:
        for task in (pump, stopper):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return tally.result(ended)


def _add(tally: Tally, line: str, max_bytes: int) -> bool:
    """Add a line to the batch unless it passes the action's bound (then count it)."""
    size = len(line.encode()) + 1
    if tally.bytes + tally.batch_bytes + size > max_bytes:
        tally.cut_lines += 1
        return False
    tally.batch.append(line)
    tally.batch_bytes += size
    return True


def _full(tally: Tally, batching: Batching) -> bool:
    return len(tally.batch) >= batching.lines or tally.batch_bytes >= batching.bytes


async def _flush(tally: Tally, emit: Emit) -> None:
    if not tally.batch:
        return
    tally.parts += 1
    await emit(tally.parts, tally.batch)
    tally.lines += len(tally.batch)
    tally.bytes += tally.batch_bytes
    tally.batch, tally.batch_bytes = [], 0
