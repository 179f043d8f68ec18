"""Whole log lines from the Docker engine's multiplexed log stream.

Parsing only: the caller (``runtime.py``) opens the stream and hands over its reader.

The engine (``timestamps=True``) sends frames ``[stream, 0, 0, 0, size(4)] payload``;
each payload is ``<RFC 3339 nano time> <text>``. A line longer than the log driver's
buffer (16 KiB for json-file) arrives as several frames with the same time, only the
last ending in ``\\n``. ``\\n`` is the only line separator: ``\\r`` and every other byte
stay in the text. Invalid UTF-8 is replaced, a frame without a parseable time is kept
with the read time, and a line longer than ``max_line_bytes`` is cut with the cut bytes
counted — nothing in a container's output can raise here.
"""

from __future__ import annotations

import asyncio
import codecs
import re
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

HEADER = struct.Struct(">BxxxL")
STREAMS = {0: "stdin", 1: "stdout", 2: "stderr"}
_NS = 1_000_000_000
_STAMP_BYTES = 64  # "2026-12-01T00:23:04.341434750+00:00 " and then some
_STAMP = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) ")


class Reader(Protocol):
    """A byte stream (aiohttp's ``StreamReader``)."""

    async def readexactly(self, n: int) -> bytes: ...


async def read_frames(
    reader: Reader, piece_bytes: int = 64 * 1024
) -> AsyncIterator[tuple[int, bytes, bool]]:
    """Yield (stream id, bytes, continued) per frame, a long frame in bounded pieces."""
    try:
        while True:
            stream_id, size = HEADER.unpack(await reader.readexactly(HEADER.size))
            continued = False
            while size:
                # The first piece holds the whole time stamp, however small the pieces.
                step = piece_bytes if continued else max(piece_bytes, _STAMP_BYTES)
                piece = await reader.readexactly(min(size, step))
                size -= len(piece)
                yield stream_id, piece, continued
                continued = True
    except asyncio.IncompleteReadError:
        return  # the end of the log (or the engine cut it): what was whole is kept


@dataclass
class FrameSplitter:
    """The same frames as ``read_frames``, from chunks of any size as they arrive.

    Holds at most one chunk and a partial frame header; a frame's first piece is held
    until it has the whole time stamp (or the frame ends).
    """

    _buf: bytearray = field(default_factory=bytearray)
    _stream_id: int = 0
    _left: int = 0  # payload bytes of the current frame not yet handed out
    _continued: bool = False

    def feed(self, data: bytes) -> list[tuple[int, bytes, bool]]:
        """Return the frame pieces (stream id, bytes, continued) that ``data`` completes."""
        self._buf += data
        out: list[tuple[int, bytes, bool]] = []
        while True:
            if not self._left:
                if len(self._buf) < HEADER.size:
                    return out
                self._stream_id, self._left = HEADER.unpack_from(self._buf)
                del self._buf[: HEADER.size]
                self._continued = False
                continue
            take = min(self._left, len(self._buf))
            if not take or (not self._continued and take < min(self._left, _STAMP_BYTES)):
                return out
            out.append((self._stream_id, bytes(self._buf[:take]), self._continued))
            del self._buf[:take]
            self._left -= take
            self._continued = True


@dataclass(frozen=True)
class LogLine:
    """One whole line of a container's output."""

    ts_ns: int | None  # the engine's time; None when the frame carried none we could read
    read_ns: int  # when the agent read it (stands in for a missing engine time)
    stream: str
    text: str
    truncated_bytes: int = 0
    complete: bool = True  # False: the stream ended inside this line

    @property
    def ts(self) -> float:
        """Return the line's time in Unix seconds (the read time if the engine gave none)."""
        return (self.ts_ns if self.ts_ns is not None else self.read_ns) / _NS


def parse_stamp(raw: bytes) -> tuple[int | None, bytes]:
    """Split ``<time> <text>`` into (Unix nanoseconds, text); (None, raw) if no time."""
    m = _STAMP.match(raw)
    if m is None:
        return None, raw
    try:
        base = datetime.fromisoformat(m.group(1).decode() + m.group(3).decode().replace("Z", ""))
    except ValueError:
        return None, raw
    if base.tzinfo is None:
        base = base.replace(tzinfo=UTC)
    fraction = (m.group(2) or b"").decode().ljust(9, "0")
    seconds = int(base.timestamp())
    return seconds * _NS + int(fraction or 0), raw[m.end() :]


def format_since(ts_ns: int) -> str:
    """Return the engine's ``since=`` form of a nanosecond time: ``seconds.nanoseconds``."""
    return f"{ts_ns // _NS}.{ts_ns % _NS:09d}"


@dataclass
class _Pending:
    ts_ns: int | None
    read_ns: int
    data: bytearray = field(default_factory=bytearray)
    cut: int = 0


@dataclass
class LineAssembler:
    """Turns the engine's frames, as they arrive, into whole lines (bounded memory)."""

    max_line_bytes: int
    clock_ns: Callable[[], int]
    _pending: dict[str, _Pending] = field(default_factory=dict)
    _frame_ts: dict[str, int | None] = field(default_factory=dict)

    def feed(self, stream_id: int, payload: bytes, *, continued: bool = False) -> list[LogLine]:
        """Take one frame's payload (or, ``continued``, the next piece of a long one)."""
        stream = STREAMS.get(stream_id, f"stream{stream_id}")
        if continued:
            ts_ns, text = self._frame_ts.get(stream), payload
        else:
            ts_ns, text = parse_stamp(payload)
            self._frame_ts[stream] = ts_ns
        out: list[LogLine] = []
        while text:
            head, newline, text = text.partition(b"\n")
            pending = self._pending.get(stream)
            if pending is None:
                # A continuation frame repeats its line's time; only a new line takes it.
                pending = self._pending[stream] = _Pending(ts_ns, self.clock_ns())
            self._take(pending, head)
            if newline:
                out.append(self._line(stream, self._pending.pop(stream), complete=True))
        return out

    def finish(self) -> list[LogLine]:
        """Return what the stream ended inside of, marked incomplete."""
        out = [self._line(s, p, complete=False) for s, p in self._pending.items()]
        self._pending.clear()
        return out

    def _take(self, pending: _Pending, chunk: bytes) -> None:
        room = self.max_line_bytes - len(pending.data)
        if room > 0:
            pending.data += chunk[:room]
        pending.cut += max(0, len(chunk) - max(room, 0))

    @staticmethod
    def _line(stream: str, p: _Pending, *, complete: bool) -> LogLine:
        # Incremental decode without final: a character cut in half by the bound is left
        # out rather than turned into a replacement character.
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        text = decoder.decode(bytes(p.data), final=not p.cut)
        return LogLine(p.ts_ns, p.read_ns, stream, text, p.cut, complete)
