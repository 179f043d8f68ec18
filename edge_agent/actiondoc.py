"""Queued device actions: the signed document and the state machine. Pure; a contract module.

The hub signs each action for one device (``hub/action_api.py``); the agent verifies it
offline with the key it pinned at enrollment (``edge_agent/actions.py``)::

    SignedAction = {"payload": base64(canonical JSON), "signature": base64, "key_id"}
    payload      = {"v": 1, "id", "device_id", "kind", "args", "issued_at", "expires_at",
                    "max_result_bytes"}                                  (unix seconds)

The signature covers ``SIGNED_PREFIX`` + the payload bytes. A target's signature covers
its canonical JSON alone (which starts with ``{``), so neither can pass for the other.

A new kind is one entry in ``KINDS`` (its argument check) plus one handler on each side.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.errors import ActionRefused
from edge_agent.protocol import SignedAction

SIGNED_PREFIX = b"edgefleet-action-v1\n"
ACTION_ID_RE = re.compile(r"^act-[0-9a-f]{16}$")
SERVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")
MAX_LINES = 10_000  # log lines per service an action may ask for
DEFAULT_LINES = 100
MAX_PAYLOAD_BYTES = 16 * 1024
MAX_GREP_CHARS = 256  # a logs action's grep pattern
MAX_FOLLOW_S = 3600  # how long a logs action may keep streaming new lines

# The states of an action at the hub; the last four are final (see ``next_state``).
STATES = ("queued", "delivered", "succeeded", "failed", "expired", "refused")
FINAL = frozenset({"succeeded", "failed", "expired", "refused"})
RESULTS = frozenset({"succeeded", "failed", "refused"})


def _lines(args: dict[str, Any]) -> int:
    lines = args.get("lines", DEFAULT_LINES)
    if type(lines) is not int or not 0 <= lines <= MAX_LINES:
        raise ValueError(f"args.lines: an integer from 0 to {MAX_LINES}")
    return lines


def _service(args: dict[str, Any], *, required: bool) -> str | None:
    service = args.get("service")
    if service is None and not required:
        return None
    if not isinstance(service, str) or not SERVICE_RE.match(service):
        raise ValueError("args.service: a service name (" + SERVICE_RE.pattern + ")")
    return service


def _no_args(args: dict[str, Any]) -> dict[str, Any]:
    return {}


def _restart(args: dict[str, Any]) -> dict[str, Any]:
    return {"service": _service(args, required=True)}


def _diagnostics(args: dict[str, Any]) -> dict[str, Any]:
    return {"lines": _lines(args)}


def _collect_logs(args: dict[str, Any]) -> dict[str, Any]:
    service = _service(args, required=False)
    return {"lines": _lines(args), **({"service": service} if service else {})}


def _when(args: dict[str, Any], name: str) -> float | None:
    """Return a time argument as unix seconds: a number, or ISO 8601 with a zone."""
    value = args.get(name)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str) and len(value) <= 64:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed.timestamp()
    raise ValueError(f"args.{name}: unix seconds or an ISO 8601 time with a zone")


def _grep(args: dict[str, Any]) -> str | None:
    pattern = args.get("grep")
    if pattern is None:
        return None
    if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_GREP_CHARS:
        raise ValueError(f"args.grep: a regular expression of 1 to {MAX_GREP_CHARS} characters")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"args.grep: not a valid regular expression ({exc})") from exc
    return pattern


def _logs(args: dict[str, Any]) -> dict[str, Any]:
    """Check a ``logs`` action: service, tail, since, until, grep, follow (seconds)."""
    tail = args.get("tail")
    if tail is not None and (type(tail) is not int or not 0 <= tail <= MAX_LINES):
        raise ValueError(f"args.tail: an integer from 0 to {MAX_LINES}")
    follow = args.get("follow", 0)
    if type(follow) not in (int, float) or not 0 <= follow <= MAX_FOLLOW_S:
        raise ValueError(f"args.follow: seconds from 0 to {MAX_FOLLOW_S}")
    since, until = _when(args, "since"), _when(args, "until")
    if since is not None and until is not None and until < since:
        raise ValueError("args.until: before args.since")
    found = {
        "service": _service(args, required=False),
        "tail": DEFAULT_LINES if tail is None and since is None else tail,
        "since": since,
        "until": until,
        "grep": _grep(args),
        "follow": follow,
    }
    return {k: v for k, v in found.items() if v is not None}


def _cancel(args: dict[str, Any]) -> dict[str, Any]:
    """Check a ``cancel`` action: the id of an action of the same device."""
    target = args.get("action")
    if not isinstance(target, str) or not ACTION_ID_RE.match(target):
        raise ValueError("args.action: an action id (" + ACTION_ID_RE.pattern + ")")
    return {"action": target}


# kind -> the check of its arguments (returns them normalized; ValueError names the field)
KINDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "restart": _restart,
    "selftest": _no_args,
    "prune_images": _no_args,
    "diagnostics": _diagnostics,
    "collect_logs": _collect_logs,
    "logs": _logs,
    "cancel": _cancel,
    "resume": _no_args,  # end a technician's pause (edge_agent.holds)
    "unpin": _no_args,  # end a technician's pin
}


ARG_NAMES = {
    "restart": frozenset({"service"}),
    "diagnostics": frozenset({"lines"}),
    "collect_logs": frozenset({"lines", "service"}),
    "logs": frozenset({"service", "tail", "since", "until", "grep", "follow"}),
    "cancel": frozenset({"action"}),
}


def check_args(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    """Return ``args`` normalized for ``kind``; ValueError naming the field otherwise."""
    check = KINDS.get(kind)
    if check is None:
        raise ValueError(f"kind: one of {', '.join(KINDS)}")
    extra = sorted(set(args) - ARG_NAMES.get(kind, frozenset()))
    if extra:
        raise ValueError(f"args.{extra[0]}: not an argument of {kind}")
    return check(args)


@dataclass(frozen=True)
class ActionDoc:
    """What a signed action says."""

    id: str
    device_id: str
    kind: str
    args: dict[str, Any]
    issued_at: int
    expires_at: int
    max_result_bytes: int

    def to_payload(self) -> dict[str, Any]:
        """Return the JSON payload that is signed."""
        return {
            "v": 1,
            "id": self.id,
            "device_id": self.device_id,
            "kind": self.kind,
            "args": self.args,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "max_result_bytes": self.max_result_bytes,
        }


def sign_action(doc: ActionDoc, private_key: Ed25519PrivateKey, key_id: str = "") -> SignedAction:
    """Sign an action with the hub's key."""
    payload = json.dumps(doc.to_payload(), sort_keys=True, separators=(",", ":")).encode()
    return SignedAction(
        payload=base64.b64encode(payload).decode(),
        signature=base64.b64encode(private_key.sign(SIGNED_PREFIX + payload)).decode(),
        key_id=key_id,
    )


