"""Rollouts in the dashboard: the list, one rollout's stages, and its actions.

    GET  /ui/rollouts                       the rollouts the viewer may see (and a form)
    POST /ui/rollouts                       start one: release, group, stages, soak (CSRF)
    GET  /ui/rollouts/{id}                  stages with progress bars (live part polled)
    GET  /ui/rollouts/{id}/live             that live part alone (short polling)
    GET  /ui/rollouts/{id}/{action}         the confirmation step: what will happen
    POST /ui/rollouts/{id}/{action}         pause, resume, abort or roll back (CSRF)

Each has the permission and scope kind of its API twin in ``hub.route_access.ROUTES``;
an action runs the API's own code (``hub.rollout_api.perform_action``), so it is checked,
refused and audited exactly as ``POST /api/v1/rollouts/{id}/{action}``; a start runs
``hub.rollout_api.start`` as ``POST /api/v1/rollouts`` does.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from edge_agent.openapi import described
from hub.context import ctx
from hub.dashboard.auth_pages import see_other
from hub.dashboard.pages import HTML, render
from hub.dashboard.session import read_form
from hub.errors import NotFound
from hub.operator_calls import json_body
from hub.rollout_api import (
    MAX_REASON,
    ActionRequest,
    perform_action,
    rollout_summary,
    rollout_view,
    start,
)
from hub.rollout_engine import load
from hub.rollout_models import RolloutSpec
from hub.route_access import visible_groups, visible_rollouts
from hub.wire import parse

routes = web.RouteTableDef()
ACTIONS = ("pause", "resume", "abort", "rollback")
ACTION_PATH = "/ui/rollouts/{rollout_id}/{action:pause|resume|abort|rollback}"
# What each action does, shown on the confirmation step (docs/hub.md "Rollouts").
EFFECT = {
    "pause": "No new devices get the release; devices already given it keep it and are judged.",
    "resume": "The rollout carries on from its current stage.",
    "abort": "The rollout stops for good; every device keeps what it runs now.",
    "rollback": "Every device the rollout touched is sent its previous release.",
}
BARS = ("healthy", "applying", "pending", "held", "offline", "failed", "rolled_back")


async def _view(request: web.Request) -> dict[str, Any]:
    hub = ctx(request)
    record = await hub.store.get_rollout(request.match_info["rollout_id"])
    if record is None:
        raise NotFound(f"no rollout {request.match_info['rollout_id']!r}")
    return await rollout_view(hub, load(record))


@routes.get("/ui/rollouts")
@described(media=HTML, tags=("dashboard",))
async def rollouts(request: web.Request) -> web.Response:
    """List the rollouts the viewer may see, newest first."""
    hub = ctx(request)
    records = await visible_rollouts(request, await hub.store.list_rollouts())
    rows = [rollout_summary(load(r)) for r in reversed(records)]
    groups = [g.name for g in visible_groups(request, await hub.store.list_groups())]
    return render(request, "rollouts.html", title="Rollouts", rows=rows, groups=groups)


START_FIELDS = ("release", "group", "stages", "soak_s")


@routes.post("/ui/rollouts")
@described(body=RolloutSpec, status=303, errors=(400, 404, 409), media=HTML, tags=("dashboard",))
async def start_rollout(request: web.Request) -> web.StreamResponse:
    """Start a rollout from the form (the API's code: same checks, same audit)."""

    async def read() -> RolloutSpec:
        if request.content_type == "application/json":  # a script's body, as the API takes
            return parse(RolloutSpec, await json_body(request))
        form = await read_form(request)
        return parse(RolloutSpec, {k: form[k] for k in START_FIELDS if form.get(k, "").strip()})

    view = await start(request, read)
    return see_other(f"/ui/rollouts/{view['id']}")


@routes.get("/ui/rollouts/{rollout_id}")
@described(errors=(404,), media=HTML, tags=("dashboard",))
async def rollout(request: web.Request) -> web.Response:
    """Show one rollout: its stages with progress bars, its devices, its actions."""
    view = await _view(request)
    return render(
        request, "rollout.html", title=f"Rollout {view['id']}", r=view, bars=BARS, actions=ACTIONS
    )


@routes.get("/ui/rollouts/{rollout_id}/live")
@described(errors=(404,), media=HTML, tags=("dashboard",))
async def rollout_live(request: web.Request) -> web.Response:
    """Answer the rollout page's live part alone (polled by live.js)."""
    view = await _view(request)
    return render(request, "rollout_live.html", title="", r=view, bars=BARS)


@routes.get(ACTION_PATH)
@described(errors=(404,), media=HTML, tags=("dashboard",))
async def confirm(request: web.Request) -> web.Response:
    """Ask to confirm an action: what it does to this rollout, a reason, one button."""
    view = await _view(request)
    action = request.match_info["action"]
    return render(
        request,
        "rollout_confirm.html",
        title=f"Confirm {action}",
        r=view,
        action=action,
        effect=EFFECT[action],
        max_reason=MAX_REASON,
    )


@routes.post(ACTION_PATH)
@described(status=303, errors=(400, 404, 409), media=HTML, tags=("dashboard",))
async def act(request: web.Request) -> web.StreamResponse:
    """Run the confirmed action (the API's code: same checks, same audit); back to the page."""
    rollout_id, action = request.match_info["rollout_id"], request.match_info["action"]

    async def read() -> ActionRequest:
        return parse(ActionRequest, {"reason": (await read_form(request)).get("reason", "")})

    await perform_action(request, rollout_id, action, read)
    return see_other(f"/ui/rollouts/{rollout_id}")
