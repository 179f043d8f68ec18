"""The operator API and edgectl against a real hub: auth, validation, audit."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hubdocs import release_doc

from hub.testing import REPO_ROOT, DeviceIdentity, RunningHub

MUTATING = [
    ("POST", "/api/v1/enrollment-tokens", {"uses": 1}),
    ("POST", "/api/v1/devices/dev-x/target", {"release": release_doc()}),
    ("POST", "/api/v1/devices/dev-x/disable", None),
]
READING = ["/api/v1/devices", "/api/v1/devices/dev-x", "/api/v1/audit"]


@pytest.mark.parametrize(("method", "path", "body"), MUTATING)
async def test_mutations_need_a_token_and_refusals_are_audited(
    hub: RunningHub, method: str, path: str, body: object
):
    status, err = await hub.request(method, path, json_body=body)
    assert status == 401 and err["error"] == "unauthenticated"
    status, err = await hub.request(method, path, json_body=body, token="adm_wrong")
    assert status == 401 and err["message"] == "unknown operator token"
    status, audit = await hub.api("GET", "/api/v1/audit?limit=1000")
    denied = [a for a in audit["audit"] if a["outcome"] == "denied" and a["actor"] == "anonymous"]
    assert denied, "refused operator calls are audited"


@pytest.mark.parametrize("path", READING)
async def test_reads_need_a_token(hub: RunningHub, path: str):
    status, _ = await hub.request("GET", path)
    assert status == 401


async def test_bad_release_is_422_naming_the_field_and_stores_nothing(
    hub: RunningHub, device: DeviceIdentity
):
    path = f"/api/v1/devices/{device.device_id}/target"
    bad_name = release_doc()
    bad_name["services"][0]["name"] = "Bad Name!"
    cases = [
        ({"release": bad_name}, "release.services.0.name"),
        ({"release": {**release_doc(), "services": []}}, "release.services"),
        ({"release": release_doc(), "overrides": {"nope": {"A": "1"}}}, "overrides"),
        ({"release": release_doc(), "apply_deadline_s": -1}, "apply_deadline_s"),
        ({"release": release_doc(), "colour": "blue"}, "colour"),
        ({}, "release"),
    ]
    for body, field in cases:
        status, err = await hub.api("POST", path, body)
        assert status == 422, (body, err)
        assert field in [f["field"] for f in err["fields"]], (field, err)
    status, _ = await hub.request(
        "POST",
        path,
        data=b"{not json",
        token=hub.admin_token,
        headers={"Content-Type": "application/json"},
    )
    assert status == 400
    status, err = await hub.api("GET", f"/api/v1/devices/{device.device_id}/target")
    assert status == 404
    status, shown = await hub.api("GET", f"/api/v1/devices/{device.device_id}")
    assert shown["target_revision"] == 0
    status, audit = await hub.api("GET", "/api/v1/audit?limit=1000")
    rejected = [
        a for a in audit["audit"] if a["target"] == device.device_id and a["outcome"] == "rejected"
    ]
    assert len(rejected) == len(cases) + 1


async def test_unknown_device_is_404(hub: RunningHub):
    for method, path, body in [
        ("GET", "/api/v1/devices/dev-nope", None),
        ("POST", "/api/v1/devices/dev-nope/target", {"release": release_doc()}),
        ("POST", "/api/v1/devices/dev-nope/disable", None),
        ("GET", "/api/v1/devices/dev-nope/events", None),
    ]:
        status, err = await hub.api(method, path, body)
        assert status == 404 and err["error"] == "not_found", (path, err)


async def test_bad_token_requests(hub: RunningHub):
    for body, field in [
        ({"uses": 0}, "uses"),
        ({"expires_in_s": 0}, "expires_in_s"),
        ({"tags": {"bad key!": "x"}}, "tags"),
        ({"uses": 10**9}, "uses"),
    ]:
        status, err = await hub.api("POST", "/api/v1/enrollment-tokens", body)
        assert status == 422 and field in [f["field"] for f in err["fields"]], (body, err)


async def test_successful_actions_are_audited(hub: RunningHub, device: DeviceIdentity):
    await hub.set_target(device.device_id, release_doc("42"))
    await hub.api("POST", f"/api/v1/devices/{device.device_id}/disable")
    _status, audit = await hub.api("GET", "/api/v1/audit?limit=1000")
    mine = [
        (a["actor"], a["action"], a["outcome"])
        for a in audit["audit"]
        if a["target"] == device.device_id
    ]
    assert mine[0][1:] == ("device.enroll", "ok")
    assert ("admin", "target.set", "ok") in mine
    assert ("admin", "device.disable", "ok") in mine
    # The hub's own rows are complete; device records are listed as the device sent them
    # (a hand-made one from another test of this shared hub may lack fields).
    assert {row["source"] for row in audit["audit"] if row["target"] == device.device_id} == {"hub"}
    for row in (r for r in audit["audit"] if r["source"] == "hub"):
        assert row["at"] and row["actor"] and row["action"] and row["outcome"]


async def test_events_paging(hub: RunningHub, device: DeviceIdentity):
    from test_hub_sync import entries, sync

    await sync(hub, device, {"entries": entries(*range(1, 26))})
    seen: list[int] = []
    after = 0
    while True:
        status, page = await hub.api(
            "GET", f"/api/v1/devices/{device.device_id}/events?after={after}&limit=10"
        )
        if not page["events"]:
            break
        seen += [e["seq"] for e in page["events"]]
        after = page["next_after"]
    assert seen == list(range(1, 26))
    status, _err = await hub.api("GET", f"/api/v1/devices/{device.device_id}/events?limit=x")
    assert status == 400


async def test_edgectl_end_to_end(hub: RunningHub, tmp_path: Path):
    made = await hub.edgectl(
        "token", "create", "--uses", "2", "--expires", "10m", "--tag", "site=x"
    )
    assert made.returncode == 0, made.stderr
    device = await hub.enroll(made.stdout.strip(), tmp_path / "d")
    assert device.tags == {"site": "x"}

    listed = await hub.edgectl("devices")
    assert listed.returncode == 0 and device.device_id in listed.stdout

    (tmp_path / "release.json").write_text(json.dumps(release_doc("3")))
    result = await hub.edgectl(
        "target",
        "set",
        device.device_id,
        str(tmp_path / "release.json"),
        "--override",
        "web.MODE=slow",
        "--expires",
        "1d",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["revision"] == 1
    shown = json.loads((await hub.edgectl("target", "show", device.device_id)).stdout)
    assert shown["target"]["overrides"] == {"web": {"MODE": "slow"}}

    (tmp_path / "bad.json").write_text(json.dumps({"name": "app", "version": "1"}))
    bad = await hub.edgectl("target", "set", device.device_id, str(tmp_path / "bad.json"))
    assert bad.returncode == 1 and "release.services" in bad.stderr

    assert (await hub.edgectl("device", "disable", device.device_id)).returncode == 0
    shown = json.loads((await hub.edgectl("device", "show", device.device_id)).stdout)
    assert shown["disabled"] is True
    assert (await hub.edgectl("events", device.device_id)).returncode == 0
    assert (await hub.edgectl("audit", "--limit", "5")).returncode == 0

    unauth = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-c",
            "from hub.cli import edgectl_main; edgectl_main()",
            "--hub",
            hub.url,
            "--ca",
            str(hub.ca_path),
            "--token",
            "wrong",
            "devices",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert unauth.returncode == 1 and "unknown operator token" in unauth.stderr


def test_every_edgectl_command_is_documented():
    from hub import edgectl

    doc = edgectl.__doc__ or ""
    for command in [
        "token create",
        "devices",
        "device show",
        "device disable",
        "device enable",
        "target set",
        "target show",
        "events",
        "audit",
    ]:
        assert command in doc, command
