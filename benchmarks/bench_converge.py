"""Converge time of a 10-service release: the agent against the engine's floor and compose.

    python benchmarks/bench_converge.py [--runs 3] [--services 10] [--poll-ms 5]
        [--warmup 1] [--json-out PATH]

All three deploy the same release on the same engine, in the same run, from an image
already present (``edgefleet-test/good:1``; services differ only by environment), each on
one bridge network of its own:

- floor (the goal's baseline): the engine's own parallel work, driven straight through its
  API from this process: create the network, then for every service at once create and
  start its container; timed until the last start returns (each container is then checked
  to be running). No process start-up, no inspect, no state: what no manager can beat.

- agent: a running ``edge-agent run`` (started fresh for each run, not timed; production
  supervisor settings), timed from ``POST /v1/apply`` to ``GET /v1/status`` answering
  ``state == "converged"`` with every service running (polled every ``--poll-ms`` from
  when the engine has reported every container started: a status call costs the agent
  ~0.7 ms of its event loop, so polling during the converge would slow it). The
  target sets ``min_ready_s: 0`` so this measures converging, not the rollout watch's
  "stay up for min_ready_s" (5 s by default), which would otherwise be added on top.
- compose: the wall time of ``docker-compose -p PROJECT -f FILE up -d`` (a new process,
  as an operator runs it) of the equivalent compose file; all containers are checked to be
  running afterwards. The agent is timed without its process start-up (it is running), so
  compose is compared without its CLI start-up too: the median wall time of
  ``docker-compose version``, measured in the same run, is subtracted (both printed).

``--warmup`` untimed runs of each come first. Timed runs rotate which goes first;
everything is torn down between runs (not timed) and at the end, also on failure. Prints
each run, the medians, agent / floor (goal ≤ 1.05) and agent / compose (goal < 1.00).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import figures
from _common import (
    PRODUCTION_SUPERVISOR,
    REPO,
    AgentProcess,
    cleanup_device,
    ensure_testenv,
    goal,
    loadavg,
    median,
    running_count,
    ten_services,
    unique_suffix,
)

IMAGE = "edgefleet-test/good:1"


def compose_file(path: Path, services: list[dict[str, Any]]) -> Path:
    """Write the compose file equivalent to ``services`` (one default network) as JSON."""
    doc = {
        "version": "2.4",
        "services": {
            s["name"]: {"image": s["image"], "environment": s["environment"]} for s in services
        },
    }
    path.write_text(json.dumps(doc, indent=2))  # YAML is a superset of JSON
    return path


def compose(project: str, file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run docker-compose for the project; raise with its output when it fails."""
    done = subprocess.run(
        ["docker-compose", "-p", project, "-f", str(file), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"docker-compose {' '.join(args)} failed:\n{done.stderr}")
    return done


def time_compose(project: str, file: Path, n: int) -> float:
    """Return the wall time of ``docker-compose up -d`` from nothing to n running containers."""
    t0 = time.perf_counter()
    compose(project, file, "up", "-d")
    elapsed = time.perf_counter() - t0
    running = running_count(f"com.docker.compose.project={project}")
    if running != n:
        raise RuntimeError(f"compose: {running} of {n} containers running after up -d")
    compose(project, file, "down", "-v", "--remove-orphans", "-t", "1")
    return elapsed


# While no container has started for this long, the agent's status is read once: an agent
# that failed before starting every container is reported at once, not after the timeout
# (one read a second costs the agent ~0.7 ms of its loop, far below the run's noise).
FAILURE_CHECK_S = 1.0
CONVERGE_TIMEOUT_S = 120.0


async def agent_status(http: aiohttp.ClientSession) -> dict[str, Any]:
    """Return the agent's status; raise RuntimeError if it failed or rolled back."""
    async with http.get("http://agent/v1/status") as resp:
        st: dict[str, Any] = await resp.json()
    if st["state"] in ("failed", "rolled_back"):
        raise RuntimeError(f"agent did not converge: {st['last_error']}")
    return st


async def time_agent(
    device_id: str, data_dir: Path, services: list[dict[str, Any]], poll_s: float
) -> float:
    """Return the time from POST /v1/apply to a converged status with every service running."""
    agent = AgentProcess(device_id, data_dir, log_level="INFO", supervisor=PRODUCTION_SUPERVISOR)
    body = {
        "release": {"name": "bench", "version": "1", "services": services},
        "min_ready_s": 0,
    }
    names = {s["name"] for s in services}
    try:
        await agent.start()
        conn = aiohttp.UnixConnector(path=str(agent.socket))
        async with aiohttp.ClientSession(connector=conn) as http, aiodocker.Docker() as docker:
            # Status is asked only once the engine has started every container: a poll costs
            # the agent ~0.7 ms of its loop, and polls during the converge would slow the
            # very work being timed.
            filters = {"label": [f"io.edgefleet.device={device_id}"], "event": ["start"]}
            since = f"{time.time() - 1:.3f}"  # the engine replays what it saw before we asked
            events = docker.events.subscribe(filters=json.dumps(filters), since=since)
            started: set[str] = set()
            try:
                t0 = time.perf_counter()
                async with http.post("http://agent/v1/apply", json=body) as resp:
                    if resp.status >= 300:
                        text = await resp.text()
                        raise RuntimeError(f"apply refused ({resp.status}): {text}")
                st: dict[str, Any] = {}
                try:
                    async with asyncio.timeout(CONVERGE_TIMEOUT_S):
                        while len(started) < len(services):
                            try:
                                ev = await asyncio.wait_for(events.get(), FAILURE_CHECK_S)
                            except TimeoutError:  # no start for a while: has the agent failed?
                                st = await agent_status(http)
                                continue
                            if ev is not None and ev.get("Type") == "container":
                                started.add(ev["Actor"]["ID"])
                        while True:
                            st = await agent_status(http)
                            up = {s["name"] for s in st["services"] if s["state"] == "running"}
                            if st["state"] == "converged" and up >= names:
                                elapsed = time.perf_counter() - t0
                                break
                            await asyncio.sleep(poll_s)
                except TimeoutError:
                    raise RuntimeError(
                        f"agent: not converged after {CONVERGE_TIMEOUT_S:g} s, "
                        f"{len(started)} of {len(services)} containers started; its status: "
                        f"{st.get('state', '(not read)')}, last error {st.get('last_error')!r}"
                    ) from None
            finally:
                await docker.events.stop()
        running = running_count(f"io.edgefleet.device={device_id}")
        if running != len(services):
            raise RuntimeError(f"agent: {running} of {len(services)} containers running")
        return elapsed
    except BaseException:
        print(agent.log(), file=sys.stderr)
        raise
    finally:
        await agent.stop()
        agent.cleanup()
        await cleanup_device(device_id)


async def time_floor(device_id: str, services: list[dict[str, Any]]) -> float:
    """Return the engine's floor: network, then every container created and started at once."""
    labels = {"io.edgefleet.managed-by": "edgefleet", "io.edgefleet.device": device_id}
    async with aiodocker.Docker() as docker:
        try:
            t0 = time.perf_counter()
            net = f"{device_id}-floor"
            await docker.networks.create({"Name": net, "Labels": labels})

            async def one(svc: dict[str, Any]) -> None:
                env = [f"{k}={v}" for k, v in svc["environment"].items()]
                config = {
                    "Image": svc["image"],
                    "Env": env,
                    "Labels": labels,
                    "HostConfig": {"NetworkMode": net},
                }
                container = await docker.containers.create(config, name=f"{net}-{svc['name']}")
                await container.start()

            await asyncio.gather(*(one(s) for s in services))
            elapsed = time.perf_counter() - t0
            running = running_count(f"io.edgefleet.device={device_id}")
            if running != len(services):
                raise RuntimeError(f"floor: {running} of {len(services)} containers running")
            return elapsed
        finally:
            await cleanup_device(device_id)


def compose_cli_start() -> float:
    """Return the wall time of ``docker-compose version`` (the CLI's own start-up)."""
    t0 = time.perf_counter()
    subprocess.run(["docker-compose", "version"], capture_output=True, check=True)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="timed repetitions of each (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of each first (1)")
    p.add_argument("--services", type=int, default=10, help="services in the release")
    p.add_argument("--image", default=IMAGE, help="an image present on the engine")
    p.add_argument("--poll-ms", type=float, default=5, help="agent status poll interval (5)")
    figures.add_json_out(p)
    args = p.parse_args()
    if shutil.which("docker-compose") is None:
        sys.exit("docker-compose not found: apt-get install docker-compose")
    ensure_testenv()
    suffix = unique_suffix()
    device_id, project = f"bench-{suffix}", f"efbench{suffix}"
    floor_id = f"benchfloor-{suffix}"
    services = ten_services(args.services, args.image)
    times: dict[str, list[float]] = {"agent": [], "floor": [], "compose": [], "cli": []}
    print(f"== converge {args.services} services from {args.image} ({loadavg()})")
    print(f"   agent device {device_id}; compose project {project}; min_ready_s = 0")
    with tempfile.TemporaryDirectory(prefix="bench-converge-") as tmp:
        file = compose_file(Path(tmp) / "compose.yml", services)

        def once(who: str, tag: str) -> float:
            if who == "agent":
                data = Path(tmp) / f"agent-{tag}"
                return asyncio.run(time_agent(device_id, data, services, args.poll_ms / 1e3))
            if who == "floor":
                return asyncio.run(time_floor(floor_id, services))
            return time_compose(project, file, args.services)

        whos = ["agent", "floor", "compose"]
        try:
            for w in range(args.warmup):
                for who in whos:
                    once(who, f"warm{w}")
            for run in range(args.runs):
                order = whos[run % 3 :] + whos[: run % 3]
                for who in order:
                    times[who].append(once(who, str(run)))
                times["cli"].append(compose_cli_start())
                a, f, c = (times[k][-1] for k in ("agent", "floor", "compose"))
                print(
                    f"   run {run + 1}: agent {a:6.3f} s   floor {f:6.3f} s   "
                    f"compose {c:6.3f} s (CLI start-up {times['cli'][-1]:.3f} s)"
                )
        finally:
            subprocess.run(
                ["docker-compose", "-p", project, "-f", str(file), "down", "-v", "-t", "1"],
                capture_output=True,
                cwd=REPO,
            )
            asyncio.run(cleanup_device(device_id))
            asyncio.run(cleanup_device(floor_id))
    a, f, c, cli = (median(times[k]) for k in ("agent", "floor", "compose", "cli"))
    net = [x - cli for x in times["compose"]]
    print(f"   median: agent {a:6.3f} s   floor {f:6.3f} s   compose {c:6.3f} s")
    print(f"   compose without its CLI start-up ({cli:.3f} s): {median(net):6.3f} s")
    print(f"   ratio agent / floor:   {a / f:.3f}  (goal ≤ 1.05: {goal(a / f <= 1.05)})")
    print(f"   ratio agent / compose: {a / median(net):.3f}  (both without process start-up;")
    print(f"      with compose's CLI start-up: {a / c:.3f}; goal < 1.00: {goal(a < median(net))})")
    figures.write(
        args.json_out,
        [
            figures.ratio_figure(
                f"converge {args.services} services / engine floor",
                "s",
                times["agent"],
                "engine parallel create+start",
                times["floor"],
                goal_max=1.05,
            ),
            figures.ratio_figure(
                f"converge {args.services} services / docker-compose up -d",
                "s",
                times["agent"],
                "docker-compose up -d without CLI start-up",
                net,
                goal_max=1.0,
            ),
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
