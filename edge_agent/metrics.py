"""Device metrics: host CPU, memory, disks, uptime, temperature; CPU and memory per container.

Pure parsers of /proc and /sys text (table-tested) and ``MetricsSampler``, which reads
those files, ``statvfs`` and the managed containers' cgroup files. Per-container figures
come from the cgroup files where this process sees them (about 0.2 ms a container,
measured); only where it does not, from the engine's stats with ``stream=false``, which
waits for the engine to sample twice (1 to 2 s of wall time a container, measured), one
container at a time so the engine is never asked for many at once.

``MetricsReporter`` samples every ``interval_s``, keeps the latest sample for the local
API, and queues it in the outbox as a ``metrics`` entry only when the hub said it stores
that kind (an older hub would refuse the whole batch: see ``HUB_ENTRY_KINDS_META``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

# Store meta key: the outbox entry kinds (beyond the baseline) the hub said it stores,
# comma-separated; written by the sync client from each answer.
HUB_ENTRY_KINDS_META = "hub_entry_kinds"
MAX_THERMAL_ZONES = 16
CGROUP_ROOT = "/sys/fs/cgroup"


@dataclass(frozen=True)
class CpuTimes:
    """Aggregate CPU time from /proc/stat, in clock ticks: all of it, and the idle part."""

    total: int
    idle: int


@dataclass(frozen=True)
class ContainerUsage:
    """One container's cumulative CPU time (ns) and current memory (bytes)."""

    cpu_ns: int
    mem_bytes: int


class RunningService(Protocol):
    """What the sampler needs of a managed container (``models.CurrentService``)."""

    name: str
    container_id: str

    @property
    def is_running(self) -> bool: ...


# ---- pure parsers -------------------------------------------------------------------


def parse_proc_stat(text: str) -> CpuTimes | None:
    """Return the aggregate ``cpu`` line's times (guest time is inside user already)."""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            try:
                ticks = [int(v) for v in parts[1:9]]
            except ValueError:
                return None
            if len(ticks) < 4:
                return None
            idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
            return CpuTimes(sum(ticks), idle)
    return None


def cpu_percent(prev: CpuTimes | None, cur: CpuTimes | None) -> float | None:
    """Return the busy share of all CPUs between two readings (None without a delta)."""
    if prev is None or cur is None:
        return None
    total = cur.total - prev.total
    if total <= 0:
        return None
    busy = total - (cur.idle - prev.idle)
    return round(min(100.0, max(0.0, 100.0 * busy / total)), 2)


def parse_meminfo(text: str) -> dict[str, int] | None:
    """Return total, available and used memory in bytes from /proc/meminfo."""
    kib: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            kib[name.strip()] = int(fields[0])
    if "MemTotal" not in kib:
        return None
    available = kib.get("MemAvailable")
    if available is None:  # kernels before 3.14
        available = sum(kib.get(k, 0) for k in ("MemFree", "Buffers", "Cached"))
    total = kib["MemTotal"] * 1024
    available = min(available * 1024, total)
    return {"total_bytes": total, "available_bytes": available, "used_bytes": total - available}


def parse_uptime(text: str) -> float | None:
    """Return seconds since boot from /proc/uptime."""
    try:
        return round(float(text.split()[0]), 1)
    except (ValueError, IndexError):
        return None


