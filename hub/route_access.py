"""Every route's permission and scope, and the middleware that checks them first.

``ROUTES`` is the one source of truth: ``create_app`` refuses to build when a registered
route is missing from it (``check_routes``), and ``tests/hub/test_access_matrix.py``
tries every route with every role in and out of scope. ``access_middleware``
authenticates the caller, checks role and scope *before* the handler runs, audits a
refusal (aggregated per source, like every unauthenticated refusal) and leaves the
principal in the request for ``hub.operator_calls.principal``/``audited``.

An object outside the caller's scope answers 404 exactly as an absent one would.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import TypeVar

from aiohttp import web

from hub.access import (
    ADMIN,
    PRINCIPAL_KEY,
    Grant,
    Permission,
    Principal,
    check_selector,
    in_scope,
    require,
    require_all,
)
from hub.auth import split_user_token
from hub.context import HubContext, ctx
from hub.dashboard.session import (
    ADMIN_SESSION,
    is_dashboard_path,
    refused_actor,
    session_principal,
)
from hub.errors import Forbidden, HubError, NotFound, Unauthenticated
from hub.guard import audit_refusal
from hub.rollout_models import RolloutSpec
from hub.selector import Selector, parse
from hub.store import (
    ActionRecord,
    AuditEntry,
    AuditRecord,
    AuditScope,
    DeviceRecord,
    GroupRecord,
    RolloutRecord,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
P = Permission
T = TypeVar("T")


class Kind(StrEnum):
    """How a route's scope is found."""

    DEVICE = "device"  # path param device_id
    GROUP = "group"  # path param name: the group's selector
    ROLLOUT = "rollout"  # path param rollout_id: its group's or its own selector
    ACTION = "action"  # path param action_id: the action's device
    LIST = "list"  # the handler returns only what is in scope
    SELECTOR = "selector"  # the handler checks the body's selector stays inside the scope
    GLOBAL = "global"  # not scoped (releases): the role is enough
    ADMIN = "admin"  # the permission on scope ALL
    DEVICE_CERT = "device_cert"  # device routes: mTLS, checked by the handler
    PUBLIC = "public"  # no credentials


@dataclass(frozen=True)
class RouteAccess:
    """What a route needs."""

    permission: Permission | None
    kind: Kind


def _r(permission: Permission | None, kind: Kind) -> RouteAccess:
    return RouteAccess(permission, kind)


