"""POST /v1/sync against a real hub: stored once, acked by position, bounded, gzip, status."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from typing import Any

from edge_agent.protocol import SyncResponse
from hub.testing import DeviceIdentity, RunningHub


def entries(*seqs: int, kind: str = "event", size: int = 0) -> list[dict[str, Any]]:
    """Return outbox entries with the given seqs."""
    now = datetime.now(UTC).isoformat()
    return [
        {"seq": s, "kind": kind, "created_at": now, "payload": {"n": s, "pad": "x" * size}}
        for s in seqs
    ]


async def sync(
    hub: RunningHub, device: DeviceIdentity, body: dict[str, Any], *, gz: bool = True
) -> tuple[int, Any]:
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if gz:
        raw = gzip.compress(raw)
        headers["Content-Encoding"] = "gzip"
    return await hub.request(
        "POST", "/v1/sync", data=raw, headers=headers, ssl_context=device.ssl_context()
    )


async def stored(hub: RunningHub, device_id: str) -> list[int]:
    status, body = await hub.api("GET", f"/api/v1/devices/{device_id}/events?limit=1000")
    assert status == 200
    return [e["seq"] for e in body["events"]]


async def test_batch_sent_twice_is_stored_once(hub: RunningHub, device: DeviceIdentity):
    batch = {"entries": entries(1, 2, 3)}
    first = await sync(hub, device, batch)
    again = await sync(hub, device, batch)
    assert first[0] == again[0] == 200
    assert SyncResponse.model_validate(first[1]).acked_seq == 3
    assert SyncResponse.model_validate(again[1]).acked_seq == 3
    assert await stored(hub, device.device_id) == [1, 2, 3]


async def test_ack_advances_over_gaps_and_never_goes_back(hub: RunningHub, device: DeviceIdentity):
    status, body = await sync(hub, device, {"entries": entries(1, 2, 5, 9)})  # 3,4,6-8 dropped
    assert status == 200 and body["acked_seq"] == 9
    status, body = await sync(hub, device, {"entries": entries(2, 5)})  # a late retry
    assert body["acked_seq"] == 9
    status, body = await sync(hub, device, {"entries": []})
    assert body["acked_seq"] == 9
    status, body = await sync(hub, device, {"entries": entries(10, 12)}, gz=False)
    assert status == 200 and body["acked_seq"] == 12
    assert await stored(hub, device.device_id) == [1, 2, 5, 9, 10, 12]
    status, shown = await hub.api("GET", f"/api/v1/devices/{device.device_id}")
    assert shown["acked_seq"] == 12


async def test_payload_round_trips(hub: RunningHub, device: DeviceIdentity):
    batch = entries(1, kind="audit")
    batch[0]["payload"] = {"actor": "tech", "nested": {"a": [1, 2]}, "text": "ünïcode"}
    assert (await sync(hub, device, {"entries": batch}))[0] == 200
    _status, body = await hub.api("GET", f"/api/v1/devices/{device.device_id}/events")
    (event,) = body["events"]
    assert event["kind"] == "audit" and event["payload"] == batch[0]["payload"]


async def test_out_of_order_batch_is_refused_and_stores_nothing(
    hub: RunningHub, device: DeviceIdentity
):
    status, body = await sync(hub, device, {"entries": entries(1, 3, 2)})
    assert status == 422 and body["fields"][0]["field"] == "entries"
    assert await stored(hub, device.device_id) == []


async def test_invalid_entry_names_the_field(hub: RunningHub, device: DeviceIdentity):
    bad = entries(1)
    bad[0]["kind"] = "gossip"
    status, body = await sync(hub, device, {"entries": bad})
    assert status == 422
    assert body["fields"][0]["field"] == "entries.0.kind"
    status, body = await sync(hub, device, {"entries": [], "surprise": 1})
    assert status == 422 and body["fields"][0]["field"] == "surprise"


async def test_oversize_bodies_get_413(hub: RunningHub, device: DeviceIdentity):
    # Over max_body_bytes (256 KiB) on the wire: incompressible-ish payload, sent raw.
    big = {"entries": entries(*range(1, 41), size=8000)}
    status, body = await sync(hub, device, big, gz=False)
    assert status == 413, body
    assert body["error"] == "payload_too_large" and "max_body_bytes" in body["message"]
    # Small on the wire, over max_decompressed_bytes (1 MiB) once gunzipped.
    bomb = {"entries": entries(*range(1, 201), size=8000)}
    status, body = await sync(hub, device, bomb)
    assert status == 413 and "max_decompressed_bytes" in body["message"]
    # Over max_entries_per_batch (500).
    status, body = await sync(hub, device, {"entries": entries(*range(1, 502))})
    assert status == 413 and "max_entries_per_batch" in body["message"]
    assert await stored(hub, device.device_id) == []
    # The split halves go through.
    status, body = await sync(hub, device, {"entries": entries(*range(1, 251))})
    assert status == 200 and body["acked_seq"] == 250


async def test_bad_gzip_and_unknown_encoding(hub: RunningHub, device: DeviceIdentity):
    ctx = device.ssl_context()
    status, body = await hub.request(
        "POST", "/v1/sync", data=b"not gzip", headers={"Content-Encoding": "gzip"}, ssl_context=ctx
    )
    assert status == 400 and "gzip" in body["message"]
    status, body = await hub.request(
        "POST", "/v1/sync", data=b"{}", headers={"Content-Encoding": "br"}, ssl_context=ctx
    )
    assert status == 415


async def test_status_full_then_delta_merges(hub: RunningHub, device: DeviceIdentity):
    status, body = await sync(hub, device, {"status": {"full": False, "state": "idle"}})
    assert body["want_full_status"] is True  # a delta is not a baseline
    full = {
        "full": True,
        "agent_version": "1.2.3",
        "release": "app@1",
        "state": "converged",
        "applied_revision": 0,
        "services": [{"name": "web", "state": "running", "health": "healthy", "restarts": 2}],
        "counters": {"dropped_logs": 0},
    }
    status, body = await sync(hub, device, {"status": full})
    assert status == 200 and body["want_full_status"] is False
    delta = {"full": False, "state": "converging", "counters": {"dropped_logs": 7}}
    status, body = await sync(hub, device, {"status": delta})
    assert body["want_full_status"] is False
    status, shown = await hub.api("GET", f"/api/v1/devices/{device.device_id}")
    assert shown["agent_version"] == "1.2.3"
    assert shown["state"] == "converging"
    assert shown["release"] == "app@1"  # unchanged by the delta
    assert shown["services"][0]["restarts"] == 2
    assert shown["counters"] == {"dropped_logs": 7}
    assert shown["connectivity"] == "online"
    assert shown["drift"] == "no_target"


async def test_protocol_2_entries_imply_seq_and_created_at(hub: RunningHub, device: DeviceIdentity):
    t1, t2 = "2026-01-01T00:00:00.000001+00:00", "2026-01-02T00:00:00+00:00"
    batch = [
        {"seq": 3, "kind": "log", "created_at": t1, "payload": {"n": 3}},
        {"kind": "log", "payload": {"n": 4}},  # seq 4, created_at t1
        {"seq": 7, "kind": "event", "payload": {"n": 7}},  # a gap; created_at t1
        {"kind": "event", "created_at": t2, "payload": {"n": 8}},  # seq 8
    ]
    status, body = await sync(hub, device, {"protocol": 2, "entries": batch})
    assert status == 200 and body["acked_seq"] == 8
    _status, shown = await hub.api("GET", f"/api/v1/devices/{device.device_id}/events")
    got = [(e["seq"], e["kind"], e["created_at"], e["payload"]["n"]) for e in shown["events"]]
    day2 = datetime.fromisoformat(t2).isoformat()
    at1 = datetime.fromisoformat(t1).isoformat()
    assert got == [
        (3, "log", at1, 3),
        (4, "log", at1, 4),
        (7, "event", at1, 7),
        (8, "event", day2, 8),
    ]


async def test_protocol_versions_and_implied_fields_are_checked(
    hub: RunningHub, device: DeviceIdentity
):
    # Protocol 1 carries every field: an entry without seq is refused, naming it.
    short = [*entries(1), {"kind": "event", "payload": {}}]
    status, body = await sync(hub, device, {"protocol": 1, "entries": short})
    assert status == 422 and {f["field"] for f in body["fields"]} == {
        "entries.1.seq",
        "entries.1.created_at",
    }
    # Protocol 2: the first entry has nothing to follow.
    status, body = await sync(hub, device, {"protocol": 2, "entries": short[1:]})
    assert status == 422 and body["fields"][0]["field"] == "entries.0.seq"
    status, body = await sync(hub, device, {"protocol": 99, "entries": []})
    assert status == 400 and body["fields"][0]["field"] == "protocol"
    status, body = await sync(hub, device, {"protocol": 1, "entries": entries(1, 2)})
    assert status == 200 and body["acked_seq"] == 2
    assert await stored(hub, device.device_id) == [1, 2]


async def test_device_reported_revision_cannot_break_set_target(
    hub: RunningHub, device: DeviceIdentity
):
    """Issue 7 item 8: a device reporting revision 2^63-1 once made every set-target a 500."""
    top = 2**63 - 1
    body = {"entries": [], "applied_revision": top, "status": {"applied_revision": top}}
    assert (await sync(hub, device, body))[0] == 200
    first = await hub.set_target(
        device.device_id,
        {
            "name": "app",
            "version": "1",
            "services": [{"name": "web", "image": "127.0.0.1:5000/busybox:1"}],
        },
    )
    second = await hub.set_target(
        device.device_id,
        {
            "name": "app",
            "version": "2",
            "services": [{"name": "web", "image": "127.0.0.1:5000/busybox:1"}],
        },
    )
    assert (first, second) == (1, 2)  # the hub's own sequence, not the device's number


async def test_target_needing_a_feature_the_agent_lacks_is_refused(
    hub: RunningHub, device: DeviceIdentity
):
    """Issue 7 item 1: the hub never sets a target the device's agent cannot understand."""
    release = {
        "name": "app",
        "version": "1",
        "services": [
            {"name": "db", "image": "127.0.0.1:5000/busybox:1"},
            {"name": "web", "image": "127.0.0.1:5000/busybox:1", "depends_on": {"db": {}}},
        ],
    }
    # An agent that never reported features (protocol 2) understands the baseline.
    assert await hub.set_target(device.device_id, release) == 1
    body = {"protocol": 3, "epoch": "e1", "features": ["healthcheck"], "entries": []}
    assert (await sync(hub, device, body))[0] == 200
    path = f"/api/v1/devices/{device.device_id}/target"
    status, refused = await hub.api("POST", path, {"release": release})
    assert status == 409 and "depends_on" in refused["message"]
    assert refused["fields"] == [{"field": "release", "message": "needs feature depends_on"}]
    plain = {**release, "services": release["services"][:1]}
    assert await hub.set_target(device.device_id, plain) == 2
    _, audit = await hub.api("GET", "/api/v1/audit?limit=1000")
    rejected = [a for a in audit["audit"] if a["action"] == "target.set" and a["outcome"] != "ok"]
    assert rejected and "depends_on" in rejected[-1]["detail"]["reason"]


