"""``logparts.answer``: lines in bounded batches, the byte bound cut and counted, the
follow deadline. Pure asyncio: the lines come from a small generator of our own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from edge_agent.logparts import Batching, answer


async def some(lines: list[str], then_wait: bool = False) -> AsyncIterator[str]:
    for line in lines:
        yield line
    if then_wait:
        await asyncio.Event().wait()  # a followed stream: nothing more, never ends


class Sink:
    def __init__(self) -> None:
        self.parts: list[tuple[int, list[str]]] = []

    async def __call__(self, part: int, lines: list[str]) -> None:
        self.parts.append((part, list(lines)))


@pytest.mark.parametrize(
    ("batching", "sizes"),
    [
        (Batching(lines=3, bytes=10_000), [3, 3, 3, 1]),
        (Batching(lines=100, bytes=20), [3, 3, 3, 1]),  # "line N\n" is 7 bytes: 3 fill 20
        (Batching(lines=100, bytes=10_000), [10]),
    ],
)
async def test_lines_leave_in_batches_bounded_by_lines_and_bytes(
    batching: Batching, sizes: list[int]
) -> None:
    sink = Sink()
    lines = [f"line {i}" for i in range(10)]
    result = await answer(some(lines), sink, batching, max_bytes=1 << 20)
    assert [len(p) for _, p in sink.parts] == sizes
    assert [n for n, _ in sink.parts] == list(range(1, len(sizes) + 1))
    assert [line for _, p in sink.parts for line in p] == lines
    assert result == {"parts": len(sizes), "lines": 10, "bytes": 70, "ended": "end"}


async def test_the_byte_bound_cuts_and_counts_the_rest() -> None:
    sink = Sink()
    lines = [f"line {i}" for i in range(10)]
    result = await answer(some(lines), sink, Batching(lines=4), max_bytes=30)
    assert [line for _, p in sink.parts for line in p] == lines[:4]
    assert result["truncated"] is True and result["cut_lines"] == 6 and result["lines"] == 4


async def test_a_follow_ends_at_its_deadline_and_flushes_what_it_has() -> None:
    sink = Sink()
    result = await answer(
        some(["a", "b"], then_wait=True),
        sink,
        Batching(lines=100, flush_s=0.05),
        max_bytes=1000,
        follow_s=0.5,
    )
    assert sink.parts == [(1, ["a", "b"])]  # by the flush time, not at the end
    assert result["ended"] == "follow_deadline"


async def test_a_read_error_fails_the_answer() -> None:
    async def broken() -> AsyncIterator[str]:
        yield "x"
        raise RuntimeError("engine gone")

    with pytest.raises(RuntimeError, match="engine gone"):
        await answer(broken(), Sink(), Batching(), max_bytes=1000)
