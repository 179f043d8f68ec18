"""Agent memory and CPU: idle with 10 managed services, and after 100,000 container events.

    python benchmarks/bench_agent_resources.py [--idle-s 60] [--real-events 2000]
                                               [--synthetic-events 100000] [--no-logs]
                                               [--runs 1] [--synthetic-actions A,B,...]

One real ``edge-agent run`` process (production supervisor settings, log level INFO,
container log collection on unless ``--no-logs``) manages 10 services of
``edgefleet-test/good:1`` (each prints a line a second) on the real engine. Its Docker
URL points at a small pass-through proxy on a unix socket inside this benchmark, so that
phase 4 can add events to the agent's real event stream. Readings come from /proc:
VmRSS (``status``), PSS (``smaps_rollup``), utime + stime (``stat``).

1. baseline: a bare Python process (an aiohttp.web server on a unix socket), median of
   ``--baseline-runs``, in three forms: literal (uvloop, importing aiodocker,
   aiosqlite, pydantic and cryptography: ``import pydantic`` loads no model machinery in
   pydantic 2), + BaseModel (``from pydantic import BaseModel``, what any pydantic user
   pays; the issue's "about 47 MB"), and same-imports — the floor the goal is measured
   against: every module outside ``edge_agent`` that ``edge-agent run`` has imported
   (listed by a probe process importing the agent and what ``run`` imports as it starts:
   the Docker runtime with aiodocker, and ctypes), on the loop the agent runs on
   (asyncio), so the ratio is the agent's own code and state and nothing else.
2. idle: after converging and ``--settle-s``, RSS and PSS at the end of ``--idle-s`` and
   CPU over the window as % of one core.
3. REAL events: ``--real-events`` kill signals (SIGWINCH, which the services ignore) sent
   to the managed containers through the engine's API; each is a real "kill" event on the
   agent's stream (parsed, filtered, dispatched; "kill" queues nothing). About 160/s on
   these machines, so 100,000 real events would take over 10 minutes.
4. SYNTHETIC events: ``--synthetic-events`` engine-format event lines for the managed
   containers (real ids, labels and attributes) that the proxy writes into the agent's
   open event stream, as fast as the agent reads them. Actions cycle kill, die, stop,
   start, "health_status: healthy": every path of ``Agent._watch_events`` runs
   (reconciler pokes; die/start/health_status each queue a durable outbox event). The
   benchmark waits until the agent has queued all of them and its CPU is quiet, then
   ``--settle-s``. RSS is also read at each quarter: growth that stops early is a
   bounded cache or allocator high-water mark, growth that goes on is a leak.

Prints the table and the goals: idle RSS / same-imports floor <= 1.10; RSS growth after
the events ~0 (shown ok under 1 MB); idle CPU < 0.2% of a core. Exits 0 whatever the
verdicts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
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
    cpu_s,
    ensure_testenv,
    goal,
    loadavg,
    mb,
    median,
    pss_kb,
    rss_kb,
    ten_services,
    unique_suffix,
)
from aiohttp import web

IMAGE = "edgefleet-test/good:1"
DOCKER_SOCK = "/var/run/docker.sock"
GOAL_RSS_RATIO = 1.10
GOAL_GROWTH_KB = 1024
GOAL_IDLE_CPU_PCT = 0.2  # issue 9
SYNTHETIC_ACTIONS = "kill,die,stop,start,health_status: healthy"
QUEUES_EVENT = ("die", "start", "health_status")  # actions the agent queues in its outbox

BASELINE = """
import asyncio, importlib, sys
from aiohttp import web
if sys.argv[2] == "same-imports":
    for name in sys.argv[3].split(","):
        try:
            importlib.import_module(name)
        except Exception:
            pass
else:
    import uvloop
    import aiodocker, aiosqlite, pydantic, cryptography
    uvloop.install()
if sys.argv[2] == "basemodel":
    from pydantic import BaseModel

