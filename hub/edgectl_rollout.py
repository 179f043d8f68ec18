"""``edgectl rollout ...``: start, list, show (and watch), pause, resume, abort, roll back.

    rollout start NAME@VERSION (--group G | --selector S) [--stages 1,10%,50%,100%]
                  [--soak 10m] [--max-failed 5%] [--deadline 30m] [--window 01:00-04:00
                  --tz Europe/Berlin] [--supersedes ID] [--no-rollback]
    rollout list
    rollout status ID [--watch [--interval S]]
    rollout pause|resume|abort|rollback ID [--reason TEXT]

``status --watch`` redraws a progress bar per stage (rich, when it is installed and
stdout is a terminal; otherwise plain lines, printed again whenever the progress changes)
until the rollout is no longer active. Devices holding the target for their maintenance
window are listed with when it opens (at most WAITING_SHOWN; ``--json`` has them all).
Everything prints JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

Call = Callable[..., Any]
ACTIVE = ("running", "paused", "halted", "rolling_back")
DONE_COLUMNS = ("healthy", "failed", "offline", "rolled_back", "held")
WAITING_SHOWN = 10  # devices waiting for their window listed by name; the rest counted


def add_parser(sub: Any) -> None:
    """Add the ``rollout`` command and its actions."""
    rollout = sub.add_parser(
        "rollout",
        help="staged rollouts of a release: start, list, status, pause, resume, abort, rollback",
    ).add_subparsers(dest="action", required=True)
    start = rollout.add_parser("start", help="start a staged rollout of a release")
    start.add_argument("release", metavar="NAME@VERSION")
    whom = start.add_mutually_exclusive_group(required=True)
    whom.add_argument("--group")
    whom.add_argument("--selector")
    start.add_argument("--stages", default="100%", help="cumulative sizes, e.g. 1,10%%,100%%")
    start.add_argument("--soak", default="10m", help="healthy this long to pass (e.g. 10m)")
    start.add_argument("--max-failed", default="0", help="a count or a share, e.g. 5%%")
    start.add_argument("--deadline", help="per device: good within this long (default 30m)")
    start.add_argument("--window", help="maintenance window HH:MM-HH:MM (needs --tz)")
    start.add_argument("--tz", help="IANA time zone of the window")
    start.add_argument("--supersedes", help="the active rollout this one replaces")
    start.add_argument("--no-rollback", action="store_true", help="halt on failure, no rollback")
    start.add_argument(
        "--gate",
        action="append",
        default=[],
        metavar="KEY=NUMBER",
        help="a gate bound, e.g. max_cpu_percent=80 (repeatable; docs/deployments.md)",
    )
    rollout.add_parser("list", help="list rollouts, oldest first")
    status = rollout.add_parser("status", help="a rollout's progress per stage")
    status.add_argument("id")
    status.add_argument("--watch", action="store_true", help="redraw until it is done")
    status.add_argument("--interval", type=float, default=1.0)
    for name in ("pause", "resume", "abort", "rollback"):
        act = rollout.add_parser(name, help=f"{name} a rollout")
        act.add_argument("id")
        act.add_argument("--reason", default="")


def start_body(args: argparse.Namespace, duration: Callable[[str], int]) -> dict[str, Any]:
    """Return the POST /api/v1/rollouts body of ``rollout start``."""
    body: dict[str, Any] = {
        "release": args.release,
        "stages": args.stages,
        "soak_s": duration(args.soak),
        "max_failed": args.max_failed,
    }
    optional = {
        "group": args.group,
        "selector": args.selector,
        "window": args.window,
        "tz": args.tz,
        "supersedes": args.supersedes,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if args.deadline is not None:
        body["stage_deadline_s"] = duration(args.deadline)
    if args.no_rollback:
        body["rollback_on_failure"] = False
    if getattr(args, "gate", None):
        body["gate"] = gate_bounds(args.gate)
    return body


def gate_bounds(words: list[str]) -> dict[str, Any]:
    """Return ``--gate KEY=NUMBER`` words as the spec's gate (the hub checks them: 422
    naming ``gate.KEY`` for an unknown key or a value that is not a number in range)."""
    gate: dict[str, Any] = {}
    for word in words:
        key, _, value = word.partition("=")
        try:
            gate[key] = float(value)
        except ValueError:
            gate[key] = value
    return gate


def run(args: argparse.Namespace, call: Call, duration: Callable[[str], int]) -> Any:
    """Run one ``rollout`` action; return the hub's answer."""
    if args.action == "start":
        return call("POST", "/api/v1/rollouts", start_body(args, duration))
    if args.action == "list":
        return call("GET", "/api/v1/rollouts")
    path = f"/api/v1/rollouts/{urllib.parse.quote(args.id, safe='')}"
    if args.action == "status":
        return call("GET", path)
    return call("POST", f"{path}/{args.action}", {"reason": args.reason})


