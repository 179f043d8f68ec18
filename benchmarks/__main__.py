"""Run every benchmark and write ``benchmarks/REPORT.md``.

    python -m benchmarks [--full] [--only NAME ...] [--report PATH]

Each benchmark runs as its own process with quick defaults (the whole set in under
15 minutes on a 2-core machine) or, with ``--full``, at the sizes of the issues' goals.
Each writes its figures as JSON (``--json-out``); the report lists every figure with its
values (min / median / max over the benchmark's repeated runs), its baseline measured in
the same run, the ratio, the goal and the verdict, beside the load average before and
after the benchmark, the commit, and the exact command that reproduces the line.
A benchmark that fails or cannot run here (no binaries, stale binaries) is reported as
such with the end of its output; the others still run. Exits 0 whatever the verdicts.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import figures  # noqa: E402


@dataclass(frozen=True)
class Bench:
    """One benchmark script and its arguments in quick and full mode."""

    name: str
    script: str
    quick: tuple[str, ...]
    full: tuple[str, ...]


BENCHES = (
    Bench("converge", "bench_converge.py", ("--runs", "3", "--warmup", "1"), ("--runs", "7")),
    Bench(
        "agent_resources",
        "bench_agent_resources.py",
        ("--idle-s", "30", "--settle-s", "10", "--real-events", "200"),
        ("--runs", "3"),
    ),
    Bench(
        "hub_load",
        "bench_hub_load.py",
        ("--devices", "2000", "--interval", "6", "--duration", "30", "--long-poll"),
        ("--devices", "10000", "--interval", "30", "--duration", "120", "--long-poll"),
    ),
    Bench("catchup", "bench_catchup.py", ("--lines", "200000"), ("--lines", "1000000")),
    Bench("hub_decode", "bench_hub_decode.py", ("--runs", "5"), ("--runs", "15")),
    Bench(
        "rollout", "bench_rollout.py", ("--devices", "1000"), ("--devices", "1000", "--runs", "5")
    ),
    Bench("binary", "bench_binary.py", ("--runs", "5", "--idle-s", "3"), ("--runs", "11")),
    Bench("logs_ondemand", "bench_logs_ondemand.py", ("--lines", "20000"), ("--runs", "5")),
    Bench("dashboard", "bench_dashboard.py", ("--devices", "5000"), ("--requests", "200")),
    Bench("pg_commit", "bench_pg_commit.py", ("--runs", "3"), ("--runs", "7", "--syncs", "20000")),
)


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip()


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Outcome:
    """What one benchmark run left: its figures, or why it has none."""

    bench: Bench
    command: str
    load_before: str
    load_after: str
    seconds: float
    figures: list[figures.Figure]
    failure: str = ""


def run_one(bench: Bench, full: bool, out_dir: Path) -> Outcome:
    """Run one benchmark script; collect its figures or the end of its output."""
    args = bench.full if full else bench.quick
    json_out = out_dir / f"{bench.name}.json"
    cmd = [sys.executable, str(HERE / bench.script), *args]
    shown = " ".join(["python", f"benchmarks/{bench.script}", *args])
    print(f"== {shown}", flush=True)
    before, t0 = _load(), time.monotonic()
    done = subprocess.run(
        [*cmd, "--json-out", str(json_out)],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    seconds = time.monotonic() - t0
    (out_dir / f"{bench.name}.log").write_text(done.stdout)
    print(done.stdout, flush=True)
    found = figures.read(json_out) if json_out.exists() else []
    failure = ""
    if done.returncode != 0 or not found:
        tail = "\n".join(done.stdout.strip().splitlines()[-6:])
        failure = f"exit {done.returncode}; no figures" if not found else f"exit {done.returncode}"
        failure += f"\n\n```\n{tail}\n```"
    return Outcome(bench, shown, before, _load(), seconds, found, failure)


def _num(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _verdict(f: figures.Figure) -> str:
    return {True: "ok", False: "**MISSED**", None: "reported"}[f.ok]


def render(outcomes: list[Outcome], full: bool) -> str:
    """Return the report as Markdown."""
    dirty = " (with uncommitted changes)" if _git("status", "--porcelain") else ""
    lines = [
        "# Benchmark report",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; mode: {'full' if full else 'quick'}",
        f"- commit: `{_git('rev-parse', '--short', 'HEAD')}`{dirty}",
        f"- machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}, kernel {platform.release()}",
        "- every ratio is against a baseline measured in the same run; load averages "
        "(1, 5, 15 min) are read before and after each benchmark",
        "",
        "| figure | median | min-max (n) | baseline (median) | ratio | goal | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        for f in o.figures:
            spread = f"{_num(min(f.values))} - {_num(max(f.values))} ({len(f.values)})"
            base = f"{_num(statistics.median(f.baseline))} {f.baseline_name}" if f.baseline else ""
            ratio = _num(f.ratio) if f.ratio is not None else ""
            lines.append(
                f"| {f.name} | {_num(f.median)} {f.unit} | {spread} | {base} | {ratio} "
                f"| {f.goal} | {_verdict(f)} |"
            )
    lines += ["", "## Runs", ""]
    for o in outcomes:
        lines.append(f"### {o.bench.name}")
        lines.append("")
        lines.append(f"    {o.command}")
        lines.append("")
        lines.append(
            f"{o.seconds:.0f} s; load average before {o.load_before}, after {o.load_after}."
        )
        for f in o.figures:
            if f.note:
                lines.append(f"- {f.name}: {f.note}")
        if o.failure:
            lines.append(f"Did not produce every figure: {o.failure}")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="the issues' full sizes (slow)")
    p.add_argument("--only", nargs="+", choices=[b.name for b in BENCHES], help="run only these")
    p.add_argument("--report", type=Path, default=HERE / "REPORT.md", help="report path")
    args = p.parse_args()
    chosen = [b for b in BENCHES if not args.only or b.name in args.only]
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        outcomes = [run_one(b, args.full, Path(tmp)) for b in chosen]
    args.report.write_text(render(outcomes, args.full))
    print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
