"""The sync pump against a real hub: what a launch waits for before the pump moves on."""

from __future__ import annotations

from pathlib import Path

from hubproc import HubProcess
from synckit import enroll_device, open_device

from edge_agent.sync import SyncLimits


async def test_a_batch_is_compressed_by_its_flight_not_before_the_pump_can_settle(
    tmp_path: Path,
) -> None:
    """_launch gzipped each batch (8 ms a 5,000-line batch) before returning, so the pump
    settled the previous answer (the store's ack) only after it: now the flight's own
    task compresses it on a thread while the pump goes on."""
    hub = HubProcess(tmp_path / "hub").start()
    try:
        await enroll_device(hub, tmp_path / "dev")
        dev = await open_device(tmp_path / "dev", limits=SyncLimits(request_timeout_s=30))
        lines = [
            {"service": "web", "stream": "stdout", "line": f"line {i} " + "x" * 80}
            for i in range(2000)
        ]
        await dev.store.append_many("log", lines)
        await dev.syncer.gate.load()
        flight = await dev.syncer._launch(0, first=True, alone=False)
        assert flight is not None and flight.entries == 2000
        assert flight.wire_bytes == 0, "compressed before the launch returned"
        resp = await flight.task
        assert resp.acked_seq == flight.last_seq
        assert 0 < flight.wire_bytes < flight.raw_bytes / 3
        result = await dev.syncer.sync_once()  # the pump settles it and drains the rest
        left = (await dev.store.outbox_stats()).get("log", {"entries": 0})
        assert result.drained and left["entries"] == 0
        await dev.close()
    finally:
        hub.stop()
