"""The dashboard in a real Chromium against a real hub with SIMULATED devices: sign-in
and sign-out, the overview's counts equal to the API's, filtering and paging, the device
page updating live, CSRF and session-expiry refusals, and a scoped viewer who neither
sees nor reaches a device outside its scope."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from dashkit import RELEASE, World, goto, ok, shot, sign_in
from playwright.async_api import Page, expect
from synckit import close_simulated, enroll_simulated

from hub.config import DashboardConfig
from hub.dashboard.fleet_view import health
from hub.testing import RunningHub, start_hub


async def _api_devices(hub: RunningHub, token: str) -> list[dict[str, Any]]:
    status, body = await hub.request("GET", "/api/v1/devices", token=token)
    assert status == 200, body
    return list(body["devices"])


async def _page_count(page: Page, name: str, state: str) -> int:
    return int(await page.inner_text(f"[data-testid=count-{name}-{state}]"))


async def _audit(hub: RunningHub, action: str) -> list[dict[str, Any]]:
    status, body = await hub.api("GET", f"/api/v1/audit?action={action}&limit=500")
    assert status == 200, body
    return list(body["audit"])


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 15.0) -> None:
    """Wait until ``check()`` holds (polled), or fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await _pause()


async def _pause() -> None:
    await asyncio.sleep(0.2)


async def test_sign_in_sets_a_strict_session_cookie_and_sign_out_ends_the_session(
    world: World, page: Page
) -> None:
    hub = world.hub
    answer = await goto(page, hub.url + "/")
    assert answer is not None and answer.status == 401  # the sign-in form, via /ui/
    await shot(page, "signin")
    await sign_in(page, hub, hub.admin_token)
    assert page.url == hub.url + "/ui/"
    assert await page.inner_text("[data-testid=who]") == "admin"
    shown = await goto(page, hub.url + "/ui/")
    assert shown is not None
    headers = await shown.all_headers()
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["cache-control"] == "no-store"
    (cookie,) = await page.context.cookies()
    assert cookie["name"] == "edgefleet_session"
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert hub.admin_token not in cookie["value"]
    signed_in = [e for e in await _audit(hub, "dashboard.sign_in") if e["actor"] == "admin"]
    assert signed_in, "the sign-in was not audited"

    await page.click("text=Sign out")
    await page.wait_for_selector("#token")
    assert await page.context.cookies() == []
    # the ended session is refused even when its cookie is replayed
    status, text = await _replay(hub, cookie["value"])
    assert status == 401 and "unknown or ended dashboard session" in text


async def test_a_wrong_token_is_refused_and_audited(world: World, page: Page) -> None:
    await goto(page, world.hub.url + "/ui/login")
    await page.fill("#token", "ut_000000000000.not-a-secret")
    await page.click("button[type=submit]")
    await expect(page.locator("[data-testid=reason]")).to_contain_text("not accepted")
    assert await page.context.cookies() == []
    denied = await _audit(world.hub, "operator.access")
    assert any(e["detail"].get("route") == "POST /ui/login" for e in denied)


@pytest.mark.parametrize("who", ["admin", "berlin-viewer"])
async def test_overview_counts_equal_the_api_counts(world: World, page: Page, who: str) -> None:
    token = world.hub.admin_token if who == "admin" else world.viewer_token
    await sign_in(page, world.hub, token)
    devices = await _api_devices(world.hub, token)
    assert int(await page.inner_text("[data-testid=count-total]")) == len(devices)
    for field, of in (
        ("connectivity", lambda d: d["connectivity"]),
        ("drift", lambda d: d["drift"]),
        ("health", health),
    ):
        expected = Counter(of(d) for d in devices)
        for state in (*expected, "stale", "no_target", "unknown"):
            selector = f"[data-testid=count-{field}-{state}]"
            if await page.locator(selector).count():
                assert await _page_count(page, field, state) == expected[state], (field, state)
    assert Counter(d["drift"] for d in devices)["in_sync"] >= 1
    if who == "admin":
        assert Counter(d["drift"] for d in devices)["drifted"] >= 1
        await shot(page, "overview")
    else:
        assert len(devices) == len(world.berlin)  # the paris devices are not counted


