"""``edgectl``: a small operator CLI over the hub's REST API (stdlib HTTP, no event loop).

    edgectl [--hub URL] [--token T | --token-file F] [--ca CA.pem] [--json] COMMAND

    token create [--uses N] [--expires 1h] [--tag k=v ...]
    devices
    device show ID
    device disable ID | device enable ID
    device tag ID [KEY=VALUE ...] [--remove KEY ...]
    device env ID [SERVICE [VAR=VALUE ...] [--unset VAR ...]]   (no SERVICE: show)
    device metrics ID [--since 1h] [--limit N]
    group create NAME --selector "site=berlin,role in (kiosk,totem),!beta"
    group list | group show NAME | group delete NAME
    group env NAME SERVICE [VAR=VALUE ...] [--unset VAR ...]
    group log-policy NAME [none|errors|all|clear] [--pattern RE]   (no mode: show)
    group policy set NAME POLICY.json | group policy show NAME | group policy clear NAME
    target set ID RELEASE.json [--override svc.KEY=VALUE ...] [--deadline S] [--min-ready S]
               [--expires 1d] [--window 01:00-04:00 --tz Europe/Berlin] [--immediate]
    target show ID
    events ID [--after SEQ] [--limit N]
    audit [--actor A] [--action X] [--device D] [--group G] [--since 30d] [--until T]
          [--source all|hub|device] [--format json|jsonl|csv] [--after ID] [--limit N]
    release create NAME --version V -f RELEASE.json
    release list [--after ID] [--limit N]
    release show NAME@VERSION
    release retire NAME@VERSION --reason TEXT
    rollout start NAME@VERSION --group G [--stages 1,10%,50%,100%] [--soak 10m]
                  [--max-failed 5%] [--window 01:00-04:00 --tz Europe/Berlin]
    rollout list | rollout status ID [--watch]
    rollout pause|resume|abort|rollback ID [--reason TEXT]
    technician issue NAME --role read|operate --scope "site=berlin" [--expires 8h]
    technician list | technician revoke ID
    user create|list|disable|enable ... | user token create|list|revoke ...  (hub.edgectl_access)
    team create|list|delete|add-member|remove-member|grant|ungrant ...
    secret set NAME [--value-file F] (else stdin) | secret list | secret delete NAME
    action DEVICE KIND [ARGS...] [--expires 1h] | action --group G KIND [ARGS...]
    action show ID | actions [--device D] [--state S] [--limit N]

Environment: EDGECTL_HUB, EDGECTL_TOKEN, EDGECTL_TOKEN_FILE, EDGECTL_CA.
Exit status: 0 ok, 1 the hub refused (its error is printed), 2 usage or connection error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import ssl
import sys
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from hub import (
    edgectl_access,
    edgectl_action,
    edgectl_audit,
    edgectl_logs,
    edgectl_metrics,
    edgectl_policy,
    edgectl_rollout,
    edgectl_secret,
    edgectl_technician,
    edgectl_trust,
)

DURATION_RE = re.compile(r"^(\d+)([smhd]?)$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class CtlError(Exception):
    """A usage or connection problem (exit 2)."""


class HubSaid(Exception):
    """The hub answered with an error (exit 1)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {body.get('error', '')}: {body.get('message', '')}")
        self.status, self.body = status, body


def sanitize(text: str) -> str:
    """Return text safe for a terminal: control and format characters shown as escapes.

    Device-supplied text (hostname, state, errors) reaches human output through this,
    so an escape sequence cannot recolour, retitle or clear the operator's terminal;
    bidi overrides (format characters) cannot reorder what is shown.
    """
    return "".join(_escape(c) if _is_unsafe(c) else c for c in text)


