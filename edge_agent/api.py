"""Local API for field technicians: a unix socket (0600), optionally an HTTPS LAN port.

Every call is attributed to an actor: on the unix socket the peer's user (SO_PEERCRED),
on the LAN the technician whose token matched. Every change is audited with its outcome.

    GET  /v1/status                 agent, target revision, services, counters
    GET  /v1/containers             the managed containers as the engine reports them
    GET  /v1/targets                target history, newest first
    GET  /v1/audit?limit=N          local audit records, newest first
    GET  /v1/metrics                the latest metrics sample (404 before the first one)
    GET  /v1/prometheus             the agent's own metrics, Prometheus text (``prom_api``)
    GET  /v1/logs?tail=&follow=...  kept container log lines (``log_api``)
    POST /v1/apply                  apply a target (or a bare release) from the body
    POST /v1/services/{name}/restart

Hub-issued technician tokens (``edge_agent.techtoken``) are accepted on both listeners
as ``Authorization: Bearer eft1...``: verified offline with the pinned hub key, refused
401 (forged, expired, revoked) or 403 (out of scope, read role for a change), each
refusal audited. The actor is then ``technician:NAME@TOKEN_ID``. The LAN listener is
HTTPS only (``lan_tls_context``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import pwd
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import RootModel

from edge_agent import __version__
from edge_agent.enroll import load_identity
from edge_agent.errors import (
    AgentError,
    ConfigError,
    InvalidDocument,
    NotFound,
    TechnicianRefused,
)
from edge_agent.hold_api import install as install_holds
from edge_agent.log_api import install as install_logs
from edge_agent.models import NAME_RE, Release, Target
from edge_agent.openapi import Query, described, openapi_document, undeclared_query
from edge_agent.outbox import AuditRow
from edge_agent.prom_api import prometheus
from edge_agent.technicians import TechnicianGate
from edge_agent.techtoken import is_hub_token

if TYPE_CHECKING:
    from edge_agent.agent import Agent
    from edge_agent.config import ApiConfig

log = logging.getLogger(__name__)

ACTOR_KEY = web.AppKey("actor_fn", Callable[[web.Request], str | None])
AGENT_KEY: web.AppKey[Agent] = web.AppKey("agent")
MAX_BODY_KEY = web.AppKey("max_body_bytes", int)
ACTOR = web.RequestKey("actor", str)
GATE_KEY = web.AppKey("technician_gate", TechnicianGate | None)
REFUSALS_KEY = web.AppKey("refusals", "RefusalAudit")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_AUDIT_LIMIT = 10_000  # records per GET /v1/audit
MAX_LOGGED_PATH = 200  # characters of a request path written to the log

LocalApply = RootModel[Target | Release]  # a target, or a bare release (see ``local_target``)


STATUS_BY_ERROR = {
    "InvalidDocument": 422,
    "TargetRejected": 409,
    "ConfigError": 400,
    "NotFound": 404,
    "Conflict": 409,
}


def error_body(code: str, message: str, status: int, **headers: str) -> web.Response:
    """Return an error answer in the one shape hub and agent share (``ErrorBody``)."""
    body = {"error": code, "message": message, "fields": []}
    return web.json_response(body, status=status, headers=headers or None)


def error_response(exc: AgentError) -> web.Response:
    """Turn an agent error into a JSON error response with the right status."""
    status = STATUS_BY_ERROR.get(type(exc).__name__, 503 if exc.retryable else 500)
    return web.json_response(exc.to_dict(), status=status)


def peer_user(request: web.Request) -> str | None:
    """Return the unix user on the other end of a unix-socket request."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    try:
        return f"unix:{pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"unix:uid={uid}"