DEV = "/api/v1/devices/{device_id}"
GRP = "/api/v1/groups/{name}"
ROUTES: dict[tuple[str, str], RouteAccess] = {
    ("GET", "/healthz"): _r(None, Kind.PUBLIC),
    ("GET", "/v1/ca"): _r(None, Kind.PUBLIC),
    ("POST", "/v1/enroll"): _r(None, Kind.PUBLIC),
    ("POST", "/v1/renew"): _r(None, Kind.DEVICE_CERT),
    ("POST", "/v1/renew/challenge"): _r(None, Kind.PUBLIC),  # the handler checks a proof
    ("POST", "/v1/renew/expired"): _r(None, Kind.PUBLIC),  # signed by the device key
    ("GET", "/api/v1/openapi.json"): _r(None, Kind.PUBLIC),
    ("POST", "/v1/sync"): _r(None, Kind.DEVICE_CERT),
    ("GET", "/v1/target"): _r(None, Kind.DEVICE_CERT),
    ("POST", "/api/v1/enrollment-tokens"): _r(P.TOKENS_CREATE, Kind.ADMIN),
    ("GET", "/api/v1/devices"): _r(P.DEVICES_READ, Kind.LIST),
    ("GET", DEV): _r(P.DEVICES_READ, Kind.DEVICE),
    ("GET", DEV + "/target"): _r(P.DEVICES_READ, Kind.DEVICE),
    ("POST", DEV + "/target"): _r(P.TARGETS_WRITE, Kind.DEVICE),
    ("POST", DEV + "/disable"): _r(P.DEVICES_WRITE, Kind.DEVICE),
    ("POST", DEV + "/enable"): _r(P.DEVICES_WRITE, Kind.DEVICE),
    ("GET", DEV + "/events"): _r(P.DEVICES_READ, Kind.DEVICE),
    ("PATCH", DEV + "/tags"): _r(P.DEVICES_WRITE, Kind.DEVICE),
    ("GET", DEV + "/env"): _r(P.DEVICES_READ, Kind.DEVICE),
    ("PATCH", DEV + "/env"): _r(P.DEVICES_WRITE, Kind.DEVICE),
    ("GET", DEV + "/log-policy"): _r(P.DEVICES_READ, Kind.DEVICE),
    ("GET", DEV + "/metrics"): _r(P.DEVICES_READ, Kind.DEVICE),
    ("POST", DEV + "/actions"): _r(P.DEVICES_WRITE, Kind.DEVICE),
    ("GET", "/api/v1/audit"): _r(P.AUDIT_READ, Kind.LIST),
    ("POST", "/api/v1/groups"): _r(P.GROUPS_WRITE, Kind.ADMIN),
    ("GET", "/api/v1/groups"): _r(P.DEVICES_READ, Kind.LIST),
    ("GET", GRP): _r(P.DEVICES_READ, Kind.GROUP),
    ("DELETE", GRP): _r(P.GROUPS_WRITE, Kind.ADMIN),
    ("PATCH", GRP + "/env"): _r(P.TARGETS_WRITE, Kind.GROUP),
    ("GET", GRP + "/log-policy"): _r(P.DEVICES_READ, Kind.GROUP),
    ("PUT", GRP + "/log-policy"): _r(P.GROUPS_WRITE, Kind.ADMIN),
    ("DELETE", GRP + "/log-policy"): _r(P.GROUPS_WRITE, Kind.ADMIN),
    ("POST", GRP + "/actions"): _r(P.DEVICES_WRITE, Kind.GROUP),
    ("GET", GRP + "/policy"): _r(P.DEVICES_READ, Kind.GROUP),
    ("PUT", GRP + "/policy"): _r(P.GROUPS_WRITE, Kind.ADMIN),
    ("DELETE", GRP + "/policy"): _r(P.GROUPS_WRITE, Kind.ADMIN),
    ("GET", DEV + "/policy"): _r(P.DEVICES_READ, Kind.DEVICE),
    ("POST", "/api/v1/releases"): _r(P.RELEASES_WRITE, Kind.GLOBAL),
    ("GET", "/api/v1/releases"): _r(P.RELEASES_READ, Kind.GLOBAL),
    ("GET", "/api/v1/releases/{ref}"): _r(P.RELEASES_READ, Kind.GLOBAL),
    ("POST", "/api/v1/releases/{ref}/retire"): _r(P.RELEASES_WRITE, Kind.GLOBAL),
    ("GET", "/api/v1/drift"): _r(P.DEVICES_READ, Kind.LIST),
    ("GET", "/api/v1/retired"): _r(P.DEVICES_READ, Kind.LIST),
    ("POST", "/api/v1/rollouts"): _r(P.ROLLOUTS_WRITE, Kind.SELECTOR),
    ("GET", "/api/v1/rollouts"): _r(P.DEVICES_READ, Kind.LIST),
    ("GET", "/api/v1/rollouts/{rollout_id}"): _r(P.DEVICES_READ, Kind.ROLLOUT),
    ("POST", "/api/v1/rollouts/{rollout_id}/{action}"): _r(P.ROLLOUTS_WRITE, Kind.ROLLOUT),
    ("POST", "/api/v1/technicians"): _r(P.TOKENS_CREATE, Kind.ADMIN),
    ("GET", "/api/v1/technicians"): _r(P.TOKENS_CREATE, Kind.ADMIN),
    ("POST", "/api/v1/technicians/{token_id}/revoke"): _r(P.TOKENS_CREATE, Kind.ADMIN),
    ("GET", "/api/v1/actions"): _r(P.DEVICES_READ, Kind.LIST),
    ("GET", "/api/v1/actions/{action_id}"): _r(P.DEVICES_READ, Kind.ACTION),
    ("POST", "/api/v1/actions/{action_id}/cancel"): _r(P.DEVICES_WRITE, Kind.ACTION),
    ("GET", "/api/v1/actions/{action_id}/parts"): _r(P.DEVICES_READ, Kind.ACTION),
    ("GET", "/api/v1/trust/roots"): _r(P.RELEASES_READ, Kind.GLOBAL),
    ("POST", "/api/v1/trust/roots"): _r(P.TOKENS_CREATE, Kind.ADMIN),
    ("GET", "/api/v1/trust/manifest"): _r(P.RELEASES_READ, Kind.GLOBAL),
    ("POST", "/api/v1/trust/manifest"): _r(P.RELEASES_WRITE, Kind.GLOBAL),
    ("GET", "/api/v1/secrets"): _r(P.RELEASES_READ, Kind.GLOBAL),
    ("PUT", "/api/v1/secrets/{name}"): _r(P.RELEASES_WRITE, Kind.GLOBAL),
    ("POST", "/api/v1/secrets/{name}"): _r(P.RELEASES_WRITE, Kind.GLOBAL),
    ("DELETE", "/api/v1/secrets/{name}"): _r(P.RELEASES_WRITE, Kind.GLOBAL),
    ("GET", "/api/v1/users"): _r(P.USERS_READ, Kind.ADMIN),
    ("POST", "/api/v1/users"): _r(P.USERS_WRITE, Kind.ADMIN),
    ("POST", "/api/v1/users/{name}/disable"): _r(P.USERS_WRITE, Kind.ADMIN),
    ("POST", "/api/v1/users/{name}/enable"): _r(P.USERS_WRITE, Kind.ADMIN),
    ("GET", "/api/v1/users/{name}/tokens"): _r(P.USERS_READ, Kind.ADMIN),
    ("POST", "/api/v1/users/{name}/tokens"): _r(P.USERS_WRITE, Kind.ADMIN),
    ("POST", "/api/v1/users/{name}/tokens/{token_id}/revoke"): _r(P.USERS_WRITE, Kind.ADMIN),
    ("GET", "/api/v1/teams"): _r(P.USERS_READ, Kind.ADMIN),
    ("POST", "/api/v1/teams"): _r(P.USERS_WRITE, Kind.ADMIN),
    ("DELETE", "/api/v1/teams/{name}"): _r(P.USERS_WRITE, Kind.ADMIN),
    ("PUT", "/api/v1/teams/{name}/members/{user}"): _r(P.USERS_WRITE, Kind.ADMIN),
    ("DELETE", "/api/v1/teams/{name}/members/{user}"): _r(P.USERS_WRITE, Kind.ADMIN),
    ("POST", "/api/v1/teams/{name}/grants"): _r(P.USERS_WRITE, Kind.ADMIN),
    ("DELETE", "/api/v1/teams/{name}/grants"): _r(P.USERS_WRITE, Kind.ADMIN),
    # --- the dashboard (hub.dashboard): each page needs what its API twin needs ---
    ("GET", "/"): _r(None, Kind.PUBLIC),  # a redirect to /ui/
    ("GET", "/ui/login"): _r(None, Kind.PUBLIC),
    ("POST", "/ui/login"): _r(None, Kind.PUBLIC),  # the handler authenticates the token
    ("POST", "/ui/logout"): _r(None, Kind.PUBLIC),  # the handler checks session and CSRF
    ("GET", "/ui/static/{name}"): _r(None, Kind.PUBLIC),
    ("GET", "/ui/"): _r(P.DEVICES_READ, Kind.LIST),
    ("GET", "/ui/devices"): _r(P.DEVICES_READ, Kind.LIST),
    ("GET", "/ui/devices/{device_id}"): _r(P.DEVICES_READ, Kind.DEVICE),
    ("GET", "/ui/devices/{device_id}/live"): _r(P.DEVICES_READ, Kind.DEVICE),
    # a device's logs: the logs action of POST/GET /api/v1/devices/{id}/actions, /actions/{id}
    ("POST", "/ui/devices/{device_id}/logs"): _r(P.DEVICES_WRITE, Kind.DEVICE),
    ("GET", "/ui/devices/{device_id}/logs/{action_id}"): _r(P.DEVICES_READ, Kind.DEVICE),
    ("GET", "/ui/devices/{device_id}/logs/{action_id}/live"): _r(P.DEVICES_READ, Kind.DEVICE),
    # dashboard part 2 (rollouts: as GET/POST /api/v1/rollouts/...)
    ("GET", "/ui/rollouts"): _r(P.DEVICES_READ, Kind.LIST),
    ("POST", "/ui/rollouts"): _r(P.ROLLOUTS_WRITE, Kind.SELECTOR),  # the form's group
    ("GET", "/ui/rollouts/{rollout_id}"): _r(P.DEVICES_READ, Kind.ROLLOUT),
    ("GET", "/ui/rollouts/{rollout_id}/live"): _r(P.DEVICES_READ, Kind.ROLLOUT),
    ("GET", "/ui/rollouts/{rollout_id}/{action}"): _r(P.ROLLOUTS_WRITE, Kind.ROLLOUT),
    ("POST", "/ui/rollouts/{rollout_id}/{action}"): _r(P.ROLLOUTS_WRITE, Kind.ROLLOUT),
    ("GET", "/ui/drift"): _r(P.DEVICES_READ, Kind.LIST),  # as /api/v1/drift and /retired
    ("GET", "/ui/audit"): _r(P.AUDIT_READ, Kind.LIST),  # as GET /api/v1/audit
    ("GET", "/ui/audit/export.jsonl"): _r(P.AUDIT_READ, Kind.LIST),
    ("GET", "/ui/audit/export.csv"): _r(P.AUDIT_READ, Kind.LIST),
    ("GET", "/ui/releases"): _r(P.RELEASES_READ, Kind.GLOBAL),  # as GET /api/v1/releases
    ("GET", "/ui/groups"): _r(P.DEVICES_READ, Kind.LIST),  # as GET /api/v1/groups
    # Prometheus: fleet-wide aggregates, so a read grant on every device (hub.prom_api)
    ("GET", "/metrics"): _r(P.DEVICES_READ, Kind.ADMIN),
}


