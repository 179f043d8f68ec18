"""Device tags, groups and overrides against a real hub process: REST, edgectl, signed targets."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hubdocs import release_doc

from edge_agent.protocol import SyncResponse
from edge_agent.signing import load_public_key, verify_target
from hub.testing import DeviceIdentity, RunningHub, start_hub

BOUNDS = {
    "max_device_tags": 3,
    "max_groups": 2,
    "max_override_vars": 2,
    "max_override_value_chars": 8,
}


def uniq() -> str:
    return uuid.uuid4().hex[:10]


async def tagged_device(hub: RunningHub, path: Path, **tags: str) -> DeviceIdentity:
    return await hub.enroll(await hub.create_token(tags=tags), path)


async def members(hub: RunningHub, group: str) -> list[str]:
    status, body = await hub.api("GET", f"/api/v1/groups/{group}")
    assert status == 200, body
    assert body["member_count"] == len(body["members"])
    return list(body["members"])


async def audit_rows(hub: RunningHub) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = 0
    while True:
        status, page = await hub.api("GET", f"/api/v1/audit?after={after}&limit=1000")
        assert status == 200
        if not page["audit"]:
            return rows
        rows += page["audit"]
        after = page["next_after"]


async def signed_overrides(hub: RunningHub, device: DeviceIdentity) -> dict[str, Any]:
    """Return the overrides of the device's newest target, as the agent verifies it."""
    status, body = await hub.request(
        "POST", "/v1/sync", json_body={"known_target_revision": 0}, ssl_context=device.ssl_context()
    )
    assert status == 200, body
    signed = SyncResponse.model_validate(body).target
    assert signed is not None
    pinned = load_public_key(device.signing_public_key_pem)
    target = verify_target(
        signed, pinned, device_id=device.device_id, applied_revision=0, now=datetime.now(UTC)
    )
    return target.overrides


async def test_retagged_device_joins_and_leaves_a_group(hub: RunningHub, tmp_path: Path):
    site = f"s{uniq()}"
    device = await tagged_device(hub, tmp_path / "d", site=site)
    other = await tagged_device(hub, tmp_path / "o", site=site, role="totem")
    name = f"kiosks-{uniq()}"
    status, body = await hub.api(
        "POST", "/api/v1/groups", {"name": name, "selector": f"site == {site}, role in (kiosk)"}
    )
    assert status == 201, body
    assert body["selector"] == f"site={site},role in (kiosk)" and body["members"] == []

    status, view = await hub.api(
        "PATCH", f"/api/v1/devices/{device.device_id}/tags", {"set": {"role": "kiosk"}}
    )
    assert status == 200 and view["tags"] == {"site": site, "role": "kiosk"}
    assert await members(hub, name) == [device.device_id]

    status, view = await hub.api(
        "PATCH", f"/api/v1/devices/{other.device_id}/tags", {"set": {"role": "kiosk"}}
    )
    assert sorted(await members(hub, name)) == sorted([device.device_id, other.device_id])

    status, view = await hub.api(
        "PATCH", f"/api/v1/devices/{device.device_id}/tags", {"remove": ["role"]}
    )
    assert status == 200 and view["tags"] == {"site": site}
    assert await members(hub, name) == [other.device_id]

    status, listed = await hub.api("GET", "/api/v1/groups")
    (mine,) = [g for g in listed["groups"] if g["name"] == name]
    assert mine["member_count"] == 1 and "members" not in mine

    rows = await audit_rows(hub)
    tagged = [r for r in rows if r["action"] == "device.tag" and r["target"] == device.device_id]
    assert [r["detail"] for r in tagged] == [
        {"set": {"role": "kiosk"}, "remove": []},
        {"set": {}, "remove": ["role"]},
    ]
    assert any(r["action"] == "group.create" and r["target"] == f"group:{name}" for r in rows)

    status, _ = await hub.api("DELETE", f"/api/v1/groups/{name}")
    assert status == 200
    status, _ = await hub.api("GET", f"/api/v1/groups/{name}")
    assert status == 404


