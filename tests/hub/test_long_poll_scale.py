"""Long-polls at scale: per-poll state, jittered expiry, the held-poll bound, come back later.

The pure parts (the wait granted, the Retry-After drawn, the agent's delay) are tables;
the notifier runs on the test's own loop; the bound and the shutdown answer are checked on
real hub processes of their own (the session hub must keep its default limits).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from edge_agent.errors import HubRefused, HubUnreachable
from edge_agent.sync import HubClient, poll_delay_s
from hub.notify import TargetNotifier, granted_wait, retry_after_s
from hub.testing import DeviceIdentity, RunningHub, start_hub


@pytest.mark.parametrize(
    ("requested", "max_wait", "jitter", "draw", "granted"),
    [
        (30.0, 60.0, 0.25, 0.0, 30.0),  # no draw: the wait asked for
        (30.0, 60.0, 0.25, 0.5, 26.25),
        (30.0, 60.0, 0.25, 0.999999, 22.5000075),  # never below (1 - jitter) of it
        (3600.0, 60.0, 0.25, 0.0, 60.0),  # capped first, then jittered
        (3600.0, 60.0, 0.25, 0.5, 52.5),
        (30.0, 60.0, 0.0, 0.9, 30.0),  # jitter 0: exactly the wait
        (0.0, 60.0, 0.25, 0.7, 0.0),  # wait=0: answer at once
    ],
)
def test_granted_waits_are_jittered_within_bounds(requested, max_wait, jitter, draw, granted):
    assert granted_wait(requested, max_wait, jitter, draw) == pytest.approx(granted)


def test_granted_waits_of_polls_opened_together_spread_over_the_jitter():
    waits = [granted_wait(30.0, 60.0, 0.25, i / 1000) for i in range(1000)]
    assert min(waits) >= 22.5 and max(waits) <= 30.0
    assert max(waits) - min(waits) > 7.0  # spread, not one instant for the whole fleet


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 1), (0.5, 16), (0.999, 30), (0.02, 2)])
def test_retry_after_is_drawn_within_bounds(draw, expected):
    assert retry_after_s(1.0, 30.0, draw) == expected


@pytest.mark.parametrize(
    ("backoff", "asked", "cap", "delay"),
    [
        (0.7, None, 300.0, 0.7),  # no Retry-After: the agent's own backoff
        (0.7, 17.0, 300.0, 17.0),  # the hub asked for longer: its (jittered) delay
        (40.0, 17.0, 300.0, 40.0),  # the backoff is longer already
        (0.7, 900.0, 300.0, 300.0),  # never beyond the agent's cap
    ],
)
def test_long_poll_waits_as_long_as_the_hub_asks(backoff, asked, cap, delay):
    exc = HubUnreachable("hub asked", retry_after_s=asked)
    assert poll_delay_s(backoff, exc, cap) == delay
    assert poll_delay_s(backoff, HubRefused("no", status=403), cap) == min(cap, backoff)


async def test_a_wake_up_reaches_only_the_devices_poll():
    notifier = TargetNotifier()
    loop = asyncio.get_running_loop()
    with notifier.subscribe("d1") as one, notifier.subscribe("d2") as two:
        notifier.notify("d1")
        assert await one.wait_until(loop.time() + 5)
        assert not two.is_set()
        assert notifier.waiting() == 1  # d2 still waits
        assert not await two.wait_until(loop.time() + 0.05)  # its own deadline, not d1's wake
    assert notifier.stats()["held"] == 0 and notifier.waiting() == 0


async def test_a_held_poll_holds_no_task_of_its_own():
    """A held poll is one future and one timer, awaited by the request's task (no wait_for)."""
    notifier = TargetNotifier()
    loop = asyncio.get_running_loop()
    woken: list[bool] = []

    async def poll() -> None:
        with notifier.subscribe("d1") as waiter:
            woken.append(await waiter.wait_until(loop.time() + 30))

    before = len(asyncio.all_tasks())
    task = asyncio.create_task(poll())
    await asyncio.sleep(0.01)  # the poll's task runs up to its await
    assert notifier.stats()["held"] == 1
    assert len(asyncio.all_tasks()) == before + 1  # the poll's own task, nothing else
    notifier.notify("d1")
    await asyncio.wait_for(task, 5)
    assert woken == [True] and notifier.stats()["held"] == 0