async def main():
    runner = web.AppRunner(web.Application())
    await runner.setup()
    await web.UnixSite(runner, sys.argv[1]).start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""
# What `edge-agent run` imports outside its own package (stdlib and third-party): the
# modules of cli and agent, and those `run` imports when it starts (the Docker runtime,
# with aiodocker; ctypes, for the heap trim after READY=1).
AGENT_IMPORTS_PROBE = """
import sys
import edge_agent.cli, edge_agent.agent, edge_agent.runtime, ctypes
print(",".join(sorted(m for m in sys.modules
    if m.split(".")[0] not in ("edge_agent", "__main__") and not m.startswith("_"))))
"""


def agent_imports() -> str:
    """Return the comma-separated modules outside edge_agent that the agent imports."""
    done = subprocess.run(
        [sys.executable, "-c", AGENT_IMPORTS_PROBE],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return done.stdout.strip()


# ---- baseline --------------------------------------------------------------------------


def measure_baseline(variant: str, settle_s: float, modules: str = "") -> tuple[int, int | None]:
    """Return (RSS, PSS) in KiB of the bare reference process after ``settle_s``."""
    with tempfile.TemporaryDirectory(prefix="bench-base-") as tmp:
        proc = subprocess.Popen(
            [sys.executable, "-c", BASELINE, f"{tmp}/s.sock", variant, modules],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            if proc.stdout is None or proc.stdout.readline().strip() != "ready":
                raise RuntimeError("baseline process did not start")
            time.sleep(settle_s)
            return rss_kb(proc.pid), pss_kb(proc.pid)
        finally:
            proc.kill()
            proc.wait()


# ---- the Docker API proxy ------------------------------------------------------------------

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class _Stream:
    """One open event stream to the agent; writes are serialized."""

    resp: web.StreamResponse
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class DockerProxy:
    """Pass-through proxy of the engine's API that can add lines to open event streams."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.streams: list[_Stream] = []
        self.real_lines = 0  # engine event lines passed to the agent
        self.synthetic_lines = 0
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen on ``path``."""
        self._http = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=DOCKER_SOCK),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=2**30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.path)).start()

    async def close(self) -> None:
        """Close the upstream connections (ending open streams), then stop listening."""
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        body = await request.read()
        async with self._http.request(
            request.method,
            f"http://docker{request.rel_url}",
            headers=headers,
            data=body or None,
        ) as up:
            out_headers = {k: v for k, v in up.headers.items() if k.lower() not in _HOP}
            if request.path.endswith("/events") and up.status == 200:
                return await self._events(request, up, out_headers)
            if up.headers.get("Content-Length") is not None:
                return web.Response(status=up.status, body=await up.read(), headers=out_headers)
            resp = web.StreamResponse(status=up.status, headers=out_headers)
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def _events(
        self, request: web.Request, up: aiohttp.ClientResponse, headers: dict[str, str]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers=headers)
        await resp.prepare(request)
        stream = _Stream(resp)
        self.streams.append(stream)
        try:
            async for line in up.content:
                async with stream.lock:
                    await resp.write(line)
                self.real_lines += 1
        except (aiohttp.ClientError, ConnectionError):
            pass  # the agent or this proxy closed the stream
        finally:
            self.streams.remove(stream)
        return resp

    async def inject(self, lines: list[bytes]) -> None:
        """Write ``lines`` into every open event stream (waits while the agent lags)."""
        if not self.streams:
            raise RuntimeError("the agent has no event stream open")
        blob = b"".join(lines)
        for stream in list(self.streams):
            async with stream.lock:
                await stream.resp.write(blob)
        self.synthetic_lines += len(lines)


