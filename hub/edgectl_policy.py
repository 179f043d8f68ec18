"""``edgectl group policy ...``: what releases may do on a group's devices.

    group policy set NAME POLICY.json      (a DevicePolicy document; "-": stdin)
    group policy show NAME                 the group's own policy (null: it sets none)
    group policy clear NAME                its devices follow their other groups or the default

The document and how policies combine: docs/security.md, "Device policy".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Call = Callable[..., Any]


class UsageError(Exception):
    """The policy file cannot be read or is not a JSON object."""


def add_parser(group: Any) -> None:
    """Add ``policy`` and its actions under the ``group`` command's actions."""
    policy = group.add_parser(
        "policy", help="show/set/clear what releases may do on its devices (device policy)"
    ).add_subparsers(dest="policy_action", required=True)
    put = policy.add_parser("set", help="set the group's device policy from a JSON file")
    put.add_argument("name")
    put.add_argument("file", help='a DevicePolicy JSON document ("-": stdin)')
    policy.add_parser("show", help="show the group's own device policy").add_argument("name")
    policy.add_parser("clear", help="clear the group's device policy").add_argument("name")


def read_policy(file: str) -> dict[str, Any]:
    """Return the JSON object in ``file`` ("-": stdin)."""
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        doc = json.loads(text)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{file}: {exc}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{file}: a device policy is a JSON object")
    return doc


def run(args: argparse.Namespace, call: Call, path: str) -> Any:
    """Call the hub for one ``group policy`` action; ``path`` is the group's API path."""
    if args.policy_action == "show":
        return call("GET", f"{path}/policy")
    if args.policy_action == "clear":
        return call("DELETE", f"{path}/policy")
    return call("PUT", f"{path}/policy", read_policy(args.file))
