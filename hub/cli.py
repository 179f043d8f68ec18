"""Console entry points: ``edge-hub`` (run the hub) and ``edgectl`` (talk to it).

edge-hub serve --config hub.toml     serve until SIGTERM/SIGINT
edge-hub init  --config hub.toml     create CA, keys, admin token; print what agents pin
edge-hub audit verify --config hub.toml   check the audit hash chain offline (exit 1: broken)
edge-hub secrets rotate-key --config hub.toml   new secret key; re-seal every secret under it
edge-hub store migrate --to postgresql://... --config hub.toml   copy a stopped hub's SQLite
                                     database into an empty PostgreSQL one, checked
edge-hub --version                   print the version and exit
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from hub import __version__, store_migrate
from hub.config import HubConfig, load_config
from hub.edgectl import main as edgectl_main
from hub.errors import HubError

__all__ = ["edgectl_main", "hub_main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-hub", description="edgefleet hub")
    parser.add_argument("--version", action="version", version=f"edge-hub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the device and operator APIs over HTTPS")
    serve.add_argument("--config", help="TOML config file (EDGE_HUB_* env vars override it)")
    serve.add_argument("--data-dir", help="override server.data_dir")
    serve.add_argument("--log-level", default="INFO")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="hub processes on one port (SO_REUSEPORT; PostgreSQL store only): docs/scaling.md",
    )
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by --workers
    init = sub.add_parser("init", help="create the data directory, CA, keys and admin token")
    init.add_argument("--config", help="TOML config file")
    init.add_argument("--data-dir", help="override server.data_dir")
    audit = sub.add_parser("audit", help="the hub's audit trail, offline")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify", help="walk the audit hash chain in the store (read-only); exit 1 if broken"
    )
    verify.add_argument("--config", help="TOML config file")
    verify.add_argument("--data-dir", help="override server.data_dir")
    secrets = sub.add_parser("secrets", help="the hub's secret store keys")
    secrets_sub = secrets.add_subparsers(dest="secrets_command", required=True)
    rotate = secrets_sub.add_parser(
        "rotate-key", help="make a new secret key current and re-seal every secret under it"
    )
    rotate.add_argument("--config", help="TOML config file")
    rotate.add_argument("--data-dir", help="override server.data_dir")
    store_migrate.add_parser(sub)
    return parser


def _rotate_secret_key(config: HubConfig) -> None:
    from hub.secrets import rotate_key
    from hub.store import open_store

    async def main() -> None:
        store = open_store(config)
        await store.open()
        try:
            key_id, count = await rotate_key(config.data_dir, store)
        finally:
            await store.close()
        print(f"secret key {key_id} is current: {count} secret(s) re-sealed under it")

    asyncio.run(main())


def _audit_verify(config: HubConfig) -> None:
    import sqlite3

    from hub.audit_chain import Verdict, verify_file

    verdict: Verdict
    if config.postgres_url is not None:
        from hub.store_migrate import verify_postgres_audit

        verdict = verify_postgres_audit(config.postgres_url)
    else:
        path = config.sqlite_path
        if not path.exists():
            print(f"edge-hub: no database at {path}", file=sys.stderr)
            raise SystemExit(2)
        try:
            verdict = verify_file(path)
        except sqlite3.Error as exc:
            print(f"edge-hub: cannot read the audit table of {path}: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    if not verdict.ok:
        print(
            f"audit chain BROKEN at record {verdict.broken_id}: {verdict.reason} "
            f"({verdict.count} records before it verified)"
        )
        raise SystemExit(1)
    print(f"audit chain ok: {verdict.count} records verified, head {verdict.head or '-'}")


def _run(coro_main: asyncio.Future[None] | object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(coro_main)  # type: ignore[arg-type]
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro_main)  # type: ignore[arg-type]


def _init(config: HubConfig) -> None:
    from hub.auth import ensure_admin_token
    from hub.pki import HubPKI

    pki = HubPKI.ensure(
        config.data_dir,
        config.server.public_names,
        ca_days=config.pki.ca_days,
        server_days=config.pki.server_cert_days,
    )
    ensure_admin_token(config.data_dir)
    print(f"data directory   {config.data_dir}")
    print(f"CA certificate   {pki.ca_path}")
    print(f"CA fingerprint   {pki.ca_fingerprint()}")
    print(f"admin token      {config.data_dir / 'admin.token'}")


def hub_main(argv: list[str] | None = None) -> None:
    """Run ``edge-hub``."""
    args = _parser().parse_args(argv)
    try:
        env = dict(os.environ)
        if args.data_dir:
            env["EDGE_HUB_SERVER_DATA_DIR"] = args.data_dir
        config = load_config(args.config, env)
        if args.command == "serve" and args.workers != 1:
            from hub.workers import check_workers

            check_workers(config, args.workers)  # refused before anything is made
    except HubError as exc:
        print(f"edge-hub: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.command == "init":
        _init(config)
        return
    if args.command == "audit":
        _audit_verify(config)
        return
    if args.command == "secrets":
        _rotate_secret_key(config)
        return
    if args.command == "store":
        store_migrate.run(config, args)
        return
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from hub.app import serve

    try:
        if args.workers != 1:
            from hub import workers

            argv = workers.strip_workers(sys.argv[2:] if argv is None else argv[1:])
            raise SystemExit(workers.run(config, argv, args.workers))
        if args.worker_index is not None:
            from hub.workers import WORKER_ENV, die_with_parent

            os.environ[WORKER_ENV] = str(args.worker_index)
            die_with_parent()
        _run(serve(config, reuse_port=args.worker_index is not None))
    except HubError as exc:
        logging.getLogger("hub").error("%s", exc.message)
        raise SystemExit(1) from None


if __name__ == "__main__":
    hub_main()
