"""Frozen edge-agent: size per architecture, start-to-ready, idle memory vs from source.

    python benchmarks/bench_binary.py [--runs N] [--idle-s S] [--allow-stale]
        [--arch aarch64|armv7 [--qemu-root DIR]] [--json-out PATH]

Reads the binaries in dist/ (build them with packaging/build.sh --mode both, and
packaging/build-arm.sh for ARM). Refuses binaries built from other sources than this
tree (each manifest's ``inputs_sha256`` against ``speclib.inputs_hash``) unless
``--allow-stale``. Prints each measurement as a ratio to its goal (ratio <= 1.00 meets
it):

- size: each onefile binary <= 30 MB;
- start-to-ready (x86_64): ``--version`` and ``selftest`` (Docker check skipped so the
  engine's latency is not counted), onefile vs onedir vs from source, median of N, <= 1 s;
- start-to-ready of ``edge-agent run`` (standalone, empty target): process start to
  READY=1 on a NOTIFY_SOCKET, median (min-max) of N starts, <= 1 s;
- idle memory: the same process S seconds after READY=1, frozen vs source in the same
  run (the median start's reading); frozen <= source.
  RSS is summed over the process tree (the onefile bootloader is a process of its own);
  PSS is also shown, since RSS counts shared library pages in each process.
  For onefile, the size of what it unpacked into its ``$TMPDIR`` is shown too.

``--arch aarch64`` (or ``armv7``) measures that architecture's onefile and onedir agent
under qemu-user (binfmt_misc, as packaging/build-arm.sh sets it up) with
``QEMU_LD_PREFIX=--qemu-root`` (default: the bullseye build root of that architecture
under $EDGEFLEET_BUILD_CACHE): start-to-ready and onefile vs onedir, not vs source. Times
under emulation are several times a real device's; the onefile/onedir ratio is the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "packaging"))
import speclib  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
import figures  # noqa: E402

DIST = REPO / "dist"
BUILD_CACHE = Path(os.environ.get("EDGEFLEET_BUILD_CACHE", "/var/cache/edgefleet-build"))
DEBIAN_ARCH = {"aarch64": "arm64", "armv7": "armhf"}
GOAL_SIZE = 30 * 2**20
GOAL_READY_S = 1.0
ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DOCKER_HOST": "unix:///nonexistent/docker.sock",
}


def _ratio(value: float, goal: float) -> str:
    r = value / goal
    return f"{r:5.2f}x {'ok' if r <= 1 else 'OVER'}"


def stale_binaries() -> list[str]:
    """Return the binaries in dist/ whose manifest's inputs hash is not this tree's."""
    stale = []
    hashes: dict[str, str] = {}
    for manifest in sorted(DIST.glob("edge-*.manifest.json")):
        m = json.loads(manifest.read_text())
        program = m.get("program", "")
        want = hashes.setdefault(program, speclib.inputs_hash(program))
        if m.get("inputs_sha256") != want:
            stale.append(manifest.name.removesuffix(".manifest.json"))
    return stale


def bench_sizes() -> list[figures.Figure]:
    print("== size (onefile binaries in dist/; goal <= 30 MB)")
    found = sorted(
        p
        for p in DIST.glob("edge-*-linux-*")
        if p.is_file() and not p.name.endswith((".json", ".tar.gz"))
    )
    out = []
    for p in found:
        size = p.stat().st_size
        print(f"  {p.name:42s} {size / 2**20:6.1f} MB  {_ratio(size, GOAL_SIZE)}")
        out.append(
            figures.Figure(
                name=f"{p.name} size",
                unit="MB",
                values=[size / 2**20],
                goal="≤ 30 MB",
                ok=size <= GOAL_SIZE,
            )
        )
    for p in sorted(DIST.glob("edge-*-onedir")):
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        tgz = p.with_name(p.name + ".tar.gz")
        extra = f", {tgz.stat().st_size / 2**20:.1f} MB as .tar.gz" if tgz.exists() else ""
        print(f"  {p.name + '/':42s} {size / 2**20:6.1f} MB unpacked{extra}")
    if not found:
        print("  (no binaries in dist/)")
    return out


def _time(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=ENV, capture_output=True, check=True, timeout=120)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _variants(arch: str | None = None) -> dict[str, list[str]]:
    """Return the commands to measure: this machine's (and source), or ARCH's under qemu."""
    name = speclib.artefact_name("edge-agent")
    if arch:
        name = name.removesuffix(speclib.arch_label()) + arch
    out = {}
    if (DIST / name).is_file():
        out["onefile"] = [str(DIST / name)]
    if (DIST / f"{name}-onedir" / "edge-agent").is_file():
        out["onedir"] = [str(DIST / f"{name}-onedir" / "edge-agent")]
    if not arch:
        out["source"] = [sys.executable, "-m", "edge_agent"]
    return out


def bench_start(runs: int, arch: str | None) -> None:
    where = f"{arch} under qemu" if arch else speclib.arch_label()
    print(f"== start-to-ready, {where} (median of {runs}; goal <= {GOAL_READY_S:.0f} s)")
    for label, cmd in _variants(arch).items():
        for sub in (["--version"], ["selftest"]):
            try:
                t = _time([*cmd, *sub], runs)
            except subprocess.CalledProcessError as exc:
                print(f"  {label:8s} {sub[0]:10s} failed: exit {exc.returncode}")
                continue
            print(f"  {label:8s} {sub[0]:10s} {t * 1000:7.0f} ms  {_ratio(t, GOAL_READY_S)}")


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo += [int(c) for c in children]
    return pids


def _memory(pid: int) -> tuple[int, int]:
    rss = pss = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss, pss


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _idle(
    cmd: list[str], idle_s: float, ready_timeout_s: float
) -> tuple[float, int, int, int] | str:
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        t = Path(tmp)
        config = t / "agent.toml"
        config.write_text(
            f'device_id = "bench-{os.getpid()}"\ndata_dir = "{t / "data"}"\n'
            f'[api]\nsocket = "{t / "api.sock"}"\n'
        )
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(t / "notify.sock"))
        notify.settimeout(ready_timeout_s)
        unpack = t / "tmp"  # the onefile bootloader unpacks into $TMPDIR
        unpack.mkdir()
        env = {**ENV, "NOTIFY_SOCKET": str(t / "notify.sock"), "TMPDIR": str(unpack)}
        env.pop("DOCKER_HOST")  # the agent needs its engine
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [*cmd, "--config", str(config), "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            try:
                while b"READY=1" not in notify.recv(4096):
                    pass
            except TimeoutError:
                return f"no READY=1 within {ready_timeout_s:g} s: " + (
                    (proc.poll() and proc.stderr.read(300).decode()) or ""
                )
            ready = time.perf_counter() - t0
            time.sleep(idle_s)
            rss, pss = _memory(proc.pid)
            return ready, rss, pss, _du(unpack)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            notify.close()


def bench_idle(idle_s: float, runs: int, arch: str | None) -> list[figures.Figure]:
    where = f", {arch} under qemu" if arch else ""
    print(
        f"== agent run{where}: start-to-ready (READY=1, median of {runs})"
        f" and memory {idle_s:.0f} s later"
    )
    results: dict[str, tuple[list[float], int, int]] = {}
    timeout = 180.0 if arch else 30.0
    for label, cmd in _variants(arch).items():
        got = [_idle(cmd, idle_s, timeout) for _ in range(runs)]
        fails = [r for r in got if isinstance(r, str)]
        if fails:
            print(f"  {label:8s} {fails[0]}")
            continue
        ok = sorted((r for r in got if not isinstance(r, str)), key=lambda r: r[0])
        readies = [r[0] for r in ok]
        _, rss, pss, unpacked = ok[len(ok) // 2]
        results[label] = (readies, rss, pss)
        med = statistics.median(readies)
        print(
            f"  {label:8s} ready {med * 1000:6.0f} ms ({min(readies) * 1000:.0f}-"
            f"{max(readies) * 1000:.0f})  {_ratio(med, GOAL_READY_S)}"
            f"   RSS {rss / 2**20:6.1f} MB   PSS {pss / 2**20:6.1f} MB"
            f"   unpacked in $TMPDIR {unpacked / 2**20:5.1f} MB"
        )
    out = []
    tag = f" ({arch}, qemu)" if arch else ""
    src = results.get("source")
    for label in ("onefile", "onedir"):
        if label not in results:
            continue
        readies, rss, pss = results[label]
        out.append(
            figures.Figure(
                name=f"agent {label}{tag}: start to READY=1",
                unit="s",
                values=readies,
                goal=f"≤ {GOAL_READY_S:g} s",
                ok=statistics.median(readies) <= GOAL_READY_S,
            )
        )
        if src:
            print(f"  {label} / source: RSS {_ratio(rss, src[1])}   PSS {pss / src[2]:.2f}x")
            out.append(
                figures.ratio_figure(
                    f"agent {label}: idle RSS / from source",
                    "bytes",
                    [float(rss)],
                    "the same agent from source",
                    [float(src[1])],
                    goal_max=1.0,
                )
            )
    if arch and "onefile" in results and "onedir" in results:
        one, folder = results["onefile"], results["onedir"]
        ratio = statistics.median(one[0]) / statistics.median(folder[0])
        print(f"  onefile / onedir: ready {ratio:.2f}x   RSS {one[1] / folder[1]:.2f}x")
        out.append(
            figures.ratio_figure(
                f"agent onefile / onedir ({arch}, qemu): start to READY=1",
                "s",
                one[0],
                "the onedir agent in the same run",
                folder[0],
                goal_max=1.0,
                note="informational: install.sh picks onedir where /tmp is small",
            )
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--idle-s", type=float, default=5.0)
    ap.add_argument("--allow-stale", action="store_true", help="measure stale binaries too")
    ap.add_argument(
        "--arch", choices=sorted(DEBIAN_ARCH), help="an ARM agent from dist/, under qemu-user"
    )
    ap.add_argument("--qemu-root", type=Path, help="QEMU_LD_PREFIX (default: its build root)")
    figures.add_json_out(ap)
    args = ap.parse_args()
    os.chdir(REPO)
    stale = stale_binaries()
    if stale and not args.allow_stale:
        sys.exit(
            "stale binaries (built from other sources than this tree): "
            + ", ".join(stale)
            + "\nrebuild: packaging/build.sh --mode both (and packaging/build-arm.sh),"
            " or pass --allow-stale"
        )
    if args.arch:
        root = args.qemu_root or BUILD_CACHE / "roots" / f"bullseye-{DEBIAN_ARCH[args.arch]}"
        if not (root / "lib").is_dir():
            sys.exit(f"no root for qemu at {root}: run packaging/build-arm.sh first")
        ENV["QEMU_LD_PREFIX"] = str(root)
    sizes = bench_sizes()
    bench_start(args.runs, args.arch)
    figures.write(args.json_out, sizes + bench_idle(args.idle_s, args.runs, args.arch))


if __name__ == "__main__":
    main()