def route_key(route: web.AbstractRoute) -> tuple[str, str]:
    """Return the table key of a registered route (HEAD is checked as GET)."""
    method = "GET" if route.method == "HEAD" else route.method
    resource = route.resource
    return method, resource.canonical if resource is not None else ""


def check_routes(app: web.Application) -> None:
    """Refuse an app with a route that ``ROUTES`` does not declare."""
    missing = sorted({route_key(r) for r in app.router.routes()} - set(ROUTES))
    if missing:
        shown = ", ".join(f"{m} {p}" for m, p in missing)
        raise RuntimeError(f"routes without a declared permission in hub.route_access: {shown}")


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate and check role and scope before the handler; audit refusals."""
    route = request.match_info.route
    if request.match_info.http_exception is not None:
        return await handler(request)
    access = ROUTES[route_key(route)]
    if access.kind in (Kind.PUBLIC, Kind.DEVICE_CERT) or access.permission is None:
        return await handler(request)
    hub, actor = ctx(request), "anonymous"
    try:
        caller = await authenticate(request, hub)
        actor = caller.name
        await check_scope(request, hub, caller, access.permission, access.kind)
    except HubError as exc:
        if actor == "anonymous":
            actor = refused_actor(exc)
        target = next(iter(request.match_info.values()), "-")
        detail = {"reason": exc.message, "route": f"{request.method} {route_key(route)[1]}"}
        row = AuditRecord(actor, "operator.access", target, "denied", hub.now(), detail)
        await audit_refusal(request, row)
        raise
    request[PRINCIPAL_KEY] = caller
    return await handler(request)


async def authenticate(request: web.Request, hub: HubContext) -> Principal:
    """Return the caller: a user token's user with its grants, or the data-dir admin.

    A dashboard request (``/ui/``) without an Authorization header is authenticated by
    its session cookie instead, and a POST also by the session's CSRF token.
    """
    if "Authorization" not in request.headers and is_dashboard_path(request.path):
        return await session_principal(request, hub, token_principal)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    is_bearer = scheme.lower() == "bearer" and token.isascii()
    parts = split_user_token(token) if is_bearer else None
    if parts is None:  # the data-dir admin token, or a refusal naming what is missing
        return hub.operators.authenticate(request)
    return await token_principal(hub, *parts)


async def token_principal(hub: HubContext, token_id: str, secret_hash: str | None) -> Principal:
    """Return the user of token ``token_id`` with its grants (``secret_hash`` None: the
    caller proved the token already, e.g. a dashboard session made with it)."""
    if token_id == ADMIN_SESSION:
        return ADMIN
    record = await hub.store.get_user_token(token_id)
    now = hub.now()
    if record is None or (
        secret_hash is not None and not hmac.compare_digest(record.secret_hash, secret_hash)
    ):
        raise Unauthenticated("unknown operator token")
    if record.revoked_at is not None:
        raise Unauthenticated(f"token {token_id} was revoked")
    if record.expires_at is not None and record.expires_at <= now:
        raise Unauthenticated(f"token {token_id} expired at {record.expires_at.isoformat()}")
    user = await hub.store.get_user(record.user)
    if user is None or user.disabled:
        raise Unauthenticated(f"user {record.user} is disabled")
    interval = timedelta(seconds=hub.config.access.token_touch_interval_s)
    if record.last_used_at is None or now - record.last_used_at >= interval:
        await hub.store.touch_user_token(token_id, now)
    found = await hub.store.user_grants(user.name)
    grants = tuple(Grant.of(role, scope) for _, role, scope in found)
    return Principal(user.name, grants, teams=tuple(sorted({team for team, _, _ in found})))


async def check_scope(
    request: web.Request, hub: HubContext, caller: Principal, permission: Permission, kind: Kind
) -> None:
    """Raise unless ``caller`` may use ``permission`` on the route's object."""
    if kind is Kind.ADMIN:
        require_all(caller, permission)
        return
    require(caller, permission)
    scope = caller.scope_for(permission)
    if scope is None or kind in (Kind.LIST, Kind.SELECTOR, Kind.GLOBAL):
        return
    params = request.match_info
    if kind is Kind.DEVICE:
        await _device_in_scope(hub, params["device_id"], scope)
    elif kind is Kind.GROUP:
        name = params["name"]
        selector = await group_selector(hub, name)
        if selector is None or not _selector_in(caller, permission, selector):
            raise NotFound(f"no group {name!r}")
    elif kind is Kind.ROLLOUT:
        rollout_id = params["rollout_id"]
        selector = await rollout_selector(hub, rollout_id)
        if selector is None or not _selector_in(caller, permission, selector):
            raise NotFound(f"no rollout {rollout_id!r}")
    elif kind is Kind.ACTION:
        action_id = params["action_id"]
        action = await hub.store.get_action(action_id, hub.now())
        device = None if action is None else await hub.store.get_device(action.device_id)
        if device is None or not in_scope(scope, device.tags):
            raise NotFound(f"no action {action_id!r}")


