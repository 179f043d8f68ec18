"""Catch-up benchmark: N queued log lines in the agent store delivered to a real hub.

    python benchmarks/bench_catchup.py [--lines 1000000] [--repeat 3] [--batch N]
        [--batch-bytes N] [--gzip-level N] [--variant NAME:KEY=VALUE,...] [--json-out PATH]

Measures, on loopback, against a real ``edge-hub serve`` process (TLS, mTLS, gzip):
time and lines/s until the outbox is drained, the CPU each side spends per 1,000 lines
(the agent's syncer runs in this process; the hub's from /proc), and bytes on the wire
(compressed request bodies) as a share of the raw bytes.

The ceiling is shaped like the real workload and measured in the same run, interleaved
with the catch-up runs (ceiling, catch-up, ceiling, catch-up, ...): plain sqlite3 on a
database made by the hub's own migrations with the hub writer's pragmas
(``synchronous=FULL``, WAL, ``wal_autocheckpoint=0``, a PASSIVE checkpoint every second
from a second connection as the hub's checkpointer does), the same rows inserted with
the hub's statement (``INSERT OR IGNORE INTO events``) plus the per-request device update,
one transaction per request of the size the agent actually sent (the catch-up's
lines / requests). Everything the hub does beyond storing (TLS, gzip, JSON, validation)
is what the ratio measures. Goals: catch-up ≥ 0.5 of the ceiling; wire < 20% of raw.
Temporary files are removed at the end, also on failure.

``--variant`` (repeatable) runs A/B comparisons in the same run: each repeat runs every
variant in turn (one ceiling per repeat), with ``body_format`` (json|lines),
``acked_keep`` (StoreLimits.acked_keep_max_entries; 0 deletes at each ack) and
``gzip_level`` set per variant; the figures are those of the first variant. The rows an
agent keeps after the ack are deleted after the drain (``purge_acked``), timed apart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

# This checkout first: an installed (editable) edgefleet elsewhere would otherwise be
# what runs, and the hub process is started from wherever ``hub`` was imported.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import figures
from hubproc import HubProcess
from synckit import enroll_device, open_device

from edge_agent.store import StoreLimits
from edge_agent.sync import SyncLimits
from hub.store.sqlite import migrate

SERVICES = ["web", "api", "sensor-bridge", "worker"]
PATHS = ["/api/v1/items", "/api/v1/users", "/healthz", "/api/v1/orders", "/api/v1/sensors/temp"]
DEVICE = "dev-0123456789abcdef"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def make_lines(n: int, seed: int = 1) -> list[dict[str, str | float]]:
    """Return n realistic container log records (~100-byte lines) as the agent queues them.

    As ``edge_agent.logs.LogCollector`` does: ``ts`` in epoch seconds rounded to the
    millisecond (a float), the line as the container wrote it (here with its own time).
    """
    rng = random.Random(seed)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for i in range(n):
        t = t0 + timedelta(microseconds=i * 4000 + rng.randrange(4000))
        ts = t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
        hms = ts[11:23]
        r = rng.random()
        if r < 0.55:
            line = (
                f"{hms} INFO  http.access {rng.choice(['GET', 'GET', 'POST'])} "
                f"{rng.choice(PATHS)}/{rng.randrange(5000)} {rng.choice([200] * 6 + [201, 404])} "
                f"{rng.randrange(1, 400)}ms ua=edge-client/1.4 user=user{rng.randrange(40)}"
            )
        elif r < 0.85:
            line = (
                f"{hms} INFO  sensor.read sensor_id=th-{rng.randrange(32):02d} "
                f"temp_c={rng.uniform(18, 30):.1f} humidity_pct={rng.randrange(30, 70)} "
                f"battery={rng.randrange(60, 100)}% status=ok"
            )
        elif r < 0.97:
            line = (
                f"{hms} DEBUG worker.queue job=sync-{rng.randrange(10**5):05d} queue=default "
                f"state={rng.choice(['started', 'done', 'done', 'retry'])} attempt=1 took=12ms"
            )
        else:
            line = (
                f"{hms} WARN  upstream.client request to https://backend.local/api timed out "
                f"after 5000ms, retrying (attempt {rng.randrange(2, 5)} of 5)"
            )
        out.append(
            {
                "service": rng.choice(SERVICES),
                "ts": round(t.timestamp(), 3),
                "stream": "stdout",
                "line": line,
            }
        )
    return out


def _checkpoints(path: Path, stop: threading.Event) -> None:
    """PASSIVE checkpoints every second from a second connection, like the hub's."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA busy_timeout=5000")
    while not stop.wait(1.0):
        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    db.close()


