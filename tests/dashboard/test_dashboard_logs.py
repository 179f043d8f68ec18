"""Live logs on the device page, in a real Chromium against a real hub and a real agent
process running a real container on the Docker engine.

The page asks for the logs through the ``logs`` action (the API's own path): the action
and its ``action.create`` audit row are the API's; a follow shows, without reloading the
page, lines the container wrote after the page opened. The dashboard's bounds refuse a
follow over ``dashboard.log_follow_max_s`` (naming it) and a follow past
``dashboard.max_log_follows`` (409, counted on /healthz); a viewer gets no form.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest
from dashkit import goto, scoped_user, shot, sign_in
from fleetkit import FAST, device_of, hub_agent, running, until
from playwright.async_api import Page, expect

from hub.testing import RunningHub, start_hub

pytestmark = pytest.mark.docker
IMAGE = "edgefleet-test/good:1"
LIVE = ["/bin/sh", "-c", "i=0; while true; do echo live $i; i=$((i+1)); sleep 0.2; done"]
RELEASE = {
    "name": "logs",
    "version": "1",
    "services": [{"name": "live", "image": IMAGE, "command": LIVE}],
}
FOLLOW_MAX_S = 30


@pytest.fixture(scope="module")
def logs_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    tmp = tmp_path_factory.mktemp("logs")
    sections = {
        "dashboard": {"poll_interval_s": 1, "log_follow_max_s": FOLLOW_MAX_S, "max_log_follows": 1},
        "limits": {"auth_failure_burst": 1_000_000},
    }
    hub = start_hub(tmp / "hub", sections=sections)
    try:
        yield hub
    finally:
        assert hub.stop() == 0, hub.log()[-3000:]


@pytest.fixture
async def device(
    logs_hub: RunningHub, tmp_path: Path, docker: aiodocker.Docker
) -> AsyncIterator[str]:
    hub = logs_hub
    token = await hub.create_token(tags={"site": "berlin"})
    agent = hub_agent(tmp_path / "agent", hub.url, hub.ca_path, token, hub=FAST)
    async with running(docker, agent):
        dev = str(await until(lambda: device_of(agent), what="enrollment"))
        await hub.set_target(dev, RELEASE)
        await _until_converged(hub, dev)
        yield dev


async def _until_converged(hub: RunningHub, dev: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        status, body = await hub.api("GET", f"/api/v1/devices/{dev}")
        if status == 200 and body.get("state") == "converged":
            return
        assert time.monotonic() < deadline, f"device {dev} did not converge: {body}"
        await _pause()


async def _pause() -> None:
    await asyncio.sleep(0.3)


def _stamps(text: str) -> list[float]:
    """Return the time stamps of the shown lines (``SERVICE TS STREAM TEXT``)."""
    found = []
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[0] == "live":
            found.append(float(parts[1]))
    return found


async def _audit(hub: RunningHub, action: str) -> list[dict[str, Any]]:
    status, body = await hub.api("GET", f"/api/v1/audit?action={action}&limit=500")
    assert status == 200, body
    return list(body["audit"])


async def test_follow_shows_lines_written_after_the_page_opened(
    logs_hub: RunningHub, device: str, page: Page
) -> None:
    hub = logs_hub
    await sign_in(page, hub, hub.admin_token, f"/ui/devices/{device}")
    await page.select_option("#log-service", "live")
    await page.fill("#log-tail", "0")
    await page.fill("#log-follow", "8")
    await page.click("[data-testid=ask-logs]")
    await expect(page.locator("[data-testid=log-state]")).to_contain_text("following")
    opened = time.time()
    await page.evaluate("window.__marker = 1")  # gone if the page reloads
    lines = page.locator("[data-testid=log-lines]")
    await expect(lines).to_contain_text("live ", timeout=30_000)
    deadline = time.monotonic() + 30
    while not [s for s in _stamps(await lines.inner_text()) if s > opened + 1]:
        assert time.monotonic() < deadline, await lines.inner_text()
        await _pause()
    assert await page.evaluate("window.__marker") == 1  # refreshed in place, not reloaded
    await shot(page, "logs")
    action_id = page.url.rsplit("/", 1)[1]
    status, api = await hub.api("GET", f"/api/v1/actions/{action_id}")
    assert status == 200 and api["kind"] == "logs" and api["device_id"] == device, api
    assert api["args"]["follow"] == 8 and api["created_by"] == "admin"
    created = [e for e in await _audit(hub, "action.create") if e["detail"].get("id") == action_id]
    assert len(created) == 1 and created[0]["actor"] == "admin", created
    await expect(page.locator("[data-testid=log-state]")).to_contain_text(
        "succeeded", timeout=30_000
    )


async def test_the_dashboards_log_bounds_refuse_and_count(
    logs_hub: RunningHub, device: str, page: Page
) -> None:
    hub = logs_hub
    await sign_in(page, hub, hub.admin_token, f"/ui/devices/{device}")
    await page.fill("#log-follow", str(FOLLOW_MAX_S + 1))
    await page.eval_on_selector("#log-follow", "el => el.removeAttribute('max')")
    async with page.expect_response(lambda r: r.request.method == "POST") as got:
        await page.click("[data-testid=ask-logs]")
    assert (await got.value).status == 422
    await expect(page.locator("[data-testid=error]")).to_contain_text("log_follow_max_s")
    await goto(page, hub.url + f"/ui/devices/{device}")
    await page.fill("#log-follow", str(FOLLOW_MAX_S))
    await page.click("[data-testid=ask-logs]")  # the one follow the bound allows
    await expect(page.locator("[data-testid=log-state]")).to_contain_text("following")
    await goto(page, hub.url + f"/ui/devices/{device}")
    await page.fill("#log-follow", "5")
    async with page.expect_response(lambda r: r.request.method == "POST") as got:
        await page.click("[data-testid=ask-logs]")
    assert (await got.value).status == 409
    await expect(page.locator("[data-testid=error]")).to_contain_text("max_log_follows")
    _, health = await hub.request("GET", "/healthz")
    assert health["dashboard"]["log_follows"]["refused"] >= 1, health
    await goto(page, hub.url + f"/ui/devices/{device}")
    await page.fill("#log-follow", "0")  # a plain tail is not a follow: not bounded by it
    await page.click("[data-testid=ask-logs]")
    await expect(page.locator("[data-testid=log-state]")).to_contain_text("Request act-")


async def test_a_viewer_gets_no_log_form_and_a_post_is_refused(
    logs_hub: RunningHub, device: str, page: Page
) -> None:
    hub = logs_hub
    viewer = await scoped_user(hub, "logs-viewer", "viewer", "site=berlin")
    await sign_in(page, hub, viewer, f"/ui/devices/{device}")
    await expect(page.locator("[data-testid=ask-logs]")).to_have_count(0)
    await expect(page.locator("[data-testid=logs]")).to_contain_text("devices:write")
    csrf = await page.get_attribute("input[name=csrf]", "value")  # the sign-out form's
    answer = await page.request.post(
        hub.url + f"/ui/devices/{device}/logs", form={"csrf": csrf or "", "tail": "5"}
    )
    assert answer.status == 403, await answer.text()
    denied = [e for e in await _audit(hub, "operator.access") if e["actor"] == "logs-viewer"]
    assert denied, "the refused POST is audited"