async def _device_in_scope(hub: HubContext, device_id: str, scope: list[Selector]) -> None:
    device = await hub.store.get_device(device_id)
    if device is None or not in_scope(scope, device.tags):
        raise NotFound(f"no device {device_id!r}")


def _selector_in(caller: Principal, permission: Permission, selector: Selector) -> bool:
    try:
        check_selector(caller, permission, selector)
    except Forbidden:
        return False
    return True


async def group_selector(hub: HubContext, name: str) -> Selector | None:
    """Return the selector of group ``name``, or None if there is no such group."""
    group = await hub.store.get_group(name)
    return None if group is None else parse(group.selector)


async def rollout_selector(hub: HubContext, rollout_id: str) -> Selector | None:
    """Return the selector a rollout targets (its group's), or None if unknown."""
    record = await hub.store.get_rollout(rollout_id)
    if record is None:
        return None
    spec = RolloutSpec.model_validate_json(record.spec)
    if spec.group is not None:
        return await group_selector(hub, spec.group)
    return parse(spec.selector or "")


# --- for handlers: the caller's scope over what they list or send ---


def caller(request: web.Request) -> Principal:
    """Return the principal the middleware authenticated (admin when not run through it)."""
    found = request.get(PRINCIPAL_KEY)
    if not isinstance(found, Principal):
        raise Unauthenticated("this route was not checked by the access middleware")
    return found


