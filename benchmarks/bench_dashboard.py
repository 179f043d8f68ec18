"""Dashboard benchmark: the overview and the devices page at N SIMULATED devices.

    python benchmarks/bench_dashboard.py [--devices 5000] [--requests 60] [--json-out F]

Builds a real hub store (hub.store.sqlite.SqliteStore: its migrations, its schema)
directly with N devices — tags over a few sites and roles, a last contact spread over
the last two days, three reported services each, a target/applied revision pair that
makes about a tenth of them drifted — instead of enrolling N devices over TLS. Then
starts a real ``edge-hub serve`` process on that data dir (hub.testing.start_hub) and
asks, one request at a time on one kept-alive connection, as the hub's admin:

- ``GET /ui/`` (the overview: counts and two plots over every device),
- ``GET /ui/devices`` (the first page of the table, sorted by id),
- ``GET /ui/devices?drift=drifted&sort=last_contact&order=desc`` (a filtered, sorted page).

Server time is the request's time to the last byte on loopback (TLS session kept
alive), an upper bound of the hub's time. Goals (issue 12): p99 under 200 ms, the
overview under 100 KB. Each figure is printed as a ratio to its goal. Exits 0 whatever
the verdict. Needs no Docker and no registry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import figures  # noqa: E402

from hub.store.sqlite import SqliteStore  # noqa: E402
from hub.testing import RunningHub, start_hub  # noqa: E402

GOAL_P99_MS = 200.0
GOAL_OVERVIEW_KB = 100.0
PAGES = (
    ("overview", "/ui/"),
    ("devices", "/ui/devices"),
    ("devices filtered", "/ui/devices?drift=drifted&sort=last_contact&order=desc"),
)
SITES = ("berlin", "paris", "lyon", "oslo", "rome", "madrid", "vienna", "prague")
ROLES = ("kiosk", "sign", "gateway")


def _device_row(i: int, now: datetime) -> tuple[object, ...]:
    contact = now - timedelta(seconds=(i * 37) % (2 * 86400))
    target = 3 if i % 10 else 4  # every tenth device has a target it did not apply yet
    services = [
        {
            "name": name,
            "image": f"127.0.0.1:5000/edgefleet/{name}:1",
            "state": "running" if (i + k) % 97 else "exited",
            "health": "healthy",
            "restarts": (i + k) % 3,
        }
        for k, name in enumerate(("web", "worker", "proxy"))
    ]
    return (
        f"dev-{i:05d}",
        f"host-{i:05d}",
        json.dumps({"site": SITES[i % len(SITES)], "role": ROLES[i % len(ROLES)]}),
        f"{i:032x}",
        f"{i:064x}",
        (now + timedelta(days=300)).isoformat(),
        (now - timedelta(days=30)).isoformat(),
        "tok-bench",
        contact.isoformat(),
        "0.1.0",
        3,
        target,
        "running",
        "shop@1.3",
        json.dumps(services),
        json.dumps({"restarts": i % 5}),
        contact.isoformat(),
        3,
    )


async def build_store(data_dir: Path, devices: int) -> float:
    """Create the hub's store with ``devices`` devices; return the seconds it took."""
    started = time.perf_counter()
    store = SqliteStore(data_dir / "hub.db")
    await store.open()  # the real schema, every migration
    await store.close()
    now = datetime.now(UTC)
    db = sqlite3.connect(data_dir / "hub.db")
    with db:
        db.executemany(
            "INSERT INTO devices (id, hostname, tags, cert_serial, cert_fingerprint, "
            "cert_not_after, enrolled_at, enrollment_token, last_contact, agent_version, "
            "applied_revision, target_revision, state, release, services, counters, "
            "status_at, running_revision, has_full_status) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,1)",
            [_device_row(i, now) for i in range(devices)],
        )
    db.close()
    return time.perf_counter() - started


async def time_page(
    session: aiohttp.ClientSession, hub: RunningHub, path: str, requests: int
) -> tuple[list[float], int]:
    """Return each request's time to the last byte (ms) and the page's size (bytes)."""
    headers = {"Authorization": f"Bearer {hub.admin_token}", "Accept": "text/html"}
    times: list[float] = []
    size = 0
    for _ in range(requests + 2):  # two warm-up requests first
        started = time.perf_counter()
        async with session.get(hub.url + path, headers=headers, ssl=hub.ssl_context()) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET {path}: {resp.status} {body[:300]!r}")
        times.append((time.perf_counter() - started) * 1000)
        size = len(body)
    return times[2:], size


def p99(values: list[float]) -> float:
    """Return the 99th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def page_figures(name: str, times: list[float], size: int) -> list[figures.Figure]:
    """Return the figures of one page: p50 and p99 against the p99 goal, and its weight."""
    top = p99(times)
    found = [
        figures.Figure(
            f"dashboard {name}: server time p99",
            "ms",
            [top],
            f"p99 < {GOAL_P99_MS:g} ms",
            ok=top < GOAL_P99_MS,
            ratio=top / GOAL_P99_MS,
            note=f"p50 {statistics.median(times):.1f} ms over {len(times)} requests",
        ),
    ]
    if name == "overview":
        kb = size / 1024
        found.append(
            figures.Figure(
                f"dashboard {name}: page weight",
                "KB",
                [kb],
                f"< {GOAL_OVERVIEW_KB:g} KB",
                ok=kb < GOAL_OVERVIEW_KB,
                ratio=kb / GOAL_OVERVIEW_KB,
            )
        )
    return found


async def run(devices: int, requests: int) -> list[figures.Figure]:
    """Build the store, start the hub, time each page; return the figures."""
    found: list[figures.Figure] = []
    with tempfile.TemporaryDirectory(prefix="bench-dash-") as tmp:
        work = Path(tmp)
        built = await build_store(work / "data", devices)
        print(f"store with {devices} devices built in {built:.1f} s")
        hub = start_hub(work, timeout=60.0)
        try:
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=connector) as session:
                for name, path in PAGES:
                    times, size = await time_page(session, hub, path, requests)
                    print(
                        f"{name:18s} p50 {statistics.median(times):7.1f} ms  "
                        f"p99 {p99(times):7.1f} ms ({p99(times) / GOAL_P99_MS:.2f} of goal)  "
                        f"{size / 1024:7.1f} KB"
                        + (
                            f" ({size / 1024 / GOAL_OVERVIEW_KB:.2f} of goal)"
                            if name == "overview"
                            else ""
                        )
                    )
                    found += page_figures(name, times, size)
        finally:
            hub.stop()
    return found


def main() -> None:
    """Parse the arguments, run, print and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=60)
    figures.add_json_out(parser)
    args = parser.parse_args()
    found = asyncio.run(run(args.devices, args.requests))
    for f in found:
        print(f"{f.name}: {f.median:.1f} {f.unit} (goal {f.goal}: {'ok' if f.ok else 'MISSED'})")
    figures.write(args.json_out, found)


if __name__ == "__main__":
    main()
