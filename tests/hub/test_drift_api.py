"""Drift and retired releases on a real hub process: simulated devices (the real sync
protocol over mutual TLS) report their host containers against a release pinned by the
real registry, then retired through the releases API; and the same through edgectl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_hub_sync import sync
from test_releases import release, unique

from hub.testing import DeviceIdentity, RunningHub

OTHER = "sha256:" + "b" * 64


def box(name: str, digest: str, state: str = "running", managed: bool = True) -> dict[str, Any]:
    return {"name": name, "image": "x", "digest": digest, "state": state, "managed": managed}


async def report(
    hub: RunningHub, device: DeviceIdentity, ref: str, containers: list[dict[str, Any]]
) -> None:
    status = {
        "full": True,
        "release": ref,
        "state": "converged",
        "host_containers": containers,
        "host_containers_total": len(containers),
    }
    code, body = await sync(hub, device, {"entries": [], "status": status})
    assert code == 200, body


async def new_device(hub: RunningHub, path: Path) -> DeviceIdentity:
    return await hub.enroll(await hub.create_token(), path)


async def pinned_release(hub: RunningHub) -> tuple[dict[str, Any], str, str]:
    name = unique()
    code, body = await hub.api("POST", "/api/v1/releases", {"release": release(name)})
    assert code == 201, body
    return body["release"], f"{name}@1", body["images"][0]["digest"]


async def drift_of(hub: RunningHub, device_id: str) -> list[tuple[str, Any]] | None:
    code, body = await hub.api("GET", "/api/v1/drift")
    assert code == 200, body
    for d in body["devices"]:
        if d["device_id"] == device_id:
            return [(f["kind"], f["service"] or f["container"]) for f in d["differences"]]
    return None


async def retired_holders(hub: RunningHub, ref: str) -> dict[str, dict[str, Any]]:
    code, body = await hub.api("GET", "/api/v1/retired")
    assert code == 200, body
    (row,) = [r for r in body["releases"] if r["ref"] == ref]
    return {d["device_id"]: d for d in row["devices"]}


async def test_drift_lists_what_differs_from_the_pinned_target(hub: RunningHub, tmp_path: Path):
    doc, ref, digest = await pinned_release(hub)
    good, bad = await new_device(hub, tmp_path / "g"), await new_device(hub, tmp_path / "b")
    for d in (good, bad):
        await hub.set_target(d.device_id, doc)
    await report(hub, good, ref, [box(f"ef-{good.device_id}-web", digest)])
    await report(
        hub,
        bad,
        ref,
        [
            box(f"ef-{bad.device_id}-web", OTHER, state="exited"),
            box(f"ef-{bad.device_id}-old", digest),
            box("a-stranger", OTHER, managed=False),
        ],
    )
    assert await drift_of(hub, good.device_id) is None
    assert await drift_of(hub, bad.device_id) == [
        ("stopped", "web"),
        ("other_digest", "web"),
        ("extra", f"ef-{bad.device_id}-old"),
    ]
    await report(hub, bad, ref, [box(f"ef-{bad.device_id}-web", digest)])
    assert await drift_of(hub, bad.device_id) is None, "the latest report replaces the last"


async def test_device_that_never_reported_its_host_is_listed_as_not_reported(
    hub: RunningHub, tmp_path: Path
):
    doc, _, _ = await pinned_release(hub)
    quiet = await new_device(hub, tmp_path / "q")
    await hub.set_target(quiet.device_id, doc)
    code, body = await sync(hub, quiet, {"entries": [], "status": {"full": True}})
    assert code == 200, body
    _, drift = await hub.api("GET", "/api/v1/drift")
    assert quiet.device_id in drift["not_reported"]


async def test_retired_lists_managed_and_unmanaged_holders_since_first_seen(
    hub: RunningHub, tmp_path: Path
):
    doc, ref, digest = await pinned_release(hub)
    managed, loose = await new_device(hub, tmp_path / "m"), await new_device(hub, tmp_path / "l")
    await hub.set_target(managed.device_id, doc)
    await report(hub, managed, ref, [box(f"ef-{managed.device_id}-web", digest)])
    await report(hub, loose, "other@9", [box("kept-by-hand", digest, managed=False)])
    code, _ = await hub.api("POST", f"/api/v1/releases/{ref}/retire", {"reason": "CVE-1"})
    assert code == 200
    first = await retired_holders(hub, ref)
    assert {managed.device_id, loose.device_id} <= set(first), "same digest on other devices too"
    assert [c["name"] for c in first[loose.device_id]["containers"]] == ["kept-by-hand"]
    await report(hub, loose, "other@9", [box("kept-by-hand", digest, managed=False)])
    again = await retired_holders(hub, ref)
    assert again[loose.device_id]["since"] == first[loose.device_id]["since"], "earliest kept"
    assert again[managed.device_id]["containers"][0]["managed"] is True
    await report(hub, loose, "other@9", [box("kept-by-hand", OTHER, managed=False)])
    assert loose.device_id not in await retired_holders(hub, ref)


async def test_drift_and_retired_need_devices_read(hub: RunningHub):
    for path in ("/api/v1/drift", "/api/v1/retired"):
        assert (await hub.request("GET", path))[0] == 401


async def test_edgectl_drift_and_retired(hub: RunningHub, tmp_path: Path):
    doc, ref, digest = await pinned_release(hub)
    dev = await new_device(hub, tmp_path / "e")
    await hub.set_target(dev.device_id, doc)
    await report(hub, dev, ref, [box(f"ef-{dev.device_id}-web", OTHER)])
    await hub.api("POST", f"/api/v1/releases/{ref}/retire", {"reason": "old"})
    human = await hub.edgectl("drift")
    assert human.returncode == 0, human.stderr
    line = next(x for x in human.stdout.splitlines() if x.startswith(dev.device_id))
    assert "other_digest" in line and OTHER in line and digest in line
    listed = json.loads((await hub.edgectl("--json", "drift")).stdout)
    assert dev.device_id in [d["device_id"] for d in listed["devices"]]
    retired = await hub.edgectl("retired")
    assert retired.returncode == 0, retired.stderr
    assert any(ref in x and dev.device_id in x for x in retired.stdout.splitlines())
    as_json = json.loads((await hub.edgectl("--json", "retired")).stdout)
    assert dev.device_id in [
        d["device_id"] for r in as_json["releases"] if r["ref"] == ref for d in r["devices"]
    ]