async def test_devices_table_filters_sorts_and_pages(world: World, page: Page) -> None:
    hub = world.hub
    await sign_in(page, hub, hub.admin_token, "/ui/devices")
    total = len(world.berlin) + len(world.paris)
    await expect(page.locator("[data-testid=matched]")).to_contain_text(f"{total} devices match")
    assert await page.locator("tbody tr").count() == 2  # page_size 2
    await page.select_option("select[name=group]", "berlin")
    await page.click("text=Filter")
    await expect(page.locator("[data-testid=matched]")).to_contain_text(
        f"{len(world.berlin)} devices match; page 1 of 2"
    )
    shown = await page.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.device)")
    assert set(shown) <= set(world.berlin)
    await page.click("a[rel=next]")
    shown += await page.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.device)")
    assert sorted(shown) == sorted(world.berlin)
    await goto(page, hub.url + "/ui/devices?drift=drifted&sort=hostname&order=desc")
    drifted = await page.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.device)")
    assert drifted == [world.paris[0]]
    await goto(page, hub.url + f"/ui/devices?q={world.berlin[1]}")
    assert await page.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.device)"
    ) == [world.berlin[1]]
    await goto(page, hub.url + "/ui/devices?connectivity=nonsense")
    assert "connectivity must be one of" in await page.inner_text("[data-testid=error]")
    await goto(page, hub.url + "/ui/devices?sort=hostname")
    await shot(page, "devices")


async def test_device_page_shows_the_new_state_without_a_reload(
    world: World, page: Page, tmp_path: Path
) -> None:
    hub = world.hub
    (device,) = await enroll_simulated(hub, 1, tmp_path, {"site": "berlin", "role": "kiosk"})
    try:
        await device.sync()
        await sign_in(page, hub, hub.admin_token, f"/ui/devices/{device.device_id}")
        await expect(page.locator("[data-testid=drift]")).to_have_text("no target")
        await page.evaluate("window.__marker = 1")  # gone if the page reloads
        await hub.set_target(device.device_id, RELEASE)
        await device.sync()  # the simulated device takes the target and reports it
        await expect(page.locator("[data-testid=drift]")).to_have_text("in sync", timeout=15000)
        await expect(page.locator("[data-testid=applied]")).to_contain_text("app@1")
        assert await page.evaluate("window.__marker") == 1
        assert await page.locator("tr[data-service=web]").count() == 1
        await shot(page, "device")
    finally:
        await close_simulated([device])


async def test_a_post_without_the_sessions_csrf_token_is_refused_and_audited(
    world: World, page: Page
) -> None:
    hub = world.hub
    await sign_in(page, hub, hub.admin_token)
    await page.eval_on_selector("input[name=csrf]", "el => el.value = 'forged'")
    await page.click("text=Sign out")
    await expect(page.locator("[data-testid=error]")).to_contain_text("CSRF")
    denied = await _audit(hub, "operator.access")
    csrf = [e for e in denied if "CSRF" in e["detail"].get("reason", "")]
    assert csrf and all(e["actor"] == "admin" for e in csrf), csrf  # the session's principal
    await goto(page, hub.url + "/ui/")  # the session is still there: nothing was done
    assert await page.inner_text("[data-testid=who]") == "admin"


async def test_a_scoped_viewer_neither_sees_nor_reaches_a_device_outside_its_scope(
    world: World, page: Page
) -> None:
    hub = world.hub
    await sign_in(page, hub, world.viewer_token, "/ui/devices")
    shown = await page.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.device)")
    visible = {d["id"] for d in await _api_devices(hub, world.viewer_token)}
    assert shown and set(shown) <= visible and visible.isdisjoint(world.paris)
    paris = world.paris[0]
    await goto(page, hub.url + f"/ui/devices?q={paris}")
    assert await page.locator("tbody tr[data-device]").count() == 0
    for path in (f"/ui/devices/{paris}", f"/ui/devices/{paris}/live"):
        answer = await goto(page, hub.url + path)
        assert answer is not None and answer.status == 404, path
        assert paris not in (await page.content()).split("no device")[0]
    answer = await goto(page, hub.url + f"/ui/devices/{world.berlin[0]}")
    assert answer is not None and answer.status == 200


# ---- session expiry (a hub of its own: short idle and absolute lifetimes) ----


def _hub_with(tmp: Path, **dashboard: float) -> Iterator[RunningHub]:
    hub = start_hub(tmp / "hub", sections={"dashboard": dashboard})
    yield hub
    assert hub.stop() == 0, hub.log()[-3000:]


@pytest.fixture(scope="module")
def idle_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    yield from _hub_with(tmp_path_factory.mktemp("idle"), idle_timeout_s=2)


@pytest.fixture(scope="module")
def absolute_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    yield from _hub_with(tmp_path_factory.mktemp("absolute"), absolute_timeout_s=4)


