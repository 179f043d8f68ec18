"""Readiness for systemd (Type=notify): the hub says READY=1 once it listens, STOPPING=1 at stop."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.sdnotify import sd_notify
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
