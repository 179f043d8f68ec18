"""``edgectl audit``: the hub's and the devices' audit records, every page, as JSON, JSON
Lines or CSV (``edgectl audit --device D --since 30d --format csv > audit.csv``).

Records are written as each page arrives (constant memory however many match); the
pages follow the API's ``next_cursor`` until a page is empty.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

Call = Callable[..., Any]
FORMATS = ("json", "jsonl", "csv")
CSV_COLUMNS = (
    "source",
    "id",
    "at",
    "actor",
    "action",
    "target",
    "outcome",
    "device_id",
    "record_id",
    "source_addr",
    "chain_broken",
    "held",
    "hash",
    "detail",
)


def add_parser(sub: Any) -> None:
    """Add ``audit`` to edgectl's subcommands."""
    p = sub.add_parser(
        "audit",
        help="audit records of the hub (operators, enrollment, renewal) and of devices",
    )
    p.add_argument("--actor")
    p.add_argument("--action", help="exact, or a prefix ending in * (rollout.*)")
    p.add_argument("--device", help="the device's records and the hub's records about it")
    p.add_argument("--group", help="the same for every member of the group, now")
    p.add_argument("--since", help="a duration back from now (30d, 2h) or an ISO 8601 time")
    p.add_argument("--until", help="a duration back from now or an ISO 8601 time (exclusive)")
    p.add_argument("--source", choices=("all", "hub", "device"), default="all")
    p.add_argument("--format", choices=FORMATS, default="json")
    p.add_argument("--after", type=int, default=0, help="start after this hub record id")
    p.add_argument("--limit", type=int, default=1000, help="records per page asked of the hub")


def when(text: str | None, parse_duration: Callable[[str], int], now: datetime) -> str | None:
    """Return ``--since``/``--until`` as ISO text: a duration back from ``now``, or a time."""
    if text is None:
        return None
    if text[:1].isdigit() and not any(c in text for c in "-:T"):
        return (now - timedelta(seconds=parse_duration(text))).isoformat()
    return text


def query(args: argparse.Namespace, parse_duration: Callable[[str], int]) -> dict[str, str]:
    """Return the API's query parameters for the command line's filters."""
    now = datetime.now(UTC)
    params = {
        "actor": args.actor,
        "action": args.action,
        "device": args.device,
        "group": args.group,
        "since": when(args.since, parse_duration, now),
        "until": when(args.until, parse_duration, now),
        "source": args.source,
        "limit": str(args.limit),
    }
    if args.after:
        params["after"] = str(args.after)
    return {k: v for k, v in params.items() if v is not None}


def records(call: Call, params: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Yield every matching record, page after page."""
    params = dict(params)
    while True:
        page = call("GET", "/api/v1/audit?" + urllib.parse.urlencode(params))
        if not page["audit"]:
            return
        yield from page["audit"]
        params.pop("after", None)
        params["cursor"] = page["next_cursor"]


def write(items: Iterator[dict[str, Any]], fmt: str, out: TextIO) -> int:
    """Write the records in ``fmt`` as they come; return how many."""
    count = 0
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for r in items:
            row = [r.get(c, "") for c in CSV_COLUMNS[:-1]]
            writer.writerow([*("" if v is None else v for v in row), _json(r["detail"])])
            count += 1
        return count
    if fmt == "json":
        out.write("[")
    for r in items:
        if fmt == "json":
            out.write(",\n" if count else "\n")
        out.write(_json(r) + ("\n" if fmt == "jsonl" else ""))
        count += 1
    if fmt == "json":
        out.write("\n]\n")
    return count


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def run(args: argparse.Namespace, call: Call, parse_duration: Callable[[str], int]) -> None:
    """Stream the matching records to stdout; the count goes to stderr."""
    count = write(records(call, query(args, parse_duration)), args.format, sys.stdout)
    print(f"# {count} audit record(s)", file=sys.stderr)
