"""Targets from the hub: tampered, replayed, expired, other-device ones are refused, audited."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.errors import InvalidDocument, TargetRejected
from edge_agent.models import Release, Service, Target, parse_document
from edge_agent.protocol import (
    EnrollResponse,
    RenewResponse,
    SignedTarget,
    SyncResponse,
    unknown_fields,
)
from edge_agent.signing import sign_target
from edge_agent.store import Store
from edge_agent.target_gate import TargetGate

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def make_target(revision: int, device_id: str = "dev-1", **kw: object) -> Target:
    """Return a one-service target."""
    release = Release(name="app", version=str(revision), services=[Service(name="web", image="x")])
    return Target(device_id=device_id, revision=revision, release=release, issued_at=NOW, **kw)


class Agent:
    """What the agent does with an accepted target: store it (the test records it too)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.accepted: list[int] = []

    async def on_target(self, target: Target, signed: SignedTarget) -> None:
        await self.store.save_target(target.revision, signed.model_dump_json(), source="hub")
        self.accepted.append(target.revision)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
async def store(tmp_path: Path) -> Store:
    s = await Store(tmp_path / "agent.db").open()
    yield s  # type: ignore[misc]
    await s.close()


def gate_for(store: Store, key: Ed25519PrivateKey, agent: Agent) -> TargetGate:
    return TargetGate(store, key.public_key(), "dev-1", agent.on_target, clock=lambda: NOW)


async def refusals(store: Store) -> list[dict]:
    return [r for r in await store.audit_log() if r["action"] == "target.reject"]


async def test_good_target_accepted_once(store: Store, key: Ed25519PrivateKey) -> None:
    agent = Agent(store)
    gate = gate_for(store, key, agent)
    await gate.load()
    signed = sign_target(make_target(1), key)
    assert await gate.deliver(signed, source="sync") == 1
    # The same message again (sync reply racing the long-poll) is silently ignored.
    assert await gate.deliver(signed, source="long-poll") is None
    assert agent.accepted == [1]
    assert gate.poll_after == 1
    assert await refusals(store) == []


async def test_tampered_target_refused(store: Store, key: Ed25519PrivateKey) -> None:
    agent = Agent(store)
    gate = gate_for(store, key, agent)
    signed = sign_target(make_target(3), key)
    doc = json.loads(base64.b64decode(signed.payload))
    doc["release"]["services"][0]["image"] = "evil"
    forged = signed.model_copy(
        update={"payload": base64.b64encode(json.dumps(doc).encode()).decode()}
    )
    assert await gate.deliver(forged, source="sync") is None
    # Signed by another key: refused too.
    assert (
        await gate.deliver(sign_target(make_target(4), Ed25519PrivateKey.generate()), source="sync")
        is None
    )
    assert agent.accepted == []
    rows = await refusals(store)
    assert len(rows) == 2
    assert all("signature" in json.loads(r["detail"])["reason"] for r in rows)
    assert gate.poll_after == 0, "an unverified revision must not move the long-poll cursor"
    assert (await store.counters())["targets_refused"] == 2


async def test_replayed_older_revision_refused(store: Store, key: Ed25519PrivateKey) -> None:
    agent = Agent(store)
    gate = gate_for(store, key, agent)
    old = sign_target(make_target(2), key)
    assert await gate.deliver(sign_target(make_target(5), key), source="sync") == 5
    assert await gate.deliver(old, source="sync") is None
    # After a restart the stored revision is the floor: the same target again is a replay.
    again = gate_for(store, key, agent)
    await again.load()
    assert await again.deliver(sign_target(make_target(5), key), source="long-poll") is None
    assert agent.accepted == [5]
    reasons = [json.loads(r["detail"])["reason"] for r in await refusals(store)]
    assert len(reasons) == 2
    assert all("replay" in r for r in reasons)


async def test_expired_target_refused_and_not_asked_again(
    store: Store, key: Ed25519PrivateKey
) -> None:
    agent = Agent(store)
    gate = gate_for(store, key, agent)
    expired = sign_target(make_target(7, expires_at=NOW - timedelta(seconds=1)), key)
    assert await gate.deliver(expired, source="long-poll") is None
    assert agent.accepted == []
    [row] = await refusals(store)
    assert "expired" in json.loads(row["detail"])["reason"]
    assert row["object"] == "target:7"
    assert gate.poll_after == 7 and gate.known_revision == 0


async def test_other_device_target_refused(store: Store, key: Ed25519PrivateKey) -> None:
    agent = Agent(store)
    gate = gate_for(store, key, agent)
    assert (
        await gate.deliver(sign_target(make_target(9, device_id="dev-2"), key), source="sync")
        is None
    )
    assert agent.accepted == []
    [row] = await refusals(store)
    assert "dev-2" in json.loads(row["detail"])["reason"]
    assert gate.poll_after == 0
    # The refusal is queued for the hub like every audit record.
    assert "audit" in await store.outbox_stats()


