"""The hub's side of queued device actions, against a real hub process: create (audited),
list and show, bad input named, the bounds, fan-out to a group, delivery in the sync
answer and the long-poll wake-up only for agents listing ``actions``, results taken
exactly once from the outbox entries, cut over the bound, and expiry."""

from __future__ import annotations

import json
import time
import urllib.error
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hubproc import HubProcess
from synckit import enroll_device

from edge_agent.actiondoc import read_action
from edge_agent.enroll import Identity
from edge_agent.protocol import AGENT_FEATURES, PROTOCOL_VERSION, SignedAction

MAX_QUEUED = 3
MAX_RESULT = 2048


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    proc = HubProcess(
        tmp_path_factory.mktemp("hub") / "data",
        EDGE_HUB_ACTIONS_MAX_QUEUED_PER_DEVICE=str(MAX_QUEUED),
        EDGE_HUB_ACTIONS_MAX_EXPIRES_S="7200",
        EDGE_HUB_ACTIONS_MAX_RESULT_BYTES=str(MAX_RESULT),
    ).start()
    yield proc
    proc.stop()


def queue(hub: HubProcess, device: str, kind: str, **body: Any) -> dict[str, Any]:
    return dict(hub._call("POST", f"/api/v1/devices/{device}/actions", {"kind": kind, **body}))