def event_line(action: str, container: dict[str, Any], seq: int) -> bytes:
    """Return one engine event line (Docker 20.10 format) for ``container``'s inspect data."""
    attrs = dict(container["Config"]["Labels"] or {})
    attrs["image"] = container["Config"]["Image"]
    attrs["name"] = container["Name"].lstrip("/")
    base = action.partition(":")[0]
    if base == "die":
        attrs["exitCode"] = str(seq % 3)
    elif base == "kill":
        attrs["signal"] = "15"
    nanos = time.time_ns()
    cid = container["Id"]
    raw = {
        "status": action,
        "id": cid,
        "from": attrs["image"],
        "Type": "container",
        "Action": action,
        "Actor": {"ID": cid, "Attributes": attrs},
        "scope": "local",
        "time": nanos // 10**9,
        "timeNano": nanos,
    }
    return json.dumps(raw).encode() + b"\n"


# ---- the agent ------------------------------------------------------------------------------


@dataclass
class Results:
    """Readings of one agent run, in KiB and seconds."""

    idle_rss: int = 0
    idle_rss_max: int = 0
    idle_pss: int | None = None
    idle_cpu_pct: float = 0.0
    real_n: int = 0
    real_s: float = 0.0
    real_rss: tuple[int, int] = (0, 0)
    real_cpu_ms_per_event: float = 0.0
    syn_n: int = 0
    syn_s: float = 0.0
    syn_rss: tuple[int, int] = (0, 0)
    syn_pss: tuple[int | None, int | None] = (None, None)
    syn_checkpoints: list[tuple[int, int]] = field(default_factory=list)
    syn_cpu_ms_per_event: float = 0.0


async def wait_converged(agent: AgentProcess, n: int, timeout_s: float = 120) -> None:
    """Wait for state converged with n services running."""
    async with asyncio.timeout(timeout_s):
        while True:
            st = await agent.status()
            if st["state"] == "converged" and (
                sum(s["state"] == "running" for s in st["services"]) == n
            ):
                return
            if st["state"] in ("failed", "rolled_back"):
                raise RuntimeError(f"agent did not converge: {st['last_error']}")
            await asyncio.sleep(0.2)


async def queued_events(agent: AgentProcess) -> int:
    """Return how many event records the agent's outbox holds."""
    st = await agent.status()
    return int(st.get("outbox", {}).get("event", {}).get("entries", 0))


async def wait_quiet(pid: int, window_s: float = 0.5, busy_share: float = 0.1) -> None:
    """Wait until the agent uses under ``busy_share`` of a core over one ``window_s``."""
    async with asyncio.timeout(300):
        while True:
            c0 = cpu_s(pid)
            await asyncio.sleep(window_s)
            if cpu_s(pid) - c0 < busy_share * window_s:
                return


async def measure_idle(pid: int, idle_s: float, res: Results) -> None:
    """Record RSS, PSS and CPU over ``idle_s`` with nobody calling the agent."""
    rss_max = 0
    c0, t0 = cpu_s(pid), time.monotonic()
    while time.monotonic() - t0 < idle_s:
        await asyncio.sleep(min(1.0, idle_s))
        rss_max = max(rss_max, rss_kb(pid))
    c1, t1 = cpu_s(pid), time.monotonic()
    res.idle_cpu_pct = 100 * (c1 - c0) / (t1 - t0)
    res.idle_rss, res.idle_pss, res.idle_rss_max = rss_kb(pid), pss_kb(pid), rss_max


async def real_events(
    docker: aiodocker.Docker, proxy: DockerProxy, ids: list[str], n: int, pid: int, res: Results
) -> None:
    """Send n SIGWINCH kills to the managed containers; wait until the agent got them all."""
    before, c0 = rss_kb(pid), cpu_s(pid)
    seen0 = proxy.real_lines
    todo = iter(range(n))
    t0 = time.monotonic()

    async def worker() -> None:
        for i in todo:
            await docker.containers.container(ids[i % len(ids)]).kill(signal="WINCH")

    await asyncio.gather(*(worker() for _ in range(16)))
    async with asyncio.timeout(120):
        while True:
            if proxy.real_lines - seen0 >= n:
                break
            await asyncio.sleep(0.05)
    await wait_quiet(pid)
    res.real_n, res.real_s = proxy.real_lines - seen0, time.monotonic() - t0
    res.real_rss = (before, rss_kb(pid))
    res.real_cpu_ms_per_event = 1000 * (cpu_s(pid) - c0) / max(1, res.real_n)


