"""Rollout benchmark with a SIMULATED fleet: real hub process, real protocol, no Docker.

    python benchmarks/bench_rollout.py [--devices 1000] [--runs 1] [--parallel 32]

Starts a real ``edge-hub serve`` process (hub.testing.start_hub: 127.0.0.1, tmp data
dir, default config but for the per-source connection cap) and, in this process, N
SIMULATED devices (tests/synckit.py ``SimulatedDevice``): each enrolled for real, with
its own key and client certificate and one kept-alive mTLS session, holding a long-poll
(``GET /v1/target``, 30 s waits) and reporting each target it gets with a sync, as an
agent does — but running nothing. Then, per run:

- **floor** (long-poll delivery): the operator API sets a target per device directly
  (``POST /api/v1/devices/{id}/target``, ``--parallel`` requests in flight on one
  kept-alive operator connection pool); timed from the first request until every device
  has reported that release running (its sync answered).
- **rollout**: ``POST /api/v1/rollouts`` of a new release to all N devices in one stage
  (100%, soak 0); timed from the start request until every device has reported the
  release running; the hub's ``completed`` is timed too.

Hub CPU time (utime + stime from /proc/PID/stat of the hub process) over each phase is
printed per device. Goal (issue 8): the rollout under 10 s on loopback. Both processes
share the machine's cores; the load average is printed. Exits 0 whatever the verdict.
Needs the local registry on 127.0.0.1:5000 (a release create resolves its image digest).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "tests", REPO / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import figures  # noqa: E402
from synckit import SimulatedDevice, close_simulated, enroll_simulated  # noqa: E402

from hub.testing import RunningHub, start_hub  # noqa: E402

GOAL_S = 10.0
IMAGE = "127.0.0.1:5000/edgefleet/good:1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    """One timed phase: until every device reported, hub CPU per device, hub's verdict."""

    name: str
    seconds: float
    cpu_ms_per_device: float
    completed_s: float | None = None


def hub_cpu_s(pid: int) -> float:
    """Return the CPU time (utime + stime) of ``pid``, in seconds."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def loadavg() -> str:
    """Return the load averages and the core count."""
    averages = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return f"load average {averages} on {os.cpu_count()} cores"


def commit() -> str:
    """Return the checked-out commit (and whether the tree has changes)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    return git("rev-parse", "--short", "HEAD") + (
        " (modified)" if git("status", "--porcelain") else ""
    )