def refused(hub: HubProcess, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(urllib.error.HTTPError) as err:
        hub._call(method, path, body)
    return err.value.code, json.loads(err.value.read())


def audit(hub: HubProcess) -> list[dict[str, Any]]:
    return list(hub._call("GET", "/api/v1/audit?limit=1000", None)["audit"])


async def sync(
    hub: HubProcess,
    identity: Identity,
    features: list[str] | None,
    entries: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "entries": entries or []}
    if features is not None:
        body["features"] = features
    conn = aiohttp.TCPConnector(ssl=identity.ssl_context())
    async with (
        aiohttp.ClientSession(connector=conn) as http,
        http.post(f"{hub.url}/v1/sync", json=body) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def long_poll(hub: HubProcess, identity: Identity, features: str) -> tuple[int, float, Any]:
    conn = aiohttp.TCPConnector(ssl=identity.ssl_context())
    started = time.monotonic()
    params = {"after": "0", "wait": "3", "features": features}
    async with (
        aiohttp.ClientSession(connector=conn) as http,
        http.get(f"{hub.url}/v1/target", params=params) as resp,
    ):
        await resp.read()
        return resp.status, time.monotonic() - started, resp.headers.get("X-Edgefleet-Actions")


def result_entry(seq: int, action_id: str, state: str, **extra: Any) -> dict[str, Any]:
    payload = {"type": "action", "id": action_id, "state": state, **extra}
    at = datetime.now(UTC).isoformat()
    return {"seq": seq, "kind": "event", "created_at": at, "payload": payload}


FEATURES = sorted(AGENT_FEATURES)


async def test_an_action_is_audited_signed_for_its_device_and_delivered_once(
    hub: HubProcess, tmp_path: Path
) -> None:
    identity = await enroll_device(hub, tmp_path / "d")
    created = queue(hub, identity.device_id, "restart", args={"service": "web"})
    assert created["state"] == "queued" and created["created_by"] == "admin"
    rows = [a for a in audit(hub) if a["action"] == "action.create"]
    assert rows[-1]["target"] == f"device:{identity.device_id}"
    assert rows[-1]["detail"]["id"] == created["id"] and rows[-1]["outcome"] == "ok"
    older = sorted(AGENT_FEATURES - {"actions"})
    for features in (None, older):  # an older agent never sees the field
        assert "actions" not in await sync(hub, identity, features)
    answer = await sync(hub, identity, FEATURES)
    [signed] = answer["actions"]
    doc = read_action(SignedAction.model_validate(signed), identity.signing_public_key())
    assert (doc.id, doc.device_id, doc.kind) == (created["id"], identity.device_id, "restart")
    assert doc.args == {"service": "web"} and doc.max_result_bytes == MAX_RESULT
    assert "actions" not in await sync(hub, identity, FEATURES)  # delivered: not again
    shown = hub._call("GET", f"/api/v1/actions/{created['id']}", None)
    assert shown["state"] == "delivered" and shown["delivered_at"]


async def test_results_are_taken_exactly_once_and_cut_over_the_bound(
    hub: HubProcess, tmp_path: Path
) -> None:
    identity = await enroll_device(hub, tmp_path / "d")
    first = queue(hub, identity.device_id, "diagnostics", args={"lines": 5})
    second = queue(hub, identity.device_id, "collect_logs")
    await sync(hub, identity, FEATURES)
    entries = [
        result_entry(1, first["id"], "received"),
        result_entry(2, first["id"], "succeeded", result={"ok": 1}),
        result_entry(3, first["id"], "failed", reason="late duplicate"),  # ignored
        result_entry(4, second["id"], "succeeded", result={"blob": "x" * (MAX_RESULT + 10)}),
    ]
    await sync(hub, identity, FEATURES, entries)
    await sync(hub, identity, FEATURES, entries)  # the batch sent twice
    one = hub._call("GET", f"/api/v1/actions/{first['id']}", None)
    assert (one["state"], one["result"], one["reason"]) == ("succeeded", {"ok": 1}, None)
    cut = hub._call("GET", f"/api/v1/actions/{second['id']}", None)
    assert cut["state"] == "succeeded" and cut["result"]["truncated"] is True
    assert cut["result"]["original_bytes"] > MAX_RESULT
    listed = hub._call("GET", f"/api/v1/actions?device={identity.device_id}&state=succeeded", None)[
        "actions"
    ]
    assert {a["id"] for a in listed} == {first["id"], second["id"]}


async def test_a_result_for_another_devices_action_changes_nothing(
    hub: HubProcess, tmp_path: Path
) -> None:
    mine = await enroll_device(hub, tmp_path / "a")
    other = await enroll_device(hub, tmp_path / "b")
    action = queue(hub, mine.device_id, "selftest")
    await sync(hub, mine, FEATURES)
    await sync(hub, other, FEATURES, [result_entry(1, action["id"], "succeeded", result={})])
    assert hub._call("GET", f"/api/v1/actions/{action['id']}", None)["state"] == "delivered"


async def test_parts_stored_out_of_order_are_read_in_order_and_none_is_skipped(
    hub: HubProcess, tmp_path: Path
) -> None:
    # An agent has two sync requests on the wire at once: the hub may store the later
    # batch (part 2 and the final result) before the earlier one (part 1).
    identity = await enroll_device(hub, tmp_path / "d")
    action = queue(hub, identity.device_id, "logs", args={"service": "web"})
    await sync(hub, identity, FEATURES)
    path = f"/api/v1/actions/{action['id']}/parts"
    done = {"ended": "end", "parts": 2, "lines": 3, "bytes": 9}
    later = [
        result_entry(3, action["id"], "part", part=2, lines=["c"]),
        result_entry(4, action["id"], "succeeded", result=done),
    ]
    await sync(hub, identity, FEATURES, later)
    page = hub._call("GET", f"{path}?after=0", None)
    assert page["action"]["state"] == "succeeded" and page["totals"]["parts"] == 1
    assert (page["parts"], page["next"], page["pending"]) == ([], 0, True)
    earlier = [
        result_entry(1, action["id"], "received"),
        result_entry(2, action["id"], "part", part=1, lines=["a", "b"]),
    ]
    await sync(hub, identity, FEATURES, earlier)
    page = hub._call("GET", f"{path}?after=0", None)
    assert [p["part"] for p in page["parts"]] == [1, 2] and page["pending"] is False
    assert [line for p in page["parts"] for line in p["lines"]] == ["a", "b", "c"]
    assert hub._call("GET", f"{path}?after=2", None)["pending"] is False


async def test_a_gap_older_than_the_configured_grace_is_read_past(tmp_path: Path) -> None:
    """actions.parts_gap_grace_s: a part still missing after it is taken as dropped by
    the device, and the parts after it are shown (here the grace is 1 ms)."""
    hub = HubProcess(tmp_path / "hub", EDGE_HUB_ACTIONS_PARTS_GAP_GRACE_S="0.001").start()
    try:
        identity = await enroll_device(hub, tmp_path / "d")
        action = queue(hub, identity.device_id, "logs", args={"service": "web"})
        await sync(hub, identity, FEATURES)
        done = {"ended": "end", "parts": 2, "lines": 2, "bytes": 4}
        await sync(
            hub,
            identity,
            FEATURES,
            [
                result_entry(1, action["id"], "part", part=2, lines=["b"]),
                result_entry(2, action["id"], "succeeded", result=done),
            ],
        )
        page = hub._call("GET", f"/api/v1/actions/{action['id']}/parts?after=0", None)
        assert [p["part"] for p in page["parts"]] == [2] and page["pending"] is False
    finally:
        hub.stop()


async def test_the_long_poll_returns_when_an_action_is_queued_only_for_agents_reading_it(
    hub: HubProcess, tmp_path: Path
) -> None:
    identity = await enroll_device(hub, tmp_path / "d")
    queue(hub, identity.device_id, "prune_images")
    status, took, header = await long_poll(hub, identity, ",".join(FEATURES))
    assert (status, header) == (204, "queued") and took < 2
    older = ",".join(sorted(AGENT_FEATURES - {"actions"}))
    status, took, header = await long_poll(hub, identity, older)
    assert status == 204 and header is None and took > 2  # waited its time out
    await sync(hub, identity, FEATURES)  # taken: the poll waits again
    status, took, header = await long_poll(hub, identity, ",".join(FEATURES))
    assert header is None and took > 2


def test_bad_action_requests_are_refused_naming_the_field(hub: HubProcess) -> None:
    device = hub._call("GET", "/api/v1/devices", None)["devices"][0]["id"]
    path = f"/api/v1/devices/{device}/actions"
    cases = [
        ({"kind": "reboot"}, 422, "kind"),
        ({"kind": "restart"}, 422, "args.service"),
        ({"kind": "restart", "args": {"service": "a", "x": 1}}, 422, "args.x"),
        ({"kind": "collect_logs", "args": {"lines": -1}}, 422, "args.lines"),
        ({"kind": "selftest", "expires_in_s": 7201}, 422, "expires_in_s"),
        ({"kind": "selftest", "expires_in_s": 0}, 422, "expires_in_s"),
        ({"kind": "selftest", "extra": 1}, 422, "extra"),
    ]
    before = len(hub._call("GET", f"/api/v1/actions?device={device}", None)["actions"])
    for body, status, field in cases:
        code, err = refused(hub, "POST", path, body)
        assert code == status and field in [f["field"] for f in err["fields"]], (body, err)
    assert len(hub._call("GET", f"/api/v1/actions?device={device}", None)["actions"]) == before
    assert refused(hub, "POST", "/api/v1/devices/dev-nope/actions", {"kind": "selftest"})[0] == 404
    assert refused(hub, "GET", "/api/v1/actions?state=done", None)[0] == 400
    assert refused(hub, "GET", "/api/v1/actions?limit=0", None)[0] == 400
    assert refused(hub, "GET", "/api/v1/actions/nope", None)[0] == 400
    assert refused(hub, "GET", "/api/v1/actions/act-0000000000000000", None)[0] == 404


async def test_unfinished_actions_per_device_are_bounded_and_the_refusal_audited(
    hub: HubProcess, tmp_path: Path
) -> None:
    identity = await enroll_device(hub, tmp_path / "d")
    for _ in range(MAX_QUEUED):
        queue(hub, identity.device_id, "selftest")
    path = f"/api/v1/devices/{identity.device_id}/actions"
    code, err = refused(hub, "POST", path, {"kind": "selftest"})
    assert code == 409 and "actions.max_queued_per_device" in err["message"]
    last = [a for a in audit(hub) if a["action"] == "action.create"][-1]
    assert last["outcome"] == "rejected" and "max_queued" in last["detail"]["reason"]
    listed = hub._call("GET", f"/api/v1/actions?device={identity.device_id}", None)["actions"]
    assert len(listed) == MAX_QUEUED


async def test_an_action_expires_undelivered(hub: HubProcess, tmp_path: Path) -> None:
    identity = await enroll_device(hub, tmp_path / "d")
    action = queue(hub, identity.device_id, "selftest", expires_in_s=1)
    deadline = time.monotonic() + 10
    while hub._call("GET", f"/api/v1/actions/{action['id']}", None)["state"] != "expired":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert "actions" not in await sync(hub, identity, FEATURES)


async def test_a_group_action_fans_out_to_its_members_now(hub: HubProcess, tmp_path: Path) -> None:
    members = [await enroll_device(hub, tmp_path / f"m{i}") for i in range(2)]
    outsider = await enroll_device(hub, tmp_path / "o")
    for m in members:
        hub._call("PATCH", f"/api/v1/devices/{m.device_id}/tags", {"set": {"site": "oslo"}})
    hub._call("POST", "/api/v1/groups", {"name": "oslo", "selector": "site=oslo"})
    body = {"kind": "collect_logs", "args": {"service": "web", "lines": 10}}
    made = hub._call("POST", "/api/v1/groups/oslo/actions", body)["actions"]
    assert sorted(a["device_id"] for a in made) == sorted(m.device_id for m in members)
    assert {a["group"] for a in made} == {"oslo"}
    rows = [a for a in audit(hub) if a["action"] == "action.create" and a["outcome"] == "ok"]
    assert {r["detail"]["id"] for r in rows} >= {a["id"] for a in made}
    assert "actions" not in await sync(hub, outsider, FEATURES)
    assert refused(hub, "POST", "/api/v1/groups/nope/actions", body)[0] == 404


async def test_edgectl_action_queues_lists_and_shows(
    hub: HubProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hub.edgectl import main as edgectl

    identity = await enroll_device(hub, tmp_path / "d")
    admin = (hub.data_dir / "admin.token").read_text().strip()
    common = ["--hub", hub.url, "--token", admin, "--ca", str(hub.ca_path)]
    edgectl([*common, "--json", "action", identity.device_id, "restart", "web", "--expires", "1h"])
    made = json.loads(capsys.readouterr().out)
    assert (made["kind"], made["args"], made["state"]) == ("restart", {"service": "web"}, "queued")
    edgectl([*common, "action", identity.device_id, "collect_logs", "lines=7"])
    listed = capsys.readouterr().out
    assert "collect_logs" in listed and "queued" in listed
    edgectl([*common, "actions", "--device", identity.device_id, "--state", "queued"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["ID", "DEVICE", "KIND", "STATE"] and len(table) == 3
    edgectl([*common, "action", "show", made["id"]])
    assert json.loads(capsys.readouterr().out)["id"] == made["id"]
    with pytest.raises(SystemExit) as exit_:
        edgectl([*common, "action", identity.device_id, "selftest", "oops"])
    assert exit_.value.code == 2 and "KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        edgectl([*common, "action", identity.device_id, "restart"])
    assert exit_.value.code == 1 and "args.service" in capsys.readouterr().err


async def test_finished_actions_are_forgotten_after_keep_finished_s(tmp_path: Path) -> None:
    proc = HubProcess(tmp_path / "hub", EDGE_HUB_ACTIONS_KEEP_FINISHED_S="1").start()
    try:
        identity = await enroll_device(proc, tmp_path / "d")
        old = queue(proc, identity.device_id, "selftest", expires_in_s=1)
        deadline = time.monotonic() + 10
        while proc._call("GET", f"/api/v1/actions/{old['id']}", None)["state"] != "expired":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        expired_at = time.monotonic()
        while True:  # each queued action is a write that forgets what is past the bound
            queue(proc, identity.device_id, "selftest")
            try:
                proc._call("GET", f"/api/v1/actions/{old['id']}", None)
            except urllib.error.HTTPError as err:
                assert err.code == 404
                break
            assert time.monotonic() < deadline + 5
            time.sleep(0.2)
        assert time.monotonic() - expired_at >= 0.5  # kept while within the bound
    finally:
        proc.stop()