def ceiling(rows: list[tuple[int, str, str, str]], path: Path, per_request: int) -> float:
    """Return rows/s of plain sqlite3 storing ``rows`` as the hub does, one commit a request."""
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "wal_autocheckpoint=0"):
        db.execute(f"PRAGMA {pragma}")
    migrate(db)
    now = datetime.now(UTC).isoformat()
    db.execute(
        "INSERT INTO devices (id, cert_serial, cert_fingerprint, cert_not_after, enrolled_at,"
        " enrollment_token) VALUES (?,?,?,?,?,?)",
        (DEVICE, "1", "", now, now, ""),
    )
    stop = threading.Event()
    checkpointer = threading.Thread(target=_checkpoints, args=(path, stop))
    checkpointer.start()
    try:
        started = time.perf_counter()
        for i in range(0, len(rows), per_request):
            chunk = rows[i : i + per_request]
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?)",
                [(DEVICE, s, k, c, now, p) for s, k, c, p in chunk],
            )
            db.execute(
                "UPDATE devices SET last_contact = ?, acked_seq = ?, seq_high = ? WHERE id = ?",
                (now, chunk[-1][0], chunk[-1][0], DEVICE),
            )
            db.execute("COMMIT")
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        checkpointer.join()
        db.close()
    return len(rows) / elapsed


