"""The sync client against a real hub process: enroll, sync, ack, targets, limits, renewal."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import itertools
import json
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from hubproc import HubProcess, release_doc
from synckit import FAST, Device, enroll_device, open_device, until

from edge_agent.enroll import enroll, load_identity, renew_if_due, renewal_due
from edge_agent.errors import ConfigError, HubRefused, HubUnreachable, SyncError
from edge_agent.protocol import PROTOCOL_VERSION, ServiceReport, StatusSnapshot
from edge_agent.sync import SyncLimits, SyncResult


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    proc = HubProcess(
        tmp_path_factory.mktemp("hub") / "data",
        EDGE_HUB_LIMITS_MAX_ENTRIES_PER_BATCH="64",
        EDGE_HUB_LIMITS_MAX_DECOMPRESSED_BYTES="65536",
    ).start()
    yield proc
    proc.stop()


@pytest.fixture
async def device(hub: HubProcess, tmp_path: Path) -> AsyncIterator[Device]:
    await enroll_device(hub, tmp_path / "dev")
    dev = await open_device(tmp_path / "dev")
    yield dev
    await dev.close()


async def test_enroll_writes_private_identity(hub: HubProcess, tmp_path: Path) -> None:
    ident = await enroll_device(hub, tmp_path / "d")
    assert ident.device_id.startswith("dev-")
    assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o700
    for name in ("device.key", "device.crt", "hub-ca.pem", "hub-signing.pub", "identity.json"):
        assert stat.S_IMODE(os.stat(tmp_path / "d" / name).st_mode) == 0o600, name
    again = load_identity(tmp_path / "d")
    assert again == ident
    assert again.certificate().subject.rfc4514_string() == f"CN={ident.device_id}"


async def test_enroll_with_ca_file_and_refusals(hub: HubProcess, tmp_path: Path) -> None:
    ident = await enroll(hub.url, hub.create_token(), tmp_path / "a", ca_file=hub.ca_path)
    assert ident.device_id
    with pytest.raises(SyncError, match="does not match"):
        await enroll(hub.url, hub.create_token(), tmp_path / "b", ca_sha256="ab" * 32)
    with pytest.raises(ConfigError):
        await enroll(hub.url, "x" * 20, tmp_path / "c")
    with pytest.raises(HubRefused) as refused:
        await enroll(hub.url, "bogus-token-123", tmp_path / "d", ca_file=hub.ca_path)
    assert 400 <= refused.value.status < 500
    assert not (tmp_path / "b").exists() or not (tmp_path / "b" / "identity.json").exists()
    assert load_identity(tmp_path / "d") is None


async def test_sync_delivers_and_acks(hub: HubProcess, device: Device) -> None:
    seqs = await device.store.append_many("event", [{"n": i} for i in range(200)])
    result = await device.syncer.sync_once()
    assert result.drained
    assert result.acked_seq == seqs[-1]
    assert result.sent == 200 and result.deleted == 200
    assert await device.store.outbox_stats() == {}
    stored = hub.events(device.identity.device_id)
    assert [s for s, _, _ in stored] == seqs
    assert [p["n"] for _, _, p in stored] == list(range(200))
    assert result.wire_bytes < result.raw_bytes


async def test_batch_over_hub_limit_is_halved(hub: HubProcess, tmp_path: Path) -> None:
    await enroll_device(hub, tmp_path / "dev")
    limits = SyncLimits(batch_max_entries=500, request_timeout_s=5)
    dev = await open_device(tmp_path / "dev", limits=limits)
    try:
        await dev.store.append_many("event", [{"n": i} for i in range(300)])
        result = await dev.syncer.sync_once()  # the hub takes at most 64 per batch
        assert result.drained and result.sent == 300
        assert len(hub.events(dev.identity.device_id)) == 300
    finally:
        await dev.close()


async def test_single_entry_over_limit_is_replaced_by_marker(
    hub: HubProcess, device: Device
) -> None:
    await device.store.append("event", {"n": 0})
    big = await device.store.append("event", {"blob": os.urandom(60_000).hex()})
    await device.store.append("event", {"n": 2})
    result = await device.syncer.sync_once()
    assert result.drained
    stored = hub.events(device.identity.device_id)
    assert [k for _, k, _ in stored] == ["event", "dropped", "event"]
    assert stored[1][0] == big and stored[1][2]["reason"] == "too_large"
    assert (await device.store.counters())["sync_entry_too_large"] == 1


async def test_status_full_then_delta(hub: HubProcess, tmp_path: Path) -> None:
    snap = StatusSnapshot(
        agent_version="0.1.0",
        state="converged",
        services=[ServiceReport(name="web", state="running")],
    )

    async def status() -> StatusSnapshot:
        return snap

    await enroll_device(hub, tmp_path / "dev")
    dev = await open_device(tmp_path / "dev", status=status)
    try:
        first = await dev.syncer.sync_once()
        assert first.drained
        view = hub.device(dev.identity.device_id)
        assert view["state"] == "converged"
        delta, _ = await dev.syncer._status_delta()
        assert delta is None, "nothing changed since the acknowledged report"
        snap = snap.model_copy(update={"state": "converging"})
        delta, _ = await dev.syncer._status_delta()
        assert delta is not None and not delta.full
        assert delta.model_dump(exclude_none=True) == {"full": False, "state": "converging"}
        await dev.syncer.sync_once()
        assert hub.device(dev.identity.device_id)["state"] == "converging"
    finally:
        await dev.close()


async def test_target_in_sync_reply(hub: HubProcess, device: Device) -> None:
    hub.set_target(device.identity.device_id, release_doc("1"))
    result = await device.syncer.sync_once()
    assert len(result.targets) == 1
    assert [t.release.version for t in device.targets] == ["1"]
    again = await device.syncer.sync_once()
    assert again.targets == [], "the hub knows we have it"


async def test_long_poll_delivers_within_a_second(hub: HubProcess, device: Device) -> None:
    await device.syncer.sync_once()
    task = asyncio.create_task(device.syncer.run_long_poll())
    try:
        await asyncio.sleep(0.3)  # the poll is open on the hub
        started = time.monotonic()
        await asyncio.to_thread(hub.set_target, device.identity.device_id, release_doc("2"))

        async def arrived() -> bool:
            return bool(device.targets)

        await until(arrived, 5)
        elapsed = time.monotonic() - started
        assert [t.release.version for t in device.targets] == ["2"]
        assert elapsed < 1.0, f"target took {elapsed:.2f}s"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_interval_syncs_share_the_long_polls_connection(
    hub: HubProcess, tmp_path: Path
) -> None:
    """The interval's syncs go over the connection the long-poll frees: one TLS
    connection per device (the hub's memory per held device), not one for each loop."""
    await enroll_device(hub, tmp_path / "dev")
    proxy = await FaultProxy("127.0.0.1", hub.port).start()
    limits = dataclasses.replace(FAST, sync_interval_s=1.0, long_poll_s=30.0)
    dev = await open_device(tmp_path / "dev", proxy.url, limits=limits)
    syncer = dev.syncer
    done: list[float] = []
    sync_locked = syncer._sync_locked

    async def counted() -> SyncResult:
        result = await sync_locked()
        done.append(time.monotonic())
        return result

    syncer._sync_locked = counted  # type: ignore[method-assign]
    tasks = [asyncio.create_task(syncer.run()), asyncio.create_task(syncer.run_long_poll())]
    try:

        async def synced(n: int) -> bool:
            return len(done) >= n

        await until(lambda: synced(5), 20)
        gaps = [b - a for a, b in itertools.pairwise(done)]
        assert all(0.5 < gap < 1.6 for gap in gaps), f"syncs not on the 1 s interval: {gaps}"
        started = time.monotonic()
        await asyncio.to_thread(hub.set_target, dev.identity.device_id, release_doc("7"))

        async def arrived() -> bool:
            return bool(dev.targets)

        await until(arrived, 5)
        assert time.monotonic() - started < 1.0, "the poll is held between syncs"
        assert proxy.stats["accepted"] == 1, f"connections opened: {proxy.stats}"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await dev.close()
        await proxy.close()


async def test_renewal_swaps_certificate(hub: HubProcess, device: Device) -> None:
    ident = device.identity
    old = ident.certificate()
    assert not await renew_if_due(ident, margin=0.0)
    assert renewal_due(old, datetime.now(UTC), margin=1.0)
    assert await renew_if_due(ident, margin=1.0)
    new = ident.certificate()
    assert new.serial_number != old.serial_number
    assert not list(ident.data_dir.glob("*.new"))
    await device.syncer.client.reload_tls()
    await device.store.append("event", {"after": "renewal"})
    assert (await device.syncer.sync_once()).drained


async def test_unreachable_logged_once_and_back_once(
    hub: HubProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await FaultProxy("127.0.0.1", hub.port).start()
    await enroll_device(hub, tmp_path / "dev")
    limits = SyncLimits(
        backoff_base_s=0.01, backoff_cap_s=0.03, sync_interval_s=0.02, request_timeout_s=1
    )
    dev = await open_device(tmp_path / "dev", proxy.url, limits=limits)
    caplog.set_level(logging.INFO, logger="edge_agent.sync")
    proxy.set_mode("cut")
    task = asyncio.create_task(dev.syncer.run())
    try:

        async def failing() -> bool:
            return dev.syncer.reach.failures >= 20

        async def drained() -> bool:  # and the round that drained it has returned
            return not await dev.store.outbox_stats() and dev.syncer.reach.failures == 0

        await until(failing)
        await dev.store.append("event", {"queued": "while down"})
        proxy.set_mode("pass")
        await until(drained)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await dev.close()
        await proxy.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "edge_agent.sync"]
    down = [m for m in lines if m.startswith("hub unreachable")]
    back = [m for m in lines if m.startswith("hub is back")]
    assert len(down) == 1 and len(back) == 1, lines
    assert "HubUnreachable" not in down[0] and "127.0.0.1" in down[0]
    assert int(back[0].split("after ")[1].split()[0]) >= 20
    assert not any(r.exc_info for r in caplog.records)


async def test_errors_are_translated(tmp_path: Path, hub: HubProcess) -> None:
    await enroll_device(hub, tmp_path / "dev")
    dead = f"https://127.0.0.1:{hub.port + 1 if hub.port < 65535 else 1}"
    dev = await open_device(tmp_path / "dev", dead, limits=SyncLimits(request_timeout_s=1))
    try:
        await dev.store.append("event", {"n": 1})
        with pytest.raises(HubUnreachable):
            await dev.syncer.sync_once()
        assert (await dev.store.outbox_stats())["event"]["entries"] == 1
    finally:
        await dev.close()


async def test_disabled_device_refused(hub: HubProcess, device: Device) -> None:
    await asyncio.to_thread(hub.disable, device.identity.device_id)
    with pytest.raises(HubRefused) as exc:
        await device.syncer.sync_once()
    assert exc.value.status == 403 and not exc.value.retryable


def test_fast_limits_are_sane() -> None:
    assert FAST.backoff_cap_s >= FAST.backoff_base_s


async def test_cancel_mid_flight_propagates_and_keeps_outbox(
    hub: HubProcess, tmp_path: Path
) -> None:
    proxy = await FaultProxy("127.0.0.1", hub.port).start()
    await enroll_device(hub, tmp_path / "dev")
    dev = await open_device(tmp_path / "dev", proxy.url, limits=SyncLimits(request_timeout_s=30))
    try:
        await dev.store.append_many("event", [{"n": i} for i in range(50)])
        proxy.set_mode("blackhole")
        task = asyncio.create_task(dev.syncer.sync_once())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await dev.store.outbox_stats())["event"]["entries"] == 50
        proxy.set_mode("pass")
        assert (await dev.syncer.sync_once()).drained
        assert len(hub.events(dev.identity.device_id)) == 50
    finally:
        await dev.close()
        await proxy.close()