async def test_handler_failure_lets_target_be_delivered_again(
    store: Store, key: Ed25519PrivateKey
) -> None:
    calls: list[int] = []

    async def flaky(target: Target, signed: SignedTarget) -> None:
        calls.append(target.revision)
        if len(calls) == 1:
            raise RuntimeError("disk hiccup")

    gate = TargetGate(store, key.public_key(), "dev-1", flaky, clock=lambda: NOW)
    signed = sign_target(make_target(1), key)
    with pytest.raises(RuntimeError):
        await gate.deliver(signed, source="sync")
    assert await gate.deliver(signed, source="sync") == 1
    assert calls == [1, 1]


async def test_agent_refusal_is_audited(store: Store, key: Ed25519PrivateKey) -> None:
    async def refuse(target: Target, signed: SignedTarget) -> None:
        raise TargetRejected("apply window closed")

    gate = TargetGate(store, key.public_key(), "dev-1", refuse, clock=lambda: NOW)
    assert await gate.deliver(sign_target(make_target(2), key), source="sync") is None
    [row] = await refusals(store)
    assert json.loads(row["detail"])["reason"] == "apply window closed"


def sign_document(doc: dict, key: Ed25519PrivateKey) -> SignedTarget:
    """Sign a raw target document, as a newer hub with fields we do not know would."""
    payload = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return SignedTarget(
        payload=base64.b64encode(payload).decode(),
        signature=base64.b64encode(key.sign(payload)).decode(),
    )


async def test_target_with_unknown_fields_from_a_newer_hub_is_applied(
    store: Store, key: Ed25519PrivateKey
) -> None:
    """Issue 7 item 1: an optional field added by a newer hub must not lock old agents out."""
    agent = Agent(store)
    gate = gate_for(store, key, agent)
    await gate.load()
    doc = make_target(1).model_dump(mode="json")
    doc["rollout_id"] = "r-7"  # top level
    doc["release"]["services"][0]["cpu_shares"] = 512  # nested in a service
    doc["release"]["services"][0]["healthcheck"] = {"test": ["CMD", "true"], "jitter_s": 1}
    assert await gate.deliver(sign_document(doc, key), source="sync") == 1
    assert agent.accepted == [1] and await refusals(store) == []
    assert (await store.counters())["target_unknown_fields"] == 1
    events = [e.payload for e in await store.pending(max_entries=100, max_bytes=10**6)]
    (note,) = [e for e in events if e.get("type") == "unknown_fields"]
    assert note["fields"] == [
        "release.services.0.cpu_shares",
        "release.services.0.healthcheck.jitter_s",
        "rollout_id",
    ]
    # A second target with the same unknown fields is counted, not reported again.
    doc["revision"] = 2
    assert await gate.deliver(sign_document(doc, key), source="long-poll") == 2
    events = [e.payload for e in await store.pending(max_entries=100, max_bytes=10**6)]
    assert sum(e.get("type") == "unknown_fields" for e in events) == 1
    assert (await store.counters())["target_unknown_fields"] == 2


async def test_unknown_field_in_a_document_people_write_is_still_refused() -> None:
    doc = make_target(1).model_dump(mode="json")
    doc["release"]["services"][0]["imagee"] = "typo"
    with pytest.raises(InvalidDocument, match="imagee"):
        parse_document(Target, doc)


async def test_tampered_unknown_field_is_refused(store: Store, key: Ed25519PrivateKey) -> None:
    """Tolerance comes after the signature: adding a field to a signed target breaks it."""
    agent = Agent(store)
    gate = gate_for(store, key, agent)
    signed = sign_target(make_target(1), key)
    doc = json.loads(base64.b64decode(signed.payload))
    doc["extra"] = 1
    forged = signed.model_copy(
        update={"payload": base64.b64encode(json.dumps(doc).encode()).decode()}
    )
    assert await gate.deliver(forged, source="sync") is None
    assert agent.accepted == []


def test_hub_answers_with_unknown_fields_are_read() -> None:
    """Issue 7 item 1: the wire responses of a newer hub parse; the new fields are named."""
    raw = (
        b'{"acked_seq":4,"want_full_status":false,"hint":"x","target":'
        b'{"payload":"e30=","signature":"","key_id":"","alg":"ed25519"}}'
    )
    resp = SyncResponse.model_validate_json(raw)
    assert resp.acked_seq == 4 and resp.target is not None
    assert unknown_fields(resp) == ["hint", "target.alg"]
    for model, doc in [
        (RenewResponse, {"certificate_pem": "x", "chain": []}),
        (EnrollResponse, {**dict.fromkeys(EnrollResponse.model_fields, "x"), "tags": {}, "n": 1}),
    ]:
        assert unknown_fields(model.model_validate(doc)) == [next(reversed(doc))]
