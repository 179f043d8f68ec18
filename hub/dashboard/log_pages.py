"""A device's logs on its page: a ``logs`` action asked from a form, its lines shown as they come.

    POST /ui/devices/{id}/logs                  queue a logs action (tail, follow)  devices:write
    GET  /ui/devices/{id}/logs/{action_id}      its lines so far, and its state     devices:read
    GET  /ui/devices/{id}/logs/{action_id}/live the same lines, for polling         devices:read

This is the API's logs on demand, not a second path: the form queues the same ``logs``
action as ``POST /api/v1/devices/{id}/actions`` (``hub.action_api.queue_for_device``: the
same checks, the same signed action, the same ``action.create`` audit row) and the page
shows its result parts as ``GET /api/v1/actions/{id}/parts`` does. Without JavaScript
the page is whole (reloading it shows the lines received since); with it, ``live.js``
refreshes the lines every ``dashboard.poll_interval_s`` while a follow runs.

Bounds: a follow lasts at most ``dashboard.log_follow_max_s``; at most
``dashboard.max_log_follows`` follows asked from the dashboard run at once (a request
past it is 409, counted); a request waits ``dashboard.log_request_expires_s`` for the
device; a page shows the newest ``dashboard.log_tail_lines`` lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from pydantic import Field

from edge_agent.actiondoc import FINAL
from edge_agent.openapi import described
from hub.action_api import action_view, queue_for_device
from hub.context import HubContext, ctx
from hub.dashboard.auth_pages import see_other
from hub.dashboard.pages import HTML, render
from hub.dashboard.session import FORM, read_form
from hub.errors import Conflict, InvalidRequest, NotFound
from hub.operator_calls import Body
from hub.store import ActionRecord
from hub.wire import parse

routes = web.RouteTableDef()
LOGS = "/ui/devices/{device_id}/logs"
PARTS_READ = 200  # the newest parts read for a page (each holds the lines of one batch)


class LogForm(Body):
    """The device page's log request form."""

    csrf: str = ""  # checked by the session before the handler
    service: str = Field("", max_length=128)
    tail: int = Field(100, ge=0)
    follow: int = Field(0, ge=0)


@dataclass
class LogFollows:
    """The follows asked from the dashboard that may still run: action id -> the time
    by which it has ended at the latest (its expiry plus its follow)."""

    running: dict[str, datetime] = field(default_factory=dict)
    started: int = 0
    refused: int = 0  # requests refused at dashboard.max_log_follows

    def admit(self, now: datetime, bound: int) -> None:
        """Make room for one more follow, or raise Conflict at ``bound`` (counted)."""
        for action_id, ends in list(self.running.items()):
            if ends <= now:
                del self.running[action_id]
        if len(self.running) >= bound:
            self.refused += 1
            raise Conflict(
                f"{len(self.running)} log follows run from the dashboard, the bound "
                "(dashboard.max_log_follows): stop one or wait for one to end"
            )

    def stats(self) -> dict[str, int]:
        """Return the counters (on /healthz)."""
        return {"running": len(self.running), "started": self.started, "refused": self.refused}


FOLLOWS = web.AppKey("log_follows", LogFollows)


def _bounded(form: LogForm, hub: HubContext) -> dict[str, Any]:
    """Return the action's args; 422 naming a field over its dashboard bound."""
    cfg = hub.config.dashboard
    over = {
        "tail": (form.tail, cfg.log_tail_lines, "dashboard.log_tail_lines"),
        "follow": (form.follow, cfg.log_follow_max_s, "dashboard.log_follow_max_s"),
    }
    for name, (value, bound, key) in over.items():
        if value > bound:
            message = f"{name}: at most {bound} ({key})"
            raise InvalidRequest(message, fields=[{"field": name, "message": message}])
    args: dict[str, Any] = {"tail": form.tail}
    if form.service.strip():
        args["service"] = form.service.strip()
    if form.follow:
        args["follow"] = form.follow
    return args


@routes.post(LOGS)
@described(
    body=LogForm, body_media=FORM, status=303, errors=(404, 409), media=HTML, tags=("dashboard",)
)
async def ask_logs(request: web.Request) -> web.StreamResponse:
    """Queue a ``logs`` action for the device (as the API does); go to its lines."""
    hub, device_id = ctx(request), request.match_info["device_id"]
    follows, cfg = request.app[FOLLOWS], hub.config.dashboard

    async def body() -> dict[str, Any]:
        form = parse(LogForm, await read_form(request))
        args = _bounded(form, hub)
        if form.follow:
            follows.admit(hub.now(), cfg.max_log_follows)
        return {"kind": "logs", "args": args, "expires_in_s": cfg.log_request_expires_s}

    record = await queue_for_device(request, device_id, body)
    follow = int(record.args.get("follow") or 0)
    if follow:
        follows.started += 1
        follows.running[record.id] = record.expires_at + timedelta(seconds=follow)
    return see_other(f"/ui/devices/{device_id}/logs/{record.id}")


async def _action(request: web.Request) -> ActionRecord:
    """Return the page's action: a logs action of the page's device (else 404)."""
    hub = ctx(request)
    device_id, action_id = request.match_info["device_id"], request.match_info["action_id"]
    record = await hub.store.get_action(action_id[:64], hub.now())
    if record is None or record.device_id != device_id or record.kind != "logs":
        raise NotFound(f"no logs request {action_id!r} of device {device_id!r}")
    return record


async def log_values(request: web.Request) -> dict[str, Any]:
    """Return what the lines part shows: the action's state and its newest lines."""
    hub, record = ctx(request), await _action(request)
    _, totals = await hub.store.list_action_parts(record.id, after=0, limit=1)
    after = max(0, totals.parts - PARTS_READ)
    parts, _ = await hub.store.list_action_parts(record.id, after=after, limit=PARTS_READ)
    lines = [line for part in parts for line in part.lines]
    shown = hub.config.dashboard.log_tail_lines
    if record.state in FINAL:
        request.app[FOLLOWS].running.pop(record.id, None)
    return {
        "a": action_view(record),
        "lines": lines[-shown:],
        "total_lines": totals.lines,
        "cut_lines": totals.cut_lines,
        "running": record.state not in FINAL,
    }


@routes.get(LOGS + "/{action_id}")
@described(errors=(404,), media=HTML, tags=("dashboard",))
async def logs_page(request: web.Request) -> web.Response:
    """Show a logs request of the device: its state and lines (refreshing while it runs)."""
    values = await log_values(request)
    device_id = request.match_info["device_id"]
    return render(request, "logs.html", title=f"Logs of {device_id}", device_id=device_id, **values)


@routes.get(LOGS + "/{action_id}/live")
@described(errors=(404,), media=HTML, tags=("dashboard",))
async def logs_live(request: web.Request) -> web.Response:
    """Return the lines part of a logs request's page (HTML), for polling."""
    return render(request, "logs_live.html", title="", **await log_values(request))
