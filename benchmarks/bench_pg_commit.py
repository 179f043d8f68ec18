"""Group commit on PostgreSQL: the hub's sync ingest with and without it, on the real
PostgreSQL test server.

    python benchmarks/bench_pg_commit.py [--devices 400] [--syncs 4000] [--group 256]
                                         [--concurrency 10] [--callers 50] [--runs 3]
                                         [--json-out PATH]

``--callers`` tasks (the hub's requests in flight) send syncs through the store's own
``PostgresStore.ingest_sync`` (device row locked, entries inserted ``ON CONFLICT DO
NOTHING``, position and status written, the contact span) with a pool of
``--concurrency`` connections (``store.pool_max``), on a fresh database
(``EDGEFLEET_PG_ADMIN_URL``, default the server scripts/testenv-postgres.sh starts; dropped
at the end), in two forms interleaved ``--runs`` times:

- **per sync**: ``store.max_group_commit = 1``, every sync its own transaction;
- **grouped**: ``store.max_group_commit = --group`` (the default's 256): syncs that queue
  while every pooled connection is busy share a transaction (hub.store.pg_group_commit).

Each sync carries 2 entries and a status delta, as bench_hub_load's devices send. Prints
syncs/s, this process's CPU per sync (the hub's side: asyncpg, the ingest rules) and the
database server's CPU per sync (its pooled backends' /proc times), and the ratio grouped /
per sync of each. No TLS, HTTP or JSON here: this isolates what group commit changes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import figures

from edge_agent.protocol import OutboxEntry, StatusSnapshot
from hub.store import AuditRecord, EnrollmentTokenRecord, NewDevice, SyncBatch
from hub.store.postgres import PostgresStore
from hub.store.records import entry_row

ADMIN_URL = os.environ.get(
    "EDGEFLEET_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:55432/edgefleet_test"
)
TICK = os.sysconf("SC_CLK_TCK")


def _url(database: str) -> str:
    return f"{ADMIN_URL.rpartition('/')[0]}/{database}"


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _backend_cpu(pids: list[int]) -> float:
    """Return the CPU seconds the server's backends ``pids`` have used."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


class Fleet:
    """Devices and their next batches (2 entries and a status delta each)."""

    def __init__(self, n: int) -> None:
        self.ids = [f"dev-{i:05d}" for i in range(n)]
        self.seq = dict.fromkeys(self.ids, 0)
        self.now = datetime.now(UTC)

    def batch(self, device_id: str) -> SyncBatch:
        s = self.seq[device_id]
        self.seq[device_id] = s + 2
        entries = [
            entry_row(
                OutboxEntry(seq=q, kind="event", created_at=self.now, payload={"action": "die"})
            )
            for q in (s + 1, s + 2)
        ]
        status = StatusSnapshot(full=False, applied_revision=0, services=[])
        return SyncBatch(entries, status, 0, 0, epoch="e1", protocol=3)


async def _enroll(store: PostgresStore, fleet: Fleet) -> None:
    now = datetime.now(UTC)
    token = EnrollmentTokenRecord(
        "et_b", "h", len(fleet.ids), len(fleet.ids), now + timedelta(hours=1), {}, now, "bench"
    )
    audit = AuditRecord("bench", "token.create", "et_b", "ok", now, {})
    await store.create_enrollment_token(token, audit)
    for device_id in fleet.ids:
        new = NewDevice(device_id, "h", "1", f"s-{device_id}", "sha256:x", now + timedelta(1))
        await store.enroll_device("et_b", "h", new, now)


async def _syncs(
    store: PostgresStore, fleet: Fleet, order: list[str], callers: int, group_max: int
) -> None:
    """``callers`` tasks send the syncs of ``order`` through the store's ``ingest_sync``,
    with group commit up to ``group_max`` batches a transaction (1: every sync alone)."""
    store.ingest_groups.group_max = group_max
    queue = iter(order)

    async def caller() -> None:
        for device_id in queue:
            await store.ingest_sync(device_id, fleet.batch(device_id), datetime.now(UTC))

    await asyncio.gather(*(caller() for _ in range(callers)))


