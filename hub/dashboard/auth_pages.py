"""Sign-in, sign-out, the redirect from ``/`` and the static assets of the dashboard.

Sign-in takes an operator token (a user's ``ut_`` token or the data-dir admin token),
authenticated exactly as the API authenticates a Bearer token, and starts a session
(``hub.dashboard.session``). Both outcomes are audited: a sign-in as
``dashboard.sign_in``, a refusal like every refused credential (aggregated per source).
"""

from __future__ import annotations

import html
from importlib import resources

from aiohttp import web
from pydantic import Field

from edge_agent.openapi import described
from hub.access import Principal
from hub.auth import split_user_token
from hub.context import HubContext, ctx
from hub.dashboard import session
from hub.dashboard.pages import HTML, render, wants_html
from hub.errors import HubError, NotFound, Unauthenticated
from hub.guard import audit_refusal, charge, source
from hub.operator_calls import Body
from hub.route_access import token_principal
from hub.store import AuditRecord
from hub.wire import parse

routes = web.RouteTableDef()
STATIC = {"dashboard.css": "text/css", "live.js": "text/javascript"}
HOME = "/ui/"


class SignIn(Body):
    """The sign-in form."""

    token: str = Field(min_length=1, max_length=512)
    next: str = Field(HOME, max_length=2048)


def safe_next(target: str) -> str:
    """Return where to go after sign-in: a dashboard path, never another site."""
    if target.startswith(HOME) and not target.startswith("//") and "\\" not in target:
        return target
    return HOME


def see_other(location: str) -> web.Response:
    """Return a 303 to ``location`` with a small HTML body (the page's media type)."""
    body = f'<!doctype html><title>See other</title><a href="{html.escape(location)}">continue</a>'
    return web.Response(status=303, text=body, content_type=HTML, headers={"Location": location})


async def _principal(hub: HubContext, token: str) -> tuple[Principal, str]:
    """Return the token's principal and what the session remembers of it."""
    parts = split_user_token(token)
    if parts is None:
        return hub.operators.principal_for(token), session.ADMIN_SESSION
    return await token_principal(hub, *parts), parts[0]


async def _refused(request: web.Request, exc: HubError) -> None:
    actor = session.refused_actor(exc)
    detail = {"reason": exc.message, "route": f"{request.method} {request.path}"}
    row = AuditRecord(actor, "operator.access", "-", "denied", ctx(request).now(), detail)
    await audit_refusal(request, row)


def limited_page(request: web.Request, message: str, retry_after: int) -> web.Response:
    """Answer a sign-in from a source over its failure budget (429): a page for a browser."""
    if not wants_html(request):
        body = {"error": "rate_limited", "message": message, "fields": []}
        return web.json_response(body, status=429)
    reason = (
        f"Too many refused sign-ins from this address: try again in {retry_after} s. ({message})"
    )
    return render(request, "login.html", title="Sign in", status=429, reason=reason, next=HOME)


@routes.get("/")
@described(status=303, also=(200,), media=HTML, tags=("dashboard",))
async def root(request: web.Request) -> web.StreamResponse:
    """Send a browser to the dashboard."""
    return see_other(HOME)


@routes.get("/ui/login")
@described(media=HTML, tags=("dashboard",))
async def sign_in_form(request: web.Request) -> web.Response:
    """Show the sign-in form."""
    return render(request, "login.html", title="Sign in", reason="", next=HOME)


@routes.post("/ui/login")
@described(
    body=SignIn,
    body_media=session.FORM,
    status=303,
    also=(200,),
    media=HTML,
    errors=(409,),
    tags=("dashboard",),
)
async def sign_in(request: web.Request) -> web.StreamResponse:
    """Check an operator token and start a session (a cookie); then go to ``next``."""
    hub = ctx(request)
    form = parse(SignIn, dict(await session.read_form(request)))
    try:
        who, token_id = await _principal(hub, form.token)
    except Unauthenticated as exc:
        await _refused(request, exc)
        if not wants_html(request):
            raise  # charged by the guard, as every refused credential
        charge(request)
        reason = "That token was not accepted: " + exc.message
        return render(
            request,
            "login.html",
            title="Sign in",
            status=401,
            reason=reason,
            next=safe_next(form.next),
        )
    session_id, record = await session.start(hub, who, token_id)
    detail = {"token_id": token_id, "source": source(request)}
    await hub.store.record_audit(
        AuditRecord(who.name, "dashboard.sign_in", who.name, "ok", record.created_at, detail)
    )
    response = see_other(safe_next(form.next))
    session.set_cookie(response, session_id, hub.config.dashboard)
    return response


@routes.post("/ui/logout")
@described(status=303, also=(200,), media=HTML, errors=(401,), tags=("dashboard",))
async def sign_out(request: web.Request) -> web.StreamResponse:
    """End the session (its CSRF token checked) and forget the cookie."""
    hub = ctx(request)
    try:
        record = await session.current(request, hub)
    except HubError as exc:
        await _refused(request, exc)
        raise
    await session.end(hub, record)
    await hub.store.record_audit(
        AuditRecord(record.principal, "dashboard.sign_out", record.principal, "ok", hub.now())
    )
    response = see_other("/ui/login")
    session.clear_cookie(response)
    return response


@routes.get("/ui/static/{name}")
@described(media="text/plain", errors=(404,), tags=("dashboard",))
async def static(request: web.Request) -> web.Response:
    """Serve one of the dashboard's own assets (no CDN: air-gapped sites work)."""
    name = request.match_info["name"]
    if name not in STATIC:
        raise NotFound(f"no dashboard asset {name!r}")
    text = resources.files("hub.dashboard").joinpath("static", name).read_text()
    return web.Response(
        text=text,
        content_type=STATIC[name],
        headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
    )