def parse_thermal(zones: Sequence[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """Return ``{zone, type, celsius}`` for each (zone, type text, temp text) that reads.

    The kernel reports millidegrees Celsius; a zone whose temp does not parse, or is
    outside -100..200 C (a sensor's error value), is left out.
    """
    out: list[dict[str, Any]] = []
    for zone, kind, temp in zones[:MAX_THERMAL_ZONES]:
        try:
            celsius = int(temp.strip()) / 1000
        except ValueError:
            continue
        if -100 <= celsius <= 200:
            out.append({"zone": zone, "type": kind.strip()[:64], "celsius": round(celsius, 1)})
    return out


def parse_cgroup_memory(usage: str, stat: str, *, v2: bool) -> int | None:
    """Return a container's memory as ``docker stats`` counts it: usage minus inactive file."""
    try:
        used = int(usage.strip())
    except ValueError:
        return None
    key = "inactive_file" if v2 else "total_inactive_file"
    for line in stat.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return max(0, used - int(value))
    return used


def parse_cgroup_cpu(text: str, *, v2: bool) -> int | None:
    """Return a container's cumulative CPU time in ns (v1 cpuacct.usage; v2 cpu.stat)."""
    if not v2:
        value = text.strip()
        return int(value) if value.isdigit() else None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "usage_usec" and value.strip().isdigit():
            return int(value) * 1000
    return None


def container_cpu_percent(
    prev: tuple[float, int] | None, now_s: float, cpu_ns: int
) -> float | None:
    """Return CPU use since the previous reading, 100 = one core fully busy."""
    if prev is None:
        return None
    wall_ns = (now_s - prev[0]) * 1e9
    used = cpu_ns - prev[1]
    if wall_ns <= 0 or used < 0:
        return None
    return round(100.0 * used / wall_ns, 2)


# ---- reading the host -----------------------------------------------------------------


def _read(path: str | Path) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def disk_usage(name: str, path: str | Path) -> dict[str, Any] | None:
    """Return total, used and free bytes of the filesystem holding ``path``."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    used = total - st.f_bfree * st.f_frsize
    return {
        "name": name,
        "path": str(path),
        "total_bytes": total,
        "used_bytes": used,
        "free_bytes": free,
    }


def cgroup_dirs(cid: str, root: str = CGROUP_ROOT) -> tuple[Path, Path, bool] | None:
    """Return (memory dir, cpu dir, is v2) of a container's cgroup, if this process sees it."""
    for v1_parent in (f"docker/{cid}", f"system.slice/docker-{cid}.scope"):
        mem, cpu = Path(root, "memory", v1_parent), Path(root, "cpuacct", v1_parent)
        if (mem / "memory.usage_in_bytes").exists() and (cpu / "cpuacct.usage").exists():
            return mem, cpu, False
    for v2_parent in (f"system.slice/docker-{cid}.scope", f"docker/{cid}"):
        d = Path(root, v2_parent)
        if (d / "memory.current").exists():
            return d, d, True
    return None


def cgroup_usage(dirs: tuple[Path, Path, bool]) -> ContainerUsage | None:
    """Return a container's usage from its cgroup files (None if they vanished)."""
    mem_dir, cpu_dir, v2 = dirs
    usage = _read(mem_dir / ("memory.current" if v2 else "memory.usage_in_bytes"))
    stat = _read(mem_dir / "memory.stat") or ""
    cpu_text = _read(cpu_dir / ("cpu.stat" if v2 else "cpuacct.usage"))
    if usage is None or cpu_text is None:
        return None
    mem = parse_cgroup_memory(usage, stat, v2=v2)
    cpu = parse_cgroup_cpu(cpu_text, v2=v2)
    return None if mem is None or cpu is None else ContainerUsage(cpu, mem)


EngineStats = Callable[[str], Awaitable[ContainerUsage | None]]


class MetricsSampler:
    """Takes one sample of the host and of the managed containers."""

    def __init__(
        self,
        *,
        data_dir: str | Path,
        docker_root: str,
        services: Callable[[], Sequence[RunningService]],
        engine_stats: EngineStats | None = None,
        max_containers: int = 100,
        proc: str = "/proc",
        sys: str = "/sys",
        cgroup_root: str = CGROUP_ROOT,
    ) -> None:
        self.data_dir = data_dir
        self.docker_root = docker_root
        self._services = services
        self._engine_stats = engine_stats
        self.max_containers = max_containers
        self._proc = proc
        self._sys = sys
        self._cgroup_root = cgroup_root
        self._prev_cpu: CpuTimes | None = None
        self._prev_containers: dict[str, tuple[float, int]] = {}
        self._dirs: dict[str, tuple[Path, Path, bool] | None] = {}

    async def prime(self) -> None:
        """Take the first readings that CPU figures are deltas from (host and containers)."""
        self._prev_cpu = parse_proc_stat(_read(f"{self._proc}/stat") or "")
        await self._containers()

    async def sample(self) -> dict[str, Any]:
        """Return one sample; what the host does not expose is left out."""
        out: dict[str, Any] = {"at": datetime.now(UTC).isoformat()}
        cur = parse_proc_stat(_read(f"{self._proc}/stat") or "")
        pct = cpu_percent(self._prev_cpu, cur)
        self._prev_cpu = cur
        if pct is not None:
            out["cpu_percent"] = pct
        mem = parse_meminfo(_read(f"{self._proc}/meminfo") or "")
        if mem is not None:
            out["memory"] = mem
        uptime = parse_uptime(_read(f"{self._proc}/uptime") or "")
        if uptime is not None:
            out["uptime_s"] = uptime
        disks = [disk_usage("data", self.data_dir), disk_usage("docker", self.docker_root)]
        out["disks"] = [d for d in disks if d is not None]
        temps = parse_thermal(self._thermal_zones())
        if temps:
            out["temperatures"] = temps
        out["containers"], out["containers_total"] = await self._containers()
        return out

    def _thermal_zones(self) -> list[tuple[str, str, str]]:
        base = Path(self._sys, "class/thermal")
        try:
            names = sorted(p.name for p in base.glob("thermal_zone*"))
        except OSError:
            return []
        zones = []
        for name in names[:MAX_THERMAL_ZONES]:
            temp = _read(base / name / "temp")
            if temp is not None:
                zones.append((name, _read(base / name / "type") or "", temp))
        return zones

    async def _containers(self) -> tuple[list[dict[str, Any]], int]:
        running = [s for s in self._services() if s.is_running]
        out = []
        for svc in running[: self.max_containers]:
            usage, source = await self._usage(svc.container_id)
            if usage is None:
                continue
            now_s = time.monotonic()
            prev = self._prev_containers.get(svc.container_id)
            self._prev_containers[svc.container_id] = (now_s, usage.cpu_ns)
            item: dict[str, Any] = {
                "service": svc.name,
                "container_id": svc.container_id[:12],
                "mem_bytes": usage.mem_bytes,
                "source": source,
            }
            pct = container_cpu_percent(prev, now_s, usage.cpu_ns)
            if pct is not None:
                item["cpu_percent"] = pct
            out.append(item)
        self._forget({s.container_id for s in running})
        return out, len(running)

    async def _usage(self, cid: str) -> tuple[ContainerUsage | None, str]:
        if cid not in self._dirs:
            self._dirs[cid] = cgroup_dirs(cid, self._cgroup_root)
        dirs = self._dirs[cid]
        if dirs is not None:
            usage = cgroup_usage(dirs)
            if usage is not None:
                return usage, "cgroup"
        if self._engine_stats is None:
            return None, ""
        return await self._engine_stats(cid), "engine"

    def _forget(self, live: set[str]) -> None:
        for cid in set(self._prev_containers) - live:
            del self._prev_containers[cid]
        for cid in set(self._dirs) - live:
            del self._dirs[cid]


class MetricsReporter:
    """Samples every ``interval_s``; keeps the latest and queues it for a hub that takes it."""

    def __init__(
        self,
        sampler: MetricsSampler,
        *,
        interval_s: float,
        append: Callable[[dict[str, Any]], Awaitable[Any]] | None,
        hub_accepts: Callable[[], Awaitable[bool]],
        beat: Callable[[], None] = lambda: None,
    ) -> None:
        self.sampler = sampler
        self.interval_s = interval_s
        self._append = append
        self._hub_accepts = hub_accepts
        self._beat = beat
        self.latest: dict[str, Any] | None = None
        self.samples = 0
        self.queued = 0
        self.held_back = 0  # samples not queued: no hub, or one that does not store them

    async def report_once(self) -> dict[str, Any]:
        """Take a sample, keep it as the latest, and queue it if the hub stores metrics."""
        sample = await self.sampler.sample()
        sample["interval_s"] = self.interval_s
        self.latest = sample
        self.samples += 1
        if self._append is not None and await self._hub_accepts():
            await self._append(sample)
            self.queued += 1
        else:
            self.held_back += 1
        return sample

    async def run(self) -> None:
        """Report at every interval until cancelled (the first CPU figure needs two)."""
        await self.sampler.prime()
        while True:
            self._beat()
            await asyncio.sleep(self.interval_s)
            await self.report_once()

    def status(self) -> dict[str, Any]:
        """Return the reporter's counts."""
        return {"samples": self.samples, "queued": self.queued, "held_back": self.held_back}


def accepts_metrics(kinds_text: str | None) -> bool:
    """Return whether the stored hub entry kinds (``HUB_ENTRY_KINDS_META``) include metrics."""
    return "metrics" in (kinds_text or "").split(",")
