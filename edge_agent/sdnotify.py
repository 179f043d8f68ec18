"""systemd's readiness protocol (Type=notify): one datagram to $NOTIFY_SOCKET, no dependency.

Shared by the agent and the hub.
"""

from __future__ import annotations

import os
import socket


def sd_notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to systemd if it is listening; return whether sent."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError:
        return False
    return True


def watchdog_interval_s(environ: dict[str, str] | None = None) -> float | None:
    """Return how often to send ``WATCHDOG=1`` (half of ``WatchdogSec=``), or None if off.

    systemd sets ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (the main PID: a onefile binary's
    bootloader, the agent's parent, with ``NotifyAccess=all``).
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid not in (str(os.getpid()), str(os.getppid()))):
        return None
    return usec / 2e6
