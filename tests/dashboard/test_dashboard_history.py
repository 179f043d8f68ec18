"""The fleet history plot, a device's connectivity strip and rate-limited sign-in, in a real
Chromium against a real hub with SIMULATED devices.

The history sampler runs every second here (``dashboard.history_interval_s``); the tests
wait on the hub's own counters (``/healthz``), never on sleeps. A device is "online" for
1.5 s after a sync here (``fleet.online_after_s``), so a silence splits its contact spans.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dashkit import ARGS, CHROMIUM, IMAGES, goto, scoped_user, shot, sign_in
from playwright.async_api import Page, async_playwright, expect
from synckit import SimulatedDevice, close_simulated, enroll_simulated

from hub.testing import RunningHub, start_hub

ONLINE_AFTER_S = 1.5


async def until(check: Callable[[], Awaitable[Any]], timeout_s: float = 20.0) -> Any:
    """Wait until ``check()`` answers something true (polled); return it."""
    deadline = time.monotonic() + timeout_s
    while not (value := await check()):
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.2)
    return value


async def _health(hub: RunningHub) -> dict[str, Any]:
    status, body = await hub.request("GET", "/healthz")
    assert status == 200, body
    return dict(body)


@pytest.fixture(scope="module")
def history_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    tmp = tmp_path_factory.mktemp("history")
    sections = {
        "dashboard": {"history_interval_s": 1, "poll_interval_s": 1},
        "fleet": {"online_after_s": ONLINE_AFTER_S},
        "limits": {"auth_failure_burst": 1_000_000},
    }
    hub = start_hub(tmp / "hub", sections=sections)
    try:
        yield hub
    finally:
        assert hub.stop() == 0, hub.log()[-3000:]


@pytest.fixture
async def devices(history_hub: RunningHub, tmp_path: Path) -> AsyncIterator[list[SimulatedDevice]]:
    found = await enroll_simulated(history_hub, 2, tmp_path / "sim", {"site": "berlin"})
    try:
        yield found
    finally:
        await close_simulated(found)


async def test_the_overview_plots_the_sampled_fleet_counts_for_scope_all_only(
    history_hub: RunningHub, devices: list[SimulatedDevice], page: Page
) -> None:
    hub = history_hub
    for d in devices:
        await d.sync()
    taken = (await _health(hub))["fleet_history"]["samples"]
    await until(lambda: _samples_above(hub, taken + 2))  # samples counting the syncs
    await sign_in(page, hub, hub.admin_token)
    plot = page.locator("[data-testid=history-plot] svg")
    await expect(plot).to_have_count(1)
    assert await plot.locator("polyline").count() >= 1  # at least two samples joined
    title = await plot.get_attribute("aria-label") or ""
    assert "online and in sync" in title and "samples" in title
    await shot(page, "history")
    viewer = await scoped_user(hub, "history-viewer", "viewer", "site=berlin")
    await page.context.clear_cookies()
    await sign_in(page, hub, viewer)
    await expect(page.locator("[data-testid=history-plot]")).to_have_count(0)
    await expect(page.locator("[data-testid=history]")).to_contain_text("all devices")


async def _samples_above(hub: RunningHub, n: int) -> bool:
    return bool((await _health(hub))["fleet_history"]["samples"] > n)


async def test_the_device_page_draws_when_the_device_was_heard_from_and_silent(
    history_hub: RunningHub, devices: list[SimulatedDevice], page: Page
) -> None:
    hub, device = history_hub, devices[0]
    await device.sync()
    await until(lambda: _connectivity_is(hub, device.device_id, "offline"))  # a silence
    await device.sync()  # heard from again: a second span
    await sign_in(page, hub, hub.admin_token, f"/ui/devices/{device.device_id}")
    for strip in ("strip-day", "strip-week"):
        heard = page.locator(f"[data-testid={strip}] svg rect.heard")
        await expect(heard).to_have_count(2)
    spans = page.locator("[data-testid=spans] li")
    await expect(spans).to_have_count(2)
    await expect(spans.first).to_contain_text("heard from")
    await page.locator("[data-testid=contact-history]").screenshot(
        path=str(IMAGES / "dashboard-connectivity.png")
    )


async def _connectivity_is(hub: RunningHub, device_id: str, state: str) -> bool:
    status, body = await hub.api("GET", f"/api/v1/devices/{device_id}")
    assert status == 200, body
    return bool(body["connectivity"] == state)


@pytest.fixture
def limited_hub(tmp_path: Path) -> Iterator[RunningHub]:
    sections = {"limits": {"auth_failure_burst": 2, "auth_failure_per_s": 0.5}}
    hub = start_hub(tmp_path / "hub", sections=sections)
    try:
        yield hub
    finally:
        assert hub.stop() == 0, hub.log()[-3000:]


async def test_repeated_bad_sign_ins_are_answered_429_with_retry_after_and_a_page(
    limited_hub: RunningHub,
) -> None:
    hub = limited_hub
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = await browser.new_context(ignore_https_errors=True)
        page = await context.new_page()
        try:
            statuses = []
            for _ in range(3):
                await goto(page, hub.url + "/ui/login")
                await page.fill("#token", "ut_nobody_wrong")
                async with page.expect_response(lambda r: r.request.method == "POST") as got:
                    await page.click("button[type=submit]")
                answer = await got.value
                statuses.append(answer.status)
            assert statuses == [401, 401, 429], statuses
            assert int(answer.headers["retry-after"]) >= 1
            await expect(page.locator("[data-testid=reason]")).to_contain_text(
                "Too many refused sign-ins"
            )
            await shot(page, "signin-limited")
        finally:
            await browser.close()
    health = await _health(hub)
    assert health["rate_limit"]["limited"] >= 1 and health["rate_limit"]["charged"] >= 2
    # The source's bucket refills (0.5/s); then /metrics counts the limited sign-in.
    metrics = await until(lambda: _metrics(hub))
    assert 'action="dashboard.sign_in",outcome="limited"' in metrics, metrics[-2000:]


async def _metrics(hub: RunningHub) -> str | None:
    status, body = await hub.api("GET", "/metrics")
    return str(body) if status == 200 else None
