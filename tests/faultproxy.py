"""A fault-injecting TCP proxy of our own between the agent and the hub (loopback only).

Modes, switchable at any time with ``proxy.mode = ...`` (and ``proxy.delay_ms``):

    pass            forward both ways
    cut             refuse new connections (RST on accept) and reset the open ones
    blackhole       accept and read, forward nothing (the peer sees a silent hang)
    delay           forward after ``delay_ms`` per chunk
    reset_request   forward part of the client's next chunk, then reset both sides
    reset_response  forward the request; reset mid-way through the next response chunk

Resets are real TCP RSTs: SO_LINGER with a zero timeout, then close.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from typing import Literal

Mode = Literal["pass", "cut", "blackhole", "delay", "reset_request", "reset_response"]
MODES: tuple[Mode, ...] = ("pass", "cut", "blackhole", "delay", "reset_request", "reset_response")
CHUNK = 64 * 1024


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close the connection with a TCP RST (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Conn:
    """One proxied connection: two pumps and the writers to reset."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        _rst(self.client)
        _rst(self.upstream)


class FaultProxy:
    """TCP proxy on 127.0.0.1:0 forwarding to ``(host, port)`` with runtime fault modes."""

    def __init__(self, host: str, port: int, *, rng: random.Random | None = None) -> None:
        self.target = (host, port)
        self.mode: Mode = "pass"
        self.delay_ms = 0
        self.rng = rng or random.Random(0)
        self.port = 0
        self.stats = {"accepted": 0, "refused": 0, "resets": 0, "bytes_up": 0, "bytes_down": 0}
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()

    async def start(self) -> FaultProxy:
        """Listen on an ephemeral loopback port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        """Return the https URL agents should use."""
        return f"https://127.0.0.1:{self.port}"

    def set_mode(self, mode: Mode, *, delay_ms: int = 0) -> None:
        """Switch mode; ``cut`` also resets every open connection."""
        self.mode = mode
        self.delay_ms = delay_ms
        if mode == "cut":
            self.reset_all()

    def reset_all(self) -> None:
        """Reset every open connection."""
        for conn in list(self._conns):
            conn.reset()
            self.stats["resets"] += 1

    async def close(self) -> None:
        """Stop listening and reset what is open."""
        if self._server is not None:
            self._server.close()
        self.reset_all()
        for conn in list(self._conns):
            for t in conn.tasks:
                t.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "cut":
            self.stats["refused"] += 1
            _rst(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _rst(writer)
            return
        self.stats["accepted"] += 1
        conn = _Conn(writer, up_writer)
        self._conns.add(conn)
        conn.tasks = [
            asyncio.create_task(self._pump(conn, reader, up_writer, upstream=True)),
            asyncio.create_task(self._pump(conn, up_reader, writer, upstream=False)),
        ]
        try:
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        finally:
            self._conns.discard(conn)
            conn.reset()

    async def _pump(
        self,
        conn: _Conn,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        """Copy one direction, applying the current mode to every chunk."""
        try:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    with contextlib.suppress(OSError):
                        dst.write_eof()
                    return
                mode = self.mode
                if mode == "blackhole":
                    continue
                if mode == "cut":
                    conn.reset()
                    return
                if mode == "delay" and self.delay_ms:
                    await asyncio.sleep(self.delay_ms / 1000)
                if (mode == "reset_request" and upstream) or (
                    mode == "reset_response" and not upstream
                ):
                    dst.write(data[: self.rng.randrange(len(data))])
                    with contextlib.suppress(OSError, ConnectionError):
                        await dst.drain()
                    self.stats["resets"] += 1
                    conn.reset()
                    return
                dst.write(data)
                self.stats["bytes_up" if upstream else "bytes_down"] += len(data)
                await dst.drain()
        except (OSError, ConnectionError):
            conn.reset()
