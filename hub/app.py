"""The hub's aiohttp application, and running it on TLS until told to stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
import ssl
from collections.abc import AsyncIterator

from aiohttp import web

import hub
from edge_agent.openapi import described
from edge_agent.sdnotify import sd_notify
from hub import (
    action_api,
    device_api,
    drift_api,
    group_api,
    guard,
    leader,
    log_policy_api,
    metrics_api,
    openapi_api,
    operator_api,
    policy_api,
    prom,
    prom_api,
    release_api,
    rollout_api,
    secret_api,
    secret_moves,
    technician_api,
    trust_api,
    user_api,
)
from hub.audit_gaps import AUDIT_GAPS, AuditGapSweep
from hub.auth import OperatorAuth
from hub.config import HubConfig
from hub.conn_guard import ConnectionGuard, GuardedSite, connection_middleware
from hub.context import HUB, HubContext
from hub.dashboard import pages as dashboard_pages
from hub.dashboard import site as dashboard_site
from hub.fleet_history import FLEET_HISTORY, FleetHistory
from hub.log_policy import LOG_POLICIES, PolicyCache
from hub.pki import HubPKI
from hub.retention import RETENTION, Retention
from hub.rollout_engine import ENGINE, RolloutEngine
from hub.route_access import access_middleware, check_routes
from hub.secret_refs import SECRET_BOX
from hub.secrets import SecretBox
from hub.store import open_store
from hub.wire import BODY_TIMEOUT, error_middleware

log = logging.getLogger("hub")
GC_YOUNG_THRESHOLD = 20_000
CONNECTIONS = web.AppKey("connections", ConnectionGuard)


@described(tags=("meta",))
async def healthz(request: web.Request) -> web.Response:
    """Answer that the hub is up (no authentication; for probes and tests)."""
    hub_ctx = request.app[HUB]
    return web.json_response(
        {
            "status": "ok",
            "version": hub.__version__,
            "long_polls": hub_ctx.notifier.waiting(),
            "long_poll": hub_ctx.notifier.stats(),
            "rate_limit": request.app[guard.LIMITER].stats(),
            "refusal_audit": request.app[guard.REFUSALS].stats(),
            "connections": request.app[CONNECTIONS].stats(),
            "rollout_engine": request.app[ENGINE].stats(),
            "retention": request.app[RETENTION].view(),
            "fleet_history": request.app[FLEET_HISTORY].view(),
            "audit_gaps": request.app[AUDIT_GAPS].view(),
            "dashboard": dashboard_site.stats(request.app),
            "cluster": leader.view(request.app),
        }
    )


def create_app(config: HubConfig) -> web.Application:
    """Build the application: keys from data_dir (created on first use), store, routes."""
    pki = HubPKI.ensure(
        config.data_dir,
        config.server.public_names,
        ca_days=config.pki.ca_days,
        server_days=config.pki.server_cert_days,
    )
    context = HubContext(
        config=config,
        pki=pki,
        store=open_store(config),
        operators=OperatorAuth.from_data_dir(config.data_dir),
    )
    app = web.Application(
        middlewares=[
            connection_middleware,
            prom.sync_middleware,  # outside error_middleware: sees the final status
            error_middleware,
            guard.guard_middleware,
            dashboard_pages.html_errors,  # a browser's refusals as pages, not JSON
            access_middleware,
            openapi_api.query_middleware,
        ],
        client_max_size=config.limits.max_decompressed_bytes,
    )
    context.notifier.max_held = config.limits.max_long_polls
    app[HUB] = context
    app[BODY_TIMEOUT] = config.server.body_timeout_s
    app[CONNECTIONS] = ConnectionGuard(config.server, _server_tls(pki))
    app.router.add_get("/healthz", healthz)
    app.add_routes(device_api.routes)
    app.add_routes(operator_api.routes)
    app.add_routes(group_api.routes)
    app.add_routes(release_api.routes)
    app.add_routes(drift_api.routes)
    app.add_routes(rollout_api.routes)
    app.add_routes(technician_api.routes)
    app.add_routes(metrics_api.routes)
    app.add_routes(action_api.routes)
    app.add_routes(log_policy_api.routes)
    app.add_routes(user_api.routes)
    app.add_routes(trust_api.routes)
    app.add_routes(secret_api.routes)
    app.add_routes(policy_api.routes)
    dashboard_site.install(app)
    app.add_routes(prom_api.routes)
    prom.install(app, prom.HubMetrics(), context.store.watch_commits)
    openapi_api.install(app)  # after every route: it describes them all at startup
    check_routes(app)  # after every add_routes: a route without a permission is refused
    app[SECRET_BOX] = SecretBox.ensure(config.data_dir)  # the key is made at first start
    app[LOG_POLICIES] = PolicyCache()
    app[ENGINE] = RolloutEngine(context)
    app[RETENTION] = Retention(context)
    app[FLEET_HISTORY] = FleetHistory(context)
    app[AUDIT_GAPS] = AuditGapSweep(context)
    app.cleanup_ctx.append(_store_lifetime)
    if config.postgres_url is not None:  # many processes: these run in the leader only
        engine = app[ENGINE]
        parts = [engine, app[RETENTION], app[FLEET_HISTORY], app[AUDIT_GAPS]]
        leader.install(app, config.postgres_url, engine, parts)
    else:  # after the store: each stops before it closes
        app.cleanup_ctx.append(_engine_lifetime)
        app.cleanup_ctx.append(_retention_lifetime)
        app.cleanup_ctx.append(_history_lifetime)
        app.cleanup_ctx.append(_audit_gaps_lifetime)
    guard.install(app)  # after the store: its cleanup (a final flush) runs first
    app.on_shutdown.append(_wake_long_polls)
    app.on_startup.append(secret_moves.on_startup)  # after the store opened (cleanup_ctx)
    return app


def _server_tls(pki: HubPKI) -> ssl.SSLContext:
    """Return the listening TLS context: no TLS 1.3 session tickets.

    Agents (aiohttp) never resume a session, so the two tickets OpenSSL issues after
    every handshake were pure cost: 1.4 -> 1.0 ms of hub CPU per mTLS handshake measured,
    which is what a fleet reconnecting at once (hub restart) queues behind.
    """
    context = pki.server_ssl_context()
    context.num_tickets = 0
    return context


async def _store_lifetime(app: web.Application) -> AsyncIterator[None]:
    store = app[HUB].store
    await store.open()
    if app[HUB].config.limits.prestart_parse_workers:
        app[HUB].sync_decoder.start()
    yield
    app[HUB].sync_decoder.close()
    await store.close()


async def _engine_lifetime(app: web.Application) -> AsyncIterator[None]:
    engine = app[ENGINE]
    engine.start()
    yield
    await engine.stop()


async def _retention_lifetime(app: web.Application) -> AsyncIterator[None]:
    retention = app[RETENTION]
    retention.start()
    yield
    await retention.stop()


async def _history_lifetime(app: web.Application) -> AsyncIterator[None]:
    history = app[FLEET_HISTORY]
    history.start()
    yield
    await history.stop()


async def _audit_gaps_lifetime(app: web.Application) -> AsyncIterator[None]:
    sweep = app[AUDIT_GAPS]
    sweep.start()
    yield
    await sweep.stop()


async def _wake_long_polls(app: web.Application) -> None:
    app[HUB].notifier.close()


def make_runner(app: web.Application, config: HubConfig) -> web.AppRunner:
    """Return a runner for the app; request bodies reach handlers still compressed."""
    return web.AppRunner(
        app,
        auto_decompress=False,  # hub.wire.read_body bounds the gunzipped size itself
        access_log=logging.getLogger("hub.access") if config.server.access_log else None,
        shutdown_timeout=config.server.shutdown_timeout_s,
        keepalive_timeout=config.server.keepalive_timeout_s,
        handle_signals=False,
    )


async def serve(
    config: HubConfig, stop: asyncio.Event | None = None, *, reuse_port: bool = False
) -> None:
    """Serve HTTPS until SIGTERM/SIGINT (or ``stop`` is set), then shut down cleanly.

    ``reuse_port``: one of ``serve --workers N`` processes sharing the port (hub.workers).
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(config)
    runner = make_runner(app, config)
    await runner.setup()
    try:
        site = GuardedSite(
            runner,
            config.server.host,
            config.server.port,
            app[CONNECTIONS],
            backlog=4096,
            max_handshakes=config.limits.max_tls_handshakes,
            reuse_port=reuse_port,
        )
        await site.start()
        _tune_gc()
        _raise_nofile_limit()
        host, port = _bound_address(runner, config)
        log.info("CA fingerprint %s", app[HUB].pki.ca_fingerprint())
        log.info("listening on https://%s:%d", host, port)
        print(f"listening on https://{host}:{port}", flush=True)
        sd_notify("READY=1")
        await stop.wait()
        log.info("shutting down")
        sd_notify("STOPPING=1")
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")


def _tune_gc() -> None:
    """Keep full collections rare: they stop the event loop for all open connections.

    With CPython's default young threshold (700) the objects of in-flight requests are
    caught alive by most young collections and promoted; that fills the old generation
    and triggers a full collection every few seconds to minutes, each walking every
    object of every open connection (~0.5 s at 10,000 kept-alive TLS connections in the
    load benchmark). A larger young generation promotes far fewer short-lived objects;
    ``gc.freeze()`` moves everything built at startup out of the collector's sight.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


def _raise_nofile_limit() -> None:
    """Let the hub use every file descriptor it is allowed: one per device connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    log.info("open files limit %s (each device connection holds one)", soft)


def _bound_address(runner: web.AppRunner, config: HubConfig) -> tuple[str, int]:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            host = config.server.host
            return (host if ":" not in host else f"[{host}]"), int(address[1])
    return config.server.host, config.server.port