async def operator_session(hub: RunningHub, parallel: int) -> aiohttp.ClientSession:
    """Return a kept-alive admin session to the operator API."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=hub.ssl_context(), limit=parallel),
        headers={"Authorization": f"Bearer {hub.admin_token}"},
        timeout=aiohttp.ClientTimeout(total=120),
    )


async def call(
    session: aiohttp.ClientSession, hub: RunningHub, method: str, path: str, body: Any, expect: int
) -> Any:
    async with session.request(method, hub.url + path, json=body) as r:
        answer = await r.json()
        if r.status != expect:
            raise RuntimeError(f"{method} {path}: {r.status} {answer}")
        return answer


async def until_reported(devices: list[SimulatedDevice], ref: str, timeout_s: float) -> float:
    """Wait until every device reported ``ref`` running; return when the last one did."""
    deadline = time.perf_counter() + timeout_s
    while not all(ref in d.reported for d in devices):
        if time.perf_counter() > deadline:
            missing = sum(ref not in d.reported for d in devices)
            raise RuntimeError(f"{missing} devices never reported {ref} within {timeout_s} s")
        await asyncio.sleep(0.01)
    return max(d.reported[ref] for d in devices)


async def until_completed(hub: RunningHub, ops: aiohttp.ClientSession, rollout_id: str) -> None:
    """Poll the rollout until the hub judged it completed."""
    path = f"/api/v1/rollouts/{rollout_id}"
    for _ in range(6000):
        if (await call(ops, hub, "GET", path, None, 200))["status"] == "completed":
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"rollout {rollout_id} not completed within 300 s")


def release_doc(name: str) -> dict[str, Any]:
    return {"name": name, "version": "1", "services": [{"name": "web", "image": IMAGE}]}


async def floor(
    hub: RunningHub,
    ops: aiohttp.ClientSession,
    devices: list[SimulatedDevice],
    run: int,
    parallel: int,
) -> Phase:
    """Set a target per device directly; time until every device reported it."""
    doc = release_doc(f"floor{run}")
    gate = asyncio.Semaphore(parallel)

    async def one(d: SimulatedDevice) -> None:
        async with gate:
            await call(
                ops, hub, "POST", f"/api/v1/devices/{d.device_id}/target", {"release": doc}, 201
            )

    cpu0, t0 = hub_cpu_s(hub.pid), time.perf_counter()
    await asyncio.gather(*(one(d) for d in devices))
    last = await until_reported(devices, f"floor{run}@1", 300)
    cpu = hub_cpu_s(hub.pid) - cpu0
    return Phase("floor", last - t0, cpu * 1e3 / len(devices))


async def rollout(
    hub: RunningHub, ops: aiohttp.ClientSession, devices: list[SimulatedDevice], run: int
) -> Phase:
    """Roll a new release out to every device in one stage; time until all reported it."""
    ref = f"roll{run}@1"
    await call(ops, hub, "POST", "/api/v1/releases", {"release": release_doc(f"roll{run}")}, 201)
    spec = {"release": ref, "group": "bench", "stages": "100%", "soak_s": 0}
    cpu0, t0 = hub_cpu_s(hub.pid), time.perf_counter()
    started = await call(ops, hub, "POST", "/api/v1/rollouts", spec, 201)
    last = await until_reported(devices, ref, 300)
    cpu = hub_cpu_s(hub.pid) - cpu0
    await until_completed(hub, ops, started["id"])
    completed = time.perf_counter() - t0
    return Phase("rollout", last - t0, cpu * 1e3 / len(devices), completed)


async def bring_up(hub: RunningHub, args: argparse.Namespace, work: Path) -> list[SimulatedDevice]:
    """Enroll the simulated devices, sync each once, open every long-poll."""
    t = time.perf_counter()
    devices = await enroll_simulated(hub, args.devices, work / "sims", {"fleet": "bench"})
    gate = asyncio.Semaphore(50)

    async def first(d: SimulatedDevice) -> None:
        async with gate:
            await d.sync()

    await asyncio.gather(*(first(d) for d in devices))
    print(
        f"enrolled and synced {len(devices)} simulated devices in {time.perf_counter() - t:.1f} s",
        flush=True,
    )
    return devices


async def main(args: argparse.Namespace) -> list[tuple[Phase, Phase]]:
    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    sections = {"server": {"max_connections_per_source": 2 * args.devices + 100}}
    hub = start_hub(work / "hub", sections=sections)
    devices: list[SimulatedDevice] = []
    tasks: list[asyncio.Task[None]] = []
    results: list[tuple[Phase, Phase]] = []
    try:
        devices = await bring_up(hub, args, work)
        tasks = [asyncio.create_task(d.run(wait_s=30)) for d in devices]
        await hub.wait_long_polls(len(devices), timeout_s=120)
        ops = await operator_session(hub, args.parallel)
        try:
            group = {"name": "bench", "selector": "fleet=bench"}
            await call(ops, hub, "POST", "/api/v1/groups", group, 201)
            for run in range(1, args.runs + 1):
                f = await floor(hub, ops, devices, run, args.parallel)
                await hub.wait_long_polls(len(devices), timeout_s=60)
                r = await rollout(hub, ops, devices, run)
                await hub.wait_long_polls(len(devices), timeout_s=60)
                print(f"run {run}: floor {f.seconds:.2f} s, rollout {r.seconds:.2f} s", flush=True)
                results.append((f, r))
        finally:
            await ops.close()
        errors = sum(d.errors for d in devices)
        if errors:
            print(f"simulated devices saw {errors} errors (retried)")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_simulated(devices)
        hub.stop()
    return results


def report(args: argparse.Namespace, results: list[tuple[Phase, Phase]], load0: str) -> None:
    """Print every run, the medians, and the verdict against the goal."""
    print()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"commit: {commit()}")
    print(f"before: {load0}; after: {loadavg()}")
    print(f"{args.devices} simulated devices holding long-polls, one hub process, loopback")
    print(
        f"{'run':>4} {'floor s':>8} {'rollout s':>10} {'completed s':>12} "
        f"{'hub CPU ms/device floor':>24} {'rollout':>8}"
    )
    for i, (f, r) in enumerate(results, 1):
        print(
            f"{i:>4} {f.seconds:>8.2f} {r.seconds:>10.2f} {r.completed_s or 0:>12.2f} "
            f"{f.cpu_ms_per_device:>24.2f} {r.cpu_ms_per_device:>8.2f}"
        )
    if not results:
        return
    floor_s = statistics.median(f.seconds for f, _ in results)
    roll_s = statistics.median(r.seconds for _, r in results)
    verdict = "ok" if roll_s < GOAL_S else "MISSED"
    print(
        f"median: rollout {roll_s:.2f} s (goal < {GOAL_S:.0f} s: {verdict}), "
        f"long-poll delivery floor {floor_s:.2f} s, ratio rollout / floor {roll_s / floor_s:.2f}"
    )
    figures.write(
        args.json_out,
        [
            figures.Figure(
                name=f"rollout to {args.devices} simulated devices, one stage 100%",
                unit="s",
                values=[r.seconds for _, r in results],
                goal=f"< {GOAL_S:g} s",
                ok=roll_s < GOAL_S,
                baseline_name="long-poll delivery floor (per-device target set)",
                baseline=[f.seconds for f, _ in results],
                ratio=roll_s / floor_s,
                note="hub CPU per device, rollout: "
                + ", ".join(f"{r.cpu_ms_per_device:.2f} ms" for _, r in results),
            )
        ],
    )


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000, help="simulated devices")
    parser.add_argument("--runs", type=int, default=1, help="floor + rollout pairs")
    parser.add_argument("--parallel", type=int, default=32, help="floor: target sets in flight")
    figures.add_json_out(parser)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    before = loadavg()
    try:
        measured = asyncio.run(main(arguments))
    except Exception as exc:  # a benchmark reports, it does not fail the caller
        print(f"benchmark failed: {type(exc).__name__}: {exc}")
        measured = []
    report(arguments, measured, before)
    sys.exit(0)
