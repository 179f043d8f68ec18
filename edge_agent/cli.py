"""The ``edge-agent`` command: run the agent, or talk to a running one over its socket."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.errors import AgentError, ConfigError

DEFAULT_CONFIG = "/etc/edge-agent/agent.toml"


def _global_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    """Add the options every command takes (before or after the command's name)."""

    def default(value: Any) -> Any:
        # After the command, an option left out must not reset one given before it.
        return value if defaults else argparse.SUPPRESS

    p.add_argument(
        "--config",
        default=default(os.environ.get("EDGE_AGENT_CONFIG")),
        help=f"TOML config file (env EDGE_AGENT_CONFIG; default {DEFAULT_CONFIG} if present)",
    )
    p.add_argument("--socket", default=default(None), help="local API socket (default: config)")
    p.add_argument("--json", action="store_true", default=default(False), help="print raw JSON")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    p.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    _global_options(p, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, defaults=False)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common])

    command("run", "run the agent in the foreground")
    command("status", "show the running agent's status")
    command("containers", "list the managed containers")
    command("targets", "show target history")
    a = command("audit", "show the local audit log")
    a.add_argument("--limit", type=int, default=50)
    ap = command("apply", "apply a target or release document (JSON file, - for stdin)")
    ap.add_argument("file")
    r = command("restart", "restart one service's container")
    r.add_argument("service")
    st = command("selftest", "check store, signatures, validation and Docker access")
    st.add_argument("--data-dir", type=Path)
    return p


def _config_path(args: argparse.Namespace) -> str | None:
    if args.config:
        return str(args.config)
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    from edge_agent.config import load_config

    return load_config(_config_path(args)).api.socket


async def _call(socket: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    import aiohttp

    connector = aiohttp.UnixConnector(path=socket)
    try:
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.request(method, f"http://agent{path}", json=body) as resp,
        ):
            return resp.status, await resp.json(content_type=None)
    except (aiohttp.ClientConnectionError, FileNotFoundError) as exc:
        raise AgentError(f"cannot reach the agent at {socket}: {exc}") from exc


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def _client(args: argparse.Namespace) -> int:
    sock = _socket_path(args)
    if args.command == "apply":
        raw = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        try:
            body = json.loads(raw)
        except ValueError as exc:
            print(f"error: {args.file} is not valid JSON: {exc}", file=sys.stderr)
            return 2
        status, data = asyncio.run(_call(sock, "POST", "/v1/apply", body))
    elif args.command == "restart":
        status, data = asyncio.run(_call(sock, "POST", f"/v1/services/{args.service}/restart"))
    elif args.command == "audit":
        status, data = asyncio.run(_call(sock, "GET", f"/v1/audit?limit={args.limit}"))
    else:
        status, data = asyncio.run(_call(sock, "GET", f"/v1/{args.command}"))
    if status >= 400:
        print(f"error ({status}): {data.get('message', data)}", file=sys.stderr)
        for f in data.get("fields", []):
            print(f"  {f.get('field')}: {f.get('message', '')}", file=sys.stderr)
        return 1
    if args.command == "status" and not args.json:
        print(format_status(data))
    else:
        _print(data)
    return 0


def format_status(st: dict[str, Any]) -> str:
    """Return the agent status as a short human-readable summary."""
    lines = [
        f"device    {st['device_id']}   agent {st['agent_version']}   state {st['state']}",
        f"release   {st.get('release') or '-'}   applied rev {st.get('applied_revision')}"
        f"   newest rev {st.get('target_revision')}",
    ]
    if st.get("last_error"):
        lines.append(f"error     {st['last_error']}")
    lines.append("")
    lines.append(f"{'SERVICE':<20} {'STATE':<10} {'HEALTH':<10} {'RESTARTS':>8}  NOTE")
    for s in st.get("services", []):
        note = "crash loop" if s.get("crash_loop") else ""
        if s.get("next_restart_at"):
            note = (note + " next restart " + s["next_restart_at"]).strip()
        lines.append(
            f"{s['name']:<20} {s['state']:<10} {s['health']:<10} {s['restarts']:>8}  {note}"
        )
    outbox = st.get("outbox") or {}
    if outbox:
        queued = ", ".join(f"{k} {v['entries']}" for k, v in sorted(outbox.items()))
        lines.append(f"\noutbox    {queued}")
    counters = {k: v for k, v in (st.get("counters") or {}).items() if v}
    if counters:
        lines.append("counters  " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    troubled = {
        n: t for n, t in (st.get("tasks") or {}).items() if t["restarts"] or t["state"] != "running"
    }
    for name, t in sorted(troubled.items()):
        state = f"{t['state']}, {t['restarts']} restarts"
        lines.append(f"task      {name}: {state}, last error {t['last_error']}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from edge_agent.agent import run_agent
    from edge_agent.config import load_config

    config = load_config(_config_path(args))
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Libraries' debug chatter (every SQL call, every HTTP connection) drowns the agent's own.
    for noisy in ("aiosqlite", "aiodocker", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.root.level))
    # The standard asyncio loop, not uvloop: uvloop can hand a cancelled connect's file
    # descriptor to a new socket while the old transport still owns it (uvloop #653,
    # aiohttp #10362), which killed the sync loop when long-polls were cancelled on hub
    # loss. The agent mostly waits; what uvloop saves it is small (docs/operations.md).
    return asyncio.run(run_agent(config))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the edge-agent command."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "selftest":
            from edge_agent.selftest import run_selftest

            return asyncio.run(run_selftest(args.data_dir))
        return _client(args)
    except ConfigError as exc:
        print(f"configuration error: {exc.message}", file=sys.stderr)
        return 2
    except AgentError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