async def test_target_carries_group_and_device_overrides(hub: RunningHub, tmp_path: Path):
    site = f"s{uniq()}"
    device = await tagged_device(hub, tmp_path / "d", site=site)
    group = f"g-{uniq()}"
    status, _ = await hub.api("POST", "/api/v1/groups", {"name": group, "selector": f"site={site}"})
    assert status == 201
    for body in (
        {"service": "web", "set": {"A": "grp", "B": "grp", "C": "grp"}},
        {"service": "db", "set": {"D": "grp"}},  # a service this release lacks: dropped
    ):
        status, shown = await hub.api("PATCH", f"/api/v1/groups/{group}/env", body)
        assert status == 200, shown
    status, own = await hub.api(
        "PATCH", f"/api/v1/devices/{device.device_id}/env", {"service": "web", "set": {"A": "dev"}}
    )
    assert status == 200 and own["device"] == {"web": {"A": "dev"}}

    await hub.set_target(device.device_id, release_doc("1"), overrides={"web": {"C": "req"}})
    assert await signed_overrides(hub, device) == {"web": {"A": "dev", "B": "grp", "C": "req"}}

    status, env = await hub.api("GET", f"/api/v1/devices/{device.device_id}/env")
    assert status == 200 and env["conflict"] is None
    assert env["resolved"] == {"web": {"A": "dev", "B": "grp", "C": "grp"}, "db": {"D": "grp"}}
    assert [g["name"] for g in env["groups"]] == [group]

    # Unset on the group and the device: the next target carries only what is left.
    await hub.api("PATCH", f"/api/v1/groups/{group}/env", {"service": "web", "unset": ["B", "C"]})
    await hub.api(
        "PATCH", f"/api/v1/devices/{device.device_id}/env", {"service": "web", "unset": ["A"]}
    )
    await hub.set_target(device.device_id, release_doc("2"))
    assert await signed_overrides(hub, device) == {"web": {"A": "grp"}}

    rows = await audit_rows(hub)
    env_rows = [r for r in rows if r["action"] in ("group.env", "device.env")]
    assert all("grp" not in json.dumps(r["detail"]) for r in env_rows)  # names, not values
    assert {"service": "web", "set": ["A"], "unset": []} in [r["detail"] for r in env_rows]


async def test_conflicting_groups_refuse_the_target_until_the_device_settles_it(
    hub: RunningHub, tmp_path: Path
):
    site = f"s{uniq()}"
    device = await tagged_device(hub, tmp_path / "d", site=site, role="kiosk")
    first, second = f"a-{uniq()}", f"b-{uniq()}"
    for name, selector, value in ((first, f"site={site}", "1"), (second, "role=kiosk", "2")):
        status, _ = await hub.api("POST", "/api/v1/groups", {"name": name, "selector": selector})
        assert status == 201
        await hub.api(
            "PATCH", f"/api/v1/groups/{name}/env", {"service": "web", "set": {"MODE": value}}
        )
    try:
        status, err = await hub.api(
            "POST", f"/api/v1/devices/{device.device_id}/target", {"release": release_doc("1")}
        )
        assert status == 409 and err["error"] == "override_conflict", err
        assert first in err["message"] and second in err["message"] and "web.MODE" in err["message"]
        status, _ = await hub.api("GET", f"/api/v1/devices/{device.device_id}/target")
        assert status == 404  # nothing stored
        rows = await audit_rows(hub)
        assert any(
            r["action"] == "target.set"
            and r["target"] == device.device_id
            and r["outcome"] == "rejected"
            for r in rows
        )
        status, env = await hub.api("GET", f"/api/v1/devices/{device.device_id}/env")
        assert env["resolved"] is None and "web.MODE" in env["conflict"]

        await hub.api(
            "PATCH",
            f"/api/v1/devices/{device.device_id}/env",
            {"service": "web", "set": {"MODE": "3"}},
        )
        await hub.set_target(device.device_id, release_doc("1"))
        assert await signed_overrides(hub, device) == {"web": {"MODE": "3"}}
    finally:  # the shared hub's groups are global: do not leave a conflict behind
        for name in (first, second):
            await hub.api("DELETE", f"/api/v1/groups/{name}")


