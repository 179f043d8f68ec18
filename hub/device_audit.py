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

import bisect
import hashlib
import json
import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hub.store.records import AuditGapBound, iso_utc


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


def tally(counts: dict[str, int], record: DeviceRecord | None, reason: str | None) -> None:
    """Count a judged record: verified (a chain record; a break if ``reason``) or
    unverifiable."""
    if record is None:
        counts["unverifiable"] += 1
        return
    counts["verified"] += 1
    if reason is not None:
        counts["breaks"] += 1


# records held ahead of a gap -----------------------------------------------------------


@dataclass(frozen=True)
class HeldRecord:
    """A chain record stored ahead of a gap, not judged yet."""

    seq: int
    record: DeviceRecord
    since: str  # when it arrived (ISO UTC)


@dataclass(frozen=True)
class NewRow:
    """A newly arrived audit record to store: its verdict, or held (no verdict yet)."""

    seq: int
    payload: dict[str, Any]
    reason: str | None
    held: bool


@dataclass(frozen=True)
class Judged:
    """A held record judged now (unheld, with its verdict)."""

    seq: int
    record_id: int
    reason: str | None


@dataclass
class Chain:
    """A device's chain (``device_audit_chain``) and its held records, as the rules move
    them; what to write is collected in ``rows``, ``judged`` and ``first_break``.

    A chain record whose id is above the next expected one (and the expected one is not
    later in the same batch: that stays "reordered") is held: stored without a verdict,
    the position stays. Once the records before it arrive and are judged, the held ones
    that follow contiguously are judged in id order. A gap open longer than the grace,
    past the held bound, or before a new store's chain starts is declared: the lowest
    held record gets the "gap" verdict, the rest are judged after it in id order.
    """

    state: ChainState | None
    counts: dict[str, int]
    held: list[HeldRecord] = field(default_factory=list)  # in (record id, seq) order
    overflows: int = 0  # gaps declared because the held records passed their bound
    rows: list[NewRow] = field(default_factory=list)
    judged: list[Judged] = field(default_factory=list)
    first_break: tuple[int, str] | None = None  # (record id, reason) of this visit's first
    declared: int = 0  # gaps declared in this visit

    @property
    def held_since(self) -> str | None:
        """Return since when the oldest held record waits (None: none held)."""
        return min((h.since for h in self.held), default=None)

    def take(
        self, parsed: list[ParsedRecord], stored: Collection[int], at: str, bound: AuditGapBound
    ) -> None:
        """Take a batch's audit records arriving at ``at``; seqs in ``stored`` (or seen
        earlier in the batch) are re-deliveries, judged when they first arrived."""
        seen = set(stored)
        for i, (seq, payload, record) in enumerate(parsed):
            if seq in seen:
                continue
            seen.add(seq)
            if record is None:
                self.rows.append(NewRow(seq, payload, None, False))
                tally(self.counts, None, None)
                continue
            pending = {r.id for _s, _p, r in parsed[i + 1 :] if r is not None}
            if self._ahead(record, pending):
                self.rows.append(NewRow(seq, payload, None, True))
                bisect.insort(self.held, HeldRecord(seq, record, at), key=_held_order)
                if len(self.held) > bound.max_held:
                    self.overflows += 1
                    self.declare()
                continue
            if self.held and record.id == 1 and record.prev_hash == "":
                self.declare()  # a new store's chain starts: the old one's gap stays open
            reason = judge(self.state, record, pending)
            self.rows.append(NewRow(seq, payload, reason, False))
            self._judged(record, reason)
            self._release()
        self.settle(at, bound.grace_s)

    def settle(self, now: str, grace_s: float) -> bool:
        """Declare the gap if the oldest held record waited ``grace_s`` by ``now``."""
        since = self.held_since
        if since is None:
            return False
        waited = datetime.fromisoformat(now) - datetime.fromisoformat(since)
        if waited.total_seconds() < grace_s:
            return False
        self.declare()
        return True

    def declare(self) -> None:
        """Judge every held record now: the lowest gets the gap verdict, the rest follow."""
        if self.held:
            self.declared += 1
        while self.held:
            self._judge_held(self.held.pop(0))
            self._release()

    def values(self) -> tuple[Any, ...]:
        """Return the ``device_audit_chain`` row's (last_id, last_hash, verified,
        unverifiable, breaks, held_since, held_overflows) as both stores write them."""
        return (*chain_values(self.state, self.counts), self.held_since, self.overflows)

    def _ahead(self, record: DeviceRecord, pending: Collection[int]) -> bool:
        """Return whether ``record`` arrived ahead of a gap (to be held)."""
        state = self.state
        if state is None or (record.id == 1 and record.prev_hash == ""):
            return False
        expected = state.last_id + 1
        return record.id > expected and expected not in pending

    def _release(self) -> None:
        """Judge the held records that now follow the chain's position contiguously."""
        while (
            self.held
            and self.state is not None
            and self.held[0].record.id <= (self.state.last_id + 1)
        ):
            self._judge_held(self.held.pop(0))

    def _judge_held(self, held: HeldRecord) -> None:
        reason = judge(self.state, held.record, ())
        self.judged.append(Judged(held.seq, held.record.id, reason))
        self._judged(held.record, reason)

    def _judged(self, record: DeviceRecord, reason: str | None) -> None:
        tally(self.counts, record, reason)
        if reason is not None and self.first_break is None:
            self.first_break = (record.id, reason)
        self.state = next_state(self.state, record)


def _held_order(held: HeldRecord) -> tuple[int, int]:
    return held.record.id, held.seq


