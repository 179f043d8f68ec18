"""``edgectl action ...`` and ``edgectl actions``: queue device actions, list and show them.

    action DEVICE KIND [ARGS...] [--expires 1h]     e.g. action dev-1 restart web
    action --group G KIND [ARGS...] [--expires 1h]  one per member of the group now
    action show ID
    actions [--device D] [--state S] [--limit N]

KIND is restart, selftest, prune_images, diagnostics, collect_logs, logs, or resume/unpin
(end a technician's pause/pin on the device: ``action dev-1 unpin``). ARGS are
``key=value`` (``lines=50``, ``service=web``); a bare word is the service (restart,
collect_logs). Everything prints JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
from collections.abc import Callable
from typing import Any

Call = Callable[..., Any]
STATES = ("queued", "delivered", "succeeded", "failed", "expired", "refused")


class UsageError(ValueError):
    """The command line does not say what to do."""


def add_parser(sub: Any) -> None:
    """Add the ``action`` and ``actions`` commands."""
    act = sub.add_parser(
        "action",
        help="queue an action for a device or a group (or: action show ID)",
        description="DEVICE KIND [ARGS...] | --group G KIND [ARGS...] | show ID",
    )
    act.add_argument("words", nargs="+", metavar="DEVICE KIND [ARGS...]")
    act.add_argument("--group", default=None, help="queue it for each member of this group")
    act.add_argument("--expires", default=None, help="lifetime, e.g. 1h (default: the hub's)")
    listing = sub.add_parser("actions", help="list actions, newest first")
    listing.add_argument("--device", default=None)
    listing.add_argument("--state", default=None, choices=STATES)
    listing.add_argument("--limit", type=int, default=100)


def action_args(kind: str, words: list[str]) -> dict[str, Any]:
    """Return the action's args from ``key=value`` words (a bare word: the service)."""
    args: dict[str, Any] = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not eq:
            if kind not in ("restart", "collect_logs") or "service" in args:
                raise UsageError(f"{word!r}: expected KEY=VALUE")
            key, value = "service", word
        args[key] = int(value) if key == "lines" and value.isdigit() else value
    return args


def run(args: argparse.Namespace, call: Call, parse_duration: Callable[[str], int]) -> Any:
    """Call the hub for one ``action``/``actions`` command."""
    if args.command == "actions":
        query = {"limit": str(args.limit)}
        query.update({k: v for k, v in (("device", args.device), ("state", args.state)) if v})
        return call("GET", "/api/v1/actions?" + urllib.parse.urlencode(query))
    words = list(args.words)
    if words[0] == "show" and len(words) == 2 and args.group is None:
        return call("GET", f"/api/v1/actions/{urllib.parse.quote(words[1], safe='')}")
    if args.group is None:
        if len(words) < 2:
            raise UsageError("action DEVICE KIND [ARGS...] (or --group G KIND)")
        where, words = f"devices/{urllib.parse.quote(words[0], safe='')}", words[1:]
    else:
        where = f"groups/{urllib.parse.quote(args.group, safe='')}"
    body: dict[str, Any] = {"kind": words[0], "args": action_args(words[0], words[1:])}
    if args.expires:
        body["expires_in_s"] = parse_duration(args.expires)
    return call("POST", f"/api/v1/{where}/actions", body)


def show(
    args: argparse.Namespace,
    result: Any,
    sanitize: Callable[[str], str],
    table: Callable[[list[tuple[str, ...]]], None],
) -> None:
    """Print one command's result."""
    if args.json or (args.command == "action" and args.words[0] == "show"):
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    found = result.get("actions", [result])
    rows = [("ID", "DEVICE", "KIND", "STATE", "CREATED", "EXPIRES", "REASON")]
    for a in found:
        rows.append(
            (
                a["id"],
                a["device_id"],
                a["kind"],
                a["state"],
                a["created_at"],
                a["expires_at"],
                a["reason"] or "",
            )
        )
    table(rows)