async def _status(page: Page, url: str) -> tuple[int, str]:
    answer = await page.request.get(url)
    return answer.status, await answer.text()


async def test_an_idle_session_is_refused_after_the_idle_timeout(
    idle_hub: RunningHub, page: Page
) -> None:
    short_hub = idle_hub
    await sign_in(page, short_hub, short_hub.admin_token)
    started = time.monotonic()

    async def refused() -> bool:
        status, text = await _status(page, short_hub.url + "/ui/")
        return status == 401 and "unused for over 2 s" in text

    # Each check uses the session, so it only expires once a check comes > 2 s after the
    # previous one: look at it rarely.
    deadline = time.monotonic() + 15
    while True:
        await asyncio.sleep(2.5)
        if await refused():
            break
        assert time.monotonic() < deadline, "the idle session was never refused"
    assert time.monotonic() - started >= 2
    assert await page.context.cookies() == []  # the refusal cleared the dead cookie
    answer = await goto(page, short_hub.url + "/ui/devices")  # asked to sign in again
    assert answer is not None and answer.status == 401
    await expect(page.locator("#token")).to_be_visible()


async def test_a_used_session_is_refused_after_the_absolute_timeout(
    absolute_hub: RunningHub, page: Page
) -> None:
    hub = absolute_hub
    await sign_in(page, hub, hub.admin_token)
    (cookie,) = await page.context.cookies()
    started = time.monotonic()

    async def refused() -> bool:
        status, text = await _status(page, hub.url + "/ui/")  # keeps it from idling
        assert status in (200, 401), text
        return status == 401

    await until(refused, timeout_s=15)  # the browser drops the cookie at its max-age
    assert time.monotonic() - started >= 3.5
    # and the hub refuses the session itself when the cookie is replayed
    status, text = await _replay(hub, cookie["value"])
    assert status == 401 and "signed in over 4 s ago" in text, text


async def _replay(hub: RunningHub, session_id: str) -> tuple[int, str]:
    jar = aiohttp.CookieJar(unsafe=True)
    jar.update_cookies({"edgefleet_session": session_id})
    connector = aiohttp.TCPConnector(ssl=hub.ssl_context())
    async with (
        aiohttp.ClientSession(connector=connector, cookie_jar=jar) as client,
        client.get(hub.url + "/ui/") as answer,
    ):
        return answer.status, await answer.text()


@pytest.mark.parametrize(
    "values",
    [
        {"idle_timeout_s": 0},
        {"idle_timeout_s": 8 * 86400},
        {"absolute_timeout_s": 31 * 86400},
        {"max_sessions": 0},
        {"page_size": 501},
    ],
)
def test_dashboard_bounds_are_refused_outside_their_range(values: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(values))):
        DashboardConfig.model_validate(values)


async def test_sessions_are_bounded_by_max_sessions(tmp_path: Path) -> None:
    hub = start_hub(tmp_path / "hub", sections={"dashboard": {"max_sessions": 2}})
    try:
        connector = aiohttp.TCPConnector(ssl=hub.ssl_context())
        async with aiohttp.ClientSession(connector=connector) as client:
            statuses = []
            for _ in range(3):
                async with client.post(
                    hub.url + "/ui/login",
                    data={"token": hub.admin_token},
                    allow_redirects=False,
                ) as r:
                    statuses.append(r.status)
        assert statuses == [303, 303, 409]
    finally:
        assert hub.stop() == 0, hub.log()[-3000:]


async def test_revoking_the_token_ends_the_sessions_made_with_it(world: World, page: Page) -> None:
    hub = world.hub
    made = await ok(hub, "POST", "/api/v1/users/berlin-viewer/tokens", {})
    await sign_in(page, hub, str(made["token"]))
    await ok(hub, "POST", f"/api/v1/users/berlin-viewer/tokens/{made['id']}/revoke")
    answer = await goto(page, hub.url + "/ui/devices")
    assert answer is not None and answer.status == 401
    await expect(page.locator("[data-testid=reason]")).to_contain_text("was revoked")


async def test_pages_are_keyboard_usable_and_fit_a_phone(world: World, page: Page) -> None:
    hub = world.hub
    await page.set_viewport_size({"width": 390, "height": 844})
    await sign_in(page, hub, hub.admin_token, f"/ui/devices/{world.berlin[0]}")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Skip to content"
    await page.keyboard.press("Enter")
    assert await page.evaluate("document.activeElement.id") == "main"
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways at phone width ({width} px)"
    await shot(page, "phone")
