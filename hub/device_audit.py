"""Device audit chains verified as their records arrive through sync.

The agent chains its audit records (``edge_agent/audit.py``: each record's ``hash`` is
SHA-256 over its ``prev_hash`` and fields; ids count up from 1 per store) and ships each
one as an outbox entry of kind ``audit``. The hub keeps, per device, the last record it
verified; each new record must hash to its ``hash``, carry the next id and link to the
last record's hash. The first break is kept per device (record, when, why): an altered
record, a gap (records missing), a reordering or a broken link. A re-delivered entry
(at-least-once) is the same ``(device, seq)``: ignored before it is judged. Records
without a chain (older agents) are stored and counted as unverifiable.

``judge`` is the pure decision; ``observe`` runs it inside the sync's writer transaction.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hub.store.records import iso_utc


def chain_hash(prev: str, *fields: str) -> str:
    """Return the agent's record hash (the agent's ``edge_agent.audit.chain_hash``)."""
    h = hashlib.sha256(prev.encode())
    for f in fields:
        h.update(b"\x1f")
        h.update(f.encode())
    return h.hexdigest()


@dataclass(frozen=True)
class DeviceRecord:
    """One device audit record as shipped (the fields the chain covers)."""

    id: int
    at: str
    actor: str
    action: str
    object: str
    outcome: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> DeviceRecord | None:
        """Return the record, or None if the payload carries no chain (an older agent)."""
        try:
            record = cls(**{k: payload[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError):
            return None
        texts = (record.at, record.actor, record.action, record.object, record.outcome)
        if not isinstance(record.id, int) or not all(isinstance(t, str) for t in texts):
            return None
        return record

    def computed_hash(self) -> str:
        """Return the hash the record's fields give."""
        detail = json.dumps(self.detail, sort_keys=True, separators=(",", ":"))
        return chain_hash(
            self.prev_hash, self.at, self.actor, self.action, self.object, self.outcome, detail
        )


@dataclass(frozen=True)
class ChainState:
    """The last record verified on a device's chain."""

    last_id: int
    last_hash: str


def judge(state: ChainState | None, record: DeviceRecord, pending: Collection[int]) -> str | None:
    """Return why ``record`` breaks the chain after ``state`` (None: it holds).

    ``pending`` holds the ids of the records after it in the same batch. A record with
    id 1 and no predecessor starts a chain (a new store); the first record the hub sees
    of a device anchors it.
    """
    if record.computed_hash() != record.hash:
        return "altered: its fields do not match its hash"
    if state is None or (record.id == 1 and record.prev_hash == ""):
        return None
    expected = state.last_id + 1
    if record.id == expected:
        if record.prev_hash == state.last_hash:
            return None
        return f"broken link: its prev_hash does not match record {state.last_id}'s hash"
    if record.id < expected:
        return f"reordered: it arrived after record {state.last_id}"
    if expected in pending:
        return f"reordered: it arrived before record {expected}"
    missing = f"{expected}" if record.id == expected + 1 else f"{expected}..{record.id - 1}"
    return f"gap: record(s) {missing} before it never arrived"


def next_state(state: ChainState | None, record: DeviceRecord) -> ChainState:
    """Return the chain position after ``record`` (never moving back to a lower id)."""
    if state is not None and record.id < state.last_id and record.id != 1:
        return state
    return ChainState(record.id, record.hash)


ParsedRecord = tuple[int, dict[str, Any], DeviceRecord | None]  # hub seq, payload, record


def fresh_records(
    entries: Sequence[tuple[int, str, str, str]], offset: int, floor: int
) -> list[ParsedRecord]:
    """Return the batch's audit entries not held yet, parsed (None: not a chain record).

    Device seqs at or below ``floor`` are held from an earlier visit; hub seq = device
    seq + ``offset``."""
    return [
        (seq + offset, payload, DeviceRecord.parse(payload))
        for seq, payload in (
            (seq, json.loads(p)) for seq, kind, _c, p in entries if kind == "audit" and seq > floor
        )
    ]


def verdict(state: ChainState | None, parsed: list[ParsedRecord], i: int) -> str | None:
    """Return why the ``i``th parsed record breaks the chain at ``state`` (None: it does
    not, or it is no chain record); the records after it in the batch are pending."""
    record = parsed[i][2]
    if record is None:
        return None
    pending = {r.id for _s, _p, r in parsed[i + 1 :] if r is not None}
    return judge(state, record, pending)


def tally(counts: dict[str, int], record: DeviceRecord | None, reason: str | None) -> None:
    """Count a newly stored record: verified (a chain record; a break if ``reason``) or
    unverifiable."""
    if record is None:
        counts["unverifiable"] += 1
        return
    counts["verified"] += 1
    if reason is not None:
        counts["breaks"] += 1


