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
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from hub.config import ServerConfig

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConnectionGuard:
    """Per-source connection counts and the counters of every bound reached."""

    def __init__(self, config: ServerConfig, ssl_context: ssl.SSLContext | None) -> None:
        self.config, self.ssl_context = config, ssl_context
        self.handler_factory: Callable[[], asyncio.Protocol] | None = None
        self._per_source: dict[str, int] = {}
        self.counters = dict.fromkeys(("refused_per_source", "header_timeouts", "idle_timeouts"), 0)

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
    """A TCP (TLS) site whose connections go through a ConnectionGuard."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        *,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host_port = (host, port)
        self._guard = guard

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
        self._server = await loop.create_server(
            self._guard.protocol,
            *self._host_port,
            ssl=self._guard.ssl_context,
            ssl_handshake_timeout=self._guard.config.tls_handshake_timeout_s,
            backlog=self._backlog,
            reuse_address=True,
        )
