"""Run a real edge-agent process for a test and talk to its local API.

``EDGE_AGENT_BIN`` names a frozen binary to run instead of ``python -m edge_agent``, so
the same scenarios check the packaged agent.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent


def agent_command() -> list[str]:
    """Return the command that starts an agent (the frozen binary if EDGE_AGENT_BIN is set)."""
    binary = os.environ.get("EDGE_AGENT_BIN")
    return [binary] if binary else [sys.executable, "-m", "edge_agent"]


def toml_value(value: Any) -> str:
    """Render a scalar, list or (inline-table) dict as TOML."""
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    return json.dumps(value)


def write_config(path: Path, **sections: Any) -> Path:
    """Write a TOML config from nested dicts of scalars."""
    lines: list[str] = []
    tables = {k: v for k, v in sections.items() if isinstance(v, dict)}
    for key, value in sections.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {json.dumps(value)}")
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class AgentProcess:
    """One agent process with its own data dir, socket and config."""

    def __init__(self, device_id: str | None, data_dir: Path, **overrides: Any) -> None:
        self.device_id = device_id
        self.data_dir = data_dir
        # Unix socket paths are limited to 108 bytes: keep it short and outside tmp_path.
        self.sock_dir = Path(tempfile.mkdtemp(prefix="ea-"))
        self.socket = self.sock_dir / "api.sock"
        self.log_path = data_dir / "agent.log"
        sections: dict[str, Any] = {
            "data_dir": str(data_dir),
            "log_level": "DEBUG",
            "api": {"socket": str(self.socket)},
            "supervisor": {
                "backoff_base_s": 0.5,
                "backoff_cap_s": 4.0,
                "stable_after_s": 30.0,
                "safety_interval_s": 5.0,
                "crash_loop_exits": 50,
            },
            "docker": {"disk_reserve_mb": 0},
        }
        if device_id is not None:
            sections["device_id"] = device_id
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(sections.get(key), dict):
                sections[key] = {**sections[key], **value}
            else:
                sections[key] = value
        data_dir.mkdir(parents=True, exist_ok=True)
        self.config = write_config(data_dir / "agent.toml", **sections)
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout_s: float = 20.0) -> AgentProcess:
        """Start the process and wait until its API answers."""
        log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *agent_command(),
            "--config",
            str(self.config),
            "run",
            stdout=log,
            stderr=log,
            cwd=str(REPO),
            # Its own process group: a frozen onefile agent is a bootloader plus a child,
            # and kill -9 must take both, as systemd's control-group kill does.
            start_new_session=True,
        )
        log.close()
        async with asyncio.timeout(timeout_s):
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"agent exited {self.proc.returncode}:\n{self.log()}")
                try:
                    status, _ = await self.call("GET", "/v1/status")
                    if status == 200:
                        return self
                except (aiohttp.ClientError, OSError):
                    pass
                await asyncio.sleep(0.1)

    def log(self) -> str:
        """Return the tail of the agent's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-60:])
        except FileNotFoundError:
            return ""

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call the local API; return (status, JSON body)."""
        conn = aiohttp.UnixConnector(path=str(self.socket))
        async with (
            aiohttp.ClientSession(connector=conn) as session,
            session.request(method, f"http://agent{path}", json=body) as resp,
        ):
            return resp.status, await resp.json(content_type=None)

    async def status(self) -> dict[str, Any]:
        """Return GET /v1/status."""
        code, body = await self.call("GET", "/v1/status")
        assert code == 200, body
        return body

    async def stop(self) -> int | None:
        """Stop with SIGTERM and wait; return the exit code."""
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(20):
                return await self.proc.wait()
        except TimeoutError:
            _dump_stacks(self.proc.pid)  # why it did not stop: shown with the failure
            os.killpg(self.proc.pid, signal.SIGKILL)
            return await self.proc.wait()

    async def kill(self) -> None:
        """Kill -9, as a power cut or OOM kill would."""
        if self.proc is not None and self.proc.returncode is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()

    def cleanup(self) -> None:
        """Remove the socket directory."""
        shutil.rmtree(self.sock_dir, ignore_errors=True)


def _dump_stacks(pid: int) -> None:
    """Print the Python stacks of a process that does not stop (py-spy, when installed)."""
    spy = shutil.which("py-spy")
    if spy is None:
        return
    done = subprocess.run(
        [spy, "dump", "--pid", str(pid), "--locals"], capture_output=True, text=True, timeout=30
    )
    print(f"agent {pid} did not stop within 20 s; its stacks:\n{done.stdout}{done.stderr}")