def scope_of(request: web.Request, permission: Permission) -> list[Selector] | None:
    """Return the caller's scope for ``permission`` (None: ALL)."""
    return caller(request).scope_for(permission)


def visible_devices(
    request: web.Request, devices: Iterable[DeviceRecord], permission: Permission = P.DEVICES_READ
) -> list[DeviceRecord]:
    """Return the devices inside the caller's scope."""
    scope = scope_of(request, permission)
    return [d for d in devices if in_scope(scope, d.tags)]


def keep_in_scope(
    request: web.Request, items: Iterable[T], tags_of: Callable[[T], dict[str, str] | None]
) -> list[T]:
    """Return the items whose device (``tags_of``; None: unknown) is in the read scope."""
    scope = scope_of(request, P.DEVICES_READ)
    if scope is None:
        return list(items)
    return [i for i in items if (tags := tags_of(i)) is not None and in_scope(scope, tags)]


def require_selector(request: web.Request, permission: Permission, selector: Selector) -> None:
    """Raise Forbidden (naming selector and scope) unless ``selector`` stays in scope."""
    check_selector(caller(request), permission, selector)


def require_tags_in_scope(
    request: web.Request, device_id: str, tags: dict[str, str], permission: Permission
) -> None:
    """Raise Forbidden unless a device with ``tags`` stays inside the caller's scope."""
    scope = scope_of(request, permission)
    if not in_scope(scope, tags):
        scopes = " or ".join(repr(str(s)) for s in scope or [])
        raise Forbidden(
            f"these tags would move device {device_id} outside your scope {scopes} "
            f"for {permission.value}: keep the scope's tags on it"
        )


