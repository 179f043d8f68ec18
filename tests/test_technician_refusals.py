"""Refused technician tokens on the local API: each audited up to a bound per minute,
the rest counted and summed in one record (a client cannot drive the disk)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from edge_agent.api import REFUSALS_KEY, create_api
from edge_agent.config import ApiConfig
from edge_agent.store import Store


@dataclass
class _Agent:
    store: Store


async def test_refusal_audit_is_bounded_per_minute_and_counted(tmp_path: Path) -> None:
    store = await Store(tmp_path / "agent.db").open()
    try:
        app = create_api(_Agent(store), ApiConfig(refusal_audit_per_minute=2), lan=True)  # type: ignore[arg-type]
        now = [0.0]
        app[REFUSALS_KEY].clock = lambda: now[0]
        async with TestClient(TestServer(app)) as client:
            auth = {"Authorization": "Bearer eft1.forged.token"}
            for _ in range(5):
                resp = await client.get("/v1/status", headers=auth)
                assert resp.status == 401
                assert (await resp.json())["error"] == "not_enrolled"
            now[0] = 61.0  # the next minute: the 3 not recorded one by one are summed
            assert (await client.get("/v1/status", headers=auth)).status == 401
        rows = [r for r in await store.audit_log(100) if r["action"] == "api.refused"]
        assert len(rows) == 4, rows
        summed = [json.loads(r["detail"]) for r in rows]
        assert {"not_recorded_one_by_one": 3} in summed
        assert (await store.counters())["api_technician_refusals"] == 6
    finally:
        await store.close()