def _is_unsafe(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp")


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def parse_duration(text: str) -> int:
    """Return seconds for ``90``, ``90s``, ``15m``, ``1h`` or ``7d``."""
    match = DURATION_RE.match(text.strip())
    if not match:
        raise CtlError(f"bad duration {text!r} (use e.g. 90s, 15m, 1h, 7d)")
    return int(match.group(1)) * UNITS[match.group(2)]


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CtlError(f"bad {what} {item!r} (use key=value)")
        out[key] = value
    return out


class Client:
    """Call the hub's operator API."""

    def __init__(self, hub: str, token: str, ca: str | None) -> None:
        self.hub = hub.rstrip("/")
        self.token = token
        self.ssl = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request and return the decoded JSON answer."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.hub + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.ssl, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                err = json.loads(raw)
            except ValueError:
                err = {"error": "http", "message": raw.decode(errors="replace")}
            raise HubSaid(exc.code, err) from None
        except (urllib.error.URLError, OSError) as exc:
            raise CtlError(f"cannot reach hub at {self.hub}: {exc}") from exc
        return json.loads(raw) if raw else None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgectl", description="operate an edgefleet hub")
    p.add_argument("--hub", default=os.environ.get("EDGECTL_HUB"), help="https://host:port")
    p.add_argument("--token", default=os.environ.get("EDGECTL_TOKEN"))
    p.add_argument("--token-file", default=os.environ.get("EDGECTL_TOKEN_FILE"))
    p.add_argument("--ca", default=os.environ.get("EDGECTL_CA"), help="hub CA certificate")
    p.add_argument("--json", action="store_true", help="print raw JSON")
    sub = p.add_subparsers(dest="command", required=True)

    token = sub.add_parser(
        "token", help="enrollment tokens (token create)", description="enrollment tokens"
    ).add_subparsers(dest="action", required=True)
    create = token.add_parser("create", help="create an enrollment token")
    create.add_argument("--uses", type=int, default=1)
    create.add_argument("--expires", default="1h")
    create.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")

    sub.add_parser("devices", help="list devices")
    device = sub.add_parser(
        "device", help="one device: show, disable, enable", description="one device"
    ).add_subparsers(dest="action", required=True)
    for name, what in (
        ("show", "show the device's view"),
        ("disable", "refuse the device from now on"),
        ("enable", "accept the device again"),
    ):
        device.add_parser(name, help=what).add_argument("id")
    tag = device.add_parser("tag", help="set and remove the device's tags")
    tag.add_argument("id")
    tag.add_argument("tags", nargs="*", metavar="KEY=VALUE")
    tag.add_argument("--remove", action="append", default=[], metavar="KEY")
    denv = device.add_parser("env", help="the device's own overrides (no SERVICE: show all)")
    denv.add_argument("id")
    _env_arguments(denv, service_required=False)
    edgectl_metrics.add_parser(device)
    _group_parser(sub)

    target = sub.add_parser(
        "target", help="a device's signed target: set, show", description="a device's target"
    ).add_subparsers(dest="action", required=True)
    tset = target.add_parser("set", help="sign and send a release to a device")
    tset.add_argument("id")
    tset.add_argument("release", help="release JSON (or a full target request body)")
    tset.add_argument("--override", action="append", default=[], metavar="SVC.KEY=VALUE")
    tset.add_argument("--deadline", type=float, default=None, help="apply deadline, seconds")
    tset.add_argument("--min-ready", type=float, default=None, help="seconds up before good")
    tset.add_argument("--expires", default=None, help="target validity, e.g. 7d")
    tset.add_argument("--window", default=None, help="apply only inside HH:MM-HH:MM (device-local)")
    tset.add_argument("--tz", default=None, help="the window's IANA time zone, e.g. Europe/Berlin")
    tset.add_argument("--immediate", action="store_true", help="apply at once, whatever the window")
    target.add_parser("show", help="show the device's newest target").add_argument("id")

    events = sub.add_parser(
        "events", help="entries a device sent (its events, and technicians' audit records)"
    )
    events.add_argument("id")
    events.add_argument("--after", type=int, default=0)
    events.add_argument("--limit", type=int, default=100)
    edgectl_audit.add_parser(sub)
    _release_parser(sub)
    _drift_parser(sub)
    edgectl_rollout.add_parser(sub)
    edgectl_technician.add_parser(sub)
    edgectl_access.add_parser(sub)
    edgectl_action.add_parser(sub)
    edgectl_logs.add_parser(sub)
    edgectl_trust.add_parser(sub)
    edgectl_secret.add_parser(sub)
    return p


def _drift_parser(sub: Any) -> None:
    sub.add_parser("drift", help="devices whose containers differ from their target, or stale")
    sub.add_parser("retired", help="devices still holding a retired release, and since when")


def _print_drift(result: dict[str, Any]) -> None:
    rows = [("DEVICE", "KIND", "SERVICE", "CONTAINER", "EXPECTED", "ACTUAL")]
    for d in result["devices"]:
        for f in d["differences"]:
            cells = (f.get(k) for k in ("service", "container", "expected", "actual"))
            rows.append((d["device_id"], f["kind"], *(str(c) if c else "-" for c in cells)))
    _print_table(rows)
    if result["not_reported"]:
        print(sanitize(f"# not reporting host containers: {', '.join(result['not_reported'])}"))


def _print_retired(result: dict[str, Any]) -> None:
    rows = [("RELEASE", "DEVICE", "SINCE", "CONTAINERS")]
    for r in result["releases"]:
        for d in r["devices"]:
            names = ", ".join(c["name"] for c in d["containers"])
            rows.append((r["ref"], d["device_id"], d["since"], names))
        if not r["devices"]:
            rows.append((r["ref"], "-", "-", "-"))
    _print_table(rows)


def _env_arguments(p: argparse.ArgumentParser, *, service_required: bool) -> None:
    p.add_argument("service", nargs=None if service_required else "?")
    p.add_argument("vars", nargs="*", metavar="VAR=VALUE")
    p.add_argument("--unset", action="append", default=[], metavar="VAR")


def _group_parser(sub: Any) -> None:
    group = sub.add_parser(
        "group",
        help="groups (named tag selectors): create, list, show, delete, env, log-policy, policy",
        description="groups of devices, chosen by their tags",
    ).add_subparsers(dest="action", required=True)
    create = group.add_parser("create", help="create a group from a tag selector")
    create.add_argument("name")
    create.add_argument("--selector", required=True, help='e.g. "site=berlin,role=kiosk"')
    group.add_parser("list", help="list groups with their member counts")
    group.add_parser("show", help="show a group and its members now").add_argument("name")
    group.add_parser("delete", help="delete a group (devices keep their tags)").add_argument("name")
    genv = group.add_parser("env", help="set/unset the group's overrides of a service")
    genv.add_argument("name")
    _env_arguments(genv, service_required=True)
    glog = group.add_parser("log-policy", help="show/set which log lines its devices ship")
    glog.add_argument("name")
    glog.add_argument("mode", nargs="?", choices=["none", "errors", "all", "clear"])
    glog.add_argument("--pattern", help="errors: lines matching this regular expression")
    edgectl_policy.add_parser(group)


def _env_body(args: argparse.Namespace) -> dict[str, Any]:
    return {"service": args.service, "set": _pairs(args.vars, "variable"), "unset": args.unset}


def _run_group(args: argparse.Namespace, client: Client) -> Any:
    action = args.action
    if action == "create":
        return client.call("POST", "/api/v1/groups", {"name": args.name, "selector": args.selector})
    if action == "list":
        return client.call("GET", "/api/v1/groups")
    path = f"/api/v1/groups/{urllib.parse.quote(args.name, safe='')}"
    if action == "show":
        return client.call("GET", path)
    if action == "delete":
        return client.call("DELETE", path)
    if action == "log-policy":
        return _run_log_policy(args, client, f"{path}/log-policy")
    if action == "policy":
        try:
            return edgectl_policy.run(args, client.call, path)
        except edgectl_policy.UsageError as exc:
            raise CtlError(str(exc)) from None
    return client.call("PATCH", f"{path}/env", _env_body(args))


def _run_log_policy(args: argparse.Namespace, client: Client, path: str) -> Any:
    if args.mode is None:
        return client.call("GET", path)
    if args.mode == "clear":
        return client.call("DELETE", path)
    body = {"mode": args.mode} | ({"pattern": args.pattern} if args.pattern is not None else {})
    return client.call("PUT", path, body)


def _run_device(args: argparse.Namespace, client: Client) -> Any:
    path = f"/api/v1/devices/{args.id}"
    if args.action == "show":
        return client.call("GET", path)
    if args.action == "metrics":
        return edgectl_metrics.run(args, client.call, parse_duration)
    if args.action == "tag":
        body = {"set": _pairs(args.tags, "tag"), "remove": args.remove}
        return client.call("PATCH", f"{path}/tags", body)
    if args.action == "env":
        if args.service is None:
            return client.call("GET", f"{path}/env")
        return client.call("PATCH", f"{path}/env", _env_body(args))
    return client.call("POST", f"{path}/{args.action}")


def _release_parser(sub: Any) -> None:
    release = sub.add_parser(
        "release",
        help="releases on the hub: create, list, show, retire",
        description="immutable NAME@VERSION releases, images pinned to digests",
    ).add_subparsers(dest="action", required=True)
    create = release.add_parser("create", help="create a release (images resolved to digests)")
    create.add_argument("name")
    create.add_argument("--version", required=True)
    create.add_argument(
        "-f", "--file", required=True, help="release JSON, or a compose file (.yml/.yaml)"
    )
    create.add_argument(
        "--env-file", help="variables for a compose file (default: the .env beside it)"
    )
    listing = release.add_parser("list", help="list releases, oldest first")
    listing.add_argument("--after", type=int, default=0)
    listing.add_argument("--limit", type=int, default=1000)
    release.add_parser("show", help="show a release").add_argument("ref", metavar="NAME@VERSION")
    retire = release.add_parser("retire", help="retire a release")
    retire.add_argument("ref", metavar="NAME@VERSION")
    retire.add_argument("--reason", required=True)
    edgectl_trust.add_release_parsers(release)


def _is_compose(path: Path) -> bool:
    return path.suffix in (".yml", ".yaml")


def _compose_release(args: argparse.Namespace) -> dict[str, Any]:
    """Import a compose file beside its ``.env`` and env files; print the import report."""
    from hub.compose import import_compose
    from hub.errors import ComposeError

    path = Path(args.file)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CtlError(f"cannot read {args.file}: {exc}") from exc
    try:
        imported = import_compose(
            text,
            base_dir=path.resolve().parent,
            env=dict(os.environ),  # the shell wins over .env, as docker compose reads them
            env_file=Path(args.env_file) if args.env_file else None,
            name=args.name,
            version=args.version,
        )
    except ComposeError as exc:
        lines = [f"  {f.get('field')}: {f.get('message')}" for f in exc.fields]
        raise CtlError("\n".join([f"{args.file}: {exc.message}", *lines])) from None
    print(f"import report for {args.file}:", file=sys.stderr)
    for line in imported.report.lines():
        print(f"  {sanitize(line)}", file=sys.stderr)
    return {"release": imported.release}


def _release_body(args: argparse.Namespace) -> dict[str, Any]:
    """Return the create body: the file's release with the command line's name and version."""
    if _is_compose(Path(args.file)):
        return _compose_release(args)
    try:
        doc = json.loads(Path(args.file).read_text())
    except (OSError, ValueError) as exc:
        raise CtlError(f"cannot read {args.file}: {exc}") from exc
    if isinstance(doc, dict) and isinstance(doc.get("release"), dict):
        doc = doc["release"]
    if not isinstance(doc, dict):
        raise CtlError(f"{args.file}: a release is a JSON object")
    for key, value in (("name", args.name), ("version", args.version)):
        if doc.get(key, value) != value:
            raise CtlError(f"{args.file} says {key} {doc[key]!r}, the command line {value!r}")
        doc[key] = value
    return {"release": doc}


def _run_release(args: argparse.Namespace, client: Client) -> Any:
    if args.action == "create":
        return client.call("POST", "/api/v1/releases", _release_body(args))
    if args.action == "list":
        return client.call("GET", f"/api/v1/releases?after={args.after}&limit={args.limit}")
    ref = urllib.parse.quote(args.ref, safe="@")
    if args.action == "show":
        return client.call("GET", f"/api/v1/releases/{ref}")
    return client.call("POST", f"/api/v1/releases/{ref}/retire", {"reason": args.reason})


def _print_releases(result: dict[str, Any]) -> None:
    rows = [("RELEASE", "CREATED", "BY", "IMAGES", "RETIRED")]
    for r in result["releases"]:
        retired = r["retired"]
        note = f"{retired['at']} ({retired['reason']})" if retired else "-"
        rows.append((r["ref"], r["created_at"], r["created_by"], str(len(r["images"])), note))
    _print_table(rows)


def _target_body(args: argparse.Namespace) -> dict[str, Any]:
    try:
        doc = json.loads(Path(args.release).read_text())
    except (OSError, ValueError) as exc:
        raise CtlError(f"cannot read {args.release}: {exc}") from exc
    body: dict[str, Any] = doc if isinstance(doc, dict) and "release" in doc else {"release": doc}
    overrides: dict[str, dict[str, str]] = body.setdefault("overrides", {})
    for key, value in _pairs(args.override, "override").items():
        svc, dot, var = key.partition(".")
        if not dot:
            raise CtlError(f"bad override {key!r} (use service.VAR=value)")
        overrides.setdefault(svc, {})[var] = value
    if args.deadline is not None:
        body["apply_deadline_s"] = args.deadline
    if args.min_ready is not None:
        body["min_ready_s"] = args.min_ready
    if args.expires is not None:
        body["expires_in_s"] = parse_duration(args.expires)
    if args.window is not None or args.tz is not None:
        body["window"] = _window(args.window, args.tz)
    if args.immediate:
        body["immediate"] = True
    return body


def _window(window: str | None, tz: str | None) -> dict[str, str]:
    """Return the request's window from ``--window HH:MM-HH:MM --tz ZONE`` (checked by the hub)."""
    if window is None or tz is None:
        raise CtlError("--window and --tz go together (e.g. --window 01:00-04:00 --tz UTC)")
    start, dash, end = window.partition("-")
    if not dash:
        raise CtlError(f"bad --window {window!r} (use HH:MM-HH:MM)")
    return {"start": start, "end": end, "tz": tz}


def _run(args: argparse.Namespace, client: Client) -> Any:
    cmd, action = args.command, getattr(args, "action", None)
    if cmd == "token":
        return client.call(
            "POST",
            "/api/v1/enrollment-tokens",
            {
                "uses": args.uses,
                "expires_in_s": parse_duration(args.expires),
                "tags": _pairs(args.tag, "tag"),
            },
        )
    if cmd == "devices":
        return client.call("GET", "/api/v1/devices")
    if cmd == "device":
        return _run_device(args, client)
    if cmd == "group":
        return _run_group(args, client)
    if cmd == "target":
        if action == "show":
            return client.call("GET", f"/api/v1/devices/{args.id}/target")
        return client.call("POST", f"/api/v1/devices/{args.id}/target", _target_body(args))
    if cmd == "trust" or (cmd == "release" and action in ("sign", "revoke")):
        try:
            return edgectl_trust.run(args, client.call, parse_duration)
        except edgectl_trust.UsageError as exc:
            raise CtlError(str(exc)) from None
    if cmd == "release":
        return _run_release(args, client)
    if cmd in ("drift", "retired"):
        return client.call("GET", f"/api/v1/{cmd}")
    if cmd == "rollout":
        return edgectl_rollout.run(args, client.call, parse_duration)
    if cmd == "technician":
        return edgectl_technician.run(args, client.call, parse_duration)
    if cmd in edgectl_access.COMMANDS:
        return edgectl_access.run(args, client.call, parse_duration)
    if cmd == "secret":
        try:
            return edgectl_secret.run(args, client.call)
        except edgectl_secret.UsageError as exc:
            raise CtlError(str(exc)) from None
    if cmd in ("action", "actions"):
        try:
            return edgectl_action.run(args, client.call, parse_duration)
        except edgectl_action.UsageError as exc:
            raise CtlError(str(exc)) from None
    if cmd == "logs":  # prints as the lines come; its exit code says how the request ended
        raise SystemExit(edgectl_logs.run(args, client.call, parse_duration, sanitize))
    if cmd == "events":
        return client.call(
            "GET", f"/api/v1/devices/{args.id}/events?after={args.after}&limit={args.limit}"
        )
    edgectl_audit.run(args, client.call, parse_duration)  # streams every page itself
    return None


def _print(args: argparse.Namespace, result: Any, client: Client) -> None:
    if args.command == "rollout":
        edgectl_rollout.show(args, result, client.call, sanitize)
        return
    if args.command == "technician":
        edgectl_technician.show(args, result, sanitize, _print_table)
        return
    if args.command in edgectl_access.COMMANDS:
        edgectl_access.show(args, result, sanitize, _print_table)
        return
    if args.command == "secret":
        edgectl_secret.show(args, result, sanitize, _print_table)
        return
    if args.command in ("action", "actions"):
        edgectl_action.show(args, result, sanitize, _print_table)
        return
    if args.command == "audit":
        return
    if args.command == "device" and args.action == "metrics":
        edgectl_metrics.show(args, result, sanitize, _print_table)
        return
    if args.command in ("drift", "retired") and not args.json:
        (_print_drift if args.command == "drift" else _print_retired)(result)
        return
    if args.command == "release" and args.action == "list" and not args.json:
        _print_releases(result)
        return
    if args.json or args.command not in ("devices", "token"):
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    if args.command == "token":
        print(sanitize(result["token"]))
        note = f"# id {result['id']}, {result['uses']} use(s), expires {result['expires_at']}"
        print(sanitize(note), file=sys.stderr)
        return
    rows = [("ID", "HOSTNAME", "CONN", "TARGET", "APPLIED", "DRIFT", "STATE", "LAST CONTACT")]
    for d in result["devices"]:
        rows.append(
            (
                d["id"],
                d["hostname"] or "-",
                "disabled" if d["disabled"] else d["connectivity"],
                str(d["target_revision"]),
                str(d["applied_revision"]),
                d["drift"],
                d["state"] or "-",
                d["last_contact"] or "-",
            )
        )
    _print_table(rows)


def _print_table(rows: list[tuple[str, ...]]) -> None:
    rows = [tuple(sanitize(c) for c in r) for r in rows]  # device-supplied text
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def main(argv: list[str] | None = None) -> None:
    """Run ``edgectl``."""
    args = _parser().parse_args(argv)
    try:
        if edgectl_trust.is_offline(args):  # key generation never talks to the hub
            try:
                _print(args, edgectl_trust.keygen(args), None)  # type: ignore[arg-type]
            except edgectl_trust.UsageError as exc:
                raise CtlError(str(exc)) from None
            return
        if not args.hub:
            raise CtlError("no hub: pass --hub or set EDGECTL_HUB")
        token = args.token
        if not token and args.token_file:
            token = Path(args.token_file).read_text().strip()
        if not token:
            raise CtlError("no token: pass --token/--token-file or set EDGECTL_TOKEN")
        client = Client(args.hub, token, args.ca)
        _print(args, _run(args, client), client)
    except HubSaid as exc:
        print(sanitize(f"edgectl: hub refused: {exc}"), file=sys.stderr)
        for field in exc.body.get("fields") or []:
            line = f"  {field.get('field')}: {field.get('message', '')}"
            print(sanitize(line), file=sys.stderr)
        raise SystemExit(1) from None
    except (CtlError, OSError) as exc:
        print(sanitize(f"edgectl: {exc}"), file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