async def check_new_tags(
    request: web.Request, device_id: str, set_tags: dict[str, str], remove: Iterable[str]
) -> None:
    """Raise Forbidden unless the device keeps inside the caller's write scope after the change."""
    scope = scope_of(request, P.DEVICES_WRITE)
    if scope is None:
        return
    device = await ctx(request).store.get_device(device_id)
    if device is None:
        return  # the store answers 404
    removed = set(remove)
    tags = {k: v for k, v in {**device.tags, **set_tags}.items() if k not in removed}
    require_tags_in_scope(request, device_id, tags, P.DEVICES_WRITE)


async def _visible_ids(request: web.Request) -> set[str] | None:
    """Return the ids of the devices in the caller's read scope (None: all)."""
    if scope_of(request, P.DEVICES_READ) is None:
        return None
    devices = await ctx(request).store.list_devices()
    return {d.id for d in visible_devices(request, devices)}


def visible_groups(request: web.Request, groups: Iterable[GroupRecord]) -> list[GroupRecord]:
    """Return the groups whose selector stays inside the caller's read scope."""
    who = caller(request)
    return [g for g in groups if _selector_in(who, P.DEVICES_READ, parse(g.selector))]


async def visible_actions(
    request: web.Request, actions: Iterable[ActionRecord]
) -> list[ActionRecord]:
    """Return the actions whose device is in the caller's read scope."""
    ids = await _visible_ids(request)
    return list(actions) if ids is None else [a for a in actions if a.device_id in ids]