async def test_target_is_held_from_an_agent_that_lost_a_feature(
    hub: RunningHub, device: DeviceIdentity
):
    """Issue 7 item 1: a target set for a capable agent is not delivered to a downgraded one."""
    release = {
        "name": "app",
        "version": "1",
        "services": [
            {"name": "web", "image": "127.0.0.1:5000/busybox:1", "healthcheck": {"test": ["NONE"]}}
        ],
    }
    assert await hub.set_target(device.device_id, release) == 1
    downgraded = {"protocol": 3, "epoch": "e1", "features": ["depends_on"], "entries": []}
    status, body = await sync(hub, device, downgraded)
    assert status == 200 and body["target"] is None
    ctx = device.ssl_context()
    for query in ("after=0&wait=0.2&features=depends_on", "after=0&wait=0.2"):
        status, _ = await hub.request("GET", f"/v1/target?{query}", ssl_context=ctx)
        assert status == 204, query
    status, _ = await hub.request(
        "GET", "/v1/target?after=0&wait=0.2&features=healthcheck", ssl_context=ctx
    )
    assert status == 200
    status, body = await sync(hub, device, {**downgraded, "features": ["healthcheck"]})
    assert status == 200 and body["target"] is not None


async def test_store_epochs_never_collide_and_a_returning_epoch_skips_what_it_sent(
    hub: RunningHub, device: DeviceIdentity
):
    """Issue 7 item 7: each store generation gets its own seqs on the hub."""

    async def send(epoch: str, *seqs: int) -> int:
        body = {"protocol": 3, "epoch": epoch, "entries": entries(*seqs)}
        status, answer = await sync(hub, device, body)
        assert status == 200, answer
        return int(answer["acked_seq"])

    assert await send("a", 1, 2, 3) == 3
    assert await send("b", 1, 2) == 2  # a wiped store: fewer seqs, none a duplicate
    assert await send("a", 3, 4, 5) == 5  # back again: 3 was delivered already
    _status, body = await hub.api("GET", f"/api/v1/devices/{device.device_id}/events")
    got = [(e["seq"], e["payload"]["n"]) for e in body["events"]]
    assert got == [(1, 1), (2, 2), (3, 3), (4, 1), (5, 2), (6, 4), (7, 5)]
    assert await send("b", 2, 3) == 3  # b resumes above its own position
    assert (await stored(hub, device.device_id))[-1] == 8
