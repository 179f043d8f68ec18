"""The sync pump against a real hub: what a launch waits for before the pump moves on."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from hubproc import HubProcess
from synckit import enroll_device, open_device

from edge_agent.protocol import SyncResponse
from edge_agent.sync import SyncLimits, SyncResult


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
        flight = await dev.syncer._launch(0, deque(), first=True)
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


async def test_the_next_batch_is_ready_when_an_answer_frees_the_wire(tmp_path: Path) -> None:
    """With ``window`` requests on the wire the pump prepares ``prepare_ahead`` more batches
    (read, encoded, compressed): one is sent as soon as an answer frees a place, before that
    answer's ack and the next read; the wire never carries more than ``window``."""
    hub = HubProcess(tmp_path / "hub").start()
    try:
        await enroll_device(hub, tmp_path / "dev")
        limits = SyncLimits(batch_max_entries=500, window=1, prepare_ahead=1)
        dev = await open_device(tmp_path / "dev", limits=limits)
        lines = [{"service": "web", "stream": "stdout", "line": f"line {i}"} for i in range(2000)]
        await dev.store.append_many("log", lines)
        events: list[str] = []
        on_wire = 0
        most_on_wire = 0
        client_sync = dev.syncer.client.sync
        settle = dev.syncer._settle

        async def sync(body_gz: bytes, *, lines: bool = False) -> SyncResponse:
            nonlocal on_wire, most_on_wire
            events.append("send")
            on_wire += 1
            most_on_wire = max(most_on_wire, on_wire)
            try:
                return await client_sync(body_gz, lines=lines)
            finally:
                on_wire -= 1

        async def settled(flight: Any, resp: SyncResponse, result: SyncResult) -> None:
            events.append("settle")
            await settle(flight, resp, result)

        dev.syncer.client.sync = sync  # type: ignore[method-assign]
        dev.syncer._settle = settled  # type: ignore[method-assign]
        result = await dev.syncer.sync_once()
        assert result.drained and result.sent == 2000
        assert most_on_wire == 1, "more requests on the wire than the window"
        # batch 2 left when batch 1's answer came, before batch 1 was settled
        assert events[:3] == ["send", "send", "settle"], events
        stored = [seq for seq, _, _ in hub.events(dev.identity.device_id)]
        assert stored == list(range(1, 2001))
        await dev.close()
    finally:
        hub.stop()
