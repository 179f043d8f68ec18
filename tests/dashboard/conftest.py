"""Fixtures of the dashboard tests: the hub world (module) and a fresh browser page."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from dashkit import ARGS, CHROMIUM, World, setup_world
from playwright.async_api import Page, async_playwright

from hub.testing import start_hub


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("dashboard")
    sections = {
        "dashboard": {"poll_interval_s": 1, "page_size": 2},
        "limits": {"auth_failure_burst": 1_000_000},
    }
    hub = start_hub(tmp / "hub", sections=sections)
    try:
        yield asyncio.run(setup_world(hub, tmp))
    finally:
        assert hub.stop() == 0, hub.log()[-3000:]


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    """A fresh browser context (no cookies) at phone-friendly desktop size."""
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = await browser.new_context(
            ignore_https_errors=True, viewport={"width": 1100, "height": 800}
        )
        try:
            yield await context.new_page()
        finally:
            await browser.close()
