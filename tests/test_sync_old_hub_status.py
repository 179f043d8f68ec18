"""An agent reporting ``window_opens_at`` to a hub older than the field keeps syncing.

The older hub is the real hub behind our own client boundary: requests whose status
carries the field are refused exactly as a hub without it answers (422, extra input).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hubproc import HubProcess
from synckit import enroll_device, open_device

from edge_agent.errors import HubRefused
from edge_agent.protocol import StatusSnapshot

OLD_HUB_422 = (
    "POST /v1/sync: hub answered 422: "
    '{"error": "invalid_request", "fields": [{"field": "status.window_opens_at", '
    '"message": "Extra inputs are not permitted", "type": "extra_forbidden"}], '
    '"message": "invalid SyncRequest: status.window_opens_at: Extra inputs are not permitted"}'
)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    proc = HubProcess(tmp_path_factory.mktemp("hub") / "data").start()
    yield proc
    proc.stop()


async def test_hub_older_than_window_opens_at_gets_status_without_it(
    hub: HubProcess, tmp_path: Path
) -> None:
    state: dict[str, Any] = {
        "rollout_state": "waiting_window",
        "opens": datetime(2026, 12, 2, tzinfo=UTC),
    }

    async def status() -> StatusSnapshot:
        return StatusSnapshot(
            state="converged",
            rollout_state=state["rollout_state"],
            window_opens_at=state["opens"],
        )

    await enroll_device(hub, tmp_path / "dev")
    dev = await open_device(tmp_path / "dev", status=status)
    real = dev.syncer.client.sync
    sent: list[dict[str, object] | None] = []

    async def old_hub(body_gz: bytes):  # type: ignore[no-untyped-def]
        snap = json.loads(gzip.decompress(body_gz)).get("status")
        sent.append(snap)
        if snap is not None and "window_opens_at" in snap:
            raise HubRefused(OLD_HUB_422, status=422)
        resp = await real(body_gz)
        return resp.model_copy(update={"body_formats": None})  # an older hub never sends it

    dev.syncer.client.sync = old_hub  # type: ignore[method-assign]
    try:
        seqs = await dev.store.append_many("event", [{"n": i} for i in range(5)])
        result = await dev.syncer.sync_once()
        assert result.drained and result.acked_seq == seqs[-1]
        assert "window_opens_at" in (sent[0] or {})
        assert all("window_opens_at" not in s for s in sent[1:] if s is not None)
        assert hub.device(dev.identity.device_id)["rollout_state"] == "waiting_window"
        # Later reports leave it out from the start: no refused request.
        state["opens"] = datetime(2026, 12, 3, tzinfo=UTC)
        state["rollout_state"] = "applying"
        before = len(sent)
        assert (await dev.syncer.sync_once()).drained
        assert all(s is None or "window_opens_at" not in s for s in sent[before:])
        assert hub.device(dev.identity.device_id)["rollout_state"] == "applying"
    finally:
        await dev.close()
