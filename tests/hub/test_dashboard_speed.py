"""The fleet listing at dashboard speed: unchanged devices are not parsed or viewed again.

Part 1 listed and parsed the whole fleet and built every device's API view on each page
request (170-275 ms at 5,000 devices). The store now reuses the record of a row unchanged
since its previous listing, and the dashboard the view of an unchanged record, with the
time-dependent connectivity computed for each request.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hub.dashboard.view_cache import ViewCache
from hub.store import AuditRecord, EnrollmentTokenRecord, NewDevice
from hub.store.sqlite import SqliteStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def _store(tmp_path: Path, devices: int) -> SqliteStore:
    store = SqliteStore(tmp_path / "hub.db")
    await store.open()
    token = EnrollmentTokenRecord("et_1", "h", 50, 50, NOW + timedelta(hours=1), {}, NOW, "a")
    await store.create_enrollment_token(token, AuditRecord("a", "token.create", "et_1", "ok", NOW))
    for i in range(devices):
        device = NewDevice(f"dev-{i}", "h", "1", f"s{i}", "sha256:x", NOW + timedelta(days=1))
        await store.enroll_device("et_1", "h", device, NOW)
    return store


async def test_listing_devices_twice_reparsed_every_unchanged_row(tmp_path: Path) -> None:
    store = await _store(tmp_path, 3)
    try:
        first = await store.list_devices()
        await store.set_device_disabled(
            "dev-1", True, AuditRecord("a", "device.disable", "dev-1", "ok", NOW)
        )
        second = await store.list_devices()
        assert second[0] is first[0] and second[2] is first[2]  # unchanged: reused
        assert second[1] is not first[1] and second[1].disabled  # written: read again
        assert [d.id for d in second] == ["dev-0", "dev-1", "dev-2"]
    finally:
        await store.close()


def _hub(now: datetime) -> Any:
    fleet = SimpleNamespace(online_after_s=60, stale_after_s=600)
    return SimpleNamespace(config=SimpleNamespace(fleet=fleet), now=lambda: now)


async def test_dashboard_rebuilt_every_device_view_per_request(tmp_path: Path) -> None:
    store = await _store(tmp_path, 3)
    try:
        cache = ViewCache()
        records = await store.list_devices()
        first = cache.views(_hub(NOW), records, NOW)
        assert [v["connectivity"] for v in first] == ["online"] * 3
        later = NOW + timedelta(seconds=120)  # the same records, two minutes on
        second = cache.views(_hub(later), await store.list_devices(), later)
        assert [v["connectivity"] for v in second] == ["offline"] * 3  # computed per request
        assert cache.built == 3 and cache.reused == 3  # but each view built once
        await store.set_device_disabled(
            "dev-0", True, AuditRecord("a", "device.disable", "dev-0", "ok", NOW)
        )
        third = cache.views(_hub(later), await store.list_devices(), later)
        assert third[0]["disabled"] and cache.built == 4  # a written device: viewed again
        cache.views(_hub(later), (await store.list_devices())[:1], later)
        assert len(cache) == 1  # bounded by the fleet: devices not listed are forgotten
    finally:
        await store.close()
