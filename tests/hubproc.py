"""A real hub process for the sync tests: start, kill -9, restart, inspect.

Built on the hub's own helper (``hub.testing.start_hub``) with a fixed loopback port and
work directory, so a restart after ``kill()`` resumes the same hub. Operator calls here
are synchronous (usable from producer threads and plain helpers); stored events are read
straight from the hub's database (tests/hubdb.py: SQLite or PostgreSQL).
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from hubdb import run_sql

from hub.testing import RunningHub, start_hub


def free_port() -> int:
    """Return a loopback TCP port that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HubProcess:
    """One hub (``hub.testing.start_hub``) and its restarts on a fixed port and work dir."""

    def __init__(
        self,
        work_dir: Path,
        *,
        port: int | None = None,
        sections: dict[str, dict[str, Any]] | None = None,
        **env: str,
    ) -> None:
        self.work_dir = work_dir
        self.port = port or free_port()
        self.sections = sections  # hub.toml additions (``start_hub``'s ``sections``)
        self.env = env
        self.running: RunningHub | None = None

    @property
    def url(self) -> str:
        """Return the hub's base URL."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        """Return the hub's data directory."""
        return self.work_dir / "data"

    @property
    def ca_path(self) -> Path:
        """Return the hub CA file."""
        return self.data_dir / "ca.pem"

    def start(self) -> HubProcess:
        """Start the process (again) and wait until it accepts connections."""
        self.running = start_hub(
            self.work_dir, port=self.port, sections=self.sections, env=self.env
        )
        return self

    def kill(self) -> None:
        """SIGKILL the process (no shutdown of any kind) and reap it."""
        if self.running is not None:
            self.running.kill()
        self.running = None

    def stop(self) -> None:
        """Stop the process gracefully."""
        if self.running is not None:
            self.running.stop()
        self.running = None

    # ---- operator API ------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def _get(self, path: str) -> Any:
        return self._call("GET", path, None)

    def _call(self, method: str, path: str, body: Any) -> Any:
        token = (self.data_dir / "admin.token").read_text().strip()  # survives restarts
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(req, context=self._ssl(), timeout=10) as resp:
            raw = resp.read()
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
        rows = run_sql(
            self.work_dir,
            "SELECT seq, kind, payload FROM events WHERE device_id = ? ORDER BY seq",
            device_id,
        )
        return [(s, k, json.loads(p)) for s, k, p in rows]


def release_doc(version: str = "1") -> dict[str, Any]:
    """Return a minimal release document."""
    return {
        "name": "app",
        "version": version,
        "services": [{"name": "web", "image": "edgefleet-test/busybox:1"}],
    }
