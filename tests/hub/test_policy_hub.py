"""Device policies against a real hub process: group policies, refusals, the signed target."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hubdocs import release_doc

from hub.testing import DeviceIdentity, RunningHub

FEATURES = ["depends_on", "healthcheck", "container_options", "device_policy"]

# (service options, the policy field that refuses them by default, a policy allowing them)
OPTIONS: list[tuple[dict[str, Any], str, dict[str, Any]]] = [
    (
        {"volumes": [{"type": "bind", "source": "/etc", "target": "/host-etc"}]},
        "bind_paths",
        {"bind_paths": ["/etc"]},
    ),
    (
        {"volumes": [{"type": "bind", "source": "/var/run/docker.sock", "target": "/d.sock"}]},
        "docker_socket",
        {"docker_socket": True},
    ),
    ({"privileged": True}, "privileged", {"privileged": True}),
    ({"network_mode": "host"}, "host_network", {"host_network": True}),
    (
        {"devices": [{"host": "/dev/null", "container": "/dev/edge-null"}]},
        "devices",
        {"devices": ["/dev/null"]},
    ),
    ({"cap_add": ["NET_ADMIN"]}, "cap_add", {"cap_add": ["NET_ADMIN"]}),
]


def uniq() -> str:
    return uuid.uuid4().hex[:10]


async def sync(hub: RunningHub, device: DeviceIdentity, features: list[str]) -> dict[str, Any]:
    body = {"protocol": 3, "epoch": "e1", "features": features, "entries": []}
    status, answer = await hub.request(
        "POST", "/v1/sync", json_body=body, ssl_context=device.ssl_context()
    )
    assert status == 200, answer
    return dict(answer)


async def site_device(hub: RunningHub, path: Path) -> tuple[DeviceIdentity, str]:
    site = f"s{uniq()}"
    device = await hub.enroll(await hub.create_token(tags={"site": site}), path)
    await sync(hub, device, FEATURES)
    return device, site


async def group_with_policy(hub: RunningHub, site: str, policy: dict[str, Any]) -> str:
    name = f"g-{uniq()}"
    status, body = await hub.api(
        "POST", "/api/v1/groups", {"name": name, "selector": f"site={site}"}
    )
    assert status == 201, body
    status, body = await hub.api("PUT", f"/api/v1/groups/{name}/policy", policy)
    assert status == 200, body
    return name


def signed_document(answer: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(base64.b64decode(answer["target"]["payload"])))


@pytest.mark.parametrize(("options", "field", "allowing"), OPTIONS)
async def test_each_option_refused_by_the_default_policy_naming_device_and_field(
    hub: RunningHub, tmp_path: Path, options: dict[str, Any], field: str, allowing: dict[str, Any]
) -> None:
    device, _ = await site_device(hub, tmp_path / "d")
    path = f"/api/v1/devices/{device.device_id}/target"
    status, body = await hub.api("POST", path, {"release": release_doc(**options)})
    assert status == 422, body
    assert body["error"] == "policy_refused"
    assert device.device_id in body["message"] and "the hub's default policy" in body["message"]
    assert "service web: " in body["message"] and f"refused by policy {field}" in body["message"]
    [refusal] = body["fields"]
    assert refusal["device_id"] == device.device_id and refusal["policy_field"] == field
    assert refusal["service"] == "web"
    status, target = await hub.api("GET", path)
    assert status == 404, target  # nothing was stored


@pytest.mark.parametrize(("options", "field", "allowing"), OPTIONS)
async def test_option_allowed_when_the_group_policy_allows_it_and_travels_signed(
    hub: RunningHub, tmp_path: Path, options: dict[str, Any], field: str, allowing: dict[str, Any]
) -> None:
    device, site = await site_device(hub, tmp_path / "d")
    await group_with_policy(hub, site, allowing)
    assert await hub.set_target(device.device_id, release_doc(**options)) == 1
    policy = signed_document(await sync(hub, device, FEATURES))["policy"]
    assert policy[field] not in (False, [])


async def test_policy_sent_only_to_agents_that_read_it(hub: RunningHub, tmp_path: Path) -> None:
    site = f"s{uniq()}"
    device = await hub.enroll(await hub.create_token(tags={"site": site}), tmp_path / "d")
    await sync(hub, device, ["depends_on", "healthcheck"])  # an agent before device_policy
    assert await hub.set_target(device.device_id, release_doc()) == 1
    assert "policy" not in signed_document(await sync(hub, device, ["depends_on"]))
    # Still checked by the hub: the default policy refuses a privileged release.
    path = f"/api/v1/devices/{device.device_id}/target"
    status, body = await hub.api("POST", path, {"release": release_doc(privileged=True)})
    assert status == 422, body


async def test_most_permissive_matching_group_wins_and_device_view_names_it(
    hub: RunningHub, tmp_path: Path
) -> None:
    device, site = await site_device(hub, tmp_path / "d")
    status, view = await hub.api("GET", f"/api/v1/devices/{device.device_id}/policy")
    assert status == 200 and view["default"] is True and view["policy"]["privileged"] is False
    a = await group_with_policy(hub, site, {"bind_paths": ["/srv/a"]})
    b = await group_with_policy(hub, site, {"bind_paths": ["/srv/b"], "privileged": True})
    status, view = await hub.api("GET", f"/api/v1/devices/{device.device_id}/policy")
    assert sorted(view["groups"]) == sorted([a, b]) and view["applied"] is True
    assert sorted(view["policy"]["bind_paths"]) == ["/srv/a", "/srv/b"]
    assert view["policy"]["privileged"] is True
    status, body = await hub.api("DELETE", f"/api/v1/groups/{b}/policy")
    assert status == 200 and body["policy"] is None
    status, shown = await hub.api("GET", f"/api/v1/groups/{b}/policy")
    assert status == 200 and shown["policy"] is None
    path = f"/api/v1/devices/{device.device_id}/target"
    status, body = await hub.api("POST", path, {"release": release_doc(privileged=True)})
    assert status == 422 and a in body["message"], body


async def test_bad_policy_is_a_422_naming_the_field_and_changes_nothing(
    hub: RunningHub, tmp_path: Path
) -> None:
    _, site = await site_device(hub, tmp_path / "d")
    name = await group_with_policy(hub, site, {"privileged": True})
    for bad, field in (({"bind_paths": ["etc"]}, "bind_paths"), ({"privilegd": True}, "privilegd")):
        status, body = await hub.api("PUT", f"/api/v1/groups/{name}/policy", bad)
        assert status == 422 and field in json.dumps(body["fields"]), body
    status, shown = await hub.api("GET", f"/api/v1/groups/{name}/policy")
    assert shown["policy"]["privileged"] is True
    status, body = await hub.api("PUT", "/api/v1/groups/no-such-group/policy", {})
    assert status == 404, body


async def test_rollout_start_refused_when_a_member_policy_refuses(
    hub: RunningHub, tmp_path: Path
) -> None:
    device, site = await site_device(hub, tmp_path / "d")
    allowed, _ = await site_device(hub, tmp_path / "a")
    version = uniq()
    web = {"name": "web", "image": "127.0.0.1:5000/edgefleet/good:1", "privileged": True}
    release = {"name": f"r{uniq()}", "version": version, "services": [web]}
    status, body = await hub.api("POST", "/api/v1/releases", {"release": release})
    assert status == 201, body
    ref = f"{release['name']}@{version}"
    spec = {"release": ref, "selector": f"site={site}", "stages": "100%", "soak_s": 0}
    status, body = await hub.api("POST", "/api/v1/rollouts", spec)
    assert status == 422 and body["error"] == "policy_refused", body
    assert device.device_id in body["message"] and allowed.device_id not in body["message"]
    await group_with_policy(hub, site, {"privileged": True})
    status, body = await hub.api("POST", "/api/v1/rollouts", spec)
    assert status == 201, body


async def test_relative_bind_not_sent_to_an_agent_without_the_feature(
    hub: RunningHub, tmp_path: Path
) -> None:
    device = await hub.enroll(await hub.create_token(tags={"site": uniq()}), tmp_path / "d")
    await sync(hub, device, ["depends_on", "healthcheck"])  # an agent before device_policy
    relative = {"volumes": [{"type": "bind", "source": "./data", "target": "/data"}]}
    path = f"/api/v1/devices/{device.device_id}/target"
    status, body = await hub.api("POST", path, {"release": release_doc(**relative)})
    assert status == 409 and "device_policy" in body["message"], body
    await sync(hub, device, FEATURES)
    assert await hub.set_target(device.device_id, release_doc(**relative)) == 1


async def test_edgectl_group_policy_set_show_clear(hub: RunningHub, tmp_path: Path) -> None:
    _, site = await site_device(hub, tmp_path / "d")
    name = f"g-{uniq()}"
    status, body = await hub.api(
        "POST", "/api/v1/groups", {"name": name, "selector": f"site={site}"}
    )
    assert status == 201, body
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"bind_paths": ["/srv/app"], "max_mem_bytes": 268435456}))
    done = await hub.edgectl("--json", "group", "policy", "set", name, str(policy))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["policy"]["bind_paths"] == ["/srv/app"]
    shown = json.loads((await hub.edgectl("--json", "group", "policy", "show", name)).stdout)
    assert shown["policy"]["max_mem_bytes"] == 268435456
    policy.write_text(json.dumps({"bind_paths": ["srv"]}))
    refused = await hub.edgectl("group", "policy", "set", name, str(policy))
    assert refused.returncode == 1 and "bind_paths" in refused.stderr, refused.stderr
    assert (await hub.edgectl("group", "policy", "clear", name)).returncode == 0
    shown = json.loads((await hub.edgectl("--json", "group", "policy", "show", name)).stdout)
    assert shown["policy"] is None
