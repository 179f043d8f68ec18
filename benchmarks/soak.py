"""A soak: one agent with a 5-service release under a seeded stream of faults, sampled.

    python benchmarks/soak.py --minutes N [--seed S] [--out DIR] [--interval-s 5]
        [--rss-bound-mib-h 2] [--fd-bound-h 6] [--warmup-s 60]
        [--agent-kill-every 90 240] [--keep] [--json-out PATH]

A real hub process (``tests/hubproc.py``) and a real agent process (``tests/agentproc.py``,
production ``[supervisor]`` settings, container log collection on) enrolled with it
through the fault proxy (``tests/faultproxy.py``). The hub gives the agent a release of 5
services of the test image ``good`` (each prints a line a second, so logs flow). Then, for
``--minutes``, faults drawn from ``random.Random(seed)`` (``soak_faults.py``): container
kills through the engine API, hub restarts (stop, down 1-10 s, start on the same port and
data dir), network cuts through the proxy (5-60 s), and agent kill -9 + restart every few
minutes. Every ``--interval-s`` a sample: agent RSS, PSS, CPU (% of a core since the
previous sample), open files (/proc/PID/fd), store size (agent.db + WAL + SHM), outbox
depth (entries and bytes from ``GET /v1/status``), and the hub's stored event count.

At the end the network is healed and the hub up; the soak waits until the agent has seen
every seq it had assigned acknowledged, stops it (SIGTERM) and checks exactly-once
delivery (``soak_delivery.py``). In ``--out``: ``samples.csv``, one PNG per series,
``faults.csv``, ``report.txt``. Slopes are per hour over the second half of the run;
RSS, PSS, CPU and open files within each agent lifetime (a restart resets them), leaving
out each lifetime's first ``--warmup-s`` (60 s). The
verdict: RSS and open-file slopes within their bounds, every event delivered once.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import figures
from _common import cleanup_device, docker_env, ensure_testenv, goal, loadavg
from figures import Figure
from soak_delivery import Delivery, check_delivery
from soak_faults import Fault, FaultRates, plan_faults
from soak_rig import Rig
from soak_series import Sample, max_per_lifetime, plot_all, second_half, slopes, write_csv

DRAIN_TIMEOUT_S = 300.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, required=True, help="length of the fault phase")
    p.add_argument("--seed", type=int, default=None, help="fault seed (default: the time)")
    p.add_argument("--out", type=Path, default=Path("soak-report"), help="report directory")
    p.add_argument("--interval-s", type=float, default=5.0, help="seconds between samples")
    p.add_argument(
        "--rss-bound-mib-h", type=float, default=2.0, help="RSS slope bound, MiB per hour"
    )
    p.add_argument("--fd-bound-h", type=float, default=6.0, help="open-file slope bound, per hour")
    p.add_argument(
        "--warmup-s",
        type=float,
        default=60.0,
        help="seconds after each agent start left out of the growth slopes",
    )
    p.add_argument(
        "--agent-kill-every",
        type=float,
        nargs=2,
        default=(90.0, 240.0),
        metavar=("MIN_S", "MAX_S"),
        help="interval range of agent kill -9 (0 0: never, for one long agent lifetime)",
    )
    p.add_argument("--keep", action="store_true", help="keep the hub and agent data dirs")
    figures.add_json_out(p)
    return p.parse_args(argv)


class Soak:
    """One soak run: the rig, the fault plan, the samples and what happened."""

    def __init__(self, rig: Rig, plan: list[Fault], interval_s: float) -> None:
        self.rig = rig
        self.plan = plan
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self.applied: list[tuple[float, str, str]] = []  # t, kind, description
        self.t0 = 0.0

    def now(self) -> float:
        """Seconds since the fault phase started."""
        return time.monotonic() - self.t0

    async def sample_forever(self) -> None:
        """Take a sample every interval (skipping none; a slow reading delays the next)."""
        while True:
            self.samples.append(await self.rig.sample(self.now()))
            await asyncio.sleep(self.interval_s)

    async def run_faults(self, seconds: float) -> None:
        """Apply every planned fault at its time; return when the phase is over."""
        for fault in self.plan:
            await asyncio.sleep(max(0.0, fault.at_s - self.now()))
            try:
                what = await self.rig.apply(fault)
            except Exception as exc:  # a fault that fails to apply is reported, not fatal
                what = f"{fault.kind} FAILED: {exc!r}"
            self.applied.append((round(fault.at_s, 1), fault.kind, what))
            print(f"  {self.now():7.1f} s  {what}", flush=True)
        await asyncio.sleep(max(0.0, seconds - self.now()))

    async def run(self, seconds: float) -> None:
        """The fault phase with sampling alongside."""
        self.t0 = time.monotonic()
        sampler = asyncio.create_task(self.sample_forever())
        try:
            await self.run_faults(seconds)
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)

    async def drain(self) -> tuple[Delivery, float]:
        """Heal, wait for every assigned seq to be acknowledged, stop the agent, check."""
        await self.rig.heal()
        if self.rig.hub.running is None:
            await asyncio.to_thread(self.rig.hub.start)
        t0 = time.monotonic()
        target, _ = await asyncio.to_thread(self.rig.agent_outbox)
        deadline = t0 + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            _, acked = await asyncio.to_thread(self.rig.agent_outbox)
            if acked >= target.highest_seq:
                break
            await asyncio.sleep(1)
        drained_s = time.monotonic() - t0
        assert self.rig.agent is not None
        await self.rig.agent.stop()
        outbox, _ = await asyncio.to_thread(self.rig.agent_outbox)
        rows, offset = await asyncio.to_thread(self.rig.hub_rows)
        if offset:
            rows = [(seq - offset, kind, p) for seq, kind, p in rows]
        return check_delivery(outbox, rows), drained_s


def verdict(
    samples: list[Sample], args: argparse.Namespace
) -> tuple[dict[str, float], bool | None, bool | None]:
    """Return the slopes and whether RSS and open files stay within their bounds.

    None when a slope could not be taken (no lifetime with 3 samples past its warm-up)."""
    sl = slopes(samples, args.warmup_s)
    rss, fds = sl["rss_kib"] / 1024, sl["open_fds"]
    rss_ok = None if math.isnan(rss) else rss <= args.rss_bound_mib_h
    fd_ok = None if math.isnan(fds) else fds <= args.fd_bound_h
    return sl, rss_ok, fd_ok


def word(ok: bool | None) -> str:
    """Return the verdict word, or say the run was too short to judge."""
    return "n/a (too few samples past warm-up)" if ok is None else goal(ok)


def report_lines(
    soak: Soak, delivery: Delivery, drained_s: float, args: argparse.Namespace, load: str
) -> list[str]:
    """Return the text report: context, slopes, per-lifetime maxima, verdicts."""
    sl, rss_ok, fd_ok = verdict(soak.samples, args)
    kinds: dict[str, int] = {}
    for _, kind, _ in soak.applied:
        kinds[kind] = kinds.get(kind, 0) + 1
    rss_max = max_per_lifetime(soak.samples, "rss_kib")
    fd_max = max_per_lifetime(soak.samples, "open_fds")
    half = second_half(soak.samples)
    lines = [
        f"soak: {args.minutes:g} min of faults, seed {args.seed}, {len(soak.samples)} samples "
        f"every {args.interval_s:g} s; {load} (before) / {loadavg()} (after)",
        f"faults applied: {json.dumps(kinds)}; agent lifetimes: {soak.rig.lifetime}",
        "slopes per hour over the second half (RSS, PSS, CPU, open files within lifetimes):",
    ]
    lines += [f"  {name:15s} {value:12.2f}" for name, value in sl.items()]
    lines += [
        "max RSS per lifetime (MiB): "
        + ", ".join(f"#{k}: {v / 1024:.1f}" for k, v in sorted(rss_max.items())),
        "max open files per lifetime: "
        + ", ".join(f"#{k}: {v:.0f}" for k, v in sorted(fd_max.items())),
        f"second-half samples: {len(half)} over "
        f"{(half[-1].t_s - half[0].t_s) / 60 if half else 0:.1f} min, of them "
        f"{sum(1 for s in half if s.lifetime and s.age_s >= args.warmup_s)} past an agent's "
        f"first {args.warmup_s:g} s (used for the per-lifetime slopes)",
        f"RSS slope {sl['rss_kib'] / 1024:.2f} MiB/h (bound {args.rss_bound_mib_h:g}): "
        f"{word(rss_ok)}",
        f"open files slope {sl['open_fds']:.2f} /h (bound {args.fd_bound_h:g}): {word(fd_ok)}",
        f"delivery (waited {drained_s:.1f} s for the last acks): {delivery.summary()}",
        f"hub events by kind: {json.dumps(delivery.kinds)}",
        f"every event delivered exactly once: {goal(delivery.ok)}",
    ]
    if delivery.missing:
        lines.append(f"  first missing seqs: {delivery.missing[:20]}")
    return lines


def write_report(soak: Soak, delivery: Delivery, lines: list[str], out: Path) -> None:
    """Write samples, faults, plots and the text report into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "samples.csv", soak.samples)
    with (out / "faults.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["t_s", "kind", "what"])
        w.writerows(soak.applied)
    restarts = [t for t, kind, _ in soak.applied if kind == "agent_kill"]
    plot_all(out, soak.samples, restarts, [(t, k) for t, k, _ in soak.applied])
    (out / "report.txt").write_text("\n".join(lines) + "\n")


def json_figures(soak: Soak, delivery: Delivery, args: argparse.Namespace) -> list[Figure]:
    """Return the soak's figures for ``python -m benchmarks``."""
    sl, rss_ok, fd_ok = verdict(soak.samples, args)
    cpu = [s.cpu_pct for s in second_half(soak.samples) if not math.isnan(s.cpu_pct)]
    note = f"{args.minutes:g} min, seed {args.seed}, within agent lifetimes, 2nd half"
    return [
        Figure(
            "soak: agent RSS slope",
            "MiB/h",
            [sl["rss_kib"] / 1024],
            f"≤ {args.rss_bound_mib_h:g}",
            rss_ok,
            note=note,
        ),
        Figure(
            "soak: agent open files slope",
            "fds/h",
            [sl["open_fds"]],
            f"≤ {args.fd_bound_h:g}",
            fd_ok,
            note=note,
        ),
        Figure(
            "soak: events missing or stored twice",
            "events",
            [float(len(delivery.missing) + len(delivery.unknown) + delivery.log_duplicates)],
            "0",
            delivery.ok,
            note=delivery.summary(),
        ),
        Figure("soak: agent CPU (2nd half)", "% of a core", cpu or [math.nan], "—", note=note),
    ]


async def soak_main(args: argparse.Namespace) -> int:
    """Run the soak and write its report; exit code 0 whatever the verdicts."""
    images = docker_env.TestImages()
    seconds = args.minutes * 60
    low, high = args.agent_kill_every
    rates = FaultRates(agent_kill=(low, high))
    plan = plan_faults(random.Random(args.seed), seconds, rates)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    rig = Rig(work, images.ref("good"))
    load = loadavg()
    print(f"soak seed {args.seed}: {len(plan)} faults planned over {args.minutes:g} min; {load}")
    try:
        await rig.start()
        soak = Soak(rig, plan, args.interval_s)
        await soak.run(seconds)
        delivery, drained_s = await soak.drain()
    except BaseException:
        if rig.agent is not None:
            print(rig.agent.log(), file=sys.stderr)
        raise
    finally:
        await rig.close()
        if rig.device_id:
            await cleanup_device(rig.device_id)
        if args.keep:
            print(f"hub and agent data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    lines = report_lines(soak, delivery, drained_s, args, load)
    write_report(soak, delivery, lines, args.out)
    figures.write(args.json_out, json_figures(soak, delivery, args))
    print("\n".join(lines))
    print(f"report in {args.out}/ (samples.csv, faults.csv, report.txt, one PNG per series)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    if args.seed is None:
        args.seed = int(time.time())
    ensure_testenv()
    return asyncio.run(soak_main(args))


if __name__ == "__main__":
    sys.exit(main())
