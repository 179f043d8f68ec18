"""The route x role x scope matrix, generated from hub.route_access.ROUTES, on a real hub.

Every operator route is called by no token, a viewer, a deployer and an admin of
``site=berlin``, and an admin of ``all``, on an object inside (berlin) and outside
(paris) that scope. A denial must be 401/403 (404 for an object outside the scope:
as if absent); an allowed call must be anything but 401/403. State-changing calls send
a body the handler refuses (after the access checks) so the fixtures stay as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from test_registry import GOOD, OPEN

from hub.access import Grant, Permission, Principal
from hub.app import create_app
from hub.config import HubConfig
from hub.route_access import ROUTES, Kind, RouteAccess, check_routes
from hub.testing import RunningHub, start_hub

SCOPE = "site=berlin"
ROLES = {
    "viewer": Principal("viewer", (Grant.of("viewer", SCOPE),)),
    "deployer": Principal("deployer", (Grant.of("deployer", SCOPE),)),
    "admin": Principal("admin-berlin", (Grant.of("admin", SCOPE),)),
    "admin-all": Principal("admin-all", (Grant.of("admin", "all"),)),
}
CALLERS = ["none", *ROLES]
OPERATOR_ROUTES = sorted(
    k for k, v in ROUTES.items() if v.kind not in (Kind.PUBLIC, Kind.DEVICE_CERT)
)


@dataclass
class World:
    """The matrix hub and what each side of the scope holds."""

    hub: RunningHub
    tokens: dict[str, str]
    params: dict[str, dict[str, str]]  # side -> path param -> value


async def _ok(hub: RunningHub, method: str, path: str, body: Any = None) -> Any:
    status, answer = await hub.api(method, path, body)
    assert status in (200, 201), f"{method} {path}: {status} {answer}"
    return answer


async def _side(hub: RunningHub, site: str, tmp: Path) -> dict[str, str]:
    device = await hub.enroll(await hub.create_token(tags={"site": site}), tmp / site)
    await _ok(hub, "POST", "/api/v1/groups", {"name": site, "selector": f"site={site}"})
    action = await _ok(
        hub, "POST", f"/api/v1/devices/{device.device_id}/actions", {"kind": "selftest"}
    )
    rollout = await _ok(hub, "POST", "/api/v1/rollouts", {"release": "app@1", "group": site})
    return {
        "device_id": device.device_id,
        "name": site,
        "rollout_id": rollout["id"],
        "action_id": action["id"],
        "action": "pause",
        "ref": "app@1",
        "token_id": "tt-000000000000",
        "user": "nobody",
        "selector": f"site={site}",
    }


async def _user(hub: RunningHub, name: str, grant: Grant) -> str:
    await _ok(hub, "POST", "/api/v1/users", {"name": name})
    await _ok(hub, "POST", "/api/v1/teams", {"name": f"t-{name}"})
    await _ok(hub, "PUT", f"/api/v1/teams/t-{name}/members/{name}")
    body = {"role": grant.role.label, "scope": grant.scope_text}
    await _ok(hub, "POST", f"/api/v1/teams/t-{name}/grants", body)
    return str((await _ok(hub, "POST", f"/api/v1/users/{name}/tokens", {}))["token"])


async def _setup(hub: RunningHub, tmp: Path) -> World:
    doc = {
        "name": "app",
        "version": "1",
        "services": [{"name": "web", "image": f"{OPEN}/{GOOD}:1"}],
    }
    await _ok(hub, "POST", "/api/v1/releases", {"release": doc})
    params = {"in": await _side(hub, "berlin", tmp), "out": await _side(hub, "paris", tmp)}
    tokens = {role: await _user(hub, p.name, p.grants[0]) for role, p in ROLES.items()}
    return World(hub, tokens, params)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("matrix")
    sections = {"rollouts": {"tick_s": 3600}, "limits": {"auth_failure_burst": 1_000_000}}
    hub = start_hub(tmp / "hub", sections=sections)
    try:
        yield asyncio.run(_setup(hub, tmp))
    finally:
        assert hub.stop() == 0, hub.log()[-3000:]


def expected(access: RouteAccess, caller: str, side: str) -> set[int] | None:
    """Return the statuses a denial may have, or None when the call must be allowed."""
    if caller == "none":
        return {401}
    who = ROLES[caller]
    assert access.permission is not None
    if not who.allows(access.permission):
        return {403}
    if who.scope_for(access.permission) is None:
        return None
    if access.kind is Kind.ADMIN:
        return {403}
    if side == "out" and access.kind is Kind.SELECTOR:
        return {403}
    if side == "out" and access.kind in (Kind.DEVICE, Kind.GROUP, Kind.ROLLOUT, Kind.ACTION):
        return {404}
    return None


def _body(method: str, path: str, side_params: dict[str, str]) -> Any:
    if method in ("GET", "HEAD"):
        return None
    if path in ("/api/v1/rollouts", "/ui/rollouts"):  # the selector decides: in or out
        return {"release": "missing@0", "selector": side_params["selector"]}
    return {"not-a-field": True}  # refused by the handler after the access checks


@pytest.mark.parametrize("side", ["in", "out"])
@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(("method", "template"), OPERATOR_ROUTES)
async def test_route_role_scope(
    world: World, method: str, template: str, caller: str, side: str
) -> None:
    access = ROUTES[(method, template)]
    params = world.params[side]
    path = template.format(**params)
    token = world.tokens.get(caller)
    status, body = await world.hub.request(
        method, path, json_body=_body(method, template, params), token=token
    )
    denial = expected(access, caller, side)
    if denial is None:
        assert status not in (401, 403), f"{caller} {side}: {method} {path} -> {status} {body}"
    else:
        assert status in denial, f"{caller} {side}: {method} {path} -> {status} {body}"


def test_the_data_dir_admin_token_is_admin_on_all(world: World) -> None:
    status, body = asyncio.run(world.hub.api("GET", "/api/v1/users"))
    assert status == 200 and {u["name"] for u in body["users"]} >= {"viewer", "deployer"}


def test_a_route_without_a_declared_permission_refuses_to_build(tmp_path: Path) -> None:
    app = create_app(HubConfig.model_validate({"server": {"data_dir": tmp_path}}))
    check_routes(app)  # the real app declares every route

    async def undeclared(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/api/v1/undeclared", undeclared)
    with pytest.raises(RuntimeError, match="GET /api/v1/undeclared"):
        check_routes(app)


def test_every_declared_route_is_registered(tmp_path: Path) -> None:
    app = create_app(HubConfig.model_validate({"server": {"data_dir": tmp_path}}))
    registered = {
        ("GET" if r.method == "HEAD" else r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource
    }
    assert set(ROUTES) - registered == set()
    assert Permission.USERS_WRITE in {a.permission for a in ROUTES.values()}
