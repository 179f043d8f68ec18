"""The frozen x86_64 edge-agent: it builds, runs without Python, and does the agent's job.

The binary is built once per session with ``packaging/build.sh --if-stale``, which reuses
dist/'s binary when the manifest's inputs hash (sources, specs, pyproject) still matches,
so a warm run costs seconds. EDGE_AGENT_BIN=PATH tests a given binary instead.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "packaging"))
import speclib  # noqa: E402

MAX_BINARY_BYTES = 30 * 2**20
STOP_TIMEOUT_S = 30  # TimeoutStopSec= of systemd/edge-agent.service
# Never in the device binary: the hub and its stack, test and build tooling.
FORBIDDEN_MODULES = {"hub", "jinja2", "asyncpg", "prometheus_client", "tkinter", "pytest"}

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="Linux binaries only")


@functools.cache
def frozen(program: str) -> Path:
    """Return dist/'s onefile PROGRAM for this machine, built now if its inputs changed.

    Once per session whoever asks (tests/test_install.py uses it too).
    """
    proc = subprocess.run(
        [str(REPO / "packaging" / "build.sh"), "--program", program, "--if-stale"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = REPO / "dist" / speclib.artefact_name(program)
    assert path.is_file(), proc.stderr
    return path


def agent_binary() -> Path:
    """Return the onefile x86_64 agent: EDGE_AGENT_BIN, or dist/'s, rebuilt if stale."""
    given = os.environ.get("EDGE_AGENT_BIN")
    return Path(given) if given else frozen("edge-agent")


@pytest.fixture(scope="session")
def agent_bin() -> Path:
    """Return the onefile x86_64 agent binary."""
    return agent_binary()


@pytest.fixture(scope="session")
def manifest(agent_bin: Path) -> dict:
    """Return the build manifest written next to the binary."""
    path = agent_bin.with_name(agent_bin.name + ".manifest.json")
    assert path.exists(), f"no manifest next to {agent_bin}"
    return json.loads(path.read_text())


