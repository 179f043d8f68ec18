"""The audit page in a real Chromium against a real hub: search by actor and action,
paging with the API's cursor, a bad time refused naming it, and the export (JSON Lines
and a CSV download) holding exactly the records the API lists for the same filter."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from dashkit import World, goto, ok, shot, sign_in
from playwright.async_api import Page, expect


async def _api_ids(world: World, query: str) -> list[int]:
    body = await ok(world.hub, "GET", f"/api/v1/audit?{query}&limit=1000")
    return [e["id"] for e in body["audit"]]


async def _page_ids(page: Page) -> list[str]:
    return await page.locator("[data-testid=audit] tbody tr td:nth-child(1) time").evaluate_all(
        "els => els.map(e => e.getAttribute('datetime'))"
    )


async def test_audit_search_pages_and_exports_what_the_api_lists(
    world: World, page: Page, tmp_path: Path
) -> None:
    hub = world.hub
    await sign_in(page, hub, hub.admin_token, "/ui/audit")
    await page.fill("input[name=actor]", "admin")
    await page.click("[data-testid=search]")
    actors = page.locator("[data-testid=audit] tbody tr td:nth-child(2)")
    await expect(actors).to_have_count(2)  # dashboard.page_size = 2 in this world
    assert set(await actors.all_inner_texts()) == {"admin"}

    await page.fill("input[name=actor]", "")
    await page.fill("input[name=action]", "device.enr*")  # five devices enrolled
    await page.click("[data-testid=search]")
    rows = page.locator("[data-testid=audit] tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text("device.enroll")
    await shot(page, "audit")
    first = await _page_ids(page)
    await page.click("[data-testid=older]")
    await expect(rows).to_have_count(2)
    second = await _page_ids(page)
    api = await ok(hub, "GET", "/api/v1/audit?action=device.enr*&limit=4")
    assert first + second == [e["at"] for e in api["audit"]]

    query = "action=device.enroll"
    expected = await _api_ids(world, query)
    assert len(expected) == 5
    jsonl = await page.request.get(f"{hub.url}/ui/audit/export.jsonl?{query}")
    assert jsonl.status == 200 and "ndjson" in jsonl.headers["content-type"]
    lines = [json.loads(line) for line in (await jsonl.text()).splitlines()]
    assert [r["id"] for r in lines] == expected

    await goto(page, f"{hub.url}/ui/audit?{query}")
    async with page.expect_download() as download:
        await page.click("[data-testid=export-csv]")
    saved = tmp_path / "audit.csv"
    await (await download.value).save_as(saved)
    table = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert [int(r["id"]) for r in table] == expected
    assert {r["action"] for r in table} == {"device.enroll"}


async def test_a_bad_audit_time_is_refused_naming_it(world: World, page: Page) -> None:
    hub = world.hub
    await sign_in(page, hub, hub.admin_token, "/ui/audit")
    response = await goto(page, f"{hub.url}/ui/audit?since=yesterday-ish")
    assert response is not None and response.status == 400
    await expect(page.locator("[data-testid=error]")).to_contain_text("since")