@pytest.mark.parametrize("new_entries", [10, 50])
async def test_wiped_store_entries_are_never_taken_as_duplicates(
    hub: HubProcess, tmp_path: Path, new_entries: int
) -> None:
    """Issue 7 item 7: a wiped store restarts its seqs in a new epoch; nothing is lost.

    Both orders: the new store hands out fewer seqs than the hub held (10 < 30), and
    more (50 > 30), which the old renumbering took for duplicates and then deleted.
    """
    await enroll_device(hub, tmp_path / "dev")
    dev = await open_device(tmp_path / "dev")
    await dev.store.append_many("event", [{"life": 1, "n": i} for i in range(30)])
    assert (await dev.syncer.sync_once()).acked_seq == 30
    await dev.close()
    (tmp_path / "dev" / "agent.db").unlink()  # identity kept, store gone
    dev = await open_device(tmp_path / "dev")
    try:
        await dev.store.append_many("event", [{"life": 2, "n": i} for i in range(new_entries)])
        result = await dev.syncer.sync_once()
        assert result.drained and result.acked_seq == new_entries
        assert await dev.store.outbox_stats() == {}
        stored = hub.events(dev.identity.device_id)
        expected = [(1, i) for i in range(30)] + [(2, i) for i in range(new_entries)]
        assert [(p["life"], p["n"]) for _, _, p in stored] == expected
        assert [s for s, _, _ in stored] == list(range(1, 31 + new_entries))
    finally:
        await dev.close()


