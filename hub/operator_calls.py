"""What every operator handler does: authenticate, authorize, audit, read a bounded
body, read a page's bounds. The operator, release, group, rollout and drift APIs share it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from edge_agent.openapi import INT64, Query
from hub.access import PRINCIPAL_KEY
from hub.auth import Permission, Principal, require
from hub.context import HubContext, ctx
from hub.errors import HubError, InvalidRequest, NotFound
from hub.guard import audit_refusal, source
from hub.store import AuditRecord, DeviceRecord, GroupRecord
from hub.wire import read_body

INT64_MAX = 2**63 - 1  # SQLite's integers: every id, seq and count the API takes
# The query parameters ``page`` reads (for the API description).
PAGE_QUERY = (
    Query("after", INT64, "return what comes after this position"),
    Query("limit", {"type": "integer", "minimum": 1, "maximum": INT64_MAX}, "at most this many"),
)


class Body(BaseModel):
    """A request body people write: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


class Action:
    """An audited operator action in progress."""

    def __init__(
        self, hub: HubContext, principal: Principal, action: str, target: str, source: str = ""
    ) -> None:
        self.hub, self.principal, self.action, self.target = hub, principal, action, target
        self.source = source  # the caller's remote address, in every row of this action
        self.recorded = False

    def ok(self, **detail: Any) -> AuditRecord:
        """Return the success audit row (the store writes it with the change)."""
        self.recorded = True
        return self.row("ok", detail)

    def row(self, outcome: str, detail: dict[str, Any]) -> AuditRecord:
        """Return an audit row of this action with ``outcome``."""
        teams = {"teams": list(self.principal.teams)} if self.principal.teams else {}
        return AuditRecord(
            self.principal.name,
            self.action,
            self.target,
            outcome,
            self.hub.now(),
            {**teams, **detail},
            source_addr=self.source,
        )


def principal(request: web.Request, permission: Permission) -> Principal:
    """Return the authenticated caller, refused unless it holds ``permission``."""
    principal = _caller(request)
    require(principal, permission)
    return principal


def _caller(request: web.Request) -> Principal:
    """Return the caller hub.route_access authenticated (before the handler ran)."""
    found = request.get(PRINCIPAL_KEY)
    return found if isinstance(found, Principal) else ctx(request).operators.authenticate(request)


@asynccontextmanager
async def audited(
    request: web.Request, permission: Permission, action: str, target: str
) -> AsyncIterator[Action]:
    """Authenticate, authorize and audit one state-changing operator action."""
    hub = ctx(request)
    actor = "anonymous"
    try:
        principal = _caller(request)
        actor = principal.name
        require(principal, permission)
    except HubError as exc:  # aggregated per source: a client must not drive our disk
        await audit_refusal(
            request,
            AuditRecord(actor, action, target, "denied", hub.now(), {"reason": exc.message}),
        )
        raise
    act = Action(hub, principal, action, target, source(request))
    try:
        yield act
    except HubError as exc:
        outcome = "error" if exc.status >= 500 else "rejected"
        await hub.store.record_audit(act.row(outcome, {"reason": exc.message}))
        raise
    except Exception as exc:  # a defect: still audited (the middleware answers 500)
        reason = f"internal error {type(exc).__name__}"
        await hub.store.record_audit(act.row("error", {"reason": reason}))
        raise
    if not act.recorded:
        await hub.store.record_audit(act.ok())


async def json_body(request: web.Request) -> bytes:
    """Return the request body within the hub's body bounds."""
    limits = ctx(request).config.limits
    return await read_body(request, limits.max_body_bytes, limits.max_decompressed_bytes)


def page(request: web.Request, after_name: str, max_limit: int) -> tuple[int, int]:
    """Return ``(after, limit)`` from the query, bounded (400 naming both when bad)."""
    try:
        after = int(request.query.get(after_name, "0"))
        limit = int(request.query.get("limit", str(max_limit)))
    except ValueError:
        after = limit = -1
    if not 0 <= after <= INT64_MAX or not 1 <= limit <= INT64_MAX:
        raise InvalidRequest(
            f"{after_name} must be from 0 to {INT64_MAX} and limit from 1 to {INT64_MAX}",
            fields=[{"field": after_name}, {"field": "limit"}],
            status=400,
        )
    return after, min(limit, max_limit)


async def device_or_404(hub: HubContext, device_id: str) -> DeviceRecord:
    """Return the device, or raise NotFound naming it."""
    device = await hub.store.get_device(device_id)
    if device is None:
        raise NotFound(f"no device {device_id!r}")
    return device


async def group_or_404(hub: HubContext, name: str) -> GroupRecord:
    """Return the group, or raise NotFound naming it."""
    group = await hub.store.get_group(name)
    if group is None:
        raise NotFound(f"no group {name!r}")
    return group
