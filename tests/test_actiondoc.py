"""Queued device actions, the pure parts: argument checks, signing, the device's checks,
the hub's state machine and result bounding, as tables."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.actiondoc import (
    ActionDoc,
    bound_result,
    check_action,
    check_args,
    next_state,
    read_action,
    sign_action,
)
from edge_agent.errors import ActionRefused, TargetRejected
from edge_agent.models import Release, Service, Target
from edge_agent.protocol import SignedAction, SignedTarget
from edge_agent.signing import sign_target, verify_target

KEY = Ed25519PrivateKey.generate()
NOW = 1_800_000_000


def doc(**kw: Any) -> ActionDoc:
    base: dict[str, Any] = {
        "id": "act-0123456789abcdef",
        "device_id": "dev-1",
        "kind": "restart",
        "args": {"service": "web"},
        "issued_at": NOW,
        "expires_at": NOW + 60,
        "max_result_bytes": 4096,
    }
    return ActionDoc(**{**base, **kw})


@pytest.mark.parametrize(
    ("kind", "args", "expected"),
    [
        ("restart", {"service": "web"}, {"service": "web"}),
        ("restart", {}, "args.service"),
        ("restart", {"service": "../x"}, "args.service"),
        ("selftest", {}, {}),
        ("selftest", {"lines": 3}, "args.lines: not an argument"),
        ("prune_images", {}, {}),
        ("diagnostics", {}, {"lines": 100}),
        ("diagnostics", {"lines": 10_001}, "args.lines"),
        ("diagnostics", {"lines": True}, "args.lines"),
        ("collect_logs", {"lines": 5}, {"lines": 5}),
        ("collect_logs", {"service": "db", "lines": 0}, {"lines": 0, "service": "db"}),
        ("reboot", {}, "kind: one of"),
    ],
)
def test_action_arguments_are_checked_naming_the_field(
    kind: str, args: dict[str, Any], expected: dict[str, Any] | str
) -> None:
    if isinstance(expected, dict):
        assert check_args(kind, args) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            check_args(kind, args)


def test_a_signed_action_reads_back_and_a_tampered_one_is_forged() -> None:
    signed = sign_action(doc(), KEY)
    assert read_action(signed, KEY.public_key()) == doc()
    payload = json.loads(base64.b64decode(signed.payload))
    payload["device_id"] = "dev-2"
    tampered = signed.model_copy(
        update={"payload": base64.b64encode(json.dumps(payload).encode()).decode()}
    )
    with pytest.raises(ActionRefused) as err:
        read_action(tampered, KEY.public_key())
    assert err.value.reason == "forged"
    other = Ed25519PrivateKey.generate()
    with pytest.raises(ActionRefused, match="does not verify"):
        read_action(signed, other.public_key())


def test_an_action_never_passes_for_a_target_nor_a_target_for_an_action() -> None:
    target = Target(
        device_id="dev-1",
        revision=1,
        release=Release(name="app", version="1", services=[Service(name="web", image="b:1")]),
        issued_at=datetime.now(UTC),
    )
    signed_target = sign_target(target, KEY)
    as_action = SignedAction(payload=signed_target.payload, signature=signed_target.signature)
    with pytest.raises(ActionRefused, match="does not verify"):
        read_action(as_action, KEY.public_key())
    signed_action = sign_action(doc(), KEY)
    as_target = SignedTarget(payload=signed_action.payload, signature=signed_action.signature)
    with pytest.raises(TargetRejected):
        verify_target(
            as_target,
            KEY.public_key(),
            device_id="dev-1",
            applied_revision=0,
            now=datetime.now(UTC) + timedelta(0),
        )


@pytest.mark.parametrize(
    ("action", "device", "now", "seen", "reason"),
    [
        (doc(), "dev-1", NOW, False, None),
        (doc(), "dev-2", NOW, False, "wrong_device"),
        (doc(), "dev-1", NOW + 60, False, "expired"),
        (doc(), "dev-1", NOW, True, "replay"),
        (doc(), "dev-1", NOW + 3600, True, "replay"),  # named a replay even once expired
        (doc(args={}), "dev-1", NOW, False, "invalid"),
        (doc(kind="reboot"), "dev-1", NOW, False, "invalid"),
    ],
)
def test_the_device_refuses_wrong_device_expired_replayed_and_invalid_actions(
    action: ActionDoc, device: str, now: int, seen: bool, reason: str | None
) -> None:
    if reason is None:
        assert check_action(action, device_id=device, now=now, seen=seen) == {"service": "web"}
        return
    with pytest.raises(ActionRefused) as err:
        check_action(action, device_id=device, now=now, seen=seen)
    assert err.value.reason == reason


@pytest.mark.parametrize(
    ("state", "event", "delivered", "expected"),
    [
        ("queued", "deliver", False, "delivered"),
        ("delivered", "deliver", True, "delivered"),  # redelivery when no receipt came
        ("queued", "expire", False, "expired"),
        ("delivered", "expire", True, "expired"),
        ("delivered", "succeeded", True, "succeeded"),
        ("delivered", "failed", True, "failed"),
        ("delivered", "refused", True, "refused"),
        ("expired", "succeeded", True, "succeeded"),  # the device took it before expiry
        ("expired", "succeeded", False, None),  # never delivered: cannot have run
        ("succeeded", "failed", True, None),  # a result is taken once
        ("succeeded", "succeeded", True, None),
        ("failed", "expire", True, None),
        ("refused", "deliver", True, None),
        ("expired", "deliver", False, None),
    ],
)
def test_action_state_machine(
    state: str, event: str, delivered: bool, expected: str | None
) -> None:
    assert next_state(state, event, delivered=delivered) == expected


def test_results_over_the_bound_are_cut_and_say_so() -> None:
    small = {"removed": []}
    assert bound_result(small, 1024) is small
    logs = {"logs": {"web": [f"line {i} " + "x" * 50 for i in range(200)]}}
    cut = bound_result(logs, 2048)
    assert cut["truncated"] is True and cut["original_bytes"] > 2048
    assert len(json.dumps(cut, separators=(",", ":"))) <= 2048
    assert cut["logs"]["web"] and cut["logs"]["web"][-1] == logs["logs"]["web"][-1]  # newest kept
    other = bound_result({"blob": "y" * 5000}, 1024)
    assert other == {"truncated": True, "original_bytes": len('{"blob":""}') + 5000}
