"""The engine's log frames into whole lines: a table of hostile output, no I/O."""

from __future__ import annotations

import asyncio
import socket

import pytest

from edge_agent.logstream import (
    HEADER,
    FrameSplitter,
    LineAssembler,
    format_since,
    parse_stamp,
    read_frames,
)
from edge_agent.readpace import ReadPacer

T = b"2026-12-01T00:23:04.341434750Z "
T_NS = 1_796_084_584_341_434_750


def assemble(frames: list[tuple[int, bytes]], max_line_bytes: int = 64) -> list[tuple]:
    a = LineAssembler(max_line_bytes, clock_ns=lambda: 7)
    out = [ln for stream, payload in frames for ln in a.feed(stream, payload)] + a.finish()
    return [(ln.ts_ns, ln.stream, ln.text, ln.truncated_bytes, ln.complete) for ln in out]


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        # Issue 7.3: `\r` is text, not a line break.
        ([(1, T + b"a\rb\n")], [(T_NS, "stdout", "a\rb", 0, True)]),
        ([(1, T + b"\xff\xfe bad\n")], [(T_NS, "stdout", "\ufffd\ufffd bad", 0, True)]),
        ([(2, b"no time here\n")], [(None, "stderr", "no time here", 0, True)]),
        ([(1, T + b"\n")], [(T_NS, "stdout", "", 0, True)]),
        (
            [(1, T + b"one\ntwo\n")],
            [(T_NS, "stdout", "one", 0, True), (T_NS, "stdout", "two", 0, True)],
        ),
        # A long line in partial frames, the other stream in between.
        (
            [(1, T + b"abc"), (2, T + b"err\n"), (1, T + b"def\n")],
            [(T_NS, "stderr", "err", 0, True), (T_NS, "stdout", "abcdef", 0, True)],
        ),
        ([(1, T + b"x" * 100 + b"\n")], [(T_NS, "stdout", "x" * 64, 36, True)]),
        ([(1, T + b"tail without newline")], [(T_NS, "stdout", "tail without newline", 0, False)]),
        # A character cut in half by the bound is left out, not replaced.
        ([(1, T + b"x" * 63 + "é".encode() + b"\n")], [(T_NS, "stdout", "x" * 63, 1, True)]),
    ],
)
def test_frames_become_lines(frames: list[tuple[int, bytes]], expected: list[tuple]) -> None:
    assert assemble(frames) == expected


def test_a_long_frame_in_pieces_keeps_its_time() -> None:
    a = LineAssembler(1000, clock_ns=lambda: 7)
    assert a.feed(1, T + b"abc") == []
    (ln,) = a.feed(1, b"def\nghi\n", continued=True)[:1]
    assert (ln.ts_ns, ln.text) == (T_NS, "abcdef")


@pytest.mark.parametrize(
    "raw",
    [b"2026-13-01T00:00:00Z x", b"garbage x", b"2026-12-01T00:23:04.1Zx"],
)
def test_unparseable_stamps_keep_the_whole_text(raw: bytes) -> None:
    assert parse_stamp(raw) == (None, raw)


def test_since_round_trips_nanoseconds() -> None:
    assert format_since(T_NS) == "1796084584.341434750"
    assert parse_stamp(b"2026-12-01T00:23:04Z x") == (1_796_084_584_000_000_000, b"x")


async def test_frames_are_read_in_bounded_pieces_and_a_cut_stream_ends_cleanly() -> None:
    reader = asyncio.StreamReader()
    body = T + b"y" * 100 + b"\n"
    reader.feed_data(HEADER.pack(1, len(body)) + body + HEADER.pack(2, 5) + b"2026")
    reader.feed_eof()
    frames = [f async for f in read_frames(reader, piece_bytes=16)]
    assert b"".join(p for _, p, _ in frames) == body  # the cut frame at the end is left out
    assert [c for _, _, c in frames] == [False] + [True] * 5  # 64 bytes, then 16 at a time
    a = LineAssembler(1000, clock_ns=lambda: 7)
    (ln,) = [x for s, p, c in frames for x in a.feed(s, p, continued=c)]
    assert (ln.ts_ns, ln.text) == (T_NS, "y" * 100)


@pytest.mark.parametrize("chunk", [1, 3, 8, 9, 70, 10_000])
def test_frames_fed_in_chunks_of_any_size_become_the_same_lines(chunk: int) -> None:
    """Issue 9: a followed stream is read in whatever chunks the socket holds at a tick."""
    frames = [(1, T + b"one\ntwo\n"), (2, T + b"err" * 40 + b"\n"), (0, b""), (1, T + b"x\n")]
    raw = b"".join(HEADER.pack(s, len(p)) + p for s, p in frames)
    splitter, a = FrameSplitter(), LineAssembler(1000, clock_ns=lambda: 7)
    pieces = [f for i in range(0, len(raw), chunk) for f in splitter.feed(raw[i : i + chunk])]
    assert all(len(p) >= len(T) for _, p, c in pieces if not c)  # the stamp is never split
    lines = [ln for s, p, c in pieces for ln in a.feed(s, p, continued=c)]
    assert [(ln.ts_ns, ln.stream, ln.text) for ln in lines] == [
        (T_NS, "stdout", "one"),
        (T_NS, "stdout", "two"),
        (T_NS, "stderr", "err" * 40),
        (T_NS, "stdout", "x"),
    ]


class _Counting(asyncio.Protocol):
    def __init__(self) -> None:
        self.reads: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.reads.append(data)


async def test_a_held_connection_is_read_once_per_tick_with_all_it_got() -> None:
    """Issue 9: ten quiet streams woke the agent once per line; held, once per tick."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    transport, proto = await loop.connect_accepted_socket(_Counting, ours)
    pacer = ReadPacer(interval_s=1.0)
    try:
        await asyncio.sleep(1.0 - loop.time() % 1.0 + 0.05)  # just after a tick
        pacer.hold(transport)  # type: ignore[arg-type]
        for i in range(5):
            theirs.send(f"line {i}\n".encode())
            await asyncio.sleep(0.02)
        assert proto.reads == []  # held: nothing read between ticks
        await asyncio.sleep(1.0)
        assert proto.reads == [b"".join(f"line {i}\n".encode() for i in range(5))]
        pacer.release(transport)  # type: ignore[arg-type]
        theirs.send(b"flowing\n")
        await asyncio.sleep(0.05)
        assert proto.reads[-1] == b"flowing\n" and pacer.held() == 0
    finally:
        transport.close()
        theirs.close()