def read_action(signed: SignedAction, public_key: Ed25519PublicKey) -> ActionDoc:
    """Return the action if its signature verifies with ``public_key``; ActionRefused else."""
    try:
        payload = base64.b64decode(signed.payload, validate=True)
        signature = base64.b64decode(signed.signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ActionRefused("malformed", "action is not valid base64") from exc
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ActionRefused("malformed", f"action payload over {MAX_PAYLOAD_BYTES} bytes")
    try:
        public_key.verify(signature, SIGNED_PREFIX + payload)
    except InvalidSignature as exc:
        raise ActionRefused(
            "forged", "action signature does not verify with the pinned key"
        ) from exc
    try:
        raw = json.loads(payload)
        doc = ActionDoc(
            id=raw["id"],
            device_id=raw["device_id"],
            kind=raw["kind"],
            args=raw["args"],
            issued_at=int(raw["issued_at"]),
            expires_at=int(raw["expires_at"]),
            max_result_bytes=int(raw["max_result_bytes"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ActionRefused("malformed", f"signed action is invalid: {exc!r}") from exc
    if not isinstance(doc.id, str) or not ACTION_ID_RE.match(doc.id):
        raise ActionRefused("malformed", "signed action has no valid id")
    return doc


def check_action(doc: ActionDoc, *, device_id: str, now: float, seen: bool) -> dict[str, Any]:
    """Return the action's checked arguments if this device may run it now; else refuse.

    Order matters for the audit: a replay is named as one even when it has expired since.
    """
    if doc.device_id != device_id:
        raise ActionRefused("wrong_device", f"action is for {doc.device_id!r}, not {device_id!r}")
    if seen:
        raise ActionRefused("replay", f"action {doc.id} was received before (replay)")
    if now >= doc.expires_at:
        raise ActionRefused("expired", f"action {doc.id} expired at {doc.expires_at}")
    try:
        return check_args(doc.kind, doc.args if isinstance(doc.args, dict) else {})
    except ValueError as exc:
        raise ActionRefused("invalid", f"action {doc.id}: {exc}") from exc


def next_state(state: str, event: str, *, delivered: bool) -> str | None:
    """Return an action's state after ``event``, or None if the event changes nothing.

    Events: ``deliver`` (in a sync answer), ``expire`` (past expiry without a result), and
    a result from the device (``succeeded``/``failed``/``refused``). A final state is
    final, except that a device's result replaces ``expired`` for a delivered action:
    the device judged its expiry when it took it, and its result is what happened.
    """
    if event == "deliver":
        return "delivered" if state in ("queued", "delivered") else None
    if event == "expire":
        return "expired" if state in ("queued", "delivered") else None
    if event in RESULTS:
        if state in ("queued", "delivered") or (state == "expired" and delivered):
            return event
        return None
    raise ValueError(f"unknown action event {event!r}")


def bound_result(result: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """Return ``result`` within ``max_bytes`` of JSON: logs cut from their oldest lines,
    anything else replaced by a note; a cut result says ``truncated`` and how much it was."""
    size = len(json.dumps(result, separators=(",", ":")))
    if size <= max_bytes:
        return result
    logs = result.get("logs")
    if isinstance(logs, dict):
        trimmed = {**result, "truncated": True, "original_bytes": size}
        keep = max((len(v) for v in logs.values() if isinstance(v, list)), default=0)
        while keep > 0:
            keep //= 2
            trimmed["logs"] = {k: v[len(v) - keep :] if keep else [] for k, v in logs.items()}
            if len(json.dumps(trimmed, separators=(",", ":"))) <= max_bytes:
                return trimmed
    return {"truncated": True, "original_bytes": size}