# The statements both stores run (``?`` placeholders; PostgreSQL numbers them).
CHAIN_ROW_SELECT = (
    "SELECT last_id, last_hash, verified, unverifiable, breaks, held_since, held_overflows "
    "FROM device_audit_chain WHERE device_id = ?"
)
# A held record as the device shipped it: ``events`` keeps audit entries verbatim.
HELD_SELECT = (
    "SELECT d.seq, d.received_at, e.payload FROM device_audit d JOIN events e "
    "ON e.device_id = d.device_id AND e.seq = d.seq WHERE d.device_id = ? AND d.held = 1"
)
STORED_SELECT = "SELECT seq FROM device_audit WHERE device_id = ? AND seq BETWEEN ? AND ?"
JUDGED_UPDATE = "UPDATE device_audit SET held = 0, broken = ? WHERE device_id = ? AND seq = ?"


def chain_of(row: Sequence[Any] | None, held: Sequence[Sequence[Any]] = ()) -> Chain:
    """Return a device's chain from its row of CHAIN_ROW_SELECT (None: none yet) and its
    held rows of HELD_SELECT.

    A held record is judged from the entry as the device shipped it (``events``: audit
    entries are never deleted), so every check runs on the fields its hash covers."""
    if row is None:
        return Chain(None, {"verified": 0, "unverifiable": 0, "breaks": 0})
    last_id, last_hash, verified, unverifiable, breaks, _since, overflows = row
    chain = Chain(
        ChainState(last_id, last_hash) if last_hash else None,
        {"verified": verified, "unverifiable": unverifiable, "breaks": breaks},
        overflows=overflows,
    )
    for seq, since, payload in held:
        record = DeviceRecord.parse(json.loads(payload))
        if record is not None:  # held rows are chain records
            chain.held.append(HeldRecord(seq, record, since))
    chain.held.sort(key=_held_order)
    return chain


def chain_values(state: ChainState | None, counts: dict[str, int]) -> tuple[Any, ...]:
    """Return a ``device_audit_chain`` row's stored (last_id, last_hash, verified,
    unverifiable, breaks), as both stores write them."""
    last_id, last_hash = (state.last_id, state.last_hash) if state else (0, "")
    return last_id, last_hash, counts["verified"], counts["unverifiable"], counts["breaks"]


def pending_text(last_id: int, lowest_held: int | None, since: str | None) -> str | None:
    """Return what a chain with held records waits for (None: nothing held)."""
    if lowest_held is None or since is None:
        return None
    first, last = last_id + 1, lowest_held - 1
    missing = f"{first}" if first >= last else f"{first}..{last}"
    return f"held: waiting for record(s) {missing} since {since}"


def seq_span(parsed: list[ParsedRecord]) -> tuple[int, int]:
    """Return the lowest and highest hub seq of the batch's records (to read which of
    them are stored already)."""
    seqs = [seq for seq, _p, _r in parsed]
    return min(seqs), max(seqs)


def observe(
    db: sqlite3.Connection,
    device_id: str,
    entries: Sequence[tuple[int, str, str, str]],
    offset: int,
    floor: int,
    received: datetime | str,
    bound: AuditGapBound,
) -> None:
    """Store and verify the batch's new audit records (in the sync's transaction).

    Device seqs at or below ``floor`` are held from an earlier visit; hub seq = device
    seq + ``offset`` (as ``_insert_entries`` stores them)."""
    parsed = fresh_records(entries, offset, floor)
    if not parsed:
        return
    at = received if isinstance(received, str) else iso_utc(received)
    chain = _load(db, device_id)
    low, high = seq_span(parsed)
    stored = {r[0] for r in db.execute(STORED_SELECT, (device_id, low, high))}
    chain.take(parsed, stored, at, bound)
    _write(db, device_id, chain, at)


def settle(db: sqlite3.Connection, device_id: str, now: str, grace_s: float) -> bool:
    """Declare the device's gap if its held records waited ``grace_s`` (in a write
    transaction); return whether it did."""
    chain = _load(db, device_id)
    if not chain.settle(now, grace_s):
        return False
    _write(db, device_id, chain, now)
    return True


def _load(db: sqlite3.Connection, device_id: str) -> Chain:
    row = db.execute(CHAIN_ROW_SELECT, (device_id,)).fetchone()
    held = []
    if row is not None and row[5] is not None:
        held = db.execute(HELD_SELECT, (device_id,)).fetchall()
    return chain_of(row, held)


def _write(db: sqlite3.Connection, device_id: str, chain: Chain, at: str) -> None:
    for new in chain.rows:
        db.execute(
            "INSERT OR IGNORE INTO device_audit (device_id, seq, record_id, at, received_at, "
            "actor, action, object, outcome, detail, hash, broken, held, feed_after) VALUES "
            "(?,?,?,?,?,?,?,?,?,?,?,?,?, "
            "COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'audit'), 0))",
            (*row_values(device_id, new.seq, new.payload, at, new.reason), int(new.held)),
        )
    db.executemany(JUDGED_UPDATE, [(j.reason, device_id, j.seq) for j in chain.judged])
    broken = (*chain.first_break, at) if chain.first_break else (None, None, None)
    db.execute(
        "INSERT INTO device_audit_chain (device_id, last_id, last_hash, verified, unverifiable, "
        "breaks, held_since, held_overflows, broken_id, broken_reason, broken_at) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(device_id) DO UPDATE SET "
        "last_id = excluded.last_id, last_hash = excluded.last_hash, "
        "verified = excluded.verified, unverifiable = excluded.unverifiable, "
        "breaks = excluded.breaks, held_since = excluded.held_since, "
        "held_overflows = excluded.held_overflows, "
        "broken_id = COALESCE(broken_id, excluded.broken_id), "
        "broken_at = COALESCE(broken_at, excluded.broken_at), "
        "broken_reason = COALESCE(broken_reason, excluded.broken_reason)",
        (device_id, *chain.values(), *broken),
    )


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
