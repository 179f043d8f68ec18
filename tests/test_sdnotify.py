"""Readiness for systemd (Type=notify): the hub says READY=1 once it listens, STOPPING=1 at stop."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.sdnotify import sd_notify, watchdog_interval_s
from hub.testing import start_hub


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    """Yield a datagram socket standing in for systemd's notify socket."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    yield sock, path
    sock.close()


def test_sd_notify_sends_only_when_asked(
    notify_socket: tuple[socket.socket, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert sd_notify("READY=1") is True
    assert sock.recv(64) == b"READY=1"
    monkeypatch.setenv("NOTIFY_SOCKET", str(path.with_name("gone.sock")))
    assert sd_notify("READY=1") is False  # systemd gone: never an exception


def test_hub_notifies_ready_and_stopping(
    notify_socket: tuple[socket.socket, Path], tmp_path: Path
) -> None:
    sock, path = notify_socket
    hub = start_hub(tmp_path / "hub", env={"NOTIFY_SOCKET": str(path)})
    try:
        assert sock.recv(64) == b"READY=1"
    finally:
        assert hub.stop() == 0
    assert sock.recv(64) == b"STOPPING=1"


def test_watchdog_interval_is_half_of_watchdog_sec() -> None:
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "nonsense"}) is None


async def test_agent_feeds_the_systemd_watchdog(
    notify_socket: tuple[socket.socket, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real agent process pings WATCHDOG=1 (the stalled case: test_task_supervisor.py)."""
    import asyncio

    from agentproc import AgentProcess

    sock, path = notify_socket
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    agent = AgentProcess(
        "t-watchdog",
        tmp_path / "agent",
        docker={"url": "unix:///nonexistent/docker.sock"},
        logs={"enabled": True, "interval_s": 0.5},
        tasks={"heartbeat_grace_s": 1.0},
    )
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))  # inherited by the agent process
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    await agent.start()
    try:
        seen: list[bytes] = []
        async with asyncio.timeout(20):
            while seen.count(b"WATCHDOG=1") < 3:
                seen.append(await loop.sock_recv(sock, 64))
        assert b"READY=1" in seen
        status = await agent.status()
        assert status["tasks"]["watchdog"]["state"] == "running"
        assert set(status["tasks"]) >= {"reconciler", "events", "logs", "watchdog"}
    finally:
        await agent.stop()
        agent.cleanup()
