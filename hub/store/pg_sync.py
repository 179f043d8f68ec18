"""PostgresStore's sync ingest: entries stored once each, the ack, the merged status.

The SQLite store's rules (both follow hub.store.sync_rules): hub seq = device seq + the
generation's offset; a new store generation (epoch) gets seqs above everything held for the
device; acked_seq only grows. The device row is locked (``FOR UPDATE``) for the transaction, so
batches of one device arriving at several hub processes at once are applied one after
the other; entries go in with one multi-row ``INSERT ... SELECT FROM unnest(...) ON
CONFLICT DO NOTHING`` (a duplicate batch inserts nothing and acks the same). The side
records a batch carries (device audit chain, metrics samples, action results and parts,
the host container report) are written in the same transaction (``pg_ingest_side``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from hub.fleet import STATUS_FIELDS
from hub.store import sqlite_rows as rows
from hub.store import sync_rules
from hub.store.pg_core import dollar
from hub.store.pg_ingest_side import SideBounds, observe_batch, save_host_report
from hub.store.records import EntryRow, SyncBatch
from hub.store.sync_rules import SeqSpace

INSERT_EVENTS = (
    "INSERT INTO events (device_id, seq, kind, created_at, received_at, payload) "
    "SELECT $1, s, k, c, $2, p FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[]) "
    "AS e(s, k, c, p) ON CONFLICT (device_id, seq) DO NOTHING"
)


async def ingest(
    conn: asyncpg.Connection,
    device_id: str,
    batch: SyncBatch,
    now: datetime,
    bounds: SideBounds | None = None,
) -> tuple[int, int, bool, int]:
    """Apply one batch in the caller's transaction; return (acked, target rev, full, inserted)."""
    received = rows.ts(now)
    row = await conn.fetchrow(
        f"SELECT disabled, target_revision, has_full_status, {', '.join(STATUS_FIELDS)}, "
        "store_epoch, seq_offset, seq_floor, acked_seq, seq_high "
        "FROM devices WHERE id = $1 FOR UPDATE",
        device_id,
    )
    _, target_revision, has_full, *rest = sync_rules.check_device(device_id, row)
    current, position = rest[: len(STATUS_FIELDS)], rest[len(STATUS_FIELDS) :]
    space = await _seq_space(conn, device_id, batch.epoch, position)
    inserted = await _insert_entries(conn, device_id, space, batch.entries, received)
    await observe_batch(
        conn,
        device_id,
        batch.entries,
        space.offset,
        space.floor,
        received,
        bounds or SideBounds(),
    )
    sets, args = sync_rules.device_update(batch, current, received)
    # The position the entries moved to goes in the same statement (one round trip).
    sets += ["store_epoch = ?", "seq_offset = ?", "seq_floor = ?", "acked_seq = ?", "seq_high = ?"]
    args += [space.epoch, space.offset, space.floor, space.acked, space.high]
    if batch.status is not None:
        has_full = has_full or batch.status.full
    clauses = dollar(sets, 1)
    await conn.execute(
        f"UPDATE devices SET {', '.join(clauses)} WHERE id = ${len(args) + 1}", *args, device_id
    )
    if batch.status is not None:
        await save_host_report(conn, device_id, batch.status, received)
    return space.acked, target_revision, bool(has_full), inserted


async def _seq_space(
    conn: asyncpg.Connection, device_id: str, epoch: str, position: list[Any]
) -> SeqSpace:
    """Return the device's sequence space for ``epoch``, opening it if it is not current."""
    cur, offset, floor, acked, high = position
    if cur == epoch:
        return SeqSpace(epoch, offset, floor, acked, high)
    await conn.execute(
        "INSERT INTO device_epochs VALUES ($1, $2, $3) ON CONFLICT (device_id, epoch) "
        "DO UPDATE SET acked_seq = GREATEST(device_epochs.acked_seq, excluded.acked_seq)",
        device_id,
        cur,
        acked,
    )
    before = await conn.fetchval(
        "SELECT acked_seq FROM device_epochs WHERE device_id = $1 AND epoch = $2",
        device_id,
        epoch,
    )
    return SeqSpace.opened(epoch, high, before or 0)


async def _insert_entries(
    conn: asyncpg.Connection,
    device_id: str,
    space: SeqSpace,
    entries: list[EntryRow],
    received: str,
) -> int:
    """Store the entries in ``space`` once each and advance ``space``; return how many."""
    fresh = space.fresh(entries)
    inserted = 0
    # metrics samples are kept apart, bounded per device (pg_ingest_side.save_metrics)
    kept = [e for e in fresh if e[1] != "metrics"]
    if kept:
        status = await conn.execute(
            INSERT_EVENTS,
            device_id,
            received,
            [s + space.offset for s, _, _, _ in kept],
            [k for _, k, _, _ in kept],
            [c for _, _, c, _ in kept],
            [p for _, _, _, p in kept],
        )
        inserted = int(status.rsplit(" ", 1)[1])
    space.advance(fresh, entries)  # the caller writes the new position with the status
    return inserted
