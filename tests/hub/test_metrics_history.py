"""Device metrics on the hub: a bounded history per device, and an older hub refused nothing.

A real hub process; the device side is the agent's own store, syncer and metrics
reporter in this process (``synckit``). The older hub is the real hub behind our own
client boundary: it answers without ``entry_kinds`` and refuses a batch carrying a
``metrics`` entry exactly as a hub without the kind does (422, the entry's kind).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hubproc import HubProcess
from synckit import enroll_device, open_device

from edge_agent.errors import HubRefused
from edge_agent.metrics import (
    HUB_ENTRY_KINDS_META,
    MetricsReporter,
    MetricsSampler,
    accepts_metrics,
)
from edge_agent.protocol import SyncResponse

OLD_HUB_422 = (
    "POST /v1/sync: hub answered 422: "
    '{"error": "invalid_request", "fields": [{"field": "entries.0.kind", '
    "\"message\": \"Input should be 'status', 'event', 'audit', 'log' or 'dropped'\", "
    '"type": "literal_error"}], "message": "invalid SyncRequest: entries.0.kind: Input '
    "should be 'status', 'event', 'audit', 'log' or 'dropped'\"}"
)
NOT_JSON_400 = (
    "POST /v1/sync: hub answered 400: "
    '{"error": "invalid_request", "message": "request body is not JSON: trailing characters"}'
)
HISTORY = 3
MAX_SAMPLE_BYTES = 1024


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    proc = HubProcess(
        tmp_path_factory.mktemp("hub") / "data",
        EDGE_HUB_METRICS_HISTORY_PER_DEVICE=str(HISTORY),
        EDGE_HUB_METRICS_MAX_SAMPLE_BYTES=str(MAX_SAMPLE_BYTES),
    ).start()
    yield proc
    proc.stop()


def reporter_for(dev: Any, tmp_path: Path) -> MetricsReporter:
    async def hub_accepts() -> bool:
        return accepts_metrics(await dev.store.get_meta(HUB_ENTRY_KINDS_META))

    sampler = MetricsSampler(data_dir=tmp_path, docker_root=str(tmp_path), services=list)
    return MetricsReporter(
        sampler,
        interval_s=60,
        append=lambda s: dev.store.append("metrics", s),
        hub_accepts=hub_accepts,
    )


async def test_metrics_history_is_bounded_per_device_and_trimming_is_counted(
    hub: HubProcess, tmp_path: Path
) -> None:
    await enroll_device(hub, tmp_path / "dev")
    dev = await open_device(tmp_path / "dev")
    try:
        reporter = reporter_for(dev, tmp_path)
        await reporter.report_once()  # before any sync: the hub's kinds are unknown
        assert (reporter.queued, reporter.held_back) == (0, 1)
        assert (await dev.syncer.sync_once()).drained
        assert accepts_metrics(await dev.store.get_meta(HUB_ENTRY_KINDS_META))
        for _ in range(HISTORY + 2):
            await reporter.report_once()
        await dev.store.append("metrics", {"pad": "x" * MAX_SAMPLE_BYTES})  # over the bound
        await dev.store.append("event", {"n": 1})
        assert (await dev.syncer.sync_once()).drained
        device_id = dev.identity.device_id
        history = hub._get(f"/api/v1/devices/{device_id}/metrics")
        assert (history["held"], history["trimmed"], history["oversize"]) == (HISTORY, 2, 1)
        seqs = [s["seq"] for s in history["samples"]]
        assert len(seqs) == HISTORY and seqs == sorted(seqs)
        assert all(s["sample"]["memory"]["total_bytes"] > 0 for s in history["samples"])
        # kept apart from the events listing, which the metrics would flood
        assert [k for _, k, _ in hub.events(device_id)] == ["event"]
        # the device view shows the newest sample
        assert hub.device(device_id)["metrics"]["seq"] == seqs[-1]
        newest = hub._get(f"/api/v1/devices/{device_id}/metrics?limit=1")["samples"]
        assert [s["seq"] for s in newest] == seqs[-1:]
        future = hub._get(f"/api/v1/devices/{device_id}/metrics?since=2999-01-01T00:00:00Z")
        assert future["samples"] == [] and future["held"] == HISTORY
    finally:
        await dev.close()


@pytest.mark.parametrize(
    ("query", "field"), [("since=yesterday", "since"), ("limit=0", "limit"), ("limit=x", "limit")]
)
def test_metrics_listing_names_a_bad_parameter(hub: HubProcess, query: str, field: str) -> None:
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as err:
        hub._get(f"/api/v1/devices/nosuch/metrics?{query}")
    body = json.loads(err.value.read())
    assert err.value.code == 400 and body["fields"][0]["field"] == field, body


async def test_older_hub_without_metrics_refuses_nothing_and_samples_stay_local(
    hub: HubProcess, tmp_path: Path
) -> None:
    await enroll_device(hub, tmp_path / "dev")
    dev = await open_device(tmp_path / "dev")
    real = dev.syncer.client.sync
    refused: list[str] = []

    async def old_hub(body_gz: bytes) -> SyncResponse:
        entries = json.loads(gzip.decompress(body_gz)).get("entries") or []
        if any(e.get("kind") == "metrics" for e in entries):
            refused.append("metrics")
            raise HubRefused(OLD_HUB_422, status=422)
        resp = await real(body_gz)
        return resp.model_copy(
            update={"entry_kinds": None, "body_formats": None}
        )  # an older hub never sends it

    dev.syncer.client.sync = old_hub  # type: ignore[method-assign]
    try:
        reporter = reporter_for(dev, tmp_path)
        for _ in range(3):
            await reporter.report_once()
            await dev.store.append("event", {"n": 1})
            result = await dev.syncer.sync_once()
            assert result.drained and result.deleted >= 1
        assert refused == []
        assert (reporter.queued, reporter.held_back) == (0, 3)
        assert reporter.latest is not None and reporter.latest["memory"]["total_bytes"] > 0
        assert [k for _, k, _ in hub.events(dev.identity.device_id)] == ["event"] * 3
    finally:
        await dev.close()


async def test_hub_downgraded_with_metrics_queued_drops_them_and_the_outbox_moves(
    hub: HubProcess, tmp_path: Path
) -> None:
    await enroll_device(hub, tmp_path / "dev")
    dev = await open_device(tmp_path / "dev")
    try:
        reporter = reporter_for(dev, tmp_path)
        assert (await dev.syncer.sync_once()).drained  # the current hub lists metrics
        await reporter.report_once()
        await reporter.report_once()
        event_seq = await dev.store.append("event", {"n": 1})
        assert reporter.queued == 2
        real = dev.syncer.client.sync
        refused: list[int] = []

        async def downgraded(body_gz: bytes, lines: bool = False) -> SyncResponse:
            if lines:  # an older hub reads the lines format as JSON and refuses it
                raise HubRefused(NOT_JSON_400, status=400)
            entries = json.loads(gzip.decompress(body_gz)).get("entries") or []
            if any(e.get("kind") == "metrics" for e in entries):
                refused.append(len(entries))
                raise HubRefused(OLD_HUB_422, status=422)
            resp = await real(body_gz)
            return resp.model_copy(update={"entry_kinds": None, "body_formats": None})

        dev.syncer.client.sync = downgraded  # type: ignore[method-assign]
        result = await dev.syncer.sync_once()
        assert result.drained and result.acked_seq == event_seq
        assert refused == [3]  # once: then the two samples went as 'dropped' markers
        assert not accepts_metrics(await dev.store.get_meta(HUB_ENTRY_KINDS_META))
        kinds = [k for _, k, _ in hub.events(dev.identity.device_id)]
        assert kinds == ["dropped", "dropped", "event"]
        assert (await dev.store.counters())["dropped_metrics"] == 2
        await reporter.report_once()
        assert (reporter.queued, reporter.held_back) == (2, 1)
    finally:
        await dev.close()
