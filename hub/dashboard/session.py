"""Dashboard sessions: a random id in a cookie, its sha256 in the store, a CSRF token.

The cookie is HttpOnly, Secure, SameSite=Strict and scoped to ``/ui/``. A session ends
when unused for ``dashboard.idle_timeout_s``, ``dashboard.absolute_timeout_s`` after
sign-in, or at sign-out. The principal is re-derived on every request from the token the
session was made with (``hub.route_access.token_principal``): revoking the token or
disabling the user ends its sessions too. Every POST carries the session's CSRF token in
the form field ``csrf``; a missing or wrong one is refused (403) before the handler.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from aiohttp import web

from hub.access import Principal
from hub.config import DashboardConfig
from hub.context import HubContext
from hub.errors import Forbidden, Unauthenticated
from hub.store.records import SessionRecord

COOKIE = "edgefleet_session"
CSRF_FIELD = "csrf"
FORM = "application/x-www-form-urlencoded"  # the only body the dashboard reads
ADMIN_SESSION = "admin"  # token_id of a session signed in with the data-dir admin token
SESSION_KEY = "edgefleet.dashboard_session"  # the request key of the checked session
TOUCH_MAX_S = 60.0  # last_seen_at is written at most this often (or a quarter of idle)
Resolve = Callable[[HubContext, str, str | None], Awaitable[Principal]]


class CsrfRefused(Forbidden):
    """A POST of a known session without its CSRF token: refused, audited as the session's
    principal (the session is known; the request only lacks proof it comes from its page)."""

    def __init__(self, message: str, principal: str) -> None:
        super().__init__(message)
        self.principal = principal


def refused_actor(exc: Exception) -> str:
    """Return who a refusal is audited as: the session's principal for a CSRF refusal."""
    return exc.principal if isinstance(exc, CsrfRefused) else "anonymous"


def is_dashboard_path(path: str) -> bool:
    """Return whether ``path`` is a dashboard page (authenticated by session cookie)."""
    return path == "/ui" or path.startswith("/ui/")


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def expiry_reason(record: SessionRecord, now: datetime, cfg: DashboardConfig) -> str | None:
    """Return why the session has expired at ``now``, or None while it is live."""
    if now - record.created_at >= timedelta(seconds=cfg.absolute_timeout_s):
        return f"session expired: signed in over {cfg.absolute_timeout_s:g} s ago"
    if now - record.last_seen_at >= timedelta(seconds=cfg.idle_timeout_s):
        return f"session expired: unused for over {cfg.idle_timeout_s:g} s"
    return None


async def start(hub: HubContext, principal: Principal, token_id: str) -> tuple[str, SessionRecord]:
    """Store a new session; return the id for the cookie (shown once) and its record."""
    session_id, now, cfg = secrets.token_urlsafe(32), hub.now(), hub.config.dashboard
    record = SessionRecord(
        _hash(session_id), principal.name, token_id, secrets.token_urlsafe(24), now, now
    )
    await hub.store.add_session(
        record,
        cfg.max_sessions,
        idle_before=now - timedelta(seconds=cfg.idle_timeout_s),
        created_before=now - timedelta(seconds=cfg.absolute_timeout_s),
    )
    return session_id, record


def set_cookie(response: web.StreamResponse, session_id: str, cfg: DashboardConfig) -> None:
    """Give the browser the session cookie (it outlives no absolute expiry)."""
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=int(cfg.absolute_timeout_s),
        path="/ui/",
        secure=True,
        httponly=True,
        samesite="Strict",
    )


def clear_cookie(response: web.StreamResponse) -> None:
    """Tell the browser to forget the session cookie."""
    response.del_cookie(COOKIE, path="/ui/")


async def current(request: web.Request, hub: HubContext) -> SessionRecord:
    """Return the request's live session (CSRF checked on POST), or raise why not."""
    session_id = request.cookies.get(COOKIE, "")
    if not session_id or not session_id.isascii():
        raise Unauthenticated("sign in first: no dashboard session")
    record = await hub.store.get_session(_hash(session_id))
    if record is None:
        raise Unauthenticated("sign in again: unknown or ended dashboard session")
    now, cfg = hub.now(), hub.config.dashboard
    reason = expiry_reason(record, now, cfg)
    if reason is not None:
        await hub.store.delete_session(record.id_hash)
        raise Unauthenticated(reason)
    if request.method not in ("GET", "HEAD"):
        sent = (await read_form(request)).get(CSRF_FIELD)
        if not isinstance(sent, str) or not hmac.compare_digest(sent, record.csrf):
            raise CsrfRefused(
                "missing or wrong CSRF token: reload the page and try again", record.principal
            )
    touch_after = min(TOUCH_MAX_S, cfg.idle_timeout_s / 4)
    if (now - record.last_seen_at).total_seconds() >= touch_after:
        await hub.store.touch_session(record.id_hash, now)
    request[SESSION_KEY] = record
    return record


async def read_form(request: web.Request) -> dict[str, str]:
    """Return the fields of a urlencoded form body (any other body: no fields)."""
    if request.content_type != FORM:
        return {}
    return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}


async def session_principal(request: web.Request, hub: HubContext, resolve: Resolve) -> Principal:
    """Return the principal of the request's live session (see ``current``)."""
    record = await current(request, hub)
    return await resolve(hub, record.token_id, None)


async def end(hub: HubContext, record: SessionRecord) -> None:
    """End a session (sign-out)."""
    await hub.store.delete_session(record.id_hash)
