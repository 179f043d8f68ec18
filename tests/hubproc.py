"""A real ``edge-hub serve`` process for the sync tests: start, kill -9, restart, inspect.

The hub runs as a child process on a fixed loopback port and data directory, so a
restart after ``kill()`` resumes the same hub. Operator calls use the admin token from
the data directory; stored events are read straight from the hub's SQLite file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    """Return a loopback TCP port that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HubProcess:
    """One hub process (and its restarts) on ``127.0.0.1:port`` with ``data_dir``."""

    def __init__(self, data_dir: Path, *, port: int | None = None, **env: str) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.env = {
            **os.environ,
            "EDGE_HUB_SERVER_DATA_DIR": str(data_dir),
            "EDGE_HUB_SERVER_PORT": str(self.port),
            "EDGE_HUB_SERVER_HOST": "127.0.0.1",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"

    @property
    def url(self) -> str:
        """Return the hub's base URL."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_path(self) -> Path:
        """Return the hub CA file."""
        return self.data_dir / "ca.pem"

    def start(self, timeout_s: float = 20.0) -> HubProcess:
        """Start the process and wait until it serves ``GET /v1/ca``."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hub.cli", "serve", "--log-level", "WARNING"],
                env=self.env,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}: {self.tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                if self.ca_path.exists():
                    self._get("/v1/ca", auth=False)
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"hub did not start in {timeout_s}s: {self.tail()}")

    def kill(self) -> None:
        """SIGKILL the process (no shutdown of any kind) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        """Stop the process gracefully."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def tail(self, n: int = 3000) -> str:
        """Return the end of the hub's log."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    # ---- operator API ------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def _get(self, path: str, *, auth: bool = True) -> Any:
        return self._call("GET", path, None, auth=auth)

    def _call(self, method: str, path: str, body: Any, *, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            token = (self.data_dir / "admin.token").read_text().strip()
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(req, context=self._ssl(), timeout=10) as resp:
            raw = resp.read()
        if path == "/v1/ca":
            return raw.decode()
        return json.loads(raw) if raw else None

    def create_token(self, uses: int = 1, **tags: str) -> str:
        """Create an enrollment token; return its secret."""
        doc = self._call("POST", "/api/v1/enrollment-tokens", {"uses": uses, "tags": tags})
        return str(doc["token"])

    def set_target(self, device_id: str, release: dict[str, Any], **kw: Any) -> Any:
        """Give a device a new target (the hub signs it)."""
        return self._call("POST", f"/api/v1/devices/{device_id}/target", {"release": release, **kw})

    def device(self, device_id: str) -> Any:
        """Return the operator view of one device."""
        return self._get(f"/api/v1/devices/{device_id}")

    def disable(self, device_id: str) -> Any:
        """Disable a device."""
        return self._call("POST", f"/api/v1/devices/{device_id}/disable", {})

    # ---- stored data -------------------------------------------------------------

    def events(self, device_id: str) -> list[tuple[int, str, dict[str, Any]]]:
        """Return (seq, kind, payload) of every event the hub stored for a device."""
        db = sqlite3.connect(f"file:{self.data_dir / 'hub.db'}?mode=ro", uri=True, timeout=10)
        try:
            rows = db.execute(
                "SELECT seq, kind, payload FROM events WHERE device_id = ? ORDER BY seq",
                (device_id,),
            ).fetchall()
        finally:
            db.close()
        return [(s, k, json.loads(p)) for s, k, p in rows]


def release_doc(version: str = "1") -> dict[str, Any]:
    """Return a minimal release document."""
    return {
        "name": "app",
        "version": version,
        "services": [{"name": "web", "image": "edgefleet-test/busybox:1"}],
    }
