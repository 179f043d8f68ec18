"""The hub's side of technician tokens: issue (shown once), list, revoke, bounds, audit,
and the sync answer that carries revocations and tags only to agents that read them."""

from __future__ import annotations

import json
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hubproc import HubProcess
from synckit import enroll_device

from edge_agent.protocol import AGENT_FEATURES, PROTOCOL_VERSION
from edge_agent.techtoken import check_claims, verify_signature
from hub.edgectl import main as edgectl


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    proc = HubProcess(
        tmp_path_factory.mktemp("hub") / "data",
        EDGE_HUB_TECHNICIANS_MAX_ACTIVE="4",
        EDGE_HUB_TECHNICIANS_MAX_EXPIRES_S="86400",
    ).start()
    yield proc
    proc.stop()


def refused(hub: HubProcess, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    with pytest.raises(urllib.error.HTTPError) as err:
        hub._call("POST", "/api/v1/technicians", body)
    return err.value.code, json.loads(err.value.read())


def audit(hub: HubProcess) -> list[dict[str, Any]]:
    return list(hub._call("GET", "/api/v1/audit?limit=1000", None)["audit"])


async def test_issue_list_revoke_are_audited_and_the_token_is_shown_once(
    hub: HubProcess, tmp_path: Path
) -> None:
    identity = await enroll_device(hub, tmp_path / "d")
    body = {"name": "alice", "role": "operate", "scope": "site=berlin", "expires_in_s": 3600}
    issued = hub._call("POST", "/api/v1/technicians", body)
    claims = verify_signature(issued["token"], identity.signing_public_key())
    assert (claims.name, claims.role, claims.scope_text) == ("alice", "operate", "site=berlin")
    check_claims(
        claims, now=time.time(), skew_s=0, tags={"site": "berlin"}, revoked=set(), write=True
    )
    listed = hub._call("GET", "/api/v1/technicians", None)["technicians"]
    assert [t["id"] for t in listed] == [claims.id]
    assert "token" not in listed[0] and issued["token"] not in json.dumps(audit(hub))
    revoked = hub._call("POST", f"/api/v1/technicians/{claims.id}/revoke", {})
    assert revoked["state"] == "revoked"
    actions = {(a["action"], a["target"], a["outcome"]) for a in audit(hub)}
    assert ("technician.issue", f"technician:{claims.id}", "ok") in actions
    assert ("technician.revoke", f"technician:{claims.id}", "ok") in actions


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"scope": "site=="}, "scope"),
        ({"scope": ""}, "scope"),
        ({"role": "admin"}, "role"),
        ({"name": "no spaces"}, "name"),
        ({"expires_in_s": 86401}, "expires_in_s"),  # technicians.max_expires_s
        ({"expires_in_s": 0}, "expires_in_s"),
    ],
)
def test_bad_issue_requests_name_the_field(
    hub: HubProcess, change: dict[str, Any], field: str
) -> None:
    body = {"name": "bob", "role": "read", "scope": "site=berlin", **change}
    code, err = refused(hub, body)
    assert code == 422, err
    assert field in json.dumps(err["fields"]) or field in err["message"], err


def test_unexpired_tokens_are_bounded(hub: HubProcess) -> None:
    """technicians.max_active (4 here): the hub refuses a token over it, audited."""
    held = len(hub._call("GET", "/api/v1/technicians", None)["technicians"])
    body = {"name": "carol", "role": "read", "scope": "site", "expires_in_s": 600}
    for _ in range(4 - held):
        hub._call("POST", "/api/v1/technicians", body)
    code, err = refused(hub, body)
    assert code == 409 and "technicians.max_active" in err["message"], err
    assert any(a["action"] == "technician.issue" and a["outcome"] == "rejected" for a in audit(hub))


def test_revoking_an_unknown_token_is_404_and_a_bad_id_400(hub: HubProcess) -> None:
    for token_id, status in (("tt-000000000000", 404), ("nope", 400)):
        with pytest.raises(urllib.error.HTTPError) as err:
            hub._call("POST", f"/api/v1/technicians/{token_id}/revoke", {})
        assert err.value.code == status


async def _sync(hub: HubProcess, identity: Any, features: list[str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "entries": []}
    if features is not None:
        body["features"] = features
    conn = aiohttp.TCPConnector(ssl=identity.ssl_context())
    async with (
        aiohttp.ClientSession(connector=conn) as http,
        http.post(f"{hub.url}/v1/sync", json=body) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def test_sync_answer_carries_technicians_only_to_agents_that_read_it(
    hub: HubProcess, tmp_path: Path
) -> None:
    identity = await enroll_device(hub, tmp_path / "d")
    hub._call("PATCH", f"/api/v1/devices/{identity.device_id}/tags", {"set": {"site": "rome"}})
    older = sorted(AGENT_FEATURES - {"technicians"})
    for features in (None, older):
        assert "technicians" not in await _sync(hub, identity, features)
    answer = await _sync(hub, identity, sorted(AGENT_FEATURES))
    assert answer["technicians"]["tags"] == {"site": "rome"}
    revoked = {r["id"] for r in answer["technicians"]["revoked"]}
    listed = hub._call("GET", "/api/v1/technicians", None)["technicians"]
    assert revoked == {t["id"] for t in listed if t["state"] == "revoked"} != set()


def test_edgectl_technician_issue_prints_the_token_alone(
    hub: HubProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = (hub.data_dir / "admin.token").read_text().strip()
    common = ["--hub", hub.url, "--token", admin, "--ca", str(hub.ca_path)]
    for t in hub._call("GET", "/api/v1/technicians", None)["technicians"]:
        if t["state"] == "active":
            edgectl([*common, "technician", "revoke", t["id"]])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        edgectl([*common, "technician", "issue", "dora", "--role", "read", "--scope", "site"])
    out = capsys.readouterr()
    assert exit_.value.code == 1 and "technicians.max_active" in out.err  # revoked still count
