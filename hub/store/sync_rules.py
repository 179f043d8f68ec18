"""The sync ingest's rules, the same on both stores (no SQL, no I/O).

``hub.store.sqlite`` and ``hub.store.pg_sync`` (with their side-record modules) read and
write the rows; what a batch does to them is decided here: who may sync, where a store
generation's seqs live among the hub's, which entries are taken, how the ack advances,
how the status merges, which metrics samples are kept, what an action update changes,
when a contact extends a span, and the bounds of it all (``SyncBounds``). SET clauses
are written with ``?`` placeholders (PostgreSQL numbers them with ``pg_core.dollar``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from edge_agent.protocol import INT64_MAX
from hub.errors import Forbidden, InvalidRequest
from hub.fleet import STATUS_FIELDS, merge_status
from hub.store import sqlite_rows as rows
from hub.store.records import AuditGapBound, EntryRow, PartsBound, SyncBatch

JSON_STATUS_FIELDS = ("services", "counters")
R = TypeVar("R", bound=Sequence[Any])


@dataclass
class SeqSpace:
    """Where a device's current store generation lives among the hub's seqs.

    hub seq = device seq + offset, for device seqs above floor (at or below it, the
    generation's entries are already held from an earlier visit); acked is in the
    device's numbers; high is the highest hub seq stored for the device.
    """

    epoch: str
    offset: int
    floor: int
    acked: int
    high: int

    @classmethod
    def opened(cls, epoch: str, high: int, before: int) -> SeqSpace:
        """Return the space of a generation that is not the current one.

        ``before`` is what the hub acked of it on an earlier visit (0: never seen): its
        seqs go above everything the hub holds for the device, so no entry is taken for
        a duplicate of another generation's.
        """
        return cls(epoch, high - before, before, before, high)

    def fresh(self, entries: list[EntryRow]) -> list[EntryRow]:
        """Return the entries not held yet (InvalidRequest if one is beyond the space)."""
        fresh = [e for e in entries if e[0] > self.floor]
        if fresh and fresh[-1][0] + self.offset > INT64_MAX:
            raise InvalidRequest(
                f"entries: seq {fresh[-1][0]} is beyond this device's sequence space on the hub",
                fields=[{"field": "entries", "message": "seq out of range"}],
            )
        return fresh

    def advance(self, fresh: list[EntryRow], entries: list[EntryRow]) -> None:
        """Move the position past a stored batch (``fresh``: its entries not held before)."""
        if fresh:
            self.high = max(self.high, fresh[-1][0] + self.offset)
        if entries:
            # Entries arrive in seq order; everything up to the batch's last seq is now
            # durable (gaps are entries the agent dropped and will never send).
            self.acked = max(self.acked, entries[-1][0])


def check_device(device_id: str, row: R | None) -> R:
    """Return the device's row (its first column: disabled); Forbidden if there is none
    or the device is disabled (an unknown or disabled device stores nothing)."""
    if row is None:
        raise Forbidden(f"device {device_id!r} is not enrolled")
    if row[0]:
        raise Forbidden(f"device {device_id!r} is disabled")
    return row


def applied_revision(batch: SyncBatch) -> int:
    """Return the revision the device says it applied (the status's, if it carries one)."""
    if batch.status is not None and batch.status.applied_revision is not None:
        return batch.status.applied_revision
    return batch.applied_revision


def device_update(
    batch: SyncBatch, current: list[Any], received: str
) -> tuple[list[str], list[Any]]:
    """Return the SET clauses and values a batch writes to its device row (``current``:
    the row's STATUS_FIELDS as stored)."""
    sets = ["last_contact = ?", "applied_revision = ?", "protocol = ?"]
    args: list[Any] = [received, applied_revision(batch), batch.protocol]
    if batch.features is not None:
        sets.append("features = ?")
        args.append(rows.dumps(sorted(set(batch.features))))
    if batch.status is not None:
        status_sets, status_args = status_update(
            dict(zip(STATUS_FIELDS, current, strict=True)), batch.status, received
        )
        sets += status_sets
        args += status_args
    return sets, args


def status_update(
    current: dict[str, Any], status: Any, received: str
) -> tuple[list[str], list[Any]]:
    """Return the SET clauses and values that merge a status snapshot into a device row."""
    for name in JSON_STATUS_FIELDS:
        current[name] = rows.loads(current[name])
    merged = merge_status(current, status)
    sets: list[str] = []
    args: list[Any] = []
    for name in STATUS_FIELDS:
        value = merged[name]
        sets.append(f"{name} = ?")
        args.append(
            rows.dumps(value) if name in JSON_STATUS_FIELDS and value is not None else value
        )
    sets.append("status_at = ?")
    args.append(received)
    if status.agent_version is not None:
        sets.append("agent_version = ?")
        args.append(status.agent_version)
    if status.full:
        sets.append("has_full_status = 1")
    return sets, args


class SyncBounds:
    """The bounds of what a sync records besides its entries, the same attributes on
    either store (``open_store`` sets them from the hub config)."""

    action_result_max_bytes: int = 256 * 1024  # actions.max_result_bytes
    action_parts_bound: PartsBound = PartsBound()  # actions.logs_max_lines, logs_max_bytes
    contact_gap_s: float = 90.0  # fleet.online_after_s: a longer silence opens a new span
    contact_max_spans: int = 500  # dashboard.contact_spans_per_device
    contact_spans_trimmed: int = 0  # spans deleted to stay within contact_max_spans
    audit_gap_bound: AuditGapBound = AuditGapBound()  # audit.device_gap_grace_s, max_held


def extends_span(last_at: str, at: datetime, gap_s: float) -> bool:
    """Return whether a contact at ``at`` extends the device's newest contact span (the
    one last extended at ``last_at``) rather than opening a new one after a silence."""
    return at - datetime.fromisoformat(last_at) <= timedelta(seconds=gap_s)


# metrics samples (kept apart from events, bounded per device) -------------------------

METRICS_KIND = "metrics"


@dataclass
class MetricsState:
    """A device's metrics bookkeeping (``device_metrics_state``)."""

    high: int = 0  # the highest hub seq ever stored: a sample at or below it is not again
    held: int = 0
    trimmed: int = 0
    oversize: int = 0

    def take(
        self, entries: Sequence[EntryRow], offset: int, floor: int, max_sample_bytes: int
    ) -> list[tuple[int, str, str]]:
        """Return the batch's new samples to store, as (hub seq, at, sample); count the
        ones refused for their size."""
        keep: list[tuple[int, str, str]] = []
        for seq, kind, at, payload in entries:
            if kind != METRICS_KIND or seq <= floor:
                continue
            hub_seq = seq + offset
            if hub_seq <= self.high:
                continue
            self.high = hub_seq
            if len(payload) > max_sample_bytes:
                self.oversize += 1
            else:
                keep.append((hub_seq, at, payload))
        return keep

    def excess(self, history_per_device: int) -> int:
        """Return how many of the oldest samples to delete to stay within the bound."""
        return max(0, self.held - history_per_device)

    def trim(self, gone: int) -> None:
        """Count ``gone`` samples deleted for the bound."""
        self.held -= gone
        self.trimmed += gone

    def values(self) -> tuple[int, int, int, int]:
        """Return (high_seq, held, trimmed, oversize) as stored."""
        return self.high, self.held, self.trimmed, self.oversize


def has_metrics(entries: Sequence[EntryRow], floor: int) -> bool:
    """Return whether the batch carries a metrics sample not held yet."""
    return any(e[1] == METRICS_KIND and e[0] > floor for e in entries)


# queued actions: receipts, result parts and results ---------------------------------

ACTION_MARK = '"type":"action"'  # cheap test before an event entry is parsed
MAX_REASON_CHARS = 1000


def action_docs(entries: Sequence[EntryRow], floor: int) -> list[dict[str, Any]]:
    """Return the batch's new action updates (event entries of type action, with an id)."""
    docs = []
    for seq, kind, _c, payload in entries:
        if kind != "event" or seq <= floor or ACTION_MARK not in payload:
            continue
        doc = json.loads(payload)
        if not isinstance(doc, dict) or doc.get("type") != "action":
            continue
        if isinstance(doc.get("id"), str):
            docs.append(doc)
    return docs


def part_lines(doc: dict[str, Any]) -> tuple[int, list[Any]] | None:
    """Return a result part's (number, lines), or None if the part is malformed."""
    part, lines = doc.get("part"), doc.get("lines")
    if type(part) is not int or part < 1 or not isinstance(lines, list):
        return None
    return part, lines


def lines_within(lines: list[Any], max_lines: int, max_bytes: int) -> tuple[list[str], int]:
    """Return the first lines that fit the room left, and their bytes (line + newline)."""
    kept: list[str] = []
    size = 0
    for line in lines[: max(0, max_lines)]:
        text = str(line)
        n = len(text.encode()) + 1
        if size + n > max_bytes:
            break
        kept.append(text)
        size += n
    return kept, size


def result_values(doc: dict[str, Any], max_bytes: int) -> tuple[str | None, str | None, int]:
    """Return a final action update's stored (reason, result) and 1 if the result was cut
    to ``max_bytes`` (the device bounds it too; this holds for any agent), else 0."""
    result = doc.get("result")
    text = rows.dumps(result) if isinstance(result, dict) else None
    cut = 0
    if text is not None and len(text) > max_bytes:
        text, cut = rows.dumps({"truncated": True, "original_bytes": len(text)}), 1
    reason = doc.get("reason")
    return (str(reason)[:MAX_REASON_CHARS] if reason else None), text, cut