def _run(binary: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60):
    # A clean environment: the binary must not lean on this interpreter or its packages.
    base = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    return subprocess.run(
        [str(binary), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
    )


def test_version(agent_bin: Path) -> None:
    proc = _run(agent_bin, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"edge-agent {speclib.version()}"


def test_selftest_passes(agent_bin: Path, tmp_path: Path) -> None:
    proc = _run(agent_bin, "selftest", "--data-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "frozen" in lines[0]
    for check in ("store", "signing", "validation", "tls", "event-loop"):
        assert any(ln.startswith(f"ok   {check}:") for ln in lines), proc.stdout
    assert any(ln.split()[0] in ("ok", "skip") and "docker" in ln for ln in lines)
    assert lines[-1] == "selftest passed"
    assert list(tmp_path.iterdir()) == []  # it cleans up after itself


def test_selftest_fails_on_unusable_docker_socket(agent_bin: Path, tmp_path: Path) -> None:
    fake = tmp_path / "docker.sock"
    fake.write_text("not a socket")
    proc = _run(agent_bin, "selftest", env={"DOCKER_HOST": f"unix://{fake}"})
    assert proc.returncode == 1, proc.stdout
    assert any(ln.startswith("FAIL docker:") for ln in proc.stdout.splitlines()), proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("selftest FAILED")


def test_size_within_goal(agent_bin: Path) -> None:
    size = agent_bin.stat().st_size
    assert size <= MAX_BINARY_BYTES, f"{size / 2**20:.1f} MB > 30 MB"


def test_manifest_lists_python_and_packages(manifest: dict, agent_bin: Path) -> None:
    assert manifest["program"] == "edge-agent"
    assert manifest["python"].startswith("3.11.")
    for dist in ("aiodocker", "aiohttp", "aiosqlite", "cryptography", "pydantic", "uvloop"):
        assert dist in manifest["packages"], manifest["packages"]
    assert not FORBIDDEN_MODULES & set(manifest["top_level_modules"])
    assert len(manifest["inputs_sha256"]) == 64  # what --if-stale compares


def test_sha256sums_cover_the_binary(agent_bin: Path) -> None:
    sums = agent_bin.parent / "SHA256SUMS"
    assert sums.exists(), "no SHA256SUMS next to the binary"
    listed = dict(reversed(ln.split(None, 1)) for ln in sums.read_text().splitlines())
    assert listed[agent_bin.name] == hashlib.sha256(agent_bin.read_bytes()).hexdigest()


# ---- the frozen agent as a service: readiness and clean stop ---------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    """Return a datagram socket standing in for systemd's NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    yield sock, path
    sock.close()


def _wait_ready(proc: subprocess.Popen, sock: socket.socket, timeout: float) -> list[str]:
    messages: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            messages += sock.recv(4096).decode().split("\n")
        except TimeoutError:
            continue
        if "READY=1" in messages:
            break
    return messages


@pytest.mark.docker
def test_notify_ready_and_clean_sigterm(
    agent_bin: Path, tmp_path: Path, notify_socket: tuple[socket.socket, Path]
) -> None:
    sock, sock_path = notify_socket
    data_dir = tmp_path / "data"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'device_id = "pkg-{uuid.uuid4().hex[:8]}"\n'
        f'data_dir = "{data_dir}"\n'
        f'[api]\nsocket = "{tmp_path / "api.sock"}"\n'
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "NOTIFY_SOCKET": str(sock_path),
    }
    proc = subprocess.Popen(
        [str(agent_bin), "--config", str(config), "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        started = time.monotonic()
        messages = _wait_ready(proc, sock, timeout=60)
        assert proc.poll() is None, proc.communicate()[0]
        assert "READY=1" in messages, f"no READY=1 on NOTIFY_SOCKET (got {messages})"
        ready_s = time.monotonic() - started
        proc.send_signal(signal.SIGTERM)  # to the onefile bootloader, as systemd does
        out, _ = proc.communicate(timeout=STOP_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"exit {proc.returncode} after SIGTERM:\n{out}"
    db = data_dir / "agent.db"
    assert db.exists()
    wal = db.with_name("agent.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0, "store not checkpointed on stop"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    print(f"ready after {ready_s:.2f} s")


# ---- the frozen x86_64 hub ---------------------------------------------------------------

# The hub binary ships neither its tests' helpers nor the build and test tooling.
HUB_FORBIDDEN_MODULES = {"tkinter", "pytest", "PyInstaller", "rich"}


@pytest.fixture(scope="session")
def hub_bin() -> Path:
    """Return the onefile x86_64 hub: EDGE_HUB_BIN, or dist/'s, rebuilt if stale."""
    given = os.environ.get("EDGE_HUB_BIN")
    return Path(given) if given else frozen("edge-hub")


def test_hub_binary_size_and_manifest(hub_bin: Path) -> None:
    size = hub_bin.stat().st_size
    assert size <= MAX_BINARY_BYTES, f"{size / 2**20:.1f} MB > 30 MB"
    manifest = json.loads(hub_bin.with_name(hub_bin.name + ".manifest.json").read_text())
    assert manifest["program"] == "edge-hub" and manifest["python"].startswith("3.11.")
    for dist in ("aiohttp", "aiosqlite", "cryptography", "pydantic", "uvloop"):
        assert dist in manifest["packages"], manifest["packages"]
    assert not HUB_FORBIDDEN_MODULES & set(manifest["top_level_modules"])
    sums = hub_bin.parent / "SHA256SUMS"
    listed = dict(reversed(ln.split(None, 1)) for ln in sums.read_text().splitlines())
    assert listed[hub_bin.name] == hashlib.sha256(hub_bin.read_bytes()).hexdigest()


def test_hub_binary_version(hub_bin: Path) -> None:
    """``edge-hub --version`` (what the ARM build's smoke test runs) answers in the binary."""
    proc = _run(hub_bin, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"edge-hub {speclib.version()}"


def test_hub_binary_serves_and_stops_on_sigterm(hub_bin: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    config = tmp_path / "hub.toml"
    config.write_text(f'[server]\nhost = "127.0.0.1"\nport = 0\ndata_dir = "{data_dir}"\n')
    out_path, err_path = tmp_path / "hub.out", tmp_path / "hub.log"
    # A clean environment and a foreign cwd: nothing may come from this interpreter or tree.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            [str(hub_bin), "serve", "--config", str(config)],
            stdout=out,
            stderr=err,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )
    try:
        started = time.monotonic()
        url = None
        while url is None and time.monotonic() - started < 60 and proc.poll() is None:
            for line in out_path.read_text().splitlines():
                if line.startswith("listening on https://"):
                    url = line.removeprefix("listening on ")
            time.sleep(0.02)
        ready_s = time.monotonic() - started
        assert url, f"no 'listening on' line (exit {proc.poll()}):\n{err_path.read_text()}"
        ctx = ssl.create_default_context(cafile=str(data_dir / "ca.pem"))
        with urllib.request.urlopen(f"{url}/healthz", context=ctx, timeout=10) as resp:
            assert resp.status == 200
            health = json.loads(resp.read())
        assert health["status"] == "ok" and health["version"] == speclib.version()
        proc.send_signal(signal.SIGTERM)  # to the onefile bootloader, as systemd does
        code = proc.wait(timeout=STOP_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert code == 0, f"exit {code} after SIGTERM:\n{err_path.read_text()}"
    print(f"hub listening after {ready_s:.2f} s")


# ---- the agent's end-to-end scenario, pointed at the binary -----------------------------


@pytest.mark.docker
@pytest.mark.slow
def test_agent_e2e_with_binary(agent_bin: Path, tmp_path: Path) -> None:
    e2e = REPO / "tests" / "test_agent_e2e.py"
    # The agent reads every EDGE_AGENT_* variable as configuration, so the harness's own
    # EDGE_AGENT_BIN must not reach it: exec the binary from a wrapper that drops it.
    wrapper = tmp_path / "edge-agent"
    wrapper.write_text(f'#!/bin/sh\nunset EDGE_AGENT_BIN\nexec "{agent_bin}" "$@"\n')
    wrapper.chmod(0o755)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(e2e)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
        env={**os.environ, "EDGE_AGENT_BIN": str(wrapper)},
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " skipped" not in proc.stdout.splitlines()[-1]