def chain_of(row: Sequence[Any] | None) -> tuple[ChainState | None, dict[str, int]]:
    """Return the chain position and counts of a ``device_audit_chain`` row (None: none
    yet) read as (last_id, last_hash, verified, unverifiable, breaks)."""
    if row is None:
        return None, {"verified": 0, "unverifiable": 0, "breaks": 0}
    last_id, last_hash, verified, unverifiable, breaks = row
    state = ChainState(last_id, last_hash) if last_hash else None
    return state, {"verified": verified, "unverifiable": unverifiable, "breaks": breaks}


def chain_values(state: ChainState | None, counts: dict[str, int]) -> tuple[Any, ...]:
    """Return a ``device_audit_chain`` row's stored (last_id, last_hash, verified,
    unverifiable, breaks), as both stores write them."""
    last_id, last_hash = (state.last_id, state.last_hash) if state else (0, "")
    return last_id, last_hash, counts["verified"], counts["unverifiable"], counts["breaks"]


def observe(
    db: sqlite3.Connection,
    device_id: str,
    entries: Sequence[tuple[int, str, str, str]],
    offset: int,
    floor: int,
    received: datetime | str,
) -> None:
    """Store and verify the batch's new audit records (in the sync's transaction).

    Device seqs at or below ``floor`` are held from an earlier visit; hub seq = device
    seq + ``offset`` (as ``_insert_entries`` stores them)."""
    parsed = fresh_records(entries, offset, floor)
    if not parsed:
        return
    at = received if isinstance(received, str) else iso_utc(received)
    state, counts = _load(db, device_id)
    for i, (seq, payload, record) in enumerate(parsed):
        reason = verdict(state, parsed, i)
        if not _insert(db, device_id, seq, payload, at, reason):
            continue  # a re-delivered entry: judged when it first arrived
        tally(counts, record, reason)
        if record is None:
            continue
        if reason is not None:
            _break(db, device_id, record.id, at, reason)
        state = next_state(state, record)
    _save(db, device_id, state, counts)


def _load(db: sqlite3.Connection, device_id: str) -> tuple[ChainState | None, dict[str, int]]:
    return chain_of(
        db.execute(
            "SELECT last_id, last_hash, verified, unverifiable, breaks FROM device_audit_chain "
            "WHERE device_id = ?",
            (device_id,),
        ).fetchone()
    )


def _insert(
    db: sqlite3.Connection,
    device_id: str,
    seq: int,
    payload: dict[str, Any],
    received: str,
    reason: str | None,
) -> bool:
    cur = db.execute(
        "INSERT OR IGNORE INTO device_audit (device_id, seq, record_id, at, received_at, actor, "
        "action, object, outcome, detail, hash, broken, feed_after) VALUES "
        "(?,?,?,?,?,?,?,?,?,?,?,?, "
        "COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'audit'), 0))",
        row_values(device_id, seq, payload, received, reason),
    )
    return cur.rowcount == 1


def row_values(
    device_id: str, seq: int, payload: dict[str, Any], received: str, reason: str | None
) -> tuple[Any, ...]:
    """Return a device audit row's stored values (device_id ... broken), as both stores
    write them: the texts the chain's hashes are checked over."""
    detail = payload.get("detail")
    return (
        device_id,
        seq,
        payload.get("id") if isinstance(payload.get("id"), int) else 0,
        _normal_time(payload.get("at"), received),
        received,
        str(payload.get("actor", "")),
        str(payload.get("action", "")),
        str(payload.get("object", "")),
        str(payload.get("outcome", "")),
        json.dumps(detail if isinstance(detail, dict) else {}, separators=(",", ":")),
        str(payload.get("hash", "")),
        reason,
    )


def _normal_time(value: Any, fallback: str) -> str:
    """Return the device's time as the hub's ISO UTC text (sortable with hub rows)."""
    try:
        return iso_utc(datetime.fromisoformat(value))
    except (TypeError, ValueError):
        return fallback


def _break(
    db: sqlite3.Connection,
    device_id: str,
    record_id: int,
    at: str,
    reason: str,
) -> None:
    db.execute(
        "INSERT INTO device_audit_chain (device_id, last_id, last_hash, broken_id, broken_at, "
        "broken_reason) VALUES (?, 0, '', ?, ?, ?) ON CONFLICT(device_id) DO UPDATE SET "
        "broken_id = COALESCE(broken_id, excluded.broken_id), "
        "broken_at = COALESCE(broken_at, excluded.broken_at), "
        "broken_reason = COALESCE(broken_reason, excluded.broken_reason)",
        (device_id, record_id, at, reason),
    )


def _save(
    db: sqlite3.Connection, device_id: str, state: ChainState | None, counts: dict[str, int]
) -> None:
    db.execute(
        "INSERT INTO device_audit_chain (device_id, last_id, last_hash, verified, unverifiable, "
        "breaks) VALUES (?,?,?,?,?,?) ON CONFLICT(device_id) DO UPDATE SET "
        "last_id = excluded.last_id, last_hash = excluded.last_hash, "
        "verified = excluded.verified, unverifiable = excluded.unverifiable, "
        "breaks = excluded.breaks",
        (device_id, *chain_values(state, counts)),
    )
