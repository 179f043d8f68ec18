"""Bounds on a connection before it is a request: TLS handshake, header and idle time,
and connections per source.

aiohttp bounds none of these on a fresh connection (its keep-alive timer starts after
the first response), so a client that connected and sent nothing, or trickled header
lines, held a connection and its buffers indefinitely. ``GuardedSite`` listens with
``ssl_handshake_timeout`` = ``server.tls_handshake_timeout_s`` and serves each
connection through ``GuardedConnection``: once TLS is up it counts the connection
against its source (over ``server.max_connections_per_source`` it is closed at once),
hands it to aiohttp's request handler, and closes it if a request's headers are not
complete within ``server.header_timeout_s`` (``connection_middleware`` marks a request
started and answered; after a response the next request must start within
``server.keepalive_timeout_s`` plus the header bound). A request in progress — a
long-poll included — is bounded by its own handler (``GET /v1/target?wait=S`` by
``limits.long_poll_max_wait_s``).

The per-source count starts after the handshake (the loop gives the protocol its peer
only then); connections still in their handshake are bounded by the handshake time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from hub.config import ServerConfig

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConnectionGuard:
    """Per-source connection counts and the counters of every bound reached."""

    def __init__(self, config: ServerConfig, ssl_context: ssl.SSLContext | None) -> None:
        self.config, self.ssl_context = config, ssl_context
        self.handler_factory: Callable[[], asyncio.Protocol] | None = None
        self._per_source: dict[str, int] = {}
        self.counters = dict.fromkeys(
            (
                "refused_per_source",
                "header_timeouts",
                "idle_timeouts",
                "handshake_failures",
                "accept_errors",
            ),
            0,
        )

    def protocol(self) -> GuardedConnection:
        """Return the protocol of a newly accepted connection (the server's factory)."""
        return GuardedConnection(self)

    def admit(self, peer: str) -> bool:
        """Count a new connection of ``peer``; False if it is over its source's cap."""
        count = self._per_source.get(peer, 0)
        if count >= self.config.max_connections_per_source:
            self.counters["refused_per_source"] += 1
            return False
        self._per_source[peer] = count + 1
        return True

    def release(self, peer: str) -> None:
        """Forget one connection of ``peer``."""
        count = self._per_source.get(peer, 0) - 1
        if count > 0:
            self._per_source[peer] = count
        else:
            self._per_source.pop(peer, None)

    def stats(self) -> dict[str, int]:
        """Return open connections, sources and the counters."""
        return {
            "open": sum(self._per_source.values()),
            "sources": len(self._per_source),
            **self.counters,
        }


class GuardedConnection(asyncio.Protocol):
    """One connection: admitted per source, then aiohttp's handler with a deadline."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard
        self._peer: str | None = None
        self._raw: asyncio.Transport | None = None
        self._inner: Any = None  # aiohttp's RequestHandler once the connection is ready
        self._timer: asyncio.TimerHandle | None = None
        self._active = 0  # requests whose headers are complete and not yet answered

    # ---- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) else "-"
        self._raw = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        if not self._guard.admit(peer):
            transport.abort()  # type: ignore[attr-defined]
            return
        self._peer = peer
        self._attach(self._raw)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is None:
            return None
        result: bool | None = self._inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._peer is not None:
            self._guard.release(self._peer)
            self._peer = None
        if self._inner is not None:
            inner, self._inner = self._inner, None
            inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    # ---- our side -----------------------------------------------------------------

    def _attach(self, transport: asyncio.Transport) -> None:
        factory = self._guard.handler_factory
        assert factory is not None, "ConnectionGuard.handler_factory is not set"
        self._inner = factory()
        self._inner.connection_made(transport)
        self._arm(self._guard.config.header_timeout_s, "header_timeouts")

    def request_started(self) -> None:
        """Mark a request's headers complete: its handler bounds it from here."""
        self._active += 1
        self._cancel_timer()

    def request_finished(self) -> None:
        """Mark a request answered: the next one must start in the idle + header bound."""
        self._active -= 1
        if self._active == 0 and self._inner is not None:
            config = self._guard.config
            self._arm(config.keepalive_timeout_s + config.header_timeout_s, "idle_timeouts")

    def _arm(self, delay: float, counter: str) -> None:
        self._cancel_timer()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(delay, self._expire, counter)

    def _expire(self, counter: str) -> None:
        self._timer = None
        if self._active == 0:
            self._guard.counters[counter] += 1
            self.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def abort(self) -> None:
        """Close the connection at once (its connection_lost releases the source)."""
        if self._raw is not None:
            self._raw.abort()


@web.middleware
async def connection_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tell the connection's guard that a request started and when it is answered."""
    transport = request.transport
    conn = transport.get_protocol() if transport is not None else None
    if not isinstance(conn, GuardedConnection):
        return await handler(request)  # served without the guard (tests, other runners)
    conn.request_started()
    try:
        return await handler(request)
    finally:
        conn.request_finished()


class GuardedSite(web.BaseSite):
    """A TCP (TLS) site whose connections go through a ConnectionGuard.

    With TLS, at most ``max_handshakes`` handshakes run at once: the site accepts a
    connection only when a handshake slot is free, so the rest wait in the kernel's
    listen backlog at no cost to us. A fleet reconnecting at once (a hub restart) then
    cannot fill one event-loop turn with thousands of handshake steps (~1 ms of CPU
    each) and stall every established connection's requests behind them.
    """

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        *,
        backlog: int = 128,
        max_handshakes: int = 32,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host_port = (host, port)
        self._guard = guard
        self._max_handshakes = max_handshakes
        self._reuse_port = reuse_port  # SO_REUSEPORT: one of several processes (hub.workers)

    @property
    def name(self) -> str:
        scheme = "https" if self._guard.ssl_context else "http"
        return f"{scheme}://{self._host_port[0]}:{self._host_port[1]}"

    async def start(self) -> None:
        """Listen; each accepted connection is admitted and bounded by the guard."""
        await super().start()
        server = self._runner.server
        assert server is not None
        self._guard.handler_factory = server
        loop = asyncio.get_running_loop()
        if self._guard.ssl_context is None:
            self._server = await loop.create_server(
                self._guard.protocol,
                *self._host_port,
                backlog=self._backlog,
                reuse_address=True,
                reuse_port=self._reuse_port or None,
            )
            return
        self._server = HandshakeBoundedServer(
            self._guard,
            listen_sockets(*self._host_port, self._backlog, reuse_port=self._reuse_port),
            self._max_handshakes,
        )


def listen_sockets(
    host: str, port: int, backlog: int, *, reuse_port: bool = False
) -> list[socket.socket]:
    """Bind and listen on every address of ``host`` (non-blocking, SO_REUSEADDR; with
    ``reuse_port`` SO_REUSEPORT too: the kernel spreads connections over the processes)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:  # one port for every address
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class HandshakeBoundedServer:
    """Accept loops that start a TLS handshake only while fewer than N are running."""

    def __init__(
        self, guard: ConnectionGuard, sockets: list[socket.socket], max_handshakes: int
    ) -> None:
        self._guard = guard
        self.sockets = sockets
        self._slots = asyncio.Semaphore(max_handshakes)
        self._handshakes: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        self._accepting = [loop.create_task(self._accept(sock)) for sock in sockets]

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE and the like: count, breathe, go on
                self._slots.release()
                self._guard.counters["accept_errors"] += 1
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._handshake(conn))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                self._guard.protocol,
                conn,
                ssl=self._guard.ssl_context,
                ssl_handshake_timeout=self._guard.config.tls_handshake_timeout_s,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            self._guard.counters["handshake_failures"] += 1
            conn.close()
        finally:
            self._slots.release()

    def handshakes(self) -> int:
        """Return the TLS handshakes in progress."""
        return len(self._handshakes)

    def close(self) -> None:
        """Stop accepting, abandon handshakes in progress and close the listening sockets."""
        for task in (*self._accepting, *self._handshakes):
            task.cancel()
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        """Wait until the accept loops have ended."""
        await asyncio.gather(*self._accepting, return_exceptions=True)