@pytest.mark.parametrize(
    ("body", "field_or_text"),
    [
        ({"set": {"-bad": "x"}}, "-bad"),
        ({"set": {"ok": "has space"}}, "value(s) of tag(s) ok"),
        ({"set": {"ok": ""}}, "value(s) of tag(s) ok"),
        ({"remove": ["bad key"]}, "bad key"),
        ({"set": {"a": "1"}, "remove": ["a"]}, "both set and removed: a"),
        ({}, "nothing to change"),
        ({"set": {"a": "1"}, "extra": 1}, "extra"),
    ],
)
async def test_bad_tag_request_is_422_naming_it_and_changes_nothing(
    hub: RunningHub, device: DeviceIdentity, body: dict[str, Any], field_or_text: str
):
    status, err = await hub.api("PATCH", f"/api/v1/devices/{device.device_id}/tags", body)
    assert status == 422, err
    assert field_or_text in json.dumps(err)
    status, view = await hub.api("GET", f"/api/v1/devices/{device.device_id}")
    assert view["tags"] == {"site": "lab"}


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({"name": "x", "selector": "site=berlin,,role=kiosk"}, 422, "position 13"),
        ({"name": "x", "selector": ""}, 422, "position 1"),
        ({"name": "bad/name", "selector": "a"}, 422, "name"),
        ({"name": "x"}, 422, "selector"),
    ],
)
async def test_bad_group_request_is_refused_naming_it(
    hub: RunningHub, body: dict[str, Any], status: int, text: str
):
    got, err = await hub.api("POST", "/api/v1/groups", body)
    assert got == status and text in json.dumps(err), err
    assert any(f["field"].startswith(("selector", "name")) for f in err["fields"]), err


async def test_unknown_group_or_device_is_404_and_a_taken_name_409(
    hub: RunningHub, device: DeviceIdentity
):
    env = {"service": "web", "set": {"A": "1"}}
    for method, path, body in (
        ("GET", "/api/v1/groups/nope", None),
        ("DELETE", "/api/v1/groups/nope", None),
        ("PATCH", "/api/v1/groups/nope/env", env),
        ("PATCH", "/api/v1/devices/nope/tags", {"set": {"a": "1"}}),
        ("PATCH", "/api/v1/devices/nope/env", env),
        ("GET", "/api/v1/devices/nope/env", None),
    ):
        status, err = await hub.api(method, path, body)
        assert status == 404, (method, path, err)
    name = f"g-{uniq()}"
    assert (await hub.api("POST", "/api/v1/groups", {"name": name, "selector": "a"}))[0] == 201
    status, err = await hub.api("POST", "/api/v1/groups", {"name": name, "selector": "b"})
    assert status == 409 and "exists" in err["message"]
    await hub.api("DELETE", f"/api/v1/groups/{name}")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/groups"),
        ("GET", "/api/v1/groups"),
        ("GET", "/api/v1/groups/x"),
        ("DELETE", "/api/v1/groups/x"),
        ("PATCH", "/api/v1/groups/x/env"),
        ("PATCH", "/api/v1/devices/x/tags"),
        ("PATCH", "/api/v1/devices/x/env"),
        ("GET", "/api/v1/devices/x/env"),
    ],
)
async def test_group_routes_need_an_operator_token(hub: RunningHub, method: str, path: str):
    status, _ = await hub.request(method, path, json_body={}, token="wrong")
    assert status == 401


@pytest.fixture(scope="module")
def bounded_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    running = start_hub(tmp_path_factory.mktemp("bounded"), sections={"limits": BOUNDS})
    yield running
    assert running.stop() == 0