@pytest.mark.parametrize(
    "refusal",
    [
        (
            400,
            '{"error":"invalid_request","message":'
            f'"protocol {PROTOCOL_VERSION} is not supported (hub speaks 1)"',
        ),
        (
            422,
            '{"error":"invalid_request","message":"invalid SyncRequest: entries.1.seq: Field '
            'required; entries.1.created_at: Field required"',
        ),
    ],
)
async def test_protocol_1_hub_gets_protocol_1(
    hub: HubProcess, device: Device, refusal: tuple[int, str]
) -> None:
    """A hub that speaks only protocol 1 refuses compact entries; the agent falls back."""
    real = device.syncer.client.sync
    protocols: list[int] = []

    async def old_hub(body_gz: bytes):  # type: ignore[no-untyped-def]
        protocol = json.loads(gzip.decompress(body_gz))["protocol"]
        protocols.append(protocol)
        if protocol != 1:
            status, text = refusal
            raise HubRefused(f"POST /v1/sync: hub answered {status}: {text}", status=status)
        resp = await real(body_gz)
        return resp.model_copy(update={"body_formats": None})  # an older hub never sends it

    device.syncer.client.sync = old_hub  # type: ignore[method-assign]
    seqs = await device.store.append_many("event", [{"n": i} for i in range(100)])
    result = await device.syncer.sync_once()
    assert result.drained and result.acked_seq == seqs[-1]
    assert protocols[0] == PROTOCOL_VERSION and set(protocols[1:]) == {1}
    assert device.syncer.protocol == 1
    assert [s for s, _, _ in hub.events(device.identity.device_id)] == seqs
