"""Scoped lists on a real hub: full pages (the scope is in the store's query, not cut
after the limit), and nothing outside the scope named in a 409 or told apart in a 404."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_access_matrix import _ok, _user
from test_registry import GOOD, OPEN

from hub.access import Grant
from hub.rollouts import HIDDEN_ROLLOUT
from hub.testing import RunningHub, start_hub


@dataclass
class World:
    """A hub with a berlin and a paris device, a berlin viewer-deployer and a wide rollout."""

    hub: RunningHub
    token: str
    berlin: str
    paris: str
    wide: str  # an admin rollout reaching both sites


async def _setup(hub: RunningHub, tmp: Path) -> World:
    doc = {
        "name": "app",
        "version": "1",
        "services": [{"name": "web", "image": f"{OPEN}/{GOOD}:1"}],
    }
    await _ok(hub, "POST", "/api/v1/releases", {"release": doc})
    ids = {}
    for site in ("berlin", "paris"):
        device = await hub.enroll(await hub.create_token(tags={"site": site}), tmp / site)
        await _ok(hub, "POST", "/api/v1/groups", {"name": site, "selector": f"site={site}"})
        ids[site] = device.device_id
    wide = await _ok(
        hub, "POST", "/api/v1/rollouts", {"release": "app@1", "selector": "site in (berlin,paris)"}
    )
    # actions: one berlin, then many paris ones (the newest), so a cut-after page is empty
    await _ok(hub, "POST", f"/api/v1/devices/{ids['berlin']}/actions", {"kind": "selftest"})
    for _ in range(4):
        await _ok(hub, "POST", f"/api/v1/devices/{ids['paris']}/actions", {"kind": "selftest"})
    await _ok(hub, "POST", f"/api/v1/devices/{ids['berlin']}/actions", {"kind": "selftest"})
    for _ in range(4):
        await _ok(hub, "POST", f"/api/v1/devices/{ids['paris']}/actions", {"kind": "selftest"})
    token = await _user(hub, "bea", Grant.of("deployer", "site=berlin"))
    return World(hub, token, ids["berlin"], ids["paris"], wide["id"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("pages")
    sections = {"rollouts": {"tick_s": 3600}, "limits": {"auth_failure_burst": 1_000_000}}
    hub = start_hub(tmp / "hub", sections=sections)
    try:
        yield asyncio.run(_setup(hub, tmp))
    finally:
        assert hub.stop() == 0, hub.log()[-3000:]


async def bea(world: World, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return await world.hub.request(method, path, json_body=body, token=world.token)


async def test_scoped_action_list_fills_its_page_with_in_scope_actions(world: World) -> None:
    status, body = await bea(world, "GET", "/api/v1/actions?limit=2")
    assert status == 200, body
    assert [a["device_id"] for a in body["actions"]] == [world.berlin, world.berlin]


async def _pages(world: World, query: str) -> list[list[dict[str, Any]]]:
    pages, cursor = [], ""
    for _ in range(100):
        status, body = await bea(world, "GET", f"/api/v1/audit?{query}{cursor}")
        assert status == 200, body
        if not body["audit"]:
            return pages
        pages.append(body["audit"])
        cursor = f"&cursor={body['next_cursor']}"
    raise AssertionError("paging did not end")


async def test_scoped_audit_pages_are_full_and_paging_reaches_every_record(world: World) -> None:
    pages = await _pages(world, "action=action.create&limit=2")
    seen = [e["target"] for page in pages for e in page]
    _, every = await world.hub.api("GET", "/api/v1/audit?action=action.create&limit=100")
    berlin = [e["target"] for e in every["audit"] if world.berlin in str(e)]
    assert len(berlin) == 2 and len(seen) == 2, pages  # an empty page mid-feed ended it early
    assert all(len(p) == 2 for p in pages[:-1])
    assert world.paris not in str(pages)


async def test_audit_of_a_group_outside_the_scope_answers_as_an_absent_group(
    world: World,
) -> None:
    status, paris = await bea(world, "GET", "/api/v1/audit?group=paris")
    gone_status, gone = await bea(world, "GET", "/api/v1/audit?group=nosuch")
    assert (status, gone_status) == (404, 404), (paris, gone)
    assert paris["message"] == gone["message"].replace("nosuch", "paris")
    status, own = await bea(world, "GET", "/api/v1/audit?group=berlin")
    assert status == 200, own


async def test_overlap_409_does_not_name_a_rollout_outside_the_scope(world: World) -> None:
    status, body = await bea(
        world, "POST", "/api/v1/rollouts", {"release": "app@1", "group": "berlin"}
    )
    assert status == 409, body
    assert world.wide not in str(body), body
    assert HIDDEN_ROLLOUT in body["message"]
    assert body["fields"][0]["examples"] == [world.berlin]  # its own device: in scope
    _, admin = await world.hub.api(
        "POST", "/api/v1/rollouts", {"release": "app@1", "group": "berlin"}
    )
    assert world.wide in admin["message"]  # the admin sees it named
