"""``edgectl user ...`` and ``edgectl team ...``: operator users, their tokens, teams, grants.

    user create NAME | user list | user disable NAME | user enable NAME
    user token create NAME [--expires 90d] | user token list NAME | user token revoke NAME ID
    team create NAME | team list | team delete NAME
    team add-member TEAM USER | team remove-member TEAM USER
    team grant TEAM viewer|deployer|admin SCOPE | team ungrant TEAM ROLE SCOPE

A scope is a tag selector (``"site=berlin"``) or ``all``. ``user token create`` prints
the token alone on stdout (shown once; the hub keeps only its hash) and its id and
expiry on stderr. ``edgectl token create`` stays the enrollment token command.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from collections.abc import Callable
from typing import Any

Call = Callable[..., Any]
COMMANDS = ("user", "team")
ROLES = ("viewer", "deployer", "admin")


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def add_parser(sub: Any) -> None:
    """Add the ``user`` and ``team`` commands."""
    user = sub.add_parser("user", help="operator users and their API tokens").add_subparsers(
        dest="action", required=True
    )
    user.add_parser("create", help="create a user (no teams, no tokens)").add_argument("name")
    user.add_parser("list", help="list users")
    user.add_parser("disable", help="disable a user: its tokens answer 401").add_argument("name")
    user.add_parser("enable", help="enable a disabled user").add_argument("name")
    token = user.add_parser("token", help="a user's API tokens").add_subparsers(
        dest="token_action", required=True
    )
    create = token.add_parser("create", help="create a token (shown once, stored hashed)")
    create.add_argument("name")
    create.add_argument("--expires", default="90d", help="lifetime, e.g. 30d (default 90d)")
    token.add_parser("list", help="list a user's tokens (never the tokens)").add_argument("name")
    revoke = token.add_parser("revoke", help="revoke a token")
    revoke.add_argument("name")
    revoke.add_argument("id")
    team = sub.add_parser("team", help="teams: members and role grants").add_subparsers(
        dest="action", required=True
    )
    team.add_parser("create", help="create a team").add_argument("name")
    team.add_parser("list", help="list teams with members and grants")
    team.add_parser("delete", help="delete a team (members lose its grants)").add_argument("name")
    for name, what in (("add-member", "add a user"), ("remove-member", "remove a user")):
        member = team.add_parser(name, help=what)
        member.add_argument("team")
        member.add_argument("user")
    for name, what in (("grant", "grant a role on a scope"), ("ungrant", "take a grant back")):
        grant = team.add_parser(name, help=what)
        grant.add_argument("team")
        grant.add_argument("role", choices=ROLES)
        grant.add_argument("scope", help='a tag selector ("site=berlin") or all')


def run(args: argparse.Namespace, call: Call, parse_duration: Callable[[str], int]) -> Any:
    """Call the hub for one ``user`` or ``team`` action."""
    if args.command == "user":
        return _run_user(args, call, parse_duration)
    action = args.action
    if action == "create":
        return call("POST", "/api/v1/teams", {"name": args.name})
    if action == "list":
        return call("GET", "/api/v1/teams")
    if action == "delete":
        return call("DELETE", f"/api/v1/teams/{_q(args.name)}")
    if action in ("add-member", "remove-member"):
        method = "PUT" if action == "add-member" else "DELETE"
        return call(method, f"/api/v1/teams/{_q(args.team)}/members/{_q(args.user)}")
    method = "POST" if action == "grant" else "DELETE"
    body = {"role": args.role, "scope": args.scope}
    return call(method, f"/api/v1/teams/{_q(args.team)}/grants", body)


def _run_user(args: argparse.Namespace, call: Call, parse_duration: Callable[[str], int]) -> Any:
    action = args.action
    if action == "create":
        return call("POST", "/api/v1/users", {"name": args.name})
    if action == "list":
        return call("GET", "/api/v1/users")
    if action in ("disable", "enable"):
        return call("POST", f"/api/v1/users/{_q(args.name)}/{action}")
    tokens = f"/api/v1/users/{_q(args.name)}/tokens"
    if args.token_action == "create":
        return call("POST", tokens, {"expires_in_s": parse_duration(args.expires)})
    if args.token_action == "list":
        return call("GET", tokens)
    return call("POST", f"{tokens}/{_q(args.id)}/revoke")


def show(
    args: argparse.Namespace,
    result: Any,
    sanitize: Callable[[str], str],
    table: Callable[[list[tuple[str, ...]]], None],
) -> None:
    """Print one action's result."""
    token_action = getattr(args, "token_action", None)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    elif token_action == "create":
        print(sanitize(result["token"]))
        note = f"# id {result['id']} of {result['user']}, expires {result['expires_at']}"
        print(sanitize(note), file=sys.stderr)
    elif token_action == "list":
        rows = [("ID", "CREATED", "EXPIRES", "LAST USED", "REVOKED")]
        for t in result["tokens"]:
            rows.append(
                (
                    t["id"],
                    t["created_at"],
                    t["expires_at"] or "-",
                    t["last_used_at"] or "-",
                    t["revoked_at"] or "-",
                )
            )
        table(rows)
    elif args.command == "user" and args.action == "list":
        rows = [("NAME", "STATE", "CREATED", "BY")]
        for u in result["users"]:
            state = "disabled" if u["disabled"] else "active"
            rows.append((u["name"], state, u["created_at"], u["created_by"]))
        table(rows)
    elif args.command == "team" and args.action == "list":
        rows = [("TEAM", "MEMBERS", "GRANTS")]
        for t in result["teams"]:
            grants = ", ".join(f"{g['role']} on {g['scope']}" for g in t["grants"])
            rows.append((t["name"], ", ".join(t["members"]) or "-", grants or "-"))
        table(rows)
    else:
        print(json.dumps(result, indent=2, sort_keys=True))
