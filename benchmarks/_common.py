"""Shared helpers of the agent benchmarks: /proc readings, the test environment, cleanup.

Benchmarks import the test helpers (``tests/agentproc.py``, ``tests/docker_env.py``)
through ``sys.path``, so a benchmark starts its agent exactly as the end-to-end tests do.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import aiodocker  # noqa: E402
import docker_env  # noqa: E402
from agentproc import AgentProcess  # noqa: E402

__all__ = ["REPO", "AgentProcess", "docker_env"]

CLK_TCK = os.sysconf("SC_CLK_TCK")
# The production defaults of [supervisor] (AgentProcess writes test values that wake the
# agent every 5 s); benchmarks measure what a device runs.
PRODUCTION_SUPERVISOR = {
    "backoff_base_s": 1.0,
    "backoff_cap_s": 300.0,
    "stable_after_s": 60.0,
    "safety_interval_s": 30.0,
    "crash_loop_exits": 5,
}


def unique_suffix() -> str:
    """Return 8 hex characters unique to this benchmark run."""
    return uuid.uuid4().hex[:8]


def ensure_testenv() -> None:
    """Make sure the engine and the test images are there (runs scripts/testenv.sh if not)."""
    try:
        docker_env.ensure_env()
    except RuntimeError as exc:
        sys.exit(f"test environment not ready: {exc}\nrun: bash scripts/testenv.sh")


def loadavg() -> str:
    """Return the 1-minute load average and the core count, as context for the figures."""
    one = Path("/proc/loadavg").read_text().split()[0]
    return f"load average {one} on {os.cpu_count()} cores"


def rss_kb(pid: int) -> int:
    """Return VmRSS of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def pss_kb(pid: int) -> int | None:
    """Return the proportional set size of ``pid`` in KiB, or None without smaps_rollup."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return None


def cpu_s(pid: int) -> float:
    """Return the CPU time (utime + stime) ``pid`` has used, in seconds."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name (which may hold spaces) start at state (field 3).
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def mb(kb: float | None) -> str:
    """Format KiB as MB (MiB) with one decimal."""
    return "n/a" if kb is None else f"{kb / 1024:.1f} MB"


def median(values: list[float]) -> float:
    """Return the median of a non-empty list."""
    return statistics.median(values)


def goal(ok: bool) -> str:
    """Return the verdict word of a goal."""
    return "ok" if ok else "MISSED"


def ten_services(n: int, image: str) -> list[dict[str, Any]]:
    """Return ``n`` services of ``image`` that differ only by their environment."""
    return [
        {
            "name": f"s{i:02d}",
            "image": image,
            "environment": {"SERVICE_INDEX": str(i), "MESSAGE": f"hello from s{i:02d}"},
        }
        for i in range(1, n + 1)
    ]


async def cleanup_device(device_id: str) -> None:
    """Remove every container, network and volume the agent made for ``device_id``."""
    async with aiodocker.Docker() as docker:
        await docker_env.cleanup_device(docker, device_id)


def running_count(label: str) -> int:
    """Return how many running containers carry ``label`` (``key=value``)."""
    out = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label={label}", "--filter", "status=running"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return len(out.split())