async def synthetic_events(
    agent: AgentProcess,
    proxy: DockerProxy,
    containers: list[dict[str, Any]],
    n: int,
    actions: list[str],
    pid: int,
    res: Results,
) -> None:
    """Write n synthetic event lines into the agent's stream; wait until all are queued."""
    queued0 = await queued_events(agent)
    want = sum(actions[i % len(actions)].partition(":")[0] in QUEUES_EVENT for i in range(n))
    before, pss0, c0 = rss_kb(pid), pss_kb(pid), cpu_s(pid)
    checkpoints = {n * k // 4 for k in range(1, 5)}
    batch = 200
    t0 = time.monotonic()
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        lines = [
            event_line(actions[i % len(actions)], containers[i % len(containers)], i)
            for i in range(start, stop)
        ]
        await proxy.inject(lines)
        if any(start < c <= stop for c in checkpoints):
            res.syn_checkpoints.append((stop, rss_kb(pid)))
    async with asyncio.timeout(600):
        while True:
            if await queued_events(agent) - queued0 >= want:
                break
            await asyncio.sleep(0.5)
    await wait_quiet(pid)
    res.syn_n, res.syn_s = n, time.monotonic() - t0
    res.syn_cpu_ms_per_event = 1000 * (cpu_s(pid) - c0) / max(1, n)
    res.syn_checkpoints.insert(0, (0, before))
    res.syn_rss, res.syn_pss = (before, 0), (pss0, None)


async def run_agent(args: argparse.Namespace, tmp: Path) -> Results:
    """Start the agent behind the proxy, converge, then measure idle, real and synthetic."""
    res = Results()
    device_id = f"bench-{unique_suffix()}"
    proxy = DockerProxy(tmp / "docker.sock")
    await proxy.start()
    overrides: dict[str, Any] = {
        "log_level": "INFO",
        "supervisor": PRODUCTION_SUPERVISOR,
        "docker": {"url": f"unix://{proxy.path}"},
    }
    if args.no_logs:
        overrides["logs"] = {"enabled": False}
    elif args.log_flush_s is not None:
        overrides["logs"] = {"flush_interval_s": args.log_flush_s}
    agent = AgentProcess(device_id, tmp / "agent", **overrides)
    services = ten_services(10, args.image)
    try:
        async with aiodocker.Docker() as docker:
            await agent.start()
            assert agent.proc is not None
            pid = agent.proc.pid
            body = {"release": {"name": "bench", "version": "1", "services": services}}
            code, data = await agent.call("POST", "/v1/apply", {**body, "min_ready_s": 0})
            if code >= 300:
                raise RuntimeError(f"apply refused ({code}): {data}")
            await wait_converged(agent, len(services))
            filters = json.dumps({"label": [f"io.edgefleet.device={device_id}"]})
            found = await docker.containers.list(filters=filters)
            containers = [await c.show() for c in found]
            print(f"   agent pid {pid}, device {device_id}: converged; settle {args.settle_s:g} s")
            await asyncio.sleep(args.settle_s)
            print(f"   idle window {args.idle_s:g} s ...")
            await measure_idle(pid, args.idle_s, res)
            if args.real_events:
                print(f"   {args.real_events} real kill events ...")
                ids = [c["Id"] for c in containers]
                await real_events(docker, proxy, ids, args.real_events, pid, res)
            if args.synthetic_events:
                print(f"   {args.synthetic_events} synthetic events ...")
                actions = args.synthetic_actions.split(",")
                n = args.synthetic_events
                await synthetic_events(agent, proxy, containers, n, actions, pid, res)
                await asyncio.sleep(args.settle_s)
                res.syn_rss = (res.syn_rss[0], rss_kb(pid))
                res.syn_pss = (res.syn_pss[0], pss_kb(pid))
            if agent.proc.returncode is not None:
                raise RuntimeError(f"agent exited {agent.proc.returncode}")
    except BaseException:
        print(agent.log(), file=sys.stderr)
        raise
    finally:
        await agent.stop()
        agent.cleanup()
        await proxy.close()
        await cleanup_device(device_id)
    return res


# ---- report ----------------------------------------------------------------------------------


def report(
    args: argparse.Namespace, base: dict[str, list[tuple[int, int | None]]], runs: list[Results]
) -> None:
    """Print the table of medians and the goals."""

    def med(get: Any) -> float:
        return median([get(r) for r in runs])

    def bmed(variant: str, i: int) -> float | None:
        values = [v[i] for v in base[variant] if v[i] is not None]
        return median(values) if values else None

    floor = bmed("same-imports", 0) or 1.0
    idle_rss = med(lambda r: r.idle_rss)
    idle_cpu = med(lambda r: r.idle_cpu_pct)
    runs_n, base_n = len(runs), len(base["same-imports"])
    print(f"== results (median of {runs_n} agent run(s), {base_n} baseline run(s); {loadavg()})")
    rows = [
        ("baseline, literal (import pydantic: lazy)", bmed("literal", 0), bmed("literal", 1)),
        ("baseline + from pydantic import BaseModel", bmed("basemodel", 0), bmed("basemodel", 1)),
        ("baseline, the agent's imports (the floor)", floor, bmed("same-imports", 1)),
        ("agent idle, 10 services, end of window", idle_rss, med(lambda r: r.idle_pss or 0)),
        ("agent idle, highest RSS in the window", med(lambda r: r.idle_rss_max), None),
    ]
    print(f"   {'':46s} {'RSS':>9s} {'PSS':>9s}")
    for label, rss, pss in rows:
        print(f"   {label:46s} {mb(rss):>9s} {mb(pss) if pss else '':>9s}")
    print(f"   agent idle CPU over {args.idle_s:g} s: {idle_cpu:.2f}% of a core")
    if args.real_events:
        r0, r1 = med(lambda r: r.real_rss[0]), med(lambda r: r.real_rss[1])
        print(
            f"   REAL events: {med(lambda r: r.real_n):.0f} engine 'kill' events (SIGWINCH) at"
            f" {med(lambda r: r.real_n / r.real_s):.0f}/s;"
            f" {med(lambda r: r.real_cpu_ms_per_event):.2f} ms agent CPU/event;"
            f" RSS {mb(r0)} -> {mb(r1)} ({(r1 - r0) / 1024:+.1f} MB)"
        )
    growth = 0.0
    if args.synthetic_events:
        s0, s1 = med(lambda r: r.syn_rss[0]), med(lambda r: r.syn_rss[1])
        growth = s1 - s0
        print(
            f"   SYNTHETIC events: {args.synthetic_events} ({args.synthetic_actions}) written"
            f" into the agent's event stream; handled at {med(lambda r: r.syn_n / r.syn_s):.0f}/s;"
            f" {med(lambda r: r.syn_cpu_ms_per_event):.2f} ms agent CPU/event"
        )
        points = runs[len(runs) // 2].syn_checkpoints
        print("     RSS while injecting: " + ", ".join(f"{k:,}: {mb(v)}" for k, v in points))
        late = (points[-1][1] - points[1][1]) / 1024 if len(points) > 2 else 0.0
        print(
            f"     RSS before -> after + {args.settle_s:g} s: {mb(s0)} -> {mb(s1)}"
            f" ({growth / 1024:+.1f} MB; {late:+.1f} MB over the last three quarters);"
            f" PSS {mb(med(lambda r: r.syn_pss[0] or 0))} -> {mb(med(lambda r: r.syn_pss[1] or 0))}"
        )
    ratio = idle_rss / floor
    literal = idle_rss / (bmed("basemodel", 0) or 1.0)
    print(
        f"   idle RSS / floor (the agent's imports): {ratio:.2f}  (goal <= {GOAL_RSS_RATIO}:"
        f" {goal(ratio <= GOAL_RSS_RATIO)}; {literal:.2f} against baseline + BaseModel)"
    )
    if args.synthetic_events:
        print(
            f"   RSS growth after {args.synthetic_events} synthetic events: {growth / 1024:+.1f} MB"
            f"  (goal ~0, under 1 MB: {goal(growth < GOAL_GROWTH_KB)})"
        )
    print(
        f"   idle CPU: {idle_cpu:.2f}% of a core  (goal < {GOAL_IDLE_CPU_PCT}%:"
        f" {goal(idle_cpu < GOAL_IDLE_CPU_PCT)})"
    )
    found = [
        figures.ratio_figure(
            "agent idle RSS / idle process importing the same libraries",
            "KiB",
            [float(r.idle_rss) for r in runs],
            "idle process importing what the agent imports",
            [float(r) for r, _ in base["same-imports"]],
            goal_max=GOAL_RSS_RATIO,
        ),
        figures.Figure(
            name="agent idle CPU, 10 chatty services" + (" (no logs)" if args.no_logs else ""),
            unit="% of a core",
            values=[r.idle_cpu_pct for r in runs],
            goal=f"< {GOAL_IDLE_CPU_PCT}%",
            ok=idle_cpu < GOAL_IDLE_CPU_PCT,
        ),
    ]
    if args.synthetic_events:
        found.append(
            figures.Figure(
                name=f"agent RSS growth after {args.synthetic_events} synthetic events",
                unit="KiB",
                values=[float(r.syn_rss[1] - r.syn_rss[0]) for r in runs],
                goal="< 1 MB",
                ok=growth < GOAL_GROWTH_KB,
            )
        )
    figures.write(args.json_out, found)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--idle-s", type=float, default=60, help="idle window (default 60)")
    p.add_argument("--settle-s", type=float, default=10, help="pause before readings (10)")
    p.add_argument("--real-events", type=int, default=2000, help="real engine events (2000)")
    p.add_argument(
        "--synthetic-events", type=int, default=100_000, help="synthetic events (100000)"
    )
    p.add_argument("--runs", type=int, default=1, help="agent runs; medians are shown (1)")
    p.add_argument("--baseline-runs", type=int, default=3, help="baseline starts (3)")
    p.add_argument(
        "--synthetic-actions",
        default=SYNTHETIC_ACTIONS,
        help=f"comma-separated event actions to cycle (default {SYNTHETIC_ACTIONS!r})",
    )
    p.add_argument("--no-logs", action="store_true", help="agent without log collection")
    p.add_argument(
        "--log-flush-s", type=float, default=None, help="logs.flush_interval_s (agent default)"
    )
    p.add_argument("--image", default=IMAGE, help="an image present on the engine")
    figures.add_json_out(p)
    args = p.parse_args()
    ensure_testenv()
    print(f"== agent resources ({loadavg()})")
    base: dict[str, list[tuple[int, int | None]]] = {
        "literal": [],
        "basemodel": [],
        "same-imports": [],
    }
    modules = agent_imports()
    for _ in range(args.baseline_runs):
        for variant, found in base.items():
            found.append(measure_baseline(variant, 3.0, modules))
    for variant, found in base.items():
        print(f"   baseline ({variant}) RSS: {', '.join(mb(r) for r, _ in found)}")
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-res-") as tmp:
            print(f"-- agent run {i + 1} of {args.runs}")
            runs.append(asyncio.run(run_agent(args, Path(tmp))))
    report(args, base, runs)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
