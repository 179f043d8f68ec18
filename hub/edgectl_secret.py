"""``edgectl secret ...``: set, list and delete the hub's secrets.

    secret set NAME [--value-file F]   the value from F, else from stdin (never an argument)
    secret list
    secret delete NAME

A value is read from a file or stdin only, so it never sits in the shell's history or
the process list; one trailing newline is dropped (``echo`` and editors add one). No
command prints a value: the hub never answers one.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

Call = Callable[..., Any]


class UsageError(Exception):
    """The value cannot be read (exit 2)."""


def add_parser(sub: Any) -> None:
    """Add the ``secret`` command and its actions."""
    secret = sub.add_parser(
        "secret", help="the hub's secrets (write-only values): set, list, delete"
    ).add_subparsers(dest="action", required=True)
    put = secret.add_parser("set", help="create or replace a secret (value from a file or stdin)")
    put.add_argument("name")
    put.add_argument("--value-file", help="read the value from this file (default: stdin)")
    secret.add_parser("list", help="list the secrets' names and history (never a value)")
    secret.add_parser("delete", help="delete a secret no release names").add_argument("name")


def read_value(path: str | None, stdin: TextIO) -> str:
    """Return the value from ``path`` or ``stdin``, one trailing newline dropped."""
    try:
        raw = Path(path).read_text() if path else stdin.read()
    except OSError as exc:
        raise UsageError(f"cannot read the value: {exc}") from None
    value = raw.removesuffix("\n").removesuffix("\r") if raw.endswith("\n") else raw
    if not value:
        raise UsageError("the value is empty")
    return value


def run(args: argparse.Namespace, call: Call) -> Any:
    """Call the hub for one ``secret`` action."""
    if args.action == "list":
        return call("GET", "/api/v1/secrets")
    path = f"/api/v1/secrets/{urllib.parse.quote(args.name, safe='')}"
    if args.action == "delete":
        return call("DELETE", path)
    return call("PUT", path, {"value": read_value(args.value_file, sys.stdin)})


def show(
    args: argparse.Namespace,
    result: Any,
    sanitize: Callable[[str], str],
    table: Callable[[list[tuple[str, ...]]], None],
) -> None:
    """Print one action's result (metadata only: the hub never answers a value)."""
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    elif args.action == "list":
        rows = [("NAME", "UPDATED", "BY", "KEY")]
        for s in result["secrets"]:
            rows.append((s["name"], s["updated_at"], s["updated_by"], s["key_id"]))
        table(rows)
    elif args.action == "delete":
        print(sanitize(f"deleted secret {result['deleted']}"))
    else:
        print(sanitize(f"set secret {result['name']} (updated {result['updated_at']})"))
