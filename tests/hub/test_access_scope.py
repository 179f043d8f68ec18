"""Users, teams and scopes on a real hub: a berlin deployer and the paris device it must
not see, target, roll out to, fetch logs from or act on; token lifecycle; the database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hubdb import dump_text
from test_access_matrix import _ok, _side, _user
from test_registry import GOOD, OPEN

from hub.access import Grant
from hub.testing import RunningHub, start_hub


@dataclass
class Site:
    """The scope test hub, its berlin deployer's token and both sides' objects."""

    hub: RunningHub
    token: str
    berlin: dict[str, str]
    paris: dict[str, str]


async def _setup(hub: RunningHub, tmp: Path) -> Site:
    doc = {
        "name": "app",
        "version": "1",
        "services": [{"name": "web", "image": f"{OPEN}/{GOOD}:1"}],
    }
    await _ok(hub, "POST", "/api/v1/releases", {"release": doc})
    berlin, paris = await _side(hub, "berlin", tmp), await _side(hub, "paris", tmp)
    token = await _user(hub, "bob", Grant.of("deployer", "site=berlin"))
    return Site(hub, token, berlin, paris)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("scope")
    sections = {
        "rollouts": {"tick_s": 3600},
        "access": {"token_touch_interval_s": 3600},
        "limits": {"auth_failure_burst": 1_000_000},
    }
    hub = start_hub(tmp / "hub", sections=sections)
    try:
        yield asyncio.run(_setup(hub, tmp))
    finally:
        assert hub.stop() == 0, hub.log()[-3000:]


async def bob(site: Site, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return await site.hub.request(method, path, json_body=body, token=site.token)


async def test_berlin_deployer_lists_only_berlin(site: Site) -> None:
    b, p = site.berlin, site.paris
    status, body = await bob(site, "GET", "/api/v1/devices")
    assert status == 200 and [d["id"] for d in body["devices"]] == [b["device_id"]]
    _, body = await bob(site, "GET", "/api/v1/groups")
    assert [g["name"] for g in body["groups"]] == ["berlin"]
    _, body = await bob(site, "GET", "/api/v1/rollouts")
    assert [r["id"] for r in body["rollouts"]] == [b["rollout_id"]]
    _, body = await bob(site, "GET", "/api/v1/actions")
    assert {a["device_id"] for a in body["actions"]} == {b["device_id"]}
    _, body = await bob(site, "GET", f"/api/v1/actions?device={p['device_id']}")
    assert body["actions"] == []
    _, body = await bob(site, "GET", "/api/v1/drift")
    assert p["device_id"] not in str(body)
    _, body = await bob(site, "GET", "/api/v1/audit")
    assert body["audit"] and p["device_id"] not in str(body) and "paris" not in str(body)
    _, everything = await site.hub.api("GET", "/api/v1/audit")
    assert p["device_id"] in str(everything)  # the admin sees what bob does not


async def test_berlin_deployer_cannot_reach_a_paris_device(site: Site) -> None:
    p = site.paris
    dev = f"/api/v1/devices/{p['device_id']}"
    release = {"name": "app", "version": "1", "services": [{"name": "web", "image": "x/y:1"}]}
    calls = [
        ("GET", dev, None),
        ("GET", dev + "/target", None),
        ("POST", dev + "/target", {"release": release}),
        ("POST", dev + "/actions", {"kind": "logs", "args": {}}),
        ("GET", f"/api/v1/actions/{p['action_id']}", None),
        ("GET", f"/api/v1/actions/{p['action_id']}/parts", None),
        ("POST", f"/api/v1/actions/{p['action_id']}/cancel", None),
        ("POST", "/api/v1/groups/paris/actions", {"kind": "selftest"}),
        ("GET", f"/api/v1/rollouts/{p['rollout_id']}", None),
        ("POST", f"/api/v1/rollouts/{p['rollout_id']}/pause", None),
    ]
    _, before = await site.hub.api("GET", dev)
    for method, path, body in calls:
        status, answer = await bob(site, method, path, body)
        assert status == 404, f"{method} {path}: {status} {answer}"
        absent = path.replace(p["device_id"], "dev-0000000000000000")
        gone_status, gone = await bob(site, method, absent, body)
        assert gone_status == 404  # said exactly as of an absent object
        assert answer["message"].startswith("no ") and gone["message"].startswith("no ")
    _, after = await site.hub.api("GET", dev)
    assert after["target_revision"] == before["target_revision"]  # nothing was set
    _, refused = await site.hub.api("GET", "/api/v1/audit?action=operator.access")
    assert any(r["actor"] == "bob" and r["outcome"] == "denied" for r in refused["audit"])


@pytest.mark.parametrize("selector", ["site=paris", "app=web", "site in (berlin, paris)"])
async def test_rollout_selector_reaching_outside_the_scope_is_refused(
    site: Site, selector: str
) -> None:
    status, body = await bob(
        site, "POST", "/api/v1/rollouts", {"release": "app@1", "selector": selector}
    )
    assert status == 403, body
    assert "'site=berlin'" in body["message"] and "add" in body["message"]
    _, rollouts = await site.hub.api("GET", "/api/v1/rollouts")
    assert len(rollouts["rollouts"]) == 2  # nothing started


async def test_moving_a_device_out_of_the_scope_is_refused(site: Site) -> None:
    dev = f"/api/v1/devices/{site.berlin['device_id']}"
    status, body = await bob(site, "PATCH", dev + "/tags", {"set": {"site": "paris"}})
    assert status == 403 and site.berlin["device_id"] in body["message"], body
    status, body = await bob(site, "PATCH", dev + "/tags", {"remove": ["site"]})
    assert status == 403, body
    status, body = await bob(site, "PATCH", dev + "/tags", {"set": {"rack": "7"}})
    assert status == 200 and body["tags"] == {"site": "berlin", "rack": "7"}, body


async def test_token_revoked_expired_or_user_disabled_answers_401(site: Site) -> None:
    hub = site.hub
    await _ok(hub, "POST", "/api/v1/users", {"name": "tess"})
    made = await _ok(hub, "POST", "/api/v1/users/tess/tokens", {"expires_in_s": 1})
    short = made["token"]
    revocable = (await _ok(hub, "POST", "/api/v1/users/tess/tokens", {}))["token"]
    assert (await hub.request("GET", "/api/v1/releases", token=revocable))[0] == 403  # no team
    token_id = revocable.split(".")[0]
    await _ok(hub, "POST", f"/api/v1/users/tess/tokens/{token_id}/revoke")
    status, body = await hub.request("GET", "/api/v1/releases", token=revocable)
    assert status == 401 and "revoked" in body["message"]
    deadline = time.monotonic() + 10
    while (status := (await hub.request("GET", "/api/v1/releases", token=short))[0]) != 401:
        assert time.monotonic() < deadline, "the 1 s token never expired"
        await asyncio.sleep(0.2)
    third = (await _ok(hub, "POST", "/api/v1/users/tess/tokens", {}))["token"]
    basic = {"Authorization": f"Basic {third}"}
    assert (await hub.request("GET", "/api/v1/releases", headers=basic))[0] == 401
    await _ok(hub, "POST", "/api/v1/users/tess/disable")
    status, body = await hub.request("GET", "/api/v1/releases", token=third)
    assert status == 401 and "disabled" in body["message"]
    status, _ = await hub.request("GET", "/api/v1/releases", token=third + "x")
    assert status == 401


async def test_tokens_are_stored_hashed_and_last_use_is_written_sparingly(site: Site) -> None:
    hub = site.hub
    await _ok(hub, "POST", "/api/v1/users", {"name": "hana"})
    token = (await _ok(hub, "POST", "/api/v1/users/hana/tokens", {}))["token"]
    token_id, secret = token.split(".", 1)
    listed = await _ok(hub, "GET", "/api/v1/users/hana/tokens")
    assert listed["tokens"][0]["last_used_at"] is None and "token" not in listed["tokens"][0]
    await hub.request("GET", "/api/v1/releases", token=token)
    first = (await _ok(hub, "GET", "/api/v1/users/hana/tokens"))["tokens"][0]["last_used_at"]
    await hub.request("GET", "/api/v1/releases", token=token)
    again = (await _ok(hub, "GET", "/api/v1/users/hana/tokens"))["tokens"][0]["last_used_at"]
    assert first is not None and again == first  # access.token_touch_interval_s = 3600
    dumped = dump_text(hub.work_dir)
    assert token_id in dumped and secret not in dumped


async def test_user_and_team_changes_are_audited_with_the_acting_principal(site: Site) -> None:
    _, body = await site.hub.api("GET", "/api/v1/audit?action=team.*")
    actions = {(r["actor"], r["action"]) for r in body["audit"]}
    assert {
        ("admin", "team.create"),
        ("admin", "team.grant.add"),
        ("admin", "team.member.add"),
    } <= actions
    status, body = await bob(site, "POST", "/api/v1/users", {"name": "eve"})
    assert status == 403


async def test_edgectl_user_team_token_walkthrough(site: Site) -> None:
    hub = site.hub
    for args in (
        ("user", "create", "carol"),
        ("team", "create", "ops"),
        ("team", "add-member", "ops", "carol"),
        ("team", "grant", "ops", "viewer", "site=berlin"),
    ):
        done = await hub.edgectl(*args)
        assert done.returncode == 0, (args, done.stderr)
    made = await hub.edgectl("user", "token", "create", "carol", "--expires", "1d")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("ut_") and "expires" in made.stderr
    status, body = await hub.request("GET", "/api/v1/devices", token=token)
    assert status == 200 and [d["id"] for d in body["devices"]] == [site.berlin["device_id"]]
    listed = await hub.edgectl("user", "token", "list", "carol")
    assert token.split(".")[0] in listed.stdout and token not in listed.stdout
    teams = await hub.edgectl("team", "list")
    assert "viewer on site=berlin" in teams.stdout and "carol" in teams.stdout
    bad = await hub.edgectl("team", "grant", "ops", "viewer", "site=")
    assert bad.returncode == 1 and "scope" in bad.stderr
    revoked = await hub.edgectl("user", "token", "revoke", "carol", token.split(".")[0])
    assert revoked.returncode == 0, revoked.stderr
    assert (await hub.request("GET", "/api/v1/devices", token=token))[0] == 401


async def test_superseding_a_rollout_outside_the_scope_is_refused(site: Site) -> None:
    body = {"release": "app@1", "group": "berlin", "supersedes": site.paris["rollout_id"]}
    status, answer = await bob(site, "POST", "/api/v1/rollouts", body)
    assert status == 404 and site.paris["rollout_id"] in answer["message"], answer
    _, paris = await site.hub.api("GET", f"/api/v1/rollouts/{site.paris['rollout_id']}")
    assert paris["status"] == "running"


async def test_audit_rows_of_a_user_name_the_teams_its_rights_come_from(site: Site) -> None:
    device = site.berlin["device_id"]
    status, body = await bob(
        site, "PATCH", f"/api/v1/devices/{device}/tags", {"set": {"rack": "7"}}
    )
    assert status == 200, body
    _, listed = await site.hub.api("GET", f"/api/v1/audit?device={device}&actor=bob")
    rows = [r for r in listed["audit"] if r["action"] == "device.tag"]
    assert rows and rows[-1]["detail"]["teams"] == ["t-bob"], listed