def proc_cpu_s(pid: int) -> float:
    """Return utime + stime of ``pid`` and every live descendant (decode workers), seconds."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            raw = Path(f"/proc/{p}/stat").read_text()
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        todo += [int(k) for k in kids]
    return total


def wait_idle(pid: int, *, quiet_s: float = 0.5, timeout_s: float = 60.0) -> None:
    """Wait until ``pid`` and its descendants use < 5% of a core over ``quiet_s``.

    The hub as deployed starts its parse workers in the background (each imports the hub
    for 1-2 s of CPU); a catch-up timed before they are up would be charged for that.
    """
    deadline = time.monotonic() + timeout_s
    before = proc_cpu_s(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = proc_cpu_s(pid)
        if now - before < 0.05 * quiet_s:
            return
        before = now
    raise RuntimeError(f"hub {pid} still busy after {timeout_s:.0f} s")


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """Return (name, settings) of ``NAME:KEY=VALUE,...``."""
    name, _, rest = spec.partition(":")
    settings = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    unknown = set(settings) - {"body_format", "acked_keep", "gzip_level"}
    if unknown:
        raise SystemExit(f"--variant {spec}: unknown keys {sorted(unknown)}")
    return name, settings


async def catch_up(
    args: argparse.Namespace, work: Path, lines: list[dict], variant: dict[str, str]
) -> dict:
    """Fill a fresh agent store with ``lines`` and drain it to a fresh hub; return figures."""
    # The hub as deployed: its parse workers started with it (the test default does not).
    hub = HubProcess(work / "hub", sections={"limits": {"prestart_parse_workers": True}})
    hub.start()
    try:
        await enroll_device(hub, work / "dev")
        limits = SyncLimits(
            batch_max_entries=args.batch,
            batch_max_bytes=args.batch_bytes,
            max_rounds=10**9,
            gzip_level=int(variant.get("gzip_level", args.gzip_level)),
            request_timeout_s=120,
            body_format=variant.get("body_format", SyncLimits.body_format),
        )
        keep = StoreLimits().acked_keep_max_entries
        store_limits = StoreLimits(acked_keep_max_entries=int(variant.get("acked_keep", keep)))
        dev = await open_device(work / "dev", limits=limits, store_limits=store_limits)
        for i in range(0, len(lines), 10_000):
            await dev.store.append_many("log", lines[i : i + 10_000])
        queued = (await dev.store.outbox_stats())["log"]
        rows = await dev.store.pending_raw(max_entries=len(lines), max_bytes=2**62)
        assert hub.running is not None
        hub_pid = hub.running.process.pid
        await asyncio.to_thread(wait_idle, hub_pid)
        hub_cpu0, cpu0 = proc_cpu_s(hub_pid), time.process_time()
        started = time.perf_counter()
        result = await dev.syncer.sync_once()
        elapsed = time.perf_counter() - started
        agent_cpu, hub_cpu = time.process_time() - cpu0, proc_cpu_s(hub_pid) - hub_cpu0
        cpu1 = time.process_time()
        await dev.store.purge_acked()  # what the sync loop does once the outbox is drained
        purge_cpu = time.process_time() - cpu1
        assert result.drained and result.sent == len(lines), result
        stored = await asyncio.to_thread(hub.events, dev.identity.device_id)
        assert len(stored) == len(lines)
        await dev.close()
    finally:
        hub.stop()
    return {
        "rate": len(lines) / elapsed,
        "elapsed": elapsed,
        "rows": rows,
        "result": result,
        "queued_bytes": queued["bytes"],
        "agent_cpu_per_1k": agent_cpu / len(lines) * 1000,
        "purge_cpu_per_1k": purge_cpu / len(lines) * 1000,
        "hub_cpu_per_1k": hub_cpu / len(lines) * 1000,
    }


async def run(args: argparse.Namespace) -> None:
    """Interleave ceiling and catch-up runs (each variant in turn); print the medians."""
    lines = make_lines(args.lines)
    raw_line_bytes = sum(len(str(p["line"]).encode()) for p in lines)
    variants = [parse_variant(v) for v in args.variant] or [("default", {})]
    got_by: dict[str, list[dict]] = {name: [] for name, _ in variants}
    ceilings: list[float] = []
    print(
        f"== catch-up of {args.lines:,} lines (avg {raw_line_bytes / args.lines:.0f} B) "
        f"({Path('/proc/loadavg').read_text().split()[0]} load, {os.cpu_count()} cores)"
    )
    root = Path(tempfile.mkdtemp(prefix="bench-catchup-"))
    try:
        for rep in range(args.repeat):
            ceil = 0.0
            for name, settings in variants:
                work = root / f"run{rep}-{name}"
                got = await catch_up(args, work, lines, settings)
                res = got["result"]
                rows = got.pop("rows")
                if not ceil:
                    per_request = max(1, round(args.lines / res.rounds))
                    ceil = ceiling(rows, work / "ceiling.db", per_request)
                    ceilings.append(ceil)
                shutil.rmtree(work, ignore_errors=True)
                got_by[name].append(got)
                print(
                    f"   run {rep + 1} {name}: catch-up {got['elapsed']:.2f} s "
                    f"{got['rate']:,.0f} lines/s in {res.rounds} requests; ceiling {ceil:,.0f} "
                    f"rows/s; ratio {got['rate'] / ceil:.2f}; CPU/1k agent "
                    f"{got['agent_cpu_per_1k'] * 1e3:.2f} ms (+purge "
                    f"{got['purge_cpu_per_1k'] * 1e3:.2f}), "
                    f"hub {got['hub_cpu_per_1k'] * 1e3:.2f} ms; "
                    f"wire/raw {res.wire_bytes / raw_line_bytes:.3f}; "
                    f"load {Path('/proc/loadavg').read_text().split()[0]}"
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = statistics.median
    for name, settings in variants:
        runs = got_by[name]
        r = med([g["rate"] for g in runs]) / med(ceilings)
        print(
            f"{name:>10} {settings or ''}: ratio {r:.2f}; CPU per 1,000 lines agent "
            f"{med([g['agent_cpu_per_1k'] for g in runs]) * 1e3:.2f} ms (+purge "
            f"{med([g['purge_cpu_per_1k'] for g in runs]) * 1e3:.2f}), hub "
            f"{med([g['hub_cpu_per_1k'] for g in runs]) * 1e3:.2f} ms; wire/raw "
            f"{runs[-1]['result'].wire_bytes / raw_line_bytes:.3f}"
        )
    first = got_by[variants[0][0]]
    rates = [g["rate"] for g in first]
    cpu_agent = [g["agent_cpu_per_1k"] for g in first]
    cpu_hub = [g["hub_cpu_per_1k"] for g in first]
    res = first[-1]["result"]
    got = first[-1]
    ratio = med(rates) / med(ceilings)
    print(
        f"catch-up / ceiling    {ratio:.2f}   (goal >= 0.50: {'ok' if ratio >= 0.5 else 'MISSED'})"
    )
    print(
        f"CPU per 1,000 lines   agent {med(cpu_agent) * 1e3:.1f} ms,"
        f" hub {med(cpu_hub) * 1e3:.1f} ms"
    )
    print(f"wire bytes            {res.wire_bytes:,}")
    print(f"wire / raw lines      {res.wire_bytes / raw_line_bytes:.3f}   (goal < 0.20)")
    print(f"wire / queued payload {res.wire_bytes / got['queued_bytes']:.3f}")
    print(f"wire / JSON bodies    {res.wire_bytes / res.raw_bytes:.3f}")
    wire = [res.wire_bytes / raw_line_bytes]
    figures.write(
        args.json_out,
        [
            figures.Figure(
                name=f"catch-up of {args.lines:,} lines / SQLite ceiling (rate)",
                unit="lines/s",
                values=rates,
                goal="rate / ceiling ≥ 0.5",
                ok=ratio >= 0.5,
                baseline_name="hub-shaped sqlite3 inserts, same batches",
                baseline=ceilings,
                ratio=ratio,
            ),
            figures.Figure(
                name="agent CPU per 1,000 lines caught up",
                unit="s",
                values=cpu_agent,
                goal="reported",
                note=f"hub CPU per 1,000 lines: median {med(cpu_hub) * 1e3:.1f} ms",
            ),
            figures.Figure(
                name="wire bytes / raw log bytes",
                unit="ratio",
                values=wire,
                goal="< 0.20",
                ok=wire[0] < 0.2,
            ),
        ],
    )


def main() -> None:
    """Parse arguments and run."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=1_000_000)
    defaults = SyncLimits()  # the agent's own defaults unless told otherwise
    p.add_argument("--batch", type=int, default=defaults.batch_max_entries)
    p.add_argument("--batch-bytes", type=int, default=defaults.batch_max_bytes)
    p.add_argument("--gzip-level", type=int, default=defaults.gzip_level)
    p.add_argument("--repeat", type=int, default=3, help="interleaved ceiling/catch-up pairs")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME:KEY=VALUE,... (body_format, acked_keep, gzip_level); repeat for A/B",
    )
    figures.add_json_out(p)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
