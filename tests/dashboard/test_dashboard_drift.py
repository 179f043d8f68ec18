"""The drift and retired page in a real Chromium against a real hub: devices (the real
sync protocol over mutual TLS) report their host containers against a release pinned by
the real registry, which is then retired; the page, one click from the overview, shows
what the API answers, and only what the viewer's scope holds; the releases page flags
the retired release with its holders, the groups page shows members as the API counts."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from dashkit import World, goto, ok, shot, sign_in
from playwright.async_api import Page, expect

from hub.testing import DeviceIdentity, RunningHub

IMAGE = "127.0.0.1:5000/edgefleet/good:1"
OTHER = "sha256:" + "b" * 64


def _box(name: str, digest: str, state: str = "running") -> dict[str, Any]:
    return {"name": name, "image": IMAGE, "digest": digest, "state": state, "managed": True}


async def _report(
    hub: RunningHub, device: DeviceIdentity, ref: str, boxes: list[dict[str, Any]]
) -> None:
    status = {
        "full": True,
        "release": ref,
        "state": "converged",
        "host_containers": boxes,
        "host_containers_total": len(boxes),
    }
    raw = gzip.compress(json.dumps({"entries": [], "status": status}).encode())
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    code, body = await hub.request(
        "POST", "/v1/sync", data=raw, headers=headers, ssl_context=device.ssl_context()
    )
    assert code == 200, body


async def test_drift_page_one_click_from_the_overview_shows_the_apis_answer(
    world: World, page: Page, tmp_path: Path
) -> None:
    hub = world.hub
    doc = {"name": "driftapp", "version": "1", "services": [{"name": "web", "image": IMAGE}]}
    created = await ok(hub, "POST", "/api/v1/releases", {"release": doc})
    digest = created["images"][0]["digest"]
    token = await hub.create_token(uses=2, tags={"site": "lyon"})
    good = await hub.enroll(token, tmp_path / "good", hostname="lyon-good")
    bad = await hub.enroll(token, tmp_path / "bad", hostname="lyon-bad")
    for d in (good, bad):
        await hub.set_target(d.device_id, created["release"])
    await _report(hub, good, "driftapp@1", [_box(f"ef-{good.device_id}-web", digest)])
    await _report(hub, bad, "driftapp@1", [_box(f"ef-{bad.device_id}-web", OTHER, "exited")])
    await ok(hub, "POST", "/api/v1/releases/driftapp@1/retire", {"reason": "CVE-1"})

    await sign_in(page, hub, hub.admin_token)
    await page.click("[data-testid=drift-link]")
    await expect(page.locator("h1")).to_have_text("Drift and retired")
    api = await ok(hub, "GET", "/api/v1/drift")
    assert int(await page.inner_text("[data-testid=drift-count]")) == len(api["devices"])
    row = page.locator("[data-testid=drift] tr", has_text="lyon-bad")
    await expect(row).to_contain_text("other digest")
    await expect(row).to_contain_text("stopped")
    assert await page.locator("[data-testid=drift] tr", has_text="lyon-good").count() == 0
    retired = page.locator("[data-testid='retired-driftapp@1']")
    await expect(retired).to_contain_text("CVE-1")
    await expect(retired).to_contain_text(good.device_id)  # still runs the retired digest
    await shot(page, "drift")

    await page.click("nav >> text=Releases")  # the retired release flagged, its holders
    row = page.locator("[data-testid='release-driftapp@1']")
    await expect(row).to_contain_text("retired")
    await expect(row).to_contain_text("CVE-1")
    holders = await ok(hub, "GET", "/api/v1/retired")
    (held,) = [r["devices"] for r in holders["releases"] if r["ref"] == "driftapp@1"]
    await expect(page.locator("[data-testid='holders-driftapp@1']")).to_contain_text(
        f"{len(held)} devices still hold it"
    )
    await shot(page, "releases")
    await page.click("nav >> text=Groups")
    groups = {g["name"]: g for g in (await ok(hub, "GET", "/api/v1/groups"))["groups"]}
    await expect(page.locator("[data-testid=members-berlin]")).to_have_text(
        str(groups["berlin"]["member_count"])
    )
    await expect(page.locator("[data-testid=group-berlin]")).to_contain_text("site=berlin")
    await shot(page, "groups")

    viewer = await page.context.browser.new_context(ignore_https_errors=True)  # type: ignore[union-attr]
    try:
        other = await viewer.new_page()
        await sign_in(other, hub, world.viewer_token, "/ui/drift")  # site=berlin only
        await expect(other.locator("h1")).to_have_text("Drift and retired")
        assert await other.locator("[data-testid=drift] tr", has_text="lyon-bad").count() == 0
        await expect(other.locator("[data-testid='retired-driftapp@1']")).not_to_contain_text(
            good.device_id
        )
        response = await goto(other, hub.url + "/ui/drift")
        assert response is not None and response.status == 200
    finally:
        await viewer.close()
