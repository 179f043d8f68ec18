"""The sync ingest's rules, the same on both stores (no SQL, no I/O).

``hub.store.sqlite`` and ``hub.store.pg_sync`` read and write the rows; what a batch
does to them is decided here: who may sync, where a store generation's seqs live among
the hub's, which entries are taken, how the ack advances, and how the status merges.
SET clauses are written with ``?`` placeholders (PostgreSQL numbers them with
``pg_core.dollar``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from edge_agent.protocol import INT64_MAX
from hub.errors import Forbidden, InvalidRequest
from hub.fleet import STATUS_FIELDS, merge_status
from hub.store import sqlite_rows as rows
from hub.store.records import EntryRow, SyncBatch

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
