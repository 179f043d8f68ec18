"""Page-level helpers every dashboard page uses: who is looking, rendering, HTML errors.

Access is decided before a page's handler by ``hub.route_access`` (each ``/ui/`` route
is in its ``ROUTES`` with the permission and scope kind of its API twin; a browser is
authenticated by its session cookie there). Handlers then show only what
``hub.route_access.visible_*`` keeps. ``html_errors`` answers a browser's refused or
malformed request with an HTML page of the same status (the sign-in form for 401);
callers with an Authorization header keep the API's JSON error bodies.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jinja2
from aiohttp import web

from edge_agent.openapi import Query
from hub.access import PRINCIPAL_KEY, Permission, Principal
from hub.context import ctx
from hub.dashboard.session import (
    COOKIE,
    CSRF_FIELD,
    SESSION_KEY,
    clear_cookie,
    is_dashboard_path,
)
from hub.errors import HubError, InvalidRequest, Unauthenticated
from hub.route_access import Handler, caller
from hub.store.records import SessionRecord
from hub.wire import error_response

HTML = "text/html"
# Pages run only the hub's own script and style, cannot be framed (clickjacking), post
# forms only to the hub, and are not cached (they show one viewer's fleet).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("hub.dashboard", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def ago(value: datetime | str | None, now: datetime | None = None) -> str:
    """Return how long ago ``value`` was, in words a person reads at a glance."""
    if value is None:
        return "never"
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    seconds = int(((now or datetime.now(UTC)) - at).total_seconds())
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if abs(seconds) >= size:
            return f"{seconds // size} {unit} ago"
    return f"{max(seconds, 0)} s ago"


ENV.filters["ago"] = ago
ENV.filters["todate"] = datetime.fromisoformat


def wants_html(request: web.Request) -> bool:
    """Return whether the caller is a browser on a page: it asks for HTML and sends no
    token (an API client gets the API's JSON error bodies, as the document says)."""
    return (
        is_dashboard_path(request.path)
        and "Authorization" not in request.headers
        and HTML in request.headers.get("Accept", "")
    )


def principal(request: web.Request) -> Principal:
    """Return who is looking (checked by the access middleware)."""
    return caller(request)


def render(
    request: web.Request, template: str, *, title: str, status: int = 200, **values: Any
) -> web.Response:
    """Render a page of the base layout, with the viewer, the CSRF token and the nav."""
    session = request.get(SESSION_KEY)
    who = request.get(PRINCIPAL_KEY)
    body = ENV.get_template(template).render(
        title=title,
        who=getattr(who, "name", None),
        csrf=session.csrf if isinstance(session, SessionRecord) else None,
        csrf_field=CSRF_FIELD,
        path=request.path,
        poll_s=ctx(request).config.dashboard.poll_interval_s,
        can=lambda p: who is not None and who.allows(Permission(p)),
        **values,
    )
    return web.Response(text=body, status=status, content_type=HTML, headers=PAGE_HEADERS)


@web.middleware
async def html_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer a browser's refused page with HTML of the same status (401: sign in); a
    refused session's cookie is cleared whoever asked."""
    if not is_dashboard_path(request.path):
        return await handler(request)
    try:
        return await handler(request)
    except Unauthenticated as exc:
        answer = _sign_in(request, exc.message) if wants_html(request) else error_response(exc)
        if COOKIE in request.cookies:
            clear_cookie(answer)  # a dead session's cookie is of no further use
        return answer
    except HubError as exc:
        if not wants_html(request):
            raise
        return render(
            request, "error.html", title=f"Error {exc.status}", status=exc.status, error=exc
        )


def _sign_in(request: web.Request, reason: str) -> web.Response:
    target = request.path_qs if request.method == "GET" else "/ui/"
    return render(request, "login.html", title="Sign in", status=401, reason=reason, next=target)


def bad_query(name: str, message: str) -> InvalidRequest:
    """Return the 400 refusing query parameter ``name`` (as the API refuses one)."""
    return InvalidRequest(message, fields=[{"field": name, "message": message}], status=400)


def query_text(request: web.Request, name: str, max_len: int = 200) -> str:
    """Return a query parameter's text ("" if absent); 400 naming it if over ``max_len``."""
    value = request.query.get(name, "").strip()
    if len(value) > max_len:
        raise bad_query(name, f"{name} is longer than {max_len}")
    return value


def query_choice(request: web.Request, name: str, choices: tuple[str, ...]) -> str:
    """Return a query parameter that must be one of ``choices`` ("" if absent)."""
    value = request.query.get(name, "")
    if value and value not in choices:
        raise bad_query(name, f"{name} must be one of {', '.join(choices)}")
    return value


def query_int(request: web.Request, name: str, default: int, high: int) -> int:
    """Return a positive integer query parameter (at most ``high``), 400 naming it if not."""
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or not 1 <= int(text) <= high:
        raise bad_query(name, f"{name} must be an integer from 1 to {high}")
    return int(text)


def choice_query(name: str, choices: tuple[str, ...], text: str = "") -> Query:
    """Return the description of a query parameter with a fixed set of values."""
    return Query(name, {"type": "string", "enum": ["", *choices]}, text)
