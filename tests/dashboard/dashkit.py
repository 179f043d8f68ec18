"""Helpers of the dashboard tests: the world they run in, signing in, screenshots.

A real Chromium (Debian's package at /usr/bin/chromium; nothing is downloaded) driven by
Playwright, against a real hub with SIMULATED devices.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, Response
from synckit import close_simulated, enroll_simulated

from hub.testing import RunningHub

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# Where the tests save their screenshots: docs/images when EDGEFLEET_SCREENSHOTS=docs (to
# refresh docs/dashboard.md's pictures), else a scratch directory, so a test run leaves the
# checkout unchanged.
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
IMAGES = (
    DOCS_IMAGES
    if os.environ.get("EDGEFLEET_SCREENSHOTS") == "docs"
    else Path(tempfile.gettempdir()) / "edgefleet-screenshots"
)
RELEASE = {
    "name": "app",
    "version": "1",
    "services": [{"name": "web", "image": "127.0.0.1:5000/busybox:1"}],
}


@dataclass
class World:
    """The dashboard hub: berlin and paris devices, a berlin viewer, a berlin group."""

    hub: RunningHub
    berlin: list[str]
    paris: list[str]
    viewer_token: str


async def ok(hub: RunningHub, method: str, path: str, body: Any = None) -> Any:
    """Call the API as admin; fail unless it answers 200/201."""
    status, answer = await hub.api(method, path, body)
    assert status in (200, 201), f"{method} {path}: {status} {answer}"
    return answer


async def scoped_user(hub: RunningHub, name: str, role: str, scope: str) -> str:
    """Create a user with ``role`` on ``scope``; return its API token."""
    await ok(hub, "POST", "/api/v1/users", {"name": name})
    await ok(hub, "POST", "/api/v1/teams", {"name": f"t-{name}"})
    await ok(hub, "PUT", f"/api/v1/teams/t-{name}/members/{name}")
    await ok(hub, "POST", f"/api/v1/teams/t-{name}/grants", {"role": role, "scope": scope})
    return str((await ok(hub, "POST", f"/api/v1/users/{name}/tokens", {}))["token"])


async def setup_world(hub: RunningHub, tmp: Path) -> World:
    berlin = await enroll_simulated(hub, 3, tmp / "berlin", {"site": "berlin"})
    paris = await enroll_simulated(hub, 2, tmp / "paris", {"site": "paris"})
    try:
        for d in berlin + paris:
            await d.sync()
        await hub.set_target(berlin[0].device_id, RELEASE)
        await berlin[0].sync()  # takes the target: in sync
        await hub.set_target(paris[0].device_id, RELEASE)  # never takes it: drifted
        await ok(hub, "POST", "/api/v1/groups", {"name": "berlin", "selector": "site=berlin"})
        viewer = await scoped_user(hub, "berlin-viewer", "viewer", "site=berlin")
    finally:
        await close_simulated(berlin + paris)
    return World(hub, [d.device_id for d in berlin], [d.device_id for d in paris], viewer)


# Chromium aborts a navigation with ERR_NETWORK_CHANGED when the host's interfaces change
# (Docker makes and removes bridges while other tests run): such a navigation is retried.
RETRIES = 5


def _network_changed(exc: Exception) -> bool:
    # Chromium restarts a navigation itself when it sees the network change (the test
    # machine's namespaces and Docker networks come and go): "interrupted by another
    # navigation" to the same address is that restart, seen once in CI.
    text = str(exc)
    return (
        "ERR_NETWORK_CHANGED" in text
        or "chrome-error:" in text
        or "is interrupted by another navigation" in text
    )


async def goto(page: Page, url: str) -> Response | None:
    """Navigate to ``url``, retrying a navigation the browser aborted on a network change."""
    for attempt in range(RETRIES):
        try:
            return await page.goto(url)
        except PlaywrightError as exc:
            if not _network_changed(exc) or attempt == RETRIES - 1:
                raise
    return None


async def sign_in(page: Page, hub: RunningHub, token: str, path: str = "/ui/") -> None:
    """Sign in through the form (the page first answers with it: no session yet)."""
    for _ in range(RETRIES):
        await goto(page, hub.url + path)
        await page.fill("#token", token)
        await page.click("button[type=submit]")
        try:
            await page.wait_for_selector("[data-testid=who]", timeout=10_000)
            return
        except PlaywrightError:
            if not page.url.startswith("chrome-error:"):
                raise
    raise AssertionError("could not sign in: every navigation was aborted")


async def shot(page: Page, name: str) -> None:
    """Save a full-page screenshot for docs/dashboard.md."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(IMAGES / f"dashboard-{name}.png"), full_page=True)
