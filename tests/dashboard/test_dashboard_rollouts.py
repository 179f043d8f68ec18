"""Rollouts in the dashboard, in a real Chromium against a real hub with SIMULATED
devices: the list and the rollout page with its stages, pause and abort through the
confirmation step (audited as the API's), and a viewer who sees no action and is refused
(403) when posting one anyway."""

from __future__ import annotations

from typing import Any

from dashkit import World, goto, ok, shot, sign_in
from playwright.async_api import Page, expect

from hub.testing import RunningHub

IMAGE = "127.0.0.1:5000/edgefleet/good:1"  # the local registry: the release pins its digest


async def _rollout(hub: RunningHub, version: str) -> dict[str, Any]:
    """Create release ``dashapp@VERSION`` and roll it out to group berlin in two stages."""
    doc = {"name": "dashapp", "version": version, "services": [{"name": "web", "image": IMAGE}]}
    await ok(hub, "POST", "/api/v1/releases", {"release": doc})
    body = {"release": f"dashapp@{version}", "group": "berlin", "stages": ["1", "100%"]}
    return dict(await ok(hub, "POST", "/api/v1/rollouts", body))


async def _status(hub: RunningHub, rollout_id: str) -> str:
    return str((await ok(hub, "GET", f"/api/v1/rollouts/{rollout_id}"))["status"])


async def _confirm(page: Page, action: str, reason: str) -> None:
    await page.click(f"[data-testid=action-{action}]")
    await expect(page.locator("h1")).to_have_text(f"Confirm {action}")
    await page.fill("#reason", reason)
    await page.click("[data-testid=confirm]")


async def test_a_rollout_is_started_paused_and_aborted_from_the_pages(
    world: World, page: Page
) -> None:
    hub = world.hub
    doc = {"name": "dashapp", "version": "0", "services": [{"name": "web", "image": IMAGE}]}
    await ok(hub, "POST", "/api/v1/releases", {"release": doc})
    await sign_in(page, hub, hub.admin_token, "/ui/rollouts")
    await page.click("text=Start a rollout")
    await page.fill("input[name=release]", "dashapp@0")
    await page.select_option("select[name=group]", "berlin")
    await page.fill("input[name=stages]", "1,100%")
    await page.click("[data-testid=start]")
    await expect(page.locator("[data-testid=rollout-status]")).to_have_text("running")
    rid = page.url.rsplit("/", 1)[1]
    started = await ok(hub, "GET", f"/api/v1/rollouts/{rid}")
    assert (started["release"], started["group"], started["members"]) == ("dashapp@0", "berlin", 3)
    await expect(page.locator("[data-testid=stage-0]")).to_contain_text("Stage 1 (1)")
    await expect(page.locator("[data-testid=stage-1]")).to_contain_text("Stage 2 (100%)")
    await shot(page, "rollout")
    await goto(page, hub.url + "/ui/rollouts")
    await expect(page.locator(f"[data-testid=status-{rid}]")).to_have_text("running")
    await shot(page, "rollouts")
    await page.click(f"a[href='/ui/rollouts/{rid}']")

    await page.click("[data-testid=action-pause]")  # the confirmation step changes nothing
    await expect(page.locator("[data-testid=effect]")).to_contain_text("No new devices")
    await shot(page, "rollout-confirm")
    assert await _status(hub, rid) == "running"
    await page.click("text=Cancel")
    await _confirm(page, "pause", "checking the kiosks")
    await expect(page.locator("[data-testid=rollout-status]")).to_have_text("paused")
    assert await _status(hub, rid) == "paused"

    await _confirm(page, "abort", "wrong release")
    await expect(page.locator("[data-testid=rollout-status]")).to_have_text("aborted")
    assert await _status(hub, rid) == "aborted"
    done = {
        (e["action"], e["actor"], e["detail"].get("reason"))
        for action in ("rollout.pause", "rollout.abort")
        for e in (await ok(hub, "GET", f"/api/v1/audit?action={action}&limit=500"))["audit"]
        if e["target"] == rid
    }
    starts = (await ok(hub, "GET", "/api/v1/audit?action=rollout.start&limit=500"))["audit"]
    assert any(e["target"] == rid and e["actor"] == "admin" for e in starts)
    assert ("rollout.pause", "admin", "checking the kiosks") in done
    assert ("rollout.abort", "admin", "wrong release") in done


async def test_the_rollout_page_updates_its_status_without_a_reload(
    world: World, page: Page
) -> None:
    hub = world.hub
    rid = (await _rollout(hub, "2"))["id"]
    await sign_in(page, hub, hub.admin_token, f"/ui/rollouts/{rid}")
    await expect(page.locator("[data-testid=rollout-status]")).to_have_text("running")
    await ok(hub, "POST", f"/api/v1/rollouts/{rid}/pause", {"reason": "from the API"})
    await expect(page.locator("[data-testid=rollout-status]")).to_have_text(
        "paused", timeout=15_000
    )
    await ok(hub, "POST", f"/api/v1/rollouts/{rid}/abort", {})


async def test_a_viewer_sees_no_rollout_action_and_is_refused_posting_one(
    world: World, page: Page
) -> None:
    hub = world.hub
    rid = (await _rollout(hub, "3"))["id"]
    await sign_in(page, hub, world.viewer_token, f"/ui/rollouts/{rid}")
    await expect(page.locator("[data-testid=rollout-status]")).to_have_text("running")
    assert await page.locator("[data-testid^=action-]").count() == 0
    await goto(page, f"{hub.url}/ui/rollouts")
    assert await page.locator("[data-testid=start-form]").count() == 0
    await goto(page, f"{hub.url}/ui/rollouts/{rid}")
    csrf = await page.get_attribute("input[name=csrf]", "value")
    answer = await page.request.post(
        f"{hub.url}/ui/rollouts/{rid}/abort",
        form={"csrf": csrf or "", "reason": "not mine to do"},
        headers={"Accept": "text/html"},
    )
    assert answer.status == 403, await answer.text()
    response = await goto(page, f"{hub.url}/ui/rollouts/{rid}/abort")  # nor the step
    assert response is not None and response.status == 403
    assert await _status(hub, rid) == "running"
    denied = (await ok(hub, "GET", "/api/v1/audit?action=operator.access&limit=500"))["audit"]
    route = "POST /ui/rollouts/{rollout_id}/{action}"
    assert any(
        e["actor"] == "berlin-viewer" and e["detail"].get("route") == route for e in denied
    ), denied  # refused and audited before the handler, as the API route is
    await ok(hub, "POST", f"/api/v1/rollouts/{rid}/abort", {})