async def _measure(label: str, run: Any, syncs: int, pids: list[int]) -> dict[str, float]:
    cpu0, server0, t0 = time.process_time(), _backend_cpu(pids), time.perf_counter()
    await run()
    wall = time.perf_counter() - t0
    cpu, server = time.process_time() - cpu0, _backend_cpu(pids) - server0
    out = {
        "syncs_per_s": syncs / wall,
        "client_ms_per_sync": cpu / syncs * 1000,
        "server_ms_per_sync": server / syncs * 1000,
    }
    print(
        f"  {label:9} {out['syncs_per_s']:8.0f} syncs/s   this process "
        f"{out['client_ms_per_sync']:.3f} ms/sync   server {out['server_ms_per_sync']:.3f} ms/sync",
        flush=True,
    )
    return out


async def main(args: argparse.Namespace) -> int:
    database = f"bench_pgc_{uuid.uuid4().hex[:8]}"
    await _admin(f'CREATE DATABASE "{database}" TEMPLATE template0')
    store = PostgresStore(_url(database), pool_min=args.concurrency, pool_max=args.concurrency)
    results: dict[str, list[dict[str, float]]] = {"per sync": [], "grouped": []}
    try:
        await store.open()
        fleet = Fleet(args.devices)
        await _enroll(store, fleet)
        assert store._pool is not None
        held = [await store._pool.acquire() for _ in range(args.concurrency)]
        pids = [await conn.fetchval("SELECT pg_backend_pid()") for conn in held]
        for conn in held:  # every pooled connection's server process, all at once
            await store._pool.release(conn)
        pids = sorted(set(pids))
        order = [fleet.ids[i % len(fleet.ids)] for i in range(args.syncs)]
        print(
            f"== group commit on PostgreSQL: {args.devices} devices, {args.syncs} syncs per run, "
            f"{args.callers} in flight, pool of {args.concurrency}, groups of up to {args.group}; "
            f"load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        # warm-up: every device synced once each way
        await _syncs(store, fleet, fleet.ids, args.callers, 1)
        await _syncs(store, fleet, fleet.ids, args.callers, args.group)
        for run in range(args.runs):
            print(f"-- run {run + 1} of {args.runs}", flush=True)
            results["per sync"].append(
                await _measure(
                    "per sync",
                    lambda: _syncs(store, fleet, order, args.callers, 1),
                    args.syncs,
                    pids,
                )
            )
            results["grouped"].append(
                await _measure(
                    "grouped",
                    lambda: _syncs(store, fleet, order, args.callers, args.group),
                    args.syncs,
                    pids,
                )
            )
    finally:
        await store.close()
        await _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    def med(form: str, key: str) -> float:
        return statistics.median(r[key] for r in results[form])

    print(f"== medians of {args.runs} runs (load average {os.getloadavg()[0]:.2f})")
    rows = []
    for key, name in (
        ("syncs_per_s", "syncs/s"),
        ("client_ms_per_sync", "hub-side CPU ms per sync"),
        ("server_ms_per_sync", "server CPU ms per sync"),
    ):
        per, grouped = med("per sync", key), med("grouped", key)
        ratio = grouped / per
        print(f"   {name:26} per sync {per:9.3f}   grouped {grouped:9.3f}   ratio {ratio:.2f}")
        rows.append(
            figures.Figure(
                name=f"PostgreSQL ingest, {name}: grouped by {args.group} / one tx per sync",
                unit=name.split(" ", 1)[0] if key == "syncs_per_s" else "ms",
                values=[r[key] for r in results["grouped"]],
                goal="reported",
                baseline_name="one transaction per sync",
                baseline=[r[key] for r in results["per sync"]],
                ratio=ratio,
            )
        )
    figures.write(args.json_out, rows)
    return 0


def cli() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=400)
    p.add_argument("--syncs", type=int, default=4000, help="syncs per form per run (4000)")
    p.add_argument(
        "--group", type=int, default=256, help="store.max_group_commit when grouped (256)"
    )
    p.add_argument("--concurrency", type=int, default=10, help="store.pool_max (10)")
    p.add_argument("--callers", type=int, default=50, help="syncs in flight at once (50)")
    p.add_argument("--runs", type=int, default=3)
    figures.add_json_out(p)
    return asyncio.run(main(p.parse_args()))


if __name__ == "__main__":
    sys.exit(cli())
