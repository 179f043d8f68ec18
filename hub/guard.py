"""Refusing unauthenticated clients cheaply: per-source rate limit and refusal audit.

``guard_middleware`` answers 429 (``Retry-After``) to a source whose failure bucket is
empty, before any work, on the routes that take credentials (enrollment, certificate
renewal, the operator API and the dashboard's sign-in form); every refused credential
charges the source. A browser at the sign-in form gets the 429 as a page (the one the
dashboard installs as ``LIMITED_PAGE``). Refusal audit rows go through ``RefusalAudit``
(aggregated, counted, never dropped).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from hub.context import HUB
from hub.errors import BadCSR, EnrollmentRefused, Unauthenticated
from hub.ratelimit import SourceLimiter
from hub.refusals import RefusalAudit
from hub.store import AuditRecord

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LimitedPage = Callable[[web.Request, str, int], web.Response]
LIMITER = web.AppKey("limiter", SourceLimiter)
REFUSALS = web.AppKey("refusals", RefusalAudit)
LIMITED_PAGE = web.AppKey("limited_page", LimitedPage)  # a 429 as an HTML page
SIGN_IN = "/ui/login"
CHARGED = (Unauthenticated, EnrollmentRefused, BadCSR)


def install(app: web.Application) -> None:
    """Add the limiter and the refusal audit to an app whose HUB context is set."""
    limits = app[HUB].config.limits
    app[LIMITER] = SourceLimiter(
        limits.auth_failure_burst, limits.auth_failure_per_s, limits.max_tracked_sources
    )
    app[REFUSALS] = RefusalAudit(
        app[HUB].store, limits.refusal_audit_window_s, limits.max_refusal_groups
    )
    app.cleanup_ctx.append(_refusal_audit_lifetime)  # torn down before the store


async def _refusal_audit_lifetime(app: web.Application) -> AsyncIterator[None]:
    app[REFUSALS].start()
    yield
    await app[REFUSALS].stop()


def source(request: web.Request) -> str:
    """Return the peer address a request is counted against."""
    return request.remote or "-"


async def audit_refusal(request: web.Request, record: AuditRecord) -> None:
    """Audit one refusal of an unauthenticated caller (aggregated per source)."""
    await request.app[REFUSALS].record(source(request), record)


def _guarded_action(request: web.Request) -> str | None:
    if request.path == "/v1/enroll":
        return "device.enroll"
    if request.path.startswith("/v1/renew"):
        return "device.renew"
    if request.path.startswith("/api/") or request.path == "/metrics":
        return "operator.request"
    if request.path == SIGN_IN and request.method == "POST":
        return "dashboard.sign_in"
    return None


def charge(request: web.Request) -> None:
    """Charge the request's source for a refused credential its handler answered itself
    (the sign-in form shows the refusal as a page instead of raising it)."""
    request.app[LIMITER].charge(source(request), time.monotonic())


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """429 a source over its failure budget; charge it for every refused credential."""
    action = _guarded_action(request)
    if action is None:
        return await handler(request)
    limiter, peer = request.app[LIMITER], source(request)
    retry_after = limiter.retry_after(peer, time.monotonic())
    if retry_after is not None:
        return await _too_many(request, action, retry_after)
    try:
        return await handler(request)
    except CHARGED:
        limiter.charge(peer, time.monotonic())
        raise


async def _too_many(request: web.Request, action: str, retry_after: int) -> web.Response:
    hub = request.app[HUB]
    detail = {"reason": "rate_limited", "path": request.path[:200]}
    await audit_refusal(
        request, AuditRecord("anonymous", action, "-", "limited", hub.now(), detail)
    )
    message = (
        f"too many refused credentials from {source(request)}; retry in {retry_after} s "
        "(limits.auth_failure_burst, limits.auth_failure_per_s)"
    )
    page = request.app.get(LIMITED_PAGE)
    if page is not None and request.path == SIGN_IN:
        answer = page(request, message, retry_after)
        answer.headers["Retry-After"] = str(retry_after)
        return answer
    return web.json_response(
        {"error": "rate_limited", "message": message, "fields": []},
        status=429,
        headers={"Retry-After": str(retry_after)},
    )
