"""``edgectl device metrics DEVICE [--since 1h] [--limit N]``: a device's metrics history.

Prints a row per sample (time, host CPU, memory, disks, temperature, containers), then
the newest sample's containers, then what the hub's bounds cost (samples trimmed, too
large); ``--json`` prints the API's answer as it is. Device-supplied text is sanitized.
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

Call = Callable[..., Any]
Table = Callable[[list[tuple[str, ...]]], None]


def add_parser(device: Any) -> None:
    """Add ``device metrics`` to the ``device`` subcommands."""
    p = device.add_parser("metrics", help="the device's metrics history (host and containers)")
    p.add_argument("id")
    p.add_argument("--since", default="1h", help="a duration back from now (default 1h)")
    p.add_argument("--limit", type=int, default=None, help="the newest N samples at most")


def run(args: argparse.Namespace, call: Call, parse_duration: Callable[[str], int]) -> Any:
    """Call the hub for the device's samples since ``--since``."""
    since = datetime.now(UTC) - timedelta(seconds=parse_duration(args.since))
    query = {"since": since.isoformat()}
    if args.limit is not None:
        query["limit"] = str(args.limit)
    device = urllib.parse.quote(args.id, safe="")
    return call("GET", f"/api/v1/devices/{device}/metrics?{urllib.parse.urlencode(query)}")


def _gib(n: Any) -> str:
    return f"{n / 2**30:.1f}G" if isinstance(n, int | float) else "-"


def _mib(n: Any) -> str:
    return f"{n / 2**20:.1f}M" if isinstance(n, int | float) else "-"


def _pct(v: Any) -> str:
    return f"{v:.1f}%" if isinstance(v, int | float) else "-"


def _disk(sample: dict[str, Any], name: str) -> str:
    for d in sample.get("disks") or []:
        if isinstance(d, dict) and d.get("name") == name:
            return f"{_gib(d.get('used_bytes'))}/{_gib(d.get('total_bytes'))}"
    return "-"


def _temp(sample: dict[str, Any]) -> str:
    temps = [t.get("celsius") for t in sample.get("temperatures") or [] if isinstance(t, dict)]
    temps = [t for t in temps if isinstance(t, int | float)]
    return f"{max(temps):.1f}C" if temps else "-"


def sample_row(at: str, s: dict[str, Any]) -> tuple[str, ...]:
    """Return one table row for a sample (missing figures shown as -)."""
    mem = s.get("memory") if isinstance(s.get("memory"), dict) else {}
    return (
        at,
        _pct(s.get("cpu_percent")),
        f"{_gib(mem.get('used_bytes'))}/{_gib(mem.get('total_bytes'))}",
        _disk(s, "data"),
        _disk(s, "docker"),
        _temp(s),
        str(s.get("containers_total", "-")),
    )


def show(
    args: argparse.Namespace, result: Any, sanitize: Callable[[str], str], table: Table
) -> None:
    """Print the history as tables (or JSON with ``--json``)."""
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    samples = result.get("samples") or []
    rows = [("AT", "CPU", "MEM", "DATA DISK", "DOCKER DISK", "TEMP", "CONTAINERS")]
    rows += [sample_row(s["at"], s.get("sample") or {}) for s in samples]
    if samples:
        table(rows)
        containers = samples[-1].get("sample", {}).get("containers") or []
        if containers:
            print()
            crows = [("SERVICE", "CONTAINER", "CPU", "MEM")]
            crows += [
                (
                    str(c.get("service", "-")),
                    str(c.get("container_id", "-")),
                    _pct(c.get("cpu_percent")),
                    _mib(c.get("mem_bytes")),
                )
                for c in containers
                if isinstance(c, dict)
            ]
            table(crows)
    else:
        print(sanitize(f"no samples from {result.get('device_id')} since {args.since} ago"))
    note = (
        f"# {len(samples)} shown, {result.get('held', 0)} held; "
        f"{result.get('trimmed', 0)} older trimmed, {result.get('oversize', 0)} too large"
    )
    print(sanitize(note))