async def test_tag_group_and_override_bounds_are_enforced_and_named(
    bounded_hub: RunningHub, tmp_path: Path
):
    hub = bounded_hub
    device = await tagged_device(hub, tmp_path / "d", a="1", b="2")
    tags = f"/api/v1/devices/{device.device_id}/tags"
    assert (await hub.api("PATCH", tags, {"set": {"c": "3"}}))[0] == 200
    status, err = await hub.api("PATCH", tags, {"set": {"d": "4"}})
    assert status == 422 and "limits.max_device_tags" in err["message"]
    status, view = await hub.api("PATCH", tags, {"set": {"d": "4"}, "remove": ["a"]})
    assert status == 200 and sorted(view["tags"]) == ["b", "c", "d"]

    for name in ("one", "two"):
        assert (await hub.api("POST", "/api/v1/groups", {"name": name, "selector": "a"}))[0] == 201
    status, err = await hub.api("POST", "/api/v1/groups", {"name": "three", "selector": "a"})
    assert status == 409 and "limits.max_groups" in err["message"]

    env = "/api/v1/groups/one/env"
    assert (await hub.api("PATCH", env, {"service": "web", "set": {"A": "1", "B": "2"}}))[0] == 200
    status, err = await hub.api("PATCH", env, {"service": "db", "set": {"C": "3"}})
    assert status == 422 and "limits.max_override_vars" in err["message"]
    status, err = await hub.api("PATCH", env, {"service": "web", "set": {"A": "123456789"}})
    assert status == 422 and "limits.max_override_value_chars" in err["message"]
    assert err["fields"][0]["field"] == "set.A"
    status, group = await hub.api("GET", "/api/v1/groups/one")
    assert group["overrides"] == {"web": {"A": "1", "B": "2"}}  # unchanged

    rows = await audit_rows(hub)
    refused = [r for r in rows if r["outcome"] == "rejected"]
    assert {r["action"] for r in refused} == {"device.tag", "group.create", "group.env"}


async def edgectl(hub: RunningHub, *args: str) -> Any:
    done = await hub.edgectl(*args)
    assert done.returncode == 0, (args, done.stderr)
    return json.loads(done.stdout)


async def test_edgectl_tags_groups_and_overrides(hub: RunningHub, tmp_path: Path):
    site = f"s{uniq()}"
    device = await tagged_device(hub, tmp_path / "d", site=site, beta="1")
    dev = device.device_id
    name = f"kiosks-{uniq()}"
    made = await edgectl(hub, "group", "create", name, "--selector", f"site={site},role=kiosk")
    assert made["members"] == []
    view = await edgectl(hub, "device", "tag", dev, "role=kiosk", "--remove", "beta")
    assert view["tags"] == {"site": site, "role": "kiosk"}
    assert (await edgectl(hub, "group", "show", name))["members"] == [dev]
    listed = await edgectl(hub, "group", "list")
    assert {"name": name, "member_count": 1} in [
        {"name": g["name"], "member_count": g["member_count"]} for g in listed["groups"]
    ]

    group = await edgectl(hub, "group", "env", name, "web", "LEVEL=debug", "COLOR=red")
    assert group["overrides"] == {"web": {"LEVEL": "debug", "COLOR": "red"}}
    group = await edgectl(hub, "group", "env", name, "web", "--unset", "COLOR")
    assert group["overrides"] == {"web": {"LEVEL": "debug"}}
    own = await edgectl(hub, "device", "env", dev, "web", "LEVEL=info")
    assert own["device"] == {"web": {"LEVEL": "info"}}
    shown = await edgectl(hub, "device", "env", dev)
    assert shown["resolved"] == {"web": {"LEVEL": "info"}}

    (tmp_path / "release.json").write_text(json.dumps(release_doc("1")))
    await edgectl(hub, "target", "set", dev, str(tmp_path / "release.json"))
    target = await edgectl(hub, "target", "show", dev)
    assert target["target"]["overrides"] == {"web": {"LEVEL": "info"}}

    bad = await hub.edgectl("group", "create", "x", "--selector", "a b")
    assert bad.returncode == 1 and "position 3" in bad.stderr
    assert (await edgectl(hub, "group", "delete", name)) == {"deleted": name}


def test_edgectl_documents_the_group_commands():
    from hub import edgectl

    doc = edgectl.__doc__ or ""
    for command in ("device tag", "device env", "group create", "group show", "group env"):
        assert command in doc, command
