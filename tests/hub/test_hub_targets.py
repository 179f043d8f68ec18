"""Targets: set by an operator, signed, delivered by sync reply and by long-poll."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from hubdocs import release_doc

from edge_agent.errors import TargetRejected
from edge_agent.protocol import SignedTarget, SyncResponse
from edge_agent.signing import load_public_key, verify_target
from hub.testing import DeviceIdentity, RunningHub


async def test_target_comes_back_in_sync_and_verifies(hub: RunningHub, device: DeviceIdentity):
    ctx = device.ssl_context()
    revision = await hub.set_target(
        device.device_id,
        release_doc("7"),
        overrides={"web": {"MODE": "fast"}},
        apply_deadline_s=30,
        min_ready_s=7,
        expires_in_s=3600,
    )
    assert revision == 1
    status, body = await hub.request(
        "POST", "/v1/sync", json_body={"known_target_revision": 0}, ssl_context=ctx
    )
    assert status == 200
    resp = SyncResponse.model_validate(body)
    assert resp.target is not None
    pinned = load_public_key(device.signing_public_key_pem)
    target = verify_target(
        resp.target, pinned, device_id=device.device_id, applied_revision=0, now=datetime.now(UTC)
    )
    assert target.revision == 1 and target.release.ref == "app@7"
    assert target.overrides == {"web": {"MODE": "fast"}}
    assert target.apply_deadline_s == 30 and target.min_ready_s == 7
    assert target.expires_at is not None

    # Known revision: nothing to send.
    status, body = await hub.request(
        "POST", "/v1/sync", json_body={"known_target_revision": 1}, ssl_context=ctx
    )
    assert body["target"] is None

    # The agent's own checks refuse it for another device, as a replay, and once expired.
    with pytest.raises(TargetRejected):
        verify_target(
            resp.target, pinned, device_id="dev-other", applied_revision=0, now=datetime.now(UTC)
        )
    with pytest.raises(TargetRejected):
        verify_target(
            resp.target,
            pinned,
            device_id=device.device_id,
            applied_revision=1,
            now=datetime.now(UTC),
        )
    with pytest.raises(TargetRejected):
        verify_target(
            resp.target,
            pinned,
            device_id=device.device_id,
            applied_revision=0,
            now=datetime.now(UTC) + timedelta(hours=2),
        )


async def test_revisions_only_grow(hub: RunningHub, device: DeviceIdentity):
    revs = [await hub.set_target(device.device_id, release_doc(str(v))) for v in range(3)]
    assert revs == [1, 2, 3]
    status, shown = await hub.api("GET", f"/api/v1/devices/{device.device_id}")
    assert shown["target_revision"] == 3 and shown["drift"] == "drifted"
    status, _ = await hub.request(
        "POST", "/v1/sync", json_body={"applied_revision": 3}, ssl_context=device.ssl_context()
    )
    assert status == 200
    _, shown = await hub.api("GET", f"/api/v1/devices/{device.device_id}")
    assert shown["applied_revision"] == 3 and shown["drift"] == "in_sync"
    _status, body = await hub.api("GET", f"/api/v1/devices/{device.device_id}/target")
    assert body["revision"] == 3 and body["target"]["release"]["version"] == "2"


async def test_long_poll_returns_within_a_second_of_the_operator_call(
    hub: RunningHub, device: DeviceIdentity
):
    ctx = device.ssl_context()

    async def poll() -> tuple[int, object, float]:
        status, body = await hub.request(
            "GET", "/v1/target?after=0&wait=5", ssl_context=ctx, timeout_s=10
        )
        return status, body, time.monotonic()

    held = await hub.long_polls()
    waiter = asyncio.create_task(poll())
    await hub.wait_long_polls(held + 1)
    assert not waiter.done()
    set_at = time.monotonic()
    await hub.set_target(device.device_id, release_doc())
    status, body, got_at = await waiter
    assert status == 200
    assert got_at - set_at < 1.0
    signed = SignedTarget.model_validate(body)
    target = verify_target(
        signed,
        load_public_key(device.signing_public_key_pem),
        device_id=device.device_id,
        applied_revision=0,
        now=datetime.now(UTC),
    )
    assert target.revision == 1


async def test_long_poll_answers_at_once_when_newer_exists(hub: RunningHub, device: DeviceIdentity):
    await hub.set_target(device.device_id, release_doc())
    started = time.monotonic()
    status, _ = await hub.request(
        "GET", "/v1/target?after=0&wait=5", ssl_context=device.ssl_context()
    )
    assert status == 200 and time.monotonic() - started < 1.0


async def test_long_poll_times_out_with_204(hub: RunningHub, device: DeviceIdentity):
    await hub.set_target(device.device_id, release_doc())
    started = time.monotonic()
    status, body = await hub.request(
        "GET", "/v1/target?after=1&wait=0.5", ssl_context=device.ssl_context()
    )
    elapsed = time.monotonic() - started
    assert status == 204 and body is None
    assert 0.35 < elapsed < 2.0  # granted 0.5 s shortened by up to long_poll_jitter (0.25)


async def test_long_poll_wait_is_capped(hub: RunningHub, device: DeviceIdentity):
    started = time.monotonic()  # the session hub caps waits at 2 s (jittered: 1.5 to 2)
    status, _ = await hub.request(
        "GET", "/v1/target?after=0&wait=3600", ssl_context=device.ssl_context(), timeout_s=15
    )
    assert status == 204 and 1.4 < time.monotonic() - started < 4


async def test_long_poll_refused_when_disabled_while_waiting(
    hub: RunningHub, device: DeviceIdentity
):
    held = await hub.long_polls()
    waiter = asyncio.create_task(
        hub.request("GET", "/v1/target?after=0&wait=5", ssl_context=device.ssl_context())
    )
    await hub.wait_long_polls(held + 1)
    await hub.api("POST", f"/api/v1/devices/{device.device_id}/disable")
    status, body = await asyncio.wait_for(waiter, 2)
    assert status == 403 and "disabled" in body["message"]


async def test_bad_long_poll_parameters(hub: RunningHub, device: DeviceIdentity):
    status, body = await hub.request("GET", "/v1/target?after=-1", ssl_context=device.ssl_context())
    assert status == 400 and body["fields"][0]["field"] == "after"
    status, body = await hub.request(
        "GET", "/v1/target?wait=soon", ssl_context=device.ssl_context()
    )
    assert status == 400 and body["fields"][0]["field"] == "wait"