async def test_a_cancelled_poll_forgets_its_waiter():
    notifier = TargetNotifier()
    loop = asyncio.get_running_loop()

    async def poll() -> None:
        with notifier.subscribe("d1") as waiter:
            await waiter.wait_until(loop.time() + 30)

    task = asyncio.create_task(poll())
    await asyncio.sleep(0.01)
    assert notifier.waiting() == 1
    task.cancel()  # the client went away: aiohttp cancels the handler
    with pytest.raises(asyncio.CancelledError):
        await task
    assert notifier.waiting() == 0 and notifier.stats()["held"] == 0


@pytest.fixture
def small_hub(tmp_path: Path) -> Iterator[RunningHub]:
    limits = {"max_long_polls": 1, "long_poll_retry_max_s": 5, "long_poll_max_wait_s": 30}
    running = start_hub(tmp_path / "hub", sections={"limits": limits})
    yield running
    running.stop()


async def _enroll(hub: RunningHub, directory: Path) -> DeviceIdentity:
    return await hub.enroll(await hub.create_token(), directory)


async def _poll(device: DeviceIdentity, url: str) -> tuple[int, str | None]:
    connector = aiohttp.TCPConnector(ssl=device.ssl_context())
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url + "/v1/target?after=0&wait=20", timeout=aiohttp.ClientTimeout(40)) as r,
    ):
        await r.read()
        return r.status, r.headers.get("Retry-After")


async def test_polls_over_max_long_polls_are_answered_503_with_retry_after(
    small_hub: RunningHub, tmp_path: Path
):
    first = await _enroll(small_hub, tmp_path / "a")
    second = await _enroll(small_hub, tmp_path / "b")
    held = asyncio.create_task(_poll(first, small_hub.url))
    await small_hub.wait_long_polls(1)
    status, retry_after = await asyncio.wait_for(_poll(second, small_hub.url), 10)
    assert status == 503 and retry_after is not None and 1 <= int(retry_after) <= 5
    client = HubClient(small_hub.url, second.ssl_context())
    try:
        with pytest.raises(HubUnreachable) as caught:
            await client.wait_target(0, 20)
    finally:
        await client.close()
    assert caught.value.retry_after_s is not None and 1 <= caught.value.retry_after_s <= 5
    _, health = await small_hub.request("GET", "/healthz")
    assert health["long_poll"]["refused"] == 2 and health["long_poll"]["max_held"] == 1
    assert not held.done()
    held.cancel()


async def test_held_polls_are_told_to_come_back_later_on_shutdown(
    small_hub: RunningHub, tmp_path: Path
):
    device = await _enroll(small_hub, tmp_path / "a")
    held = asyncio.create_task(_poll(device, small_hub.url))
    await small_hub.wait_long_polls(1)
    stopper = threading.Thread(target=small_hub.stop)
    stopper.start()
    status, retry_after = await asyncio.wait_for(held, 15)
    await asyncio.to_thread(stopper.join)
    assert status == 204 and retry_after is not None and 1 <= int(retry_after) <= 5


def _get_healthz_over_tls(hub: RunningHub) -> ssl.SSLSocket:
    context = hub.ssl_context()
    raw = socket.create_connection(("127.0.0.1", hub.port), timeout=10)
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
    while sock.recv(65536):  # to the end: TLS 1.3 tickets arrive after the handshake
        pass
    return sock


def test_the_hub_issues_no_tls_session_tickets(hub: RunningHub):
    sock = _get_healthz_over_tls(hub)
    try:
        assert sock.version() == "TLSv1.3"
        assert sock.session is not None and not sock.session.has_ticket
    finally:
        sock.close()


async def test_tls_handshakes_beyond_the_bound_wait_for_a_free_slot(tmp_path: Path):
    """With max_tls_handshakes=1 a connection stuck before its ClientHello holds the only
    slot: the next client is accepted only when that handshake times out."""
    sections = {"limits": {"max_tls_handshakes": 1}, "server": {"tls_handshake_timeout_s": 1.5}}
    small = start_hub(tmp_path / "hub", sections=sections)
    try:
        _, body = await small.request("GET", "/healthz")
        failures = body["connections"]["handshake_failures"]
        stuck = socket.create_connection(("127.0.0.1", small.port))  # sends nothing
        await asyncio.sleep(0.2)  # accepted: it holds the slot
        started = time.monotonic()
        status, body = await small.request("GET", "/healthz", timeout_s=10)
        waited = time.monotonic() - started
        stuck.close()
        assert status == 200 and waited >= 1.0  # not before the stuck handshake's bound
        assert body["connections"]["handshake_failures"] == failures + 1
    finally:
        small.stop()
