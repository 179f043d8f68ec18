"""The soak's rig: a real hub process, the fault proxy, a real agent process and its release.

Wired as the resilience tests wire them (``tests/hubproc.py``, ``tests/faultproxy.py``,
``tests/agentproc.py``): the agent's hub URL is the proxy's, so a network cut is the
proxy refusing and resetting connections; the hub restarts on the same port and data
dir; the agent is killed with SIGKILL (its process group) and started again on the same
data dir. Readings come from /proc, the agent's local API and the two SQLite files
(read-only connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiodocker
from _common import PRODUCTION_SUPERVISOR, AgentProcess, cpu_s, pss_kb, rss_kb
from faultproxy import FaultProxy
from hubproc import HubProcess
from soak_delivery import AgentOutbox
from soak_faults import Fault
from soak_series import Sample

SERVICES = 5


def release(image: str, n: int = SERVICES) -> dict[str, Any]:
    """Return the soak's release: ``n`` services of the good image (a line a second each)."""
    services = [
        {"name": f"s{i}", "image": image, "environment": {"MESSAGE": f"soak s{i}"}}
        for i in range(1, n + 1)
    ]
    return {"name": "soak", "version": "1", "services": services}


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


class Rig:
    """The hub, the proxy, the agent and the engine, with the faults the soak applies."""

    def __init__(self, work: Path, image: str) -> None:
        self.work = work
        self.image = image
        self.hub = HubProcess(work / "hub")
        self.proxy: FaultProxy | None = None
        self.agent: AgentProcess | None = None
        self.device_id = ""
        self.lifetime = 0
        self.lifetime_started = 0.0
        self.starting = False
        self._cpu_prev: tuple[int, float, float] | None = None  # pid, cpu s, monotonic
        self._cut_until = 0.0
        self._restore: asyncio.Task[None] | None = None

    # ---- set-up and tear-down --------------------------------------------------

    async def start(self) -> None:
        """Start hub and proxy, enroll a new agent through the proxy, deploy the release."""
        await asyncio.to_thread(self.hub.start)
        self.proxy = await FaultProxy("127.0.0.1", self.hub.port).start()
        token = await asyncio.to_thread(self.hub.create_token, 1)
        self.agent = AgentProcess(
            None,
            self.work / "agent",
            log_level="INFO",
            supervisor=PRODUCTION_SUPERVISOR,
            hub={
                "url": self.proxy.url,
                "enrollment_token": token,
                "ca_file": str(self.hub.ca_path),
                "sync_interval_s": 5.0,
                "long_poll_s": 30.0,
                "backoff_base_s": 1.0,
                "backoff_cap_s": 10.0,
                "request_timeout_s": 15.0,
            },
        )
        await self._start_agent()
        self.device_id = await self._wait_device_id()
        await asyncio.to_thread(self.hub.set_target, self.device_id, release(self.image))
        await self.wait_running(SERVICES, timeout_s=180)

    async def _start_agent(self) -> None:
        assert self.agent is not None
        self.starting = True  # readings of a process in start-up are not samples of it
        try:
            await self.agent.start(timeout_s=60)
        finally:
            self.starting = False
        self.lifetime += 1
        self.lifetime_started = time.monotonic()
        assert self.agent.proc is not None
        # CPU is measured from ready on: start-up (imports, migrations) is not idle work.
        pid = self.agent.proc.pid
        self._cpu_prev = (pid, cpu_s(pid), self.lifetime_started)

    async def _wait_device_id(self) -> str:
        assert self.agent is not None
        async with asyncio.timeout(60):
            while True:
                device_id = (await self.agent.status()).get("device_id")
                if device_id:
                    return str(device_id)
                await asyncio.sleep(0.5)

    async def wait_running(self, n: int, timeout_s: float) -> None:
        """Wait until ``n`` of the device's containers are running."""
        async with asyncio.timeout(timeout_s):
            while True:
                if len(await self.containers()) >= n:
                    return
                await asyncio.sleep(1)

    async def containers(self) -> list[str]:
        """Return the ids of the device's running containers, sorted."""
        filters = {"label": [f"io.edgefleet.device={self.device_id}"], "status": ["running"]}
        async with aiodocker.Docker() as docker:
            found = await docker.containers.list(filters=filters)
        return sorted(c.id for c in found)

    async def close(self) -> None:
        """Stop the agent, the proxy and the hub (whatever is running)."""
        if self._restore is not None:
            self._restore.cancel()
        if self.agent is not None:
            await self.agent.stop()
            self.agent.cleanup()
        if self.proxy is not None:
            await self.proxy.close()
        await asyncio.to_thread(self.hub.stop)

    # ---- faults -----------------------------------------------------------------

    async def apply(self, fault: Fault) -> str:
        """Apply one fault; return a short description for the log."""
        if fault.kind == "container_kill":
            ids = await self.containers()
            if not ids:
                return "container kill: none running"
            cid = ids[fault.pick % len(ids)]
            async with aiodocker.Docker() as docker:
                with contextlib.suppress(aiodocker.DockerError):
                    await docker.containers.container(cid).kill(signal="SIGKILL")
            return f"container kill {cid[:12]}"
        if fault.kind == "hub_restart":
            await asyncio.to_thread(self.hub.stop)
            await asyncio.sleep(fault.duration_s)
            await asyncio.to_thread(self.hub.start)
            return f"hub restart (down {fault.duration_s:.1f} s)"
        if fault.kind == "net_cut":
            self._cut(fault.duration_s)
            return f"network cut {fault.duration_s:.1f} s"
        assert self.agent is not None
        await self.agent.kill()
        await self._start_agent()
        return f"agent kill -9 + restart (lifetime {self.lifetime})"

    def _cut(self, seconds: float) -> None:
        """Cut the network for ``seconds`` (a cut already on is extended, not shortened)."""
        assert self.proxy is not None
        self._cut_until = max(self._cut_until, time.monotonic() + seconds)
        self.proxy.set_mode("cut")
        if self._restore is None or self._restore.done():
            self._restore = asyncio.create_task(self._restore_later())

    async def _restore_later(self) -> None:
        while True:
            left = self._cut_until - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(left)
        assert self.proxy is not None
        self.proxy.set_mode("pass")

    async def heal(self) -> None:
        """End any network cut now."""
        self._cut_until = 0.0
        if self._restore is not None:
            self._restore.cancel()
        if self.proxy is not None:
            self.proxy.set_mode("pass")

    # ---- readings ---------------------------------------------------------------

    async def sample(self, t_s: float) -> Sample:
        """Read the agent's process, store and outbox, and the hub's event count."""
        assert self.agent is not None and self.agent.proc is not None
        s = Sample(t_s=round(t_s, 2), lifetime=0, pid=0)
        if not self.starting and self.agent.proc.returncode is None:
            s.lifetime, s.pid = self.lifetime, self.agent.proc.pid
            s.age_s = round(time.monotonic() - self.lifetime_started, 2)
            with contextlib.suppress(OSError, RuntimeError):
                self._read_process(s)
        await self._read_store_and_hub(s)
        return s

    def _read_process(self, s: Sample) -> None:
        """Fill in RSS, PSS, open files and CPU of the agent process ``s.pid``."""
        s.rss_kib = rss_kb(s.pid)
        s.pss_kib = float(pss_kb(s.pid) or "nan")
        s.open_fds = len(list(Path(f"/proc/{s.pid}/fd").iterdir()))
        s.cpu_pct = self._cpu_pct(s.pid)

    async def _read_store_and_hub(self, s: Sample) -> None:
        """Fill in the store size, the outbox depth and the hub's event count."""
        assert self.agent is not None
        s.store_bytes = sum(p.stat().st_size for p in self.agent.data_dir.glob("agent.db*"))
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                outbox = (await self.agent.status())["outbox"]
            s.outbox_entries = sum(v["entries"] for v in outbox.values())
            s.outbox_bytes = sum(v["bytes"] for v in outbox.values())
        with contextlib.suppress(sqlite3.Error):
            s.hub_events = await asyncio.to_thread(self._hub_count)

    def _cpu_pct(self, pid: int) -> float:
        """Return the CPU share since the previous reading (or since ready) in % of a core."""
        now, used = time.monotonic(), cpu_s(pid)
        prev, self._cpu_prev = self._cpu_prev, (pid, used, now)
        if prev is None or prev[0] != pid:
            return math.nan
        _, base_used, base_t = prev
        return round(100 * (used - base_used) / max(now - base_t, 1e-6), 3)

    def _hub_count(self) -> int:
        db = _ro(self.hub.data_dir / "hub.db")
        try:
            row = db.execute(
                "SELECT COUNT(*) FROM events WHERE device_id = ?", (self.device_id,)
            ).fetchone()
        finally:
            db.close()
        return int(row[0])

    def agent_outbox(self) -> tuple[AgentOutbox, int]:
        """Return the agent store's seqs and drop counters, and the seq it saw acknowledged."""
        assert self.agent is not None
        db = _ro(self.agent.data_dir / "agent.db")
        try:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            queued = frozenset(r[0] for r in db.execute("SELECT seq FROM outbox"))
            dropped = db.execute(
                "SELECT COALESCE(SUM(value), 0) FROM counters WHERE name LIKE 'dropped_%'"
            ).fetchone()[0]
            acked = db.execute("SELECT value FROM meta WHERE key = 'acked_seq'").fetchone()
        finally:
            db.close()
        outbox = AgentOutbox(int(row[0]) if row else 0, queued, int(dropped))
        return outbox, int(acked[0]) if acked else 0

    def hub_rows(self) -> tuple[list[tuple[int, str, dict[str, Any]]], int]:
        """Return the hub's stored (seq, kind, payload) of the device and its seq offset."""
        db = _ro(self.hub.data_dir / "hub.db")
        try:
            offset = db.execute(
                "SELECT seq_offset FROM devices WHERE id = ?", (self.device_id,)
            ).fetchone()
        finally:
            db.close()
        return self.hub.events(self.device_id), int(offset[0]) if offset else 0
