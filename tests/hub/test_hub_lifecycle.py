"""Hub processes of their own: SIGTERM, restart on the same data, kill -9 after an ack."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from hubdocs import release_doc
from test_hub_sync import entries, stored, sync

from hub.testing import start_hub


async def test_sigterm_with_open_long_poll_exits_cleanly_and_fast(tmp_path: Path):
    hub = start_hub(tmp_path / "hub")
    try:
        device = await hub.enroll(await hub.create_token(), tmp_path / "d")
        poll = asyncio.create_task(
            hub.request("GET", "/v1/target?after=0&wait=30", ssl_context=device.ssl_context())
        )
        await hub.wait_long_polls(1)
        started = time.monotonic()
        status = await asyncio.to_thread(hub.stop)
        assert status == 0, hub.log()
        assert time.monotonic() - started < 3.0
        code, _ = await asyncio.wait_for(poll, 5)
        assert code == 204  # woken by the shutdown, not left hanging
        assert "stopped" in hub.log()
    finally:
        hub.kill()


async def test_restart_keeps_keys_devices_and_acked_events(tmp_path: Path):
    hub = start_hub(tmp_path / "hub")
    try:
        fingerprint = (await hub.request("GET", "/v1/ca"))[1]
        device = await hub.enroll(await hub.create_token(), tmp_path / "d")
        await hub.set_target(device.device_id, release_doc())
        status, body = await sync(hub, device, {"entries": entries(1, 2, 3)})
        assert body["acked_seq"] == 3
        hub.kill()  # kill -9 right after the ack: what was acked must be there

        hub = start_hub(tmp_path / "hub", port=hub.port)
        assert (await hub.request("GET", "/v1/ca"))[1] == fingerprint
        assert await stored(hub, device.device_id) == [1, 2, 3]
        status, body = await sync(
            hub, device, {"entries": entries(3, 4), "known_target_revision": 0}
        )
        assert status == 200 and body["acked_seq"] == 4 and body["target"] is not None
        assert await hub.set_target(device.device_id, release_doc("2")) == 2
    finally:
        hub.kill()


async def test_many_devices_syncing_at_once_are_each_stored_exactly(tmp_path: Path):
    hub = start_hub(tmp_path / "hub")
    try:
        token = await hub.create_token(uses=20)
        devices = await asyncio.gather(*(hub.enroll(token, tmp_path / f"d{i}") for i in range(20)))

        async def run(device, start: int) -> None:  # three overlapping batches per device
            for lo in (start, start + 5, start):
                status, _ = await sync(hub, device, {"entries": entries(*range(lo, lo + 10))})
                assert status == 200

        await asyncio.gather(*(run(d, 1) for d in devices))
        for d in devices:
            assert await stored(hub, d.device_id) == list(range(1, 16))
    finally:
        assert hub.stop() == 0