def token_actor(technicians: dict[str, str]) -> Callable[[web.Request], str | None]:
    """Return an actor resolver that matches a Bearer token against technicians' hashes."""

    def resolve(request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header.isascii():
            return None  # undecodable bytes are an unknown token, not a 500
        digest = hashlib.sha256(header[7:].encode()).hexdigest()
        for name, expected in technicians.items():
            if hmac.compare_digest(digest, expected.lower()):
                return f"technician:{name}"
        return None

    return resolve


@web.middleware
async def _errors_and_actor(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        actor = await _resolve_actor(request)
    except TechnicianRefused as exc:
        await request.app[REFUSALS_KEY].record(request, exc)
        return web.json_response(exc.to_dict(), status=exc.status)
    if actor is None:
        return error_body("unauthenticated", "a technician token is required", 401)
    request[ACTOR] = actor
    unknown, known = undeclared_query(request.match_info.handler, request.query)
    if unknown:  # a mistyped parameter is not silently ignored
        shown = ", ".join(repr(name[:64]) for name in unknown[:10])
        message = (
            f"unknown query parameter(s) {shown}; this route takes: {', '.join(known) or 'none'}"
        )
        return error_body("invalid_request", message, 400)
    try:
        return await handler(request)
    except AgentError as exc:
        return error_response(exc)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[MAX_BODY_KEY]
        return error_body("too_large", f"request body over api.max_body_bytes ({limit})", 413)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return error_body(exc.reason.lower().replace(" ", "_"), exc.reason, exc.status, **allow)
    except Exception:
        return _internal_error(request)


async def _resolve_actor(request: web.Request) -> str | None:
    """Return who calls: a hub-issued token's technician, else the listener's resolver."""
    header = request.headers.get("Authorization", "")
    token = header[7:] if header.startswith("Bearer ") and header.isascii() else ""
    if is_hub_token(token):
        write = request.method not in READ_METHODS
        gate = request.app[GATE_KEY]
        if gate is None:
            raise TechnicianRefused("not_enrolled", "this listener does not take hub tokens")
        claims = await gate.authorize(token, write=write)
        return f"technician:{claims.name}@{claims.id}"
    return request.app[ACTOR_KEY](request)


class RefusalAudit:
    """Audit refused technician tokens: each one up to a bound per minute, then a count."""

    def __init__(self, agent: Agent, per_minute: int) -> None:
        self.agent, self.per_minute = agent, per_minute
        self.clock: Callable[[], float] = time.monotonic
        self.window = 0
        self.recorded = 0
        self.suppressed = 0

    async def record(self, request: web.Request, exc: TechnicianRefused) -> None:
        """Write the refusal's audit row (or count it, past the bound)."""
        store = self.agent.store
        minute = int(self.clock() // 60)
        if minute != self.window:
            if self.suppressed:
                await store.append_audit(
                    AuditRow(
                        "anonymous",
                        "api.refused",
                        "-",
                        "denied",
                        {"not_recorded_one_by_one": self.suppressed},
                    )
                )
            self.window, self.recorded, self.suppressed = minute, 0, 0
        await store.bump("api_technician_refusals")
        if self.recorded >= self.per_minute:
            self.suppressed += 1
            return
        self.recorded += 1
        target = f"{request.method} {request.path[:MAX_LOGGED_PATH]}"
        detail = {"reason": exc.reason, "message": exc.message[:300], "peer": request.remote or ""}
        await store.append_audit(AuditRow(exc.actor, "api.refused", target, "denied", detail))


def _internal_error(request: web.Request) -> web.Response:
    """Log the exception under a fresh id; answer only the id (no internals leak)."""
    error_id = secrets.token_hex(6)
    log.exception(
        "local API %s %s failed (error id %s)",
        request.method,
        request.path[:MAX_LOGGED_PATH],
        error_id,
    )
    return error_body("internal", f"internal error {error_id}; see the agent log", 500)


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidDocument(f"body is not valid JSON: {exc}", [{"field": "(body)"}]) from exc


@described()
async def status(request: web.Request) -> web.Response:
    """Return the agent's status."""
    return web.json_response(await request.app[AGENT_KEY].status())


@described()
async def containers(request: web.Request) -> web.Response:
    """Return the managed containers as the engine reports them."""
    items = await request.app[AGENT_KEY].runtime.list_services()
    return web.json_response([c.model_dump(mode="json") for c in items])


@described(errors=(404,))
async def metrics(request: web.Request) -> web.Response:
    """Return the latest metrics sample and the reporter's counts."""
    reporter = request.app[AGENT_KEY].metrics
    if reporter is None:
        raise NotFound("metrics are disabled ([metrics] enabled = false)")
    if reporter.latest is None:
        raise NotFound("no metrics sample yet (one every metrics.interval_s)")
    return web.json_response({"sample": reporter.latest, **reporter.status()})


@described()
async def targets(request: web.Request) -> web.Response:
    """Return target history."""
    hist = await request.app[AGENT_KEY].store.target_history()
    return web.json_response(
        [
            {
                "revision": t.revision,
                "source": t.source,
                "state": t.state,
                "reason": t.reason,
                "received_at": t.received_at,
                "applied_at": t.applied_at,
            }
            for t in hist
        ]
    )


@described(
    query=(Query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_AUDIT_LIMIT}),),
    errors=(422,),
)
async def audit(request: web.Request) -> web.Response:
    """Return local audit records."""
    limit = _int_param(request, "limit", 100, 1, MAX_AUDIT_LIMIT)
    return web.json_response(await request.app[AGENT_KEY].store.audit_log(limit))


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """Return an integer query parameter within [low, high]; 422 naming it otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return default
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 12 else None
    if value is None or not low <= value <= high:
        raise InvalidDocument(
            f"{name} must be an integer from {low} to {high}",
            [{"field": name, "message": f"must be an integer from {low} to {high}"}],
        )
    return value


@described(body=LocalApply, status=202, errors=(404, 409, 422))
async def apply(request: web.Request) -> web.Response:
    """Apply a target (or a bare release) sent by a technician."""
    body = await _json_body(request)
    ref = await request.app[AGENT_KEY].apply_local(body, actor=request[ACTOR])
    # A local target carries the hub revision it is based on plus its own local sequence.
    return web.json_response(
        {
            "revision": ref.stored.revision,
            "local_seq": ref.stored.local_seq,
            "target": ref.stored.label,
            "release": ref.target.release.ref,
        },
        status=202,
    )


@described(errors=(404, 409, 422))
async def restart_service(request: web.Request) -> web.Response:
    """Restart one service's container."""
    name = request.match_info["name"]
    if not NAME_RE.match(name):  # refused before the agent audits it: bounded text only
        raise InvalidDocument(
            f"service name is not valid (must match {NAME_RE.pattern})",
            [{"field": "name", "message": "must match " + NAME_RE.pattern}],
        )
    await request.app[AGENT_KEY].restart_service(name, actor=request[ACTOR])
    return web.json_response({"restarted": name})


@described(tags=("meta",))
async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of this local API (generated from its routes)."""
    doc = openapi_document(
        request.app,
        title="edgefleet agent local API",
        version=__version__,
        description=(
            "The device's own API: on its unix socket (the peer's unix user) and on the "
            "optional LAN listener (HTTPS, a technician token). Errors are ErrorBody."
        ),
        annotate=lambda _m, _p: {"security": [{"technicianToken": []}]},
        security_schemes={"technicianToken": {"type": "http", "scheme": "bearer"}},
    )
    return web.json_response(doc)


def create_api(
    agent: Agent, config: ApiConfig, *, lan: bool = False, gate: TechnicianGate | None = None
) -> web.Application:
    """Build the local API application (hub-issued tokens judged by ``gate``)."""
    app = web.Application(middlewares=[_errors_and_actor], client_max_size=config.max_body_bytes)
    app[AGENT_KEY] = agent
    app[GATE_KEY] = gate  # None: no hub key here, every hub-issued token is refused
    app[REFUSALS_KEY] = RefusalAudit(agent, config.refusal_audit_per_minute)
    app[MAX_BODY_KEY] = config.max_body_bytes
    app[ACTOR_KEY] = token_actor(config.technicians) if lan else peer_user
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/containers", containers)
    app.router.add_get("/v1/targets", targets)
    app.router.add_get("/v1/audit", audit)
    app.router.add_get("/v1/metrics", metrics)
    app.router.add_get("/v1/prometheus", prometheus)
    app.router.add_post("/v1/apply", apply)
    app.router.add_post("/v1/services/{name}/restart", restart_service)
    install_holds(app, agent)  # pause/resume/pin/unpin/holds, technician reads audited
    install_logs(app, config)  # GET /v1/logs from the store (tail, grep, follow)
    app.router.add_get("/v1/openapi.json", openapi_json)
    return app


async def start_api(agent: Agent, config: ApiConfig) -> list[web.AppRunner]:
    """Start the unix-socket API (and the LAN one, HTTPS, if configured); return the runners."""
    runners = []
    gate = _technician_gate(agent, config)
    tls = lan_tls_context(agent.config.data_dir, config) if config.lan_listen else None
    path = Path(config.socket)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    app = create_api(agent, config, gate=gate)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    old = os.umask(0o177)
    try:
        await web.UnixSite(runner, str(path)).start()
    finally:
        os.umask(old)
    os.chmod(path, config.socket_mode)
    runners.append(runner)
    if config.lan_listen:
        host, _, port = config.lan_listen.rpartition(":")
        lan_app = create_api(agent, config, lan=True, gate=gate)
        lan = web.AppRunner(lan_app, access_log=None, shutdown_timeout=2.0)
        await lan.setup()
        await web.TCPSite(lan, host or "0.0.0.0", int(port), ssl_context=tls).start()
        runners.append(lan)
    if config.prometheus_listen:
        runners.append(await _start_prometheus(agent, config.prometheus_listen))
    return runners


async def _start_prometheus(agent: Agent, listen: str) -> web.AppRunner:
    """Serve GET /metrics alone on ``listen`` (plain HTTP, no authentication: figures only)."""
    app = web.Application()
    app[AGENT_KEY] = agent
    app.router.add_get("/metrics", prometheus)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    await web.TCPSite(runner, host or "0.0.0.0", int(port)).start()
    return runner


def _technician_gate(agent: Agent, config: ApiConfig) -> TechnicianGate:
    """Return the gate for hub-issued tokens: the pinned key if the device is enrolled."""
    identity = load_identity(agent.config.data_dir) if agent.config.hub.url else None
    if identity is None:
        return TechnicianGate(agent.store, None, config.technician_skew_s)
    key = identity.signing_public_key()
    return TechnicianGate(agent.store, key, config.technician_skew_s, dict(identity.tags))


def lan_tls_context(data_dir: Path, config: ApiConfig) -> ssl.SSLContext:
    """Return the LAN listener's TLS context; ConfigError when there is no certificate.

    Bearer tokens never cross the LAN in the clear: the listener serves the device's
    enrolled certificate (or ``api.lan_cert_file``/``lan_key_file``), or does not start.
    """
    identity = load_identity(data_dir) if config.lan_cert_file is None else None
    if config.lan_cert_file is not None and config.lan_key_file is not None:
        cert, key = config.lan_cert_file, config.lan_key_file
    elif identity is not None:
        cert, key = str(identity.cert_path), str(identity.key_path)
    else:
        raise ConfigError(
            "api.lan_listen needs a TLS certificate: enroll the device with a hub, or set "
            "api.lan_cert_file and api.lan_key_file (the LAN API is HTTPS only)"
        )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"api.lan_listen: cannot load certificate {cert}: {exc}") from exc
    return ctx
