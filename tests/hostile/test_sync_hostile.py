"""POST /v1/sync under hostile input from an enrolled device (items 15, 18, 19 of issue 7).

A real hub process on loopback; every test sends a bounded number of requests. Each
hostile body must get a small 4xx quickly, change nothing, and never stall the hub:
``/healthz`` is measured while four senders push the worst bodies.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.testing import DeviceIdentity, RunningHub, start_hub

INT64_MAX = 2**63 - 1
NOW = "2026-01-01T00:00:00+00:00"
SMALL_ANSWER = 16 * 1024  # a refusal is a message and a capped list of fields
MAX_DECOMPRESSED = 4 * 1024 * 1024
FAST_S = 2.0  # generous: two shared cores; the issue measured 7.5 s


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """One hub with 4 MiB decompressed bodies (16 MiB by default), 5,000 entries a batch."""
    limits = {"max_decompressed_bytes": MAX_DECOMPRESSED}
    running = start_hub(tmp_path_factory.mktemp("hostile-hub"), sections={"limits": limits})
    yield running
    assert running.stop() == 0, running.log()[-3000:]  # worker processes end with it


@pytest.fixture
async def device(hub: RunningHub, tmp_path: Path) -> DeviceIdentity:
    return await hub.enroll(await hub.create_token(), tmp_path / "device")


def gz(doc: bytes) -> bytes:
    return gzip.compress(doc, 6, mtime=0)


def empty_entries_body(n: int = MAX_DECOMPRESSED // 3 - 20) -> bytes:
    """Millions of ``{}`` entries: each one fails validation four times (the 97 MB answer)."""
    return b'{"protocol":1,"entries":[' + b",".join([b"{}"] * n) + b"]}"


def many_entries_body(n: int = 100_000) -> bytes:
    """Valid-looking entries, 20 times the batch bound (protocol 2: seq and time implied)."""
    first = f'{{"seq":1,"created_at":"{NOW}","kind":"event","payload":{{}}}}'
    rest = ',{"kind":"event","payload":{}}' * (n - 1)
    return f'{{"protocol":2,"entries":[{first}{rest}]}}'.encode()


def dense_payload_body(n: int = 1_500_000) -> bytes:
    """One invalid entry (unknown kind) whose payload holds millions of tiny values."""
    values = ",".join(["0"] * n)
    entry = f'{{"seq":1,"created_at":"{NOW}","kind":"nope","payload":{{"v":[{values}]}}}}'
    return f'{{"protocol":2,"entries":[{entry}]}}'.encode()


HOSTILE = {
    "empty_entries": empty_entries_body,
    "many_entries": many_entries_body,
    "dense_payload": dense_payload_body,
}


async def post_sync(
    session: aiohttp.ClientSession, url: str, body: bytes, *, gzipped: bool = True
) -> tuple[int, bytes, float]:
    headers = {"Content-Type": "application/json"}
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    started = time.perf_counter()
    async with session.post(url + "/v1/sync", data=body, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, raw, time.perf_counter() - started


def device_session(device: DeviceIdentity) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=device.ssl_context()),
        timeout=aiohttp.ClientTimeout(total=60),
    )


async def stored_seqs(hub: RunningHub, device_id: str) -> list[int]:
    status, body = await hub.api("GET", f"/api/v1/devices/{device_id}/events?limit=1000")
    assert status == 200
    return [e["seq"] for e in body["events"]]


async def sync_refusals(hub: RunningHub, device_id: str) -> list[dict[str, Any]]:
    status, body = await hub.api("GET", "/api/v1/audit?limit=1000")
    assert status == 200
    return [
        a
        for a in body["audit"]
        if a["action"] == "device.sync" and a["target"] == device_id and a["outcome"] != "ok"
    ]


# ---- item 15: a hostile body is refused small and fast ---------------------------------


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_sync_body_gets_small_4xx_fast(
    hub: RunningHub, device: DeviceIdentity, name: str
) -> None:
    body = gz(HOSTILE[name]())
    async with device_session(device) as session:
        status, raw, took = await post_sync(session, hub.url, body)
    assert 400 <= status < 500, raw[:300]
    assert len(raw) < SMALL_ANSWER, f"{len(raw)} bytes of answer"
    assert took < FAST_S, f"{took:.2f}s"
    assert await stored_seqs(hub, device.device_id) == []


async def test_invalid_entries_error_list_is_capped(hub: RunningHub, device: DeviceIdentity):
    body = json.dumps({"protocol": 1, "entries": [{}] * 3000}).encode()
    async with device_session(device) as session:
        status, raw, _ = await post_sync(session, hub.url, gz(body))
    doc = json.loads(raw)
    assert status == 422
    assert len(doc["fields"]) <= 21
    assert "more" in doc["fields"][-1]["message"]


async def test_disabled_device_is_refused_before_its_body_is_read(
    hub: RunningHub, device: DeviceIdentity
):
    status, _ = await hub.api("POST", f"/api/v1/devices/{device.device_id}/disable", {})
    assert status == 200
    body = gz(empty_entries_body())
    async with device_session(device) as session:
        status, raw, took = await post_sync(session, hub.url, body)
    assert status == 403 and len(raw) < 1024
    assert took < 0.5, f"{took:.2f}s"


async def test_healthz_stays_fast_while_four_devices_send_hostile_bodies(
    hub: RunningHub, tmp_path: Path
) -> None:
    devices = [await hub.enroll(await hub.create_token(), tmp_path / f"d{i}") for i in range(4)]
    bodies = [gz(HOSTILE[name]()) for name in sorted(HOSTILE)]
    rounds = 3
    statuses: list[int] = []

    async def sender(dev: DeviceIdentity) -> None:
        async with device_session(dev) as session:
            for _ in range(rounds):
                for body in bodies:
                    status, _, _ = await post_sync(session, hub.url, body)
                    statuses.append(status)

    latencies: list[float] = []
    done = asyncio.Event()

    async def prober() -> None:
        connector = aiohttp.TCPConnector(ssl=hub.ssl_context(), limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            while not done.is_set():
                started = time.perf_counter()
                async with session.get(hub.url + "/healthz") as resp:
                    await resp.read()
                    assert resp.status == 200
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)

    probe = asyncio.create_task(prober())
    await asyncio.sleep(0.3)  # the probe's connection is up (TLS handshake not measured)
    latencies.clear()
    await asyncio.sleep(1.0)  # the same probe with no hostile load: this machine's baseline
    quiet = max(latencies, default=0.0)
    latencies.clear()
    await asyncio.gather(*(sender(d) for d in devices))
    done.set()
    await probe
    assert len(statuses) == 4 * rounds * len(bodies)
    assert all(400 <= s < 500 or s == 503 for s in statuses), statuses
    assert sum(400 <= s < 500 for s in statuses) >= len(statuses) // 2
    assert len(latencies) >= 10
    # A body decoded on the event loop stalls every request for its whole decode (seconds
    # for the largest): healthz must stay within 100 ms, or within 4x what it took with no
    # hostile load when the machine itself is that slow.
    worst, bound = max(latencies), max(0.1, 4 * quiet)
    assert worst < bound, (
        f"healthz took up to {worst * 1000:.0f} ms under hostile load "
        f"({quiet * 1000:.0f} ms without)"
    )


# ---- item 18: numbers and times out of range are a 4xx naming the field, audited ----------


def entry(**over: Any) -> dict[str, Any]:
    return {"seq": 1, "kind": "event", "created_at": NOW, "payload": {}, **over}


OUT_OF_RANGE = {
    "seq": ({"entries": [entry(seq=2**63)]}, "entries.0.seq"),
    "applied_revision": ({"entries": [], "applied_revision": 2**63}, "applied_revision"),
    "known_target_revision": (
        {"entries": [], "known_target_revision": 2**63},
        "known_target_revision",
    ),
    "status_applied_revision": (
        {"entries": [], "status": {"applied_revision": 2**63}},
        "status.applied_revision",
    ),
    "status_counter": (
        {"entries": [], "status": {"counters": {"x": 2**64}}},
        "status.counters.x",
    ),
    "created_at": (
        {"entries": [entry(created_at="9999-12-31T23:59:59-23:59")]},
        "entries.0.created_at",
    ),
    "created_at_compact": (
        {"protocol": 2, "entries": [entry(created_at="9999-12-31T23:59:59-23:59")]},
        "entries.0.created_at",
    ),
}


@pytest.mark.parametrize("case", sorted(OUT_OF_RANGE))
async def test_sync_number_out_of_range_is_4xx_naming_the_field(
    hub: RunningHub, device: DeviceIdentity, case: str
) -> None:
    doc, field = OUT_OF_RANGE[case]
    async with device_session(device) as session:
        status, raw, _ = await post_sync(session, hub.url, gz(json.dumps(doc).encode()))
    assert status == 422, raw[:300]
    assert field in [f["field"] for f in json.loads(raw)["fields"]], raw[:300]
    assert await stored_seqs(hub, device.device_id) == []
    _, shown = await hub.api("GET", f"/api/v1/devices/{device.device_id}")
    assert shown["applied_revision"] == 0
    refusals = await sync_refusals(hub, device.device_id)
    assert len(refusals) == 1 and field in json.dumps(refusals[0]["detail"])


# ---- item 19: non-JSON numbers are refused at ingest --------------------------------------


@pytest.mark.parametrize("literal", ["1e999", "-1e999", "NaN", "Infinity", "-Infinity"])
async def test_non_finite_number_in_payload_is_refused(
    hub: RunningHub, device: DeviceIdentity, literal: str
) -> None:
    raw_body = (
        f'{{"protocol":2,"entries":[{{"seq":1,"created_at":"{NOW}","kind":"event",'
        f'"payload":{{"ok":1.5,"x":{literal}}}}}]}}'
    ).encode()
    async with device_session(device) as session:
        status, raw, _ = await post_sync(session, hub.url, gz(raw_body))
    assert 400 <= status < 500, raw[:300]
    assert "entries.0.payload.x" in raw.decode(), raw[:300]
    assert await stored_seqs(hub, device.device_id) == []
    assert len(await sync_refusals(hub, device.device_id)) == 1


async def test_non_finite_number_in_status_is_refused(hub: RunningHub, device: DeviceIdentity):
    raw_body = b'{"entries":[],"status":{"full":true,"counters":{"a":1},"last_error":null},'
    raw_body += b'"applied_revision":1e999}'
    async with device_session(device) as session:
        status, raw, _ = await post_sync(session, hub.url, gz(raw_body))
    assert 400 <= status < 500, raw[:300]
    assert "applied_revision" in raw.decode()


async def test_long_poll_after_beyond_64_bits_is_400(hub: RunningHub, device: DeviceIdentity):
    url = hub.url + f"/v1/target?after={2**64}&wait=0"
    async with device_session(device) as session, session.get(url) as resp:
        body = await resp.json()
    assert resp.status == 400 and body["fields"][0]["field"] == "after"
