"""The device's stale-manifest flag (release signing) reaches the hub and its device view."""

from __future__ import annotations

from pathlib import Path

from test_hub_sync import sync

from hub.testing import start_hub


async def test_the_stale_manifest_flag_reaches_the_hub_and_the_device_view(tmp_path: Path) -> None:
    hub = start_hub(tmp_path / "hub")
    try:
        device = await hub.enroll(await hub.create_token(), tmp_path / "dev")
        path = f"/api/v1/devices/{device.device_id}"
        _, view = await hub.api("GET", path)
        assert view["release_trust_stale"] is None  # never reported
        status = {"full": True, "state": "converged", "release_trust_stale": True}
        body = {"protocol": 3, "epoch": "e1", "entries": [], "status": status}
        answer = await sync(hub, device, body)
        assert answer[0] == 200, answer
        _, view = await hub.api("GET", path)
        assert view["release_trust_stale"] is True
        delta = {"full": False, "state": "converged"}  # a delta without it: unchanged
        assert (await sync(hub, device, {**body, "status": delta}))[0] == 200
        _, view = await hub.api("GET", path)
        assert view["release_trust_stale"] is True
        fresh = {**status, "release_trust_stale": False}
        assert (await sync(hub, device, {**body, "status": fresh}))[0] == 200
        _, view = await hub.api("GET", path)
        assert view["release_trust_stale"] is False
    finally:
        assert hub.stop() == 0, hub.log()[-3000:]
