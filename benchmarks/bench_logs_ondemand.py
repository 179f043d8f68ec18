"""Logs on demand: time to the first line and lines/s through the hub, against a local read.

A real hub and a real agent (the end-to-end tests' helpers); the agent runs a container
that writes N known lines. Each run asks the device for all of them (a ``logs`` action,
``since`` 0) and polls the result parts as ``edgectl logs`` does: the time from the
request to the first line, and the lines per second until the last one. The baseline is
the device's local read speed, measured in the same run in this process with the same
function the agent answers with (``edge_agent.logread.read_lines``).

    python3 benchmarks/bench_logs_ondemand.py --lines 20000 --runs 3 [--json-out F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiodocker
import figures
from _common import ensure_testenv, loadavg  # puts tests/ on sys.path

from edge_agent.logread import read_lines
from edge_agent.runtime import DockerRuntime

if TYPE_CHECKING:
    from hubproc import HubProcess

IMAGE = "edgefleet-test/good:1"
POLL_S = 0.02


def release(lines: int) -> dict[str, Any]:
    script = (
        f"i=0; while [ $i -lt {lines} ]; do echo bulk line $i; i=$((i+1)); done; "
        "while true; do sleep 60; done"
    )
    service = {"name": "bulk", "image": IMAGE, "command": ["/bin/sh", "-c", script]}
    return {"name": "bench", "version": "1", "services": [service]}


async def until(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)
    return value


async def local_read(device_id: str, want: int) -> tuple[float, float]:
    """Return (s to the first line, lines/s) of reading every line on the device."""
    runtime = DockerRuntime(device_id)
    try:
        started = time.perf_counter()
        first, count = 0.0, 0
        async for _ in read_lines(runtime, None, {"service": "bulk", "since": 0.0}):
            count += 1
            if count == 1:
                first = time.perf_counter() - started
        took = time.perf_counter() - started
    finally:
        await runtime.close()
    if count != want:
        sys.exit(f"local read: {count} lines, expected {want}")
    return first, count / took


def _get(hub: HubProcess, path: str) -> Any:
    token = (hub.data_dir / "admin.token").read_text().strip()
    req = urllib.request.Request(hub.url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, context=hub._ssl(), timeout=10) as resp:
        return json.loads(resp.read())


def remote_read(hub: HubProcess, device_id: str, want: int) -> tuple[float, float]:
    """Return (s to the first line, lines/s) of asking the device through the hub."""
    body = {"kind": "logs", "args": {"service": "bulk", "since": 0.0}}
    started = time.perf_counter()
    made = hub._call("POST", f"/api/v1/devices/{device_id}/actions", body)
    after, count, first = 0, 0, 0.0
    while True:
        page = _get(hub, f"/api/v1/actions/{made['id']}/parts?after={after}&limit=1000")
        for part in page["parts"]:
            if count == 0 and part["lines"]:
                first = time.perf_counter() - started
            count += len(part["lines"])
        after = page["next"]
        if page["action"]["state"] in ("succeeded", "failed", "expired", "refused"):
            if not page["parts"] and not page.get("pending"):
                break
            if not page["parts"]:
                time.sleep(POLL_S)
        elif not page["parts"]:
            time.sleep(POLL_S)
    took = time.perf_counter() - started
    if count != want or page["action"]["state"] != "succeeded":
        sys.exit(f"remote read: {count} lines, {page['action']['state']}; expected {want}")
    return first, count / took


async def measure(args: argparse.Namespace, tmp: Path) -> dict[str, list[float]]:
    from fleetkit import device_of, hub_agent, running
    from hubproc import HubProcess

    hub = HubProcess(tmp / "hub").start()
    out: dict[str, list[float]] = {"lfirst": [], "lrate": [], "rfirst": [], "rrate": []}
    try:
        async with aiodocker.Docker() as docker:
            agent = hub_agent(tmp / "agent", hub.url, hub.ca_path, hub.create_token())
            async with running(docker, agent):
                dev = str(await until(lambda: device_of(agent), 60, "enrollment"))
                hub.set_target(dev, release(args.lines))
                await until(lambda: hub.device(dev).get("state") == "converged", 120, "converge")
                await asyncio.sleep(2.0)  # the first syncs after converging are done
                for run in range(args.runs):
                    lf, lr = await local_read(dev, args.lines)
                    loop = asyncio.get_running_loop()
                    rf, rr = await loop.run_in_executor(None, remote_read, hub, dev, args.lines)
                    for k, v in zip(out, (lf, lr, rf, rr), strict=True):
                        out[k].append(v)
                    print(
                        f"   run {run + 1}: local first {lf * 1e3:7.1f} ms {lr:9.0f} lines/s   "
                        f"on demand first {rf * 1e3:7.1f} ms {rr:9.0f} lines/s"
                    )
    finally:
        hub.stop()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=20_000, help="known lines in the container")
    p.add_argument("--runs", type=int, default=3, help="timed repetitions (default 3)")
    figures.add_json_out(p)
    args = p.parse_args()
    ensure_testenv()
    print(f"== logs on demand, {args.lines} lines ({loadavg()})")
    print("   python3 benchmarks/bench_logs_ondemand.py " + " ".join(sys.argv[1:]))
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as tmp:
        t = asyncio.run(measure(args, Path(tmp)))
    med = {k: statistics.median(v) for k, v in t.items()}
    print(
        f"   median: local first {med['lfirst'] * 1e3:.1f} ms, {med['lrate']:.0f} lines/s; "
        f"on demand first {med['rfirst'] * 1e3:.1f} ms, {med['rrate']:.0f} lines/s"
    )
    print(f"   ratio first line on demand / local: {med['rfirst'] / med['lfirst']:.1f}")
    print(f"   ratio lines/s local / on demand:    {med['lrate'] / med['rrate']:.2f}")
    print(f"   ({loadavg()} at the end)")
    figures.write(
        args.json_out,
        [
            figures.Figure(
                name="logs on demand: request to first line",
                unit="s",
                values=t["rfirst"],
                goal="reported (no goal set)",
                baseline_name="local read_lines: to first line",
                baseline=t["lfirst"],
                ratio=med["rfirst"] / med["lfirst"],
            ),
            figures.Figure(
                name="logs on demand: local lines/s per streamed lines/s",
                unit="ratio",
                values=[lr / rr for lr, rr in zip(t["lrate"], t["rrate"], strict=True)],
                goal="reported (no goal set)",
                baseline_name="local read_lines lines/s",
                baseline=t["lrate"],
                ratio=med["lrate"] / med["rrate"],
            ),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
