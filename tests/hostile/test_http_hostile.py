"""Item 17: a connection is bounded before it is a request — TLS handshake, header and
idle time, and connections per source — with raw sockets on loopback. Long-polls keep
their own documented bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.testing import RunningHub, start_hub

HANDSHAKE_S = 1.0
HEADER_S = 1.5
KEEPALIVE_S = 1.0
PER_SOURCE = 4
SLACK_S = 3.0  # a loaded CI machine


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    running = start_hub(
        tmp_path_factory.mktemp("hub"),
        sections={
            "server": {
                "tls_handshake_timeout_s": HANDSHAKE_S,
                "header_timeout_s": HEADER_S,
                "keepalive_timeout_s": KEEPALIVE_S,
                "max_connections_per_source": PER_SOURCE,
            },
            "limits": {"long_poll_max_wait_s": 2 * HEADER_S + KEEPALIVE_S},
        },
    )
    yield running
    assert running.stop() == 0, running.log()[-3000:]


async def _closed_within(reader: asyncio.StreamReader, bound: float) -> float:
    """Return how long the server took to close; fail if it kept the connection."""
    started = time.monotonic()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while await asyncio.wait_for(reader.read(65536), bound):
            pass
    return time.monotonic() - started


async def test_tls_client_that_sends_nothing_is_closed_within_the_handshake_bound(
    hub: RunningHub,
) -> None:
    reader, writer = await asyncio.open_connection(hub.host, hub.port)  # plain TCP, silent
    try:
        took = await _closed_within(reader, HANDSHAKE_S + SLACK_S)
    finally:
        writer.close()
    assert took <= HANDSHAKE_S + SLACK_S


async def _tls(hub: RunningHub) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(hub.host, hub.port, ssl=hub.ssl_context())


async def test_header_trickler_is_closed_within_the_header_bound(hub: RunningHub) -> None:
    reader, writer = await _tls(hub)
    started = time.monotonic()
    closed = asyncio.ensure_future(_closed_within(reader, 60))
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for i in range(200):  # one header line every 0.1 s: never a complete request
            if closed.done():
                break
            writer.write(f"X-Trickle-{i}: {'a' * 10}\r\n".encode())
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(0.1)
        await asyncio.wait_for(closed, SLACK_S)
    finally:
        closed.cancel()
        writer.close()
    assert time.monotonic() - started <= HEADER_S + SLACK_S


async def test_idle_kept_alive_connection_is_closed(hub: RunningHub) -> None:
    reader, writer = await _tls(hub)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        took = await _closed_within(reader, KEEPALIVE_S + HEADER_S + SLACK_S)
    finally:
        writer.close()
    assert took <= KEEPALIVE_S + HEADER_S + SLACK_S


async def _healthz(hub: RunningHub) -> dict[str, object]:
    status, body = await hub.request("GET", "/healthz")
    assert status == 200
    return dict(body)


async def _refused(hub: RunningHub) -> bool:
    """Return True if a new TLS connection is closed before it can answer a request."""
    try:
        reader, writer = await asyncio.wait_for(_tls(hub), 10)
    except (ConnectionError, ssl.SSLError, OSError):
        return True
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        return not await asyncio.wait_for(reader.read(100), 10)
    except (ConnectionError, ssl.SSLError):
        return True
    finally:
        writer.close()


async def test_connection_over_the_per_source_cap_is_refused_while_n_are_held(
    hub: RunningHub,
) -> None:
    held = [await _tls(hub) for _ in range(PER_SOURCE)]
    try:
        assert await _refused(hub)
    finally:
        for _, writer in held:
            writer.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the slots are released when they close
        with contextlib.suppress(AssertionError, OSError, ConnectionError):
            health = await _healthz(hub)
            connections = health["connections"]
            assert isinstance(connections, dict)
            assert connections["refused_per_source"] >= 1
            return
        await asyncio.sleep(0.1)
    raise AssertionError("a new connection was still refused after the held ones closed")


async def test_long_poll_keeps_its_own_bound_beyond_the_header_timeout(
    hub: RunningHub, tmp_path: Path
) -> None:
    device = await hub.enroll(await hub.create_token(), tmp_path / "d")
    wait = 2 * HEADER_S
    started = time.monotonic()
    status, _ = await hub.request(
        "GET", f"/v1/target?after=0&wait={wait}", ssl_context=device.ssl_context()
    )
    assert status == 204
    # the hub grants the wait shortened by up to limits.long_poll_jitter (0.25): still
    # well past the header timeout
    assert time.monotonic() - started >= 0.75 * wait - 0.1 > HEADER_S


async def test_body_trickler_gets_408_within_the_body_bound(tmp_path: Path) -> None:
    body_s = 1.0
    trickle_hub = start_hub(tmp_path / "hub", sections={"server": {"body_timeout_s": body_s}})
    try:
        reader, writer = await _tls(trickle_hub)
        head = (
            "POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 60000\r\n\r\n"
        )
        writer.write(head.encode() + b'{"token": "')
        started = time.monotonic()
        answer = asyncio.ensure_future(reader.read(65536))
        for _ in range(200):  # a byte every 0.1 s: the body would take hours
            if answer.done():
                break
            writer.write(b"a")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(0.1)
        reply = await asyncio.wait_for(answer, SLACK_S)
        took = time.monotonic() - started
        writer.close()
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"server.body_timeout_s" in reply
        assert body_s <= took <= body_s + SLACK_S
    finally:
        assert trickle_hub.stop() == 0, trickle_hub.log()[-3000:]