def show(args: argparse.Namespace, result: Any, call: Call, clean: Callable[[str], str]) -> None:
    """Print the answer: a table, a progress view, or (``--json``) the JSON."""
    if args.action == "status" and args.watch:
        watch(args, result, call, clean)
    elif args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    elif args.action == "list":
        for r in result["rollouts"]:
            line = f"{r['id']}  {r['release']}  {r['status']}  stage {r['current_stage'] + 1}"
            print(clean(f"{line}/{r['stages']}  {r['members']} devices  {r['created_at']}"))
    else:
        print("\n".join(clean(line) for line in plain_lines(result)))


def plain_lines(view: dict[str, Any]) -> list[str]:
    """Return the rollout's status as plain text: a header, then a line per stage."""
    head = f"{view['id']}  {view['release']}  {view['status']}  ({view['members']} devices)"
    lines = [head + (f"  reason: {view['reason']}" if view.get("reason") else "")]
    for p in view["progress"]:
        done = sum(p.get(c, 0) for c in DONE_COLUMNS)  # "held": absent from older hubs
        shown = ("pending", "applying", *DONE_COLUMNS)
        counts = "  ".join(f"{c} {p[c]}" for c in shown if p.get(c))
        lines.append(f"  stage {p['stage'] + 1} ({p['size']}): {done}/{p['planned']}  {counts}")
    return lines + waiting_lines(view.get("waiting_window") or {})


def waiting_lines(waiting: dict[str, str | None]) -> list[str]:
    """Return lines naming the devices that wait for their maintenance window to open."""
    if not waiting:
        return []
    lines = [f"  waiting for the maintenance window: {len(waiting)} device(s)"]
    for device_id, opens in sorted(waiting.items())[:WAITING_SHOWN]:
        lines.append(f"    {device_id}  opens {opens or '(not reported)'}")
    if len(waiting) > WAITING_SHOWN:
        lines.append(f"    ... and {len(waiting) - WAITING_SHOWN} more (--json lists all)")
    return lines


def watch(
    args: argparse.Namespace, view: dict[str, Any], call: Call, clean: Callable[[str], str]
) -> None:
    """Redraw the progress until the rollout is no longer active."""
    path = f"/api/v1/rollouts/{urllib.parse.quote(args.id, safe='')}"

    def fetch() -> dict[str, Any]:
        return dict(call("GET", path))

    if args.json or not sys.stdout.isatty() or not has_rich():
        _watch_plain(args, view, fetch, clean)
        return
    _watch_rich(args, view, fetch, clean)


def has_rich() -> bool:
    """Return whether rich (optional) can be imported."""
    try:
        import rich.progress  # noqa: F401
    except ImportError:
        return False
    return True


def _watch_plain(
    args: argparse.Namespace,
    view: dict[str, Any],
    fetch: Callable[[], dict[str, Any]],
    clean: Callable[[str], str],
) -> None:
    """Print the view as JSON every poll, or as plain lines at first and when they change."""
    last = None
    while True:
        lines = [json.dumps(view, sort_keys=True)] if args.json else plain_lines(view)
        out = "\n".join(clean(line) for line in lines)  # hub-supplied text, line by line
        if args.json or out != last:
            print(out, flush=True)
            last = out
        if view["status"] not in ACTIVE:
            return
        time.sleep(args.interval)
        view = fetch()


def _watch_rich(
    args: argparse.Namespace,
    view: dict[str, Any],
    fetch: Callable[[], dict[str, Any]],
    clean: Callable[[str], str],
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, transient=True) as bars:
        tasks = [
            bars.add_task(clean(f"stage {p['stage'] + 1} ({p['size']})"), total=p["planned"])
            for p in view["progress"]
        ]
        while True:
            for task, p in zip(tasks, view["progress"], strict=True):
                detail = " ".join(f"{c[0]}{p[c]}" for c in DONE_COLUMNS if p[c])
                label = clean(f"stage {p['stage'] + 1} ({p['size']}) {view['status']} {detail}")
                done = sum(p[c] for c in DONE_COLUMNS)
                bars.update(task, completed=done, description=label)
            if view["status"] not in ACTIVE:
                break
            time.sleep(args.interval)
            view = fetch()
    print("\n".join(clean(line) for line in plain_lines(view)))
