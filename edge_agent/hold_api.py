"""Local API routes for technician holds, and the aggregated audit of technician reads.

    POST /v1/pause   {minutes, reason}   pause reconciliation (operate role)
    POST /v1/resume                      end the pause
    POST /v1/pin     {minutes, reason}   keep the current release; new targets wait
    POST /v1/unpin                       end the pin
    GET  /v1/holds                       the active holds

A hub-issued token of the read role is refused 403 on the POSTs by the API's middleware
(every non-GET is a change). Reads by a technician (``technician:`` actors) of status,
containers, logs, audit, targets and metrics are audited once per technician, route and
``[technician] read_audit_minutes``: the first read of a window writes its row at once,
the reads after it in the same window are counted and written as one row when the window
is over (at the next read or at the next sweep).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from edge_agent.config import TechnicianConfig
from edge_agent.errors import Conflict, HoldRefused
from edge_agent.holds import KINDS, HoldRequest, check_request
from edge_agent.openapi import described
from edge_agent.outbox import AuditRow

if TYPE_CHECKING:
    from edge_agent.agent import Agent

AUDITED_READS = (
    "/v1/status",
    "/v1/containers",
    "/v1/logs",
    "/v1/audit",
    "/v1/targets",
    "/v1/metrics",
    "/v1/holds",
)
MAX_READ_KEYS = 1000  # (technician, route) windows kept in memory; past it, flushed early
READS_KEY = web.AppKey("technician_reads", "ReadAudit")
AUDITED_KEY = web.RequestKey("read_audited", bool)  # the handler audited it already
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _agent(request: web.Request) -> Agent:
    from edge_agent.api import AGENT_KEY

    return request.app[AGENT_KEY]


def _actor(request: web.Request) -> str:
    from edge_agent.api import ACTOR

    return request[ACTOR]


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw) if raw else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise HoldRefused(f"body is not valid JSON: {exc}", field="(body)") from exc


def _refused(exc: HoldRefused) -> web.Response:
    return web.json_response(exc.to_dict(), status=400)


def hold_handler(kind: str) -> Handler:
    """Return the POST handler that sets a hold of ``kind``."""

    @described(body=HoldRequest, errors=(400, 409), tags=("holds",))
    async def handle(request: web.Request) -> web.Response:
        """Hold the device (pause: no converging; pin: no new target) for a while."""
        agent, actor = _agent(request), _actor(request)
        bound = getattr(agent.config.technician, f"max_{kind}_minutes")
        try:
            minutes, reason = check_request(kind, await _body(request), bound)
        except HoldRefused as exc:
            target = f"device:{agent.device_id}"
            detail = {"field": exc.field, "message": exc.message[:300]}
            row = AuditRow(actor, f"device.{kind}", target, "refused", detail)
            await agent.store.append_audit(row)
            return _refused(exc)
        held = await agent.holds.hold(kind, actor, minutes, reason)
        return web.json_response({kind: held.report()})

    return handle


def release_handler(kind: str) -> Handler:
    """Return the POST handler that ends a hold of ``kind``."""

    @described(errors=(409,), tags=("holds",))
    async def handle(request: web.Request) -> web.Response:
        """End a hold before its time (resume after a pause, unpin after a pin)."""
        held = await _agent(request).holds.release(kind, _actor(request))
        if held is None:
            raise Conflict(f"the device is not under {kind}")
        return web.json_response({"released": kind, "was": held.report()})

    return handle


@described(tags=("holds",))
async def holds(request: web.Request) -> web.Response:
    """Return the active holds."""
    return web.json_response(_agent(request).holds.report() or {})


@dataclass
class _Window:
    started: float
    count: int = 0  # reads after the first one, not yet written


class ReadAudit:
    """One audit row per technician, route and window; later reads counted, then written."""

    def __init__(self, agent: Agent, window_s: float, clock: Callable[[], float] = time.monotonic):
        self.agent, self.window_s, self.clock = agent, window_s, clock
        self.windows: dict[tuple[str, str], _Window] = {}

    async def record(self, actor: str, route: str) -> None:
        """Count one read; write a row when a window starts (and one for the last window)."""
        now = self.clock()
        await self.sweep(now)
        key = (actor, route)
        window = self.windows.get(key)
        if window is not None:
            window.count += 1
            return
        if len(self.windows) >= MAX_READ_KEYS:
            await self.sweep(float("inf"))
        self.windows[key] = _Window(now)
        await self._write(actor, route, 1, "first")

    async def sweep(self, now: float | None = None) -> None:
        """Write the count of every window that is over (all of them with ``inf``)."""
        now = self.clock() if now is None else now
        over = [k for k, w in self.windows.items() if now - w.started >= self.window_s]
        for key in over:
            window = self.windows.pop(key)
            if window.count:
                await self._write(*key, window.count, "more")

    async def _write(self, actor: str, route: str, count: int, part: str) -> None:
        detail = {"count": count, "window_s": self.window_s, "part": part}
        await self.agent.store.append_audit(AuditRow(actor, "api.read", route, "ok", detail))


def _route(path: str) -> str | None:
    for prefix in AUDITED_READS:
        if path == prefix or path.startswith(prefix + "/") or path.startswith(prefix + "?"):
            return prefix
    return None


@web.middleware
async def audit_reads(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Audit a technician's read (aggregated) once the read has been answered."""
    from edge_agent.api import ACTOR

    response = await handler(request)
    actor = request.get(ACTOR) or ""
    route = _route(request.path)
    is_technician = actor.startswith("technician:") and response.status < 400
    if request.method == "GET" and route and is_technician and not request.get(AUDITED_KEY):
        await request.app[READS_KEY].record(actor, route)
    return response


def install(app: web.Application, agent: Agent) -> None:
    """Add the hold routes and the technician read audit to a local API application."""
    # Tolerant of a narrower agent (tests build the API on small fakes of their own).
    config = getattr(getattr(agent, "config", None), "technician", None) or TechnicianConfig()
    reads = ReadAudit(agent, config.read_audit_minutes * 60)
    app[READS_KEY] = reads
    getattr(agent, "read_audits", []).append(reads)  # swept by the agent's holds loop
    app.middlewares.append(audit_reads)
    for kind in KINDS:
        app.router.add_post(f"/v1/{kind}", hold_handler(kind))
    app.router.add_post("/v1/resume", release_handler("pause"))
    app.router.add_post("/v1/unpin", release_handler("pin"))
    app.router.add_get("/v1/holds", holds)
