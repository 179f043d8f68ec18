"""``edgectl technician ...``: issue, list and revoke technician tokens.

    technician issue NAME --role read|operate --scope "site=berlin" [--expires 8h]
    technician list
    technician revoke ID

``issue`` prints the token alone on stdout (it is shown once; the hub keeps only its
record) and its id, scope and expiry on stderr. Everything prints JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from collections.abc import Callable
from typing import Any

Call = Callable[..., Any]


def add_parser(sub: Any) -> None:
    """Add the ``technician`` command and its actions."""
    tech = sub.add_parser(
        "technician", help="technician tokens for the devices' local API: issue, list, revoke"
    ).add_subparsers(dest="action", required=True)
    issue = tech.add_parser("issue", help="issue a token (shown once), verified offline")
    issue.add_argument("name")
    issue.add_argument("--role", required=True, choices=("read", "operate"))
    issue.add_argument("--scope", required=True, help='a tag selector, e.g. "site=berlin"')
    issue.add_argument("--expires", default="8h", help="lifetime, e.g. 8h (default 8h)")
    tech.add_parser("list", help="list the unexpired tokens (never the tokens themselves)")
    tech.add_parser("revoke", help="revoke a token (devices refuse it after their next sync)")
    tech.choices["revoke"].add_argument("id")


def run(args: argparse.Namespace, call: Call, parse_duration: Callable[[str], int]) -> Any:
    """Call the hub for one ``technician`` action."""
    if args.action == "issue":
        body = {
            "name": args.name,
            "role": args.role,
            "scope": args.scope,
            "expires_in_s": parse_duration(args.expires),
        }
        return call("POST", "/api/v1/technicians", body)
    if args.action == "list":
        return call("GET", "/api/v1/technicians")
    return call("POST", f"/api/v1/technicians/{urllib.parse.quote(args.id, safe='')}/revoke")


def show(
    args: argparse.Namespace,
    result: Any,
    sanitize: Callable[[str], str],
    table: Callable[[list[tuple[str, ...]]], None],
) -> None:
    """Print one action's result."""
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    elif args.action == "issue":
        print(sanitize(result["token"]))
        note = (
            f"# id {result['id']}, {result['name']} ({result['role']}), scope "
            f"{result['scope']}, expires {result['expires_at']}"
        )
        print(sanitize(note), file=sys.stderr)
    elif args.action == "list":
        rows = [("ID", "NAME", "ROLE", "SCOPE", "EXPIRES", "STATE")]
        for t in result["technicians"]:
            rows.append((t["id"], t["name"], t["role"], t["scope"], t["expires_at"], t["state"]))
        table(rows)
    else:
        print(
            sanitize(
                f"revoked {result['id']} ({result['name']}); devices refuse it from their next sync"
            )
        )
