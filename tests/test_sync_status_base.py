"""A status delta is built on what the hub acknowledged, never on a report whose answer
was lost.

The defect (found by the rollout-window scenario in test_rollout_agents.py): a sync
carrying status S1 reached the hub, which stored it, but the answer was lost (the link
was cut). The agent's base stayed S0; its next delta against S0 left out every field that
had gone back to S0's value (``applying_revision`` cleared, ``rollout_state`` good
again), so the hub kept S1's (``waiting_window``, applying) until some later change: a
device that applied a rollout's release offline stayed "applying" on the hub.
Real hub process, the real syncer, our fault proxy between them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from hubproc import HubProcess
from synckit import enroll_device, open_device

from edge_agent.errors import SyncError
from edge_agent.protocol import StatusSnapshot

BEFORE = StatusSnapshot(release="app@1", running_revision=1, rollout_state="good")
WAITING = StatusSnapshot(
    release="app@1", running_revision=1, applying_revision=2, rollout_state="waiting_window"
)
APPLIED = StatusSnapshot(release="app@2", running_revision=2, rollout_state="good")


async def test_status_whose_answer_was_lost_is_not_the_base_of_the_next_delta(
    tmp_path: Path,
) -> None:
    hub = await asyncio.to_thread(HubProcess(tmp_path / "hub").start)
    proxy = await FaultProxy("127.0.0.1", hub.port).start()
    reports = [BEFORE]

    async def status() -> StatusSnapshot:
        return reports[-1]

    ident = await enroll_device(hub, tmp_path / "dev")
    dev = await open_device(tmp_path / "dev", proxy.url, status=status)
    try:
        await dev.syncer.sync_once()
        reports.append(WAITING)
        proxy.set_mode("reset_response")  # the hub stores it; its answer never arrives
        with pytest.raises(SyncError):
            await dev.syncer.sync_once()
        seen = await asyncio.to_thread(hub.device, ident.device_id)
        assert seen["rollout_state"] == "waiting_window", seen

        reports.append(APPLIED)
        proxy.set_mode("pass")
        await dev.syncer.sync_once()
        seen = await asyncio.to_thread(hub.device, ident.device_id)
        got = {k: seen[k] for k in ("release", "running_revision", "applying_revision")}
        assert got == {"release": "app@2", "running_revision": 2, "applying_revision": None}
        assert seen["rollout_state"] == "good", seen
    finally:
        await dev.close()
        await proxy.close()
        await asyncio.to_thread(hub.stop)
