"""Catch-up benchmark: N queued log lines in the agent store delivered to a real hub.

    python benchmarks/bench_catchup.py [--lines 1000000] [--batch N] [--batch-bytes N]

Measures, on loopback, against a real ``edge-hub serve`` process (TLS, mTLS, gzip):
time and lines/s until the outbox is drained, and bytes on the wire (compressed request
bodies) as a share of the raw bytes (the log lines' text; also the queued payloads).
In the same run, the ceiling: plain sqlite3 ``executemany`` of the same rows, 1,000 rows
per transaction, into a table shaped like the hub's ``events`` with the hub's pragmas.
Goals: catch-up >= 50% of the ceiling; wire < 20% of raw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

# This checkout first: an installed (editable) edgefleet elsewhere would otherwise be
# what runs, and the hub process is started from wherever ``hub`` was imported.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hubproc import HubProcess
from synckit import enroll_device, open_device

from edge_agent.sync import SyncLimits

SERVICES = ["web", "api", "sensor-bridge", "worker"]
PATHS = ["/api/v1/items", "/api/v1/users", "/healthz", "/api/v1/orders", "/api/v1/sensors/temp"]
HUB_EVENTS_DDL = """CREATE TABLE events (
    device_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
    created_at TEXT NOT NULL, received_at TEXT NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (device_id, seq)) WITHOUT ROWID"""


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


def ceiling(rows: list[tuple[int, str, str, str]], path: Path, synchronous: str) -> float:
    """Return rows/s of plain sqlite3 executemany into a hub-shaped table, 1,000 per commit."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute(HUB_EVENTS_DDL)
    now = datetime.now(UTC).isoformat()
    started = time.perf_counter()
    for i in range(0, len(rows), 1000):
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO events VALUES (?,?,?,?,?,?)",
            [("dev-0123456789abcdef", s, k, c, now, p) for s, k, c, p in rows[i : i + 1000]],
        )
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return len(rows) / elapsed


async def run(args: argparse.Namespace) -> None:
    """Fill the agent store, measure the ceiling, then the catch-up."""
    work = Path(tempfile.mkdtemp(prefix="bench-catchup-"))
    hub = HubProcess(work / "hub").start()
    try:
        await enroll_device(hub, work / "dev")
        limits = SyncLimits(
            batch_max_entries=args.batch,
            batch_max_bytes=args.batch_bytes,
            max_rounds=10**9,
            gzip_level=args.gzip_level,
            request_timeout_s=120,
        )
        dev = await open_device(work / "dev", limits=limits)
        lines = make_lines(args.lines)
        raw_line_bytes = sum(len(str(p["line"]).encode()) for p in lines)
        t = time.perf_counter()
        for i in range(0, len(lines), 10_000):
            await dev.store.append_many("log", lines[i : i + 10_000])
        fill_s = time.perf_counter() - t
        queued = (await dev.store.outbox_stats())["log"]
        rows = await dev.store.pending_raw(max_entries=args.lines, max_bytes=2**62)
        sync_mode = "FULL"  # the hub's default store.synchronous
        ceil = ceiling(rows, work / "ceiling.db", sync_mode)
        ceil_normal = ceiling(rows, work / "ceiling-normal.db", "NORMAL")
        del rows

        started = time.perf_counter()
        result = await dev.syncer.sync_once()
        elapsed = time.perf_counter() - started
        assert result.drained and result.sent == args.lines, result
        stored = await asyncio.to_thread(hub.events, dev.identity.device_id)
        assert len(stored) == args.lines
        await dev.close()
    finally:
        hub.stop()
    rate = args.lines / elapsed
    print(f"lines                 {args.lines:,} (avg line {raw_line_bytes / args.lines:.0f} B)")
    print(f"fill agent store      {fill_s:.1f} s")
    print(f"catch-up              {elapsed:.2f} s, {rate:,.0f} lines/s, {result.rounds} requests")
    print(f"ceiling (sqlite3, {sync_mode}) {ceil:,.0f} rows/s")
    print(f"ceiling (sqlite3, NORMAL) {ceil_normal:,.0f} rows/s")
    print(
        f"catch-up / ceiling    {rate / ceil:.2f}   (goal >= 0.50;"
        f" {rate / ceil_normal:.2f} of NORMAL)"
    )
    print(f"wire bytes            {result.wire_bytes:,} (gzip level {args.gzip_level})")
    print(f"wire / raw lines      {result.wire_bytes / raw_line_bytes:.3f}   (goal < 0.20)")
    print(f"wire / queued payload {result.wire_bytes / queued['bytes']:.3f}")
    print(f"wire / JSON bodies    {result.wire_bytes / result.raw_bytes:.3f}")
    print(
        json.dumps(
            {
                "lines_per_s": round(rate),
                "ceiling_full": round(ceil),
                "ceiling_normal": round(ceil_normal),
            }
        )
    )


def main() -> None:
    """Parse arguments and run."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=1_000_000)
    defaults = SyncLimits()  # the agent's own defaults unless told otherwise
    p.add_argument("--batch", type=int, default=defaults.batch_max_entries)
    p.add_argument("--batch-bytes", type=int, default=defaults.batch_max_bytes)
    p.add_argument("--gzip-level", type=int, default=defaults.gzip_level)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