async def visible_rollouts(
    request: web.Request, records: Iterable[RolloutRecord]
) -> list[RolloutRecord]:
    """Return the rollouts whose selector stays inside the caller's read scope."""
    if scope_of(request, P.DEVICES_READ) is None:
        return list(records)
    hub, who, out = ctx(request), caller(request), []
    for r in records:
        selector = await rollout_selector(hub, r.id)
        if selector is not None and _selector_in(who, P.DEVICES_READ, selector):
            out.append(r)
    return out


async def audit_scope(request: web.Request) -> AuditScope | None:
    """Return what the caller may read of the audit (None: all), for the store's query."""
    if scope_of(request, P.AUDIT_READ) is None:
        return None
    who, hub = caller(request), ctx(request)
    scope = who.scope_for(P.AUDIT_READ)
    ids = {d.id for d in await hub.store.list_devices() if in_scope(scope, d.tags)}
    groups = {
        g.name
        for g in await hub.store.list_groups()
        if _selector_in(who, P.AUDIT_READ, parse(g.selector))
    }
    about = ids | {f"device:{i}" for i in ids} | {f"group:{g}" for g in groups}
    rollouts = {r.id for r in await visible_rollouts(request, await hub.store.list_rollouts())}
    return AuditScope(who.name, frozenset(ids), frozenset(about | rollouts))


async def visible_audit(request: web.Request, entries: list[AuditEntry]) -> list[AuditEntry]:
    """Return the audit rows about what is in the caller's scope, and the caller's own."""
    seen = await audit_scope(request)
    if seen is None:
        return entries

    def shown(e: AuditEntry) -> bool:
        if e.source != "hub":
            return e.device_id in seen.devices
        return e.actor == seen.actor or e.target in seen.targets

    return [e for e in entries if shown(e)]


async def visible_device_ids(request: web.Request) -> frozenset[str] | None:
    """Return the ids of the devices in the caller's read scope (None: all), for a query."""
    ids = await _visible_ids(request)
    return None if ids is None else frozenset(ids)


async def audit_group_selector(request: web.Request, name: str) -> Selector:
    """Return group ``name``'s selector; 404 as if absent when it reaches outside the scope."""
    selector = await group_selector(ctx(request), name)
    if selector is None or not _selector_in(caller(request), P.AUDIT_READ, selector):
        raise NotFound(f"no group {name!r}", fields=[{"field": "group"}])
    return selector


async def check_rollout_spec(request: web.Request, spec: RolloutSpec) -> None:
    """Raise Forbidden unless a new rollout's group or selector stays inside the scope."""
    if scope_of(request, P.ROLLOUTS_WRITE) is None:
        return
    if spec.group is not None:
        selector = await group_selector(ctx(request), spec.group)
        if selector is None:
            raise NotFound(f"no group {spec.group!r}", fields=[{"field": "group"}])
    else:
        selector = parse(spec.selector or "")
    require_selector(request, P.ROLLOUTS_WRITE, selector)
    if spec.supersedes is not None:  # superseding stops the other rollout: it must be ours too
        other = await rollout_selector(ctx(request), spec.supersedes)
        if other is None or not _selector_in(caller(request), P.ROLLOUTS_WRITE, other):
            raise NotFound(f"no rollout {spec.supersedes!r}", fields=[{"field": "supersedes"}])
