"""What PostgresStore's sync ingest derives from a batch besides its entries (pg migration 5).

The PostgreSQL twins of what SQLite's ``ingest_sync`` job does after storing entries:
the device audit chain (``hub.device_audit``), metrics samples (``hub.store.sqlite_metrics``),
receipts, results and parts of queued actions (``hub.store.sqlite_actions``) and the host
container report (``hub.store.sqlite_hosts``). Each runs in the batch's transaction, with the
device row locked by ``pg_sync.ingest``: batches of one device are applied one after the
other, so each side record is taken once however often (or wherever) a batch is sent. The
decisions are shared with SQLite, not copied (``hub.store.sync_rules``, ``hub.device_audit``).

A device audit record is placed in the audit listing after the hub audit row that was last
when it arrived (``feed_after``). Taking that position under the hub audit chain's advisory
lock (``pg_core.AUDIT_LOCK``, held to commit) keeps the listing append-only across hub
processes: no hub row is committed with a lower id after the device record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_agent.actiondoc import RESULTS, next_state
from edge_agent.protocol import StatusSnapshot
from hub.device_audit import (
    CHAIN_ROW_SELECT,
    HELD_SELECT,
    JUDGED_UPDATE,
    STORED_SELECT,
    Chain,
    chain_of,
    fresh_records,
    row_values,
    seq_span,
)
from hub.drift import sighting_keys
from hub.store import sqlite_rows as rows
from hub.store.pg_core import AUDIT_LOCK, dollar
from hub.store.records import AuditGapBound, EntryRow, MetricsBound, PartsBound
from hub.store.sync_rules import (
    MetricsState,
    SyncBounds,
    action_docs,
    has_metrics,
    lines_within,
    part_lines,
    result_values,
)

if TYPE_CHECKING:
    import asyncpg


# hub.device_audit's statements with PostgreSQL's numbered placeholders
PG_CHAIN_ROW_SELECT, PG_HELD_SELECT, PG_STORED_SELECT, PG_JUDGED_UPDATE = (
    dollar([statement], 1)[0]
    for statement in (CHAIN_ROW_SELECT, HELD_SELECT, STORED_SELECT, JUDGED_UPDATE)
)


@dataclass(frozen=True)
class SideBounds:
    """The bounds a batch's side records are kept within (the hub config's)."""

    metrics: MetricsBound = field(default_factory=MetricsBound)
    max_result_bytes: int = SyncBounds.action_result_max_bytes
    parts: PartsBound = SyncBounds.action_parts_bound
    audit: AuditGapBound = SyncBounds.audit_gap_bound


class PgIngestSideMixin(SyncBounds):
    """The bounds of the side records, settable like SqliteStore's (``open_store``)."""

    _metrics_bound: MetricsBound = MetricsBound()

    def _side_bounds(self) -> SideBounds:
        return SideBounds(
            self._metrics_bound,
            self.action_result_max_bytes,
            self.action_parts_bound,
            self.audit_gap_bound,
        )


async def observe_batch(
    conn: asyncpg.Connection,
    device_id: str,
    entries: Sequence[EntryRow],
    offset: int,
    floor: int,
    received: str,
    bounds: SideBounds,
) -> None:
    """Store the batch's audit records, metrics samples and action updates (in its tx)."""
    await observe_audit(conn, device_id, entries, offset, floor, received, bounds.audit)
    await save_metrics(conn, device_id, entries, offset, floor, received, bounds.metrics)
    await observe_actions(
        conn, device_id, entries, floor, received, bounds.max_result_bytes, bounds.parts
    )


# device audit chain (hub.device_audit.observe) ----------------------------------------


async def observe_audit(
    conn: asyncpg.Connection,
    device_id: str,
    entries: Sequence[EntryRow],
    offset: int,
    floor: int,
    received: str,
    bound: AuditGapBound,
) -> None:
    """Store and verify the batch's new audit records, as ``hub.device_audit.observe``."""
    parsed = fresh_records(entries, offset, floor)
    if not parsed:
        return
    await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK)
    feed_after = await conn.fetchval("SELECT COALESCE(MAX(id), 0) FROM audit")
    chain = await load_chain(conn, device_id)
    low, high = seq_span(parsed)
    stored = {r[0] for r in await conn.fetch(PG_STORED_SELECT, device_id, low, high)}
    chain.take(parsed, stored, received, bound)
    await write_chain(conn, device_id, chain, received, feed_after)


async def settle_audit_gap(
    conn: asyncpg.Connection, device_id: str, now: str, grace_s: float
) -> bool:
    """Declare the device's gap if its held records waited ``grace_s`` (in the caller's
    transaction, the device row locked as a sync's is); return whether it did."""
    await conn.execute("SELECT 1 FROM devices WHERE id = $1 FOR UPDATE", device_id)
    chain = await load_chain(conn, device_id)
    if not chain.settle(now, grace_s):
        return False
    await write_chain(conn, device_id, chain, now, 0)
    return True


async def load_chain(conn: asyncpg.Connection, device_id: str) -> Chain:
    """Return the device's chain and held records (``hub.device_audit.chain_of``)."""
    row = await conn.fetchrow(PG_CHAIN_ROW_SELECT, device_id)
    held: list[asyncpg.Record] = []
    if row is not None and row["held_since"] is not None:
        held = await conn.fetch(PG_HELD_SELECT, device_id)
    return chain_of(tuple(row) if row is not None else None, [tuple(h) for h in held])


async def write_chain(
    conn: asyncpg.Connection, device_id: str, chain: Chain, at: str, feed_after: int
) -> None:
    """Write what ``chain`` took: new rows (placed after hub row ``feed_after``), held
    records judged, the chain row (the first break kept)."""
    for new in chain.rows:
        await conn.execute(
            "INSERT INTO device_audit (device_id, seq, record_id, at, received_at, actor, "
            "action, object, outcome, detail, hash, broken, held, feed_after) VALUES "
            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) "
            "ON CONFLICT (device_id, seq) DO NOTHING",
            *row_values(device_id, new.seq, new.payload, at, new.reason),
            int(new.held),
            feed_after,
        )
    if chain.judged:
        await conn.executemany(
            PG_JUDGED_UPDATE, [(j.reason, device_id, j.seq) for j in chain.judged]
        )
    broken = (*chain.first_break, at) if chain.first_break else (None, None, None)
    await conn.execute(
        "INSERT INTO device_audit_chain (device_id, last_id, last_hash, verified, unverifiable, "
        "breaks, held_since, held_overflows, broken_id, broken_reason, broken_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
        "ON CONFLICT (device_id) DO UPDATE SET "
        "last_id = excluded.last_id, last_hash = excluded.last_hash, "
        "verified = excluded.verified, unverifiable = excluded.unverifiable, "
        "breaks = excluded.breaks, held_since = excluded.held_since, "
        "held_overflows = excluded.held_overflows, "
        "broken_id = COALESCE(device_audit_chain.broken_id, excluded.broken_id), "
        "broken_at = COALESCE(device_audit_chain.broken_at, excluded.broken_at), "
        "broken_reason = COALESCE(device_audit_chain.broken_reason, excluded.broken_reason)",
        device_id,
        *chain.values(),
        *broken,
    )


# metrics samples (hub.store.sqlite_metrics.save_metrics) -------------------------------


async def save_metrics(
    conn: asyncpg.Connection,
    device_id: str,
    entries: Sequence[EntryRow],
    offset: int,
    floor: int,
    received: str,
    bound: MetricsBound,
) -> None:
    """Store the batch's metrics samples and trim the device's history to its bound."""
    if not has_metrics(entries, floor):
        return
    row = await conn.fetchrow(
        "SELECT high_seq, held, trimmed, oversize FROM device_metrics_state WHERE device_id = $1",
        device_id,
    )
    state = MetricsState(*row) if row is not None else MetricsState()
    keep = state.take(entries, offset, floor, bound.max_sample_bytes)
    if keep:
        status = await conn.execute(
            "INSERT INTO device_metrics (device_id, seq, at, received_at, sample) "
            "SELECT $1, s, a, $2, p FROM unnest($3::bigint[], $4::text[], $5::text[]) "
            "AS m(s, a, p) ON CONFLICT (device_id, seq) DO NOTHING",
            device_id,
            received,
            [k[0] for k in keep],
            [k[1] for k in keep],
            [k[2] for k in keep],
        )
        state.held += int(status.rsplit(" ", 1)[1])
    if excess := state.excess(bound.history_per_device):
        status = await conn.execute(
            "DELETE FROM device_metrics WHERE device_id = $1 AND seq IN (SELECT seq FROM "
            "device_metrics WHERE device_id = $1 ORDER BY seq LIMIT $2)",
            device_id,
            excess,
        )
        state.trim(int(status.rsplit(" ", 1)[1]))
    await conn.execute(
        "INSERT INTO device_metrics_state (device_id, high_seq, held, trimmed, oversize) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_id) DO UPDATE SET "
        "high_seq = excluded.high_seq, held = excluded.held, trimmed = excluded.trimmed, "
        "oversize = excluded.oversize",
        device_id,
        *state.values(),
    )


# queued actions (hub.store.sqlite_actions.observe) -------------------------------------


async def observe_actions(
    conn: asyncpg.Connection,
    device_id: str,
    entries: Sequence[EntryRow],
    floor: int,
    received: str,
    max_result_bytes: int,
    parts_bound: PartsBound,
) -> int:
    """Apply the batch's action receipts, result parts and results; return results cut."""
    cut = 0
    for doc in action_docs(entries, floor):
        if doc.get("state") == "received":
            await conn.execute(
                "UPDATE actions SET received_at = COALESCE(received_at, $1) "
                "WHERE id = $2 AND device_id = $3",
                received,
                doc["id"],
                device_id,
            )
        elif doc.get("state") == "part":
            await _add_part(conn, device_id, doc, received, parts_bound)
        elif doc.get("state") in RESULTS:
            cut += await _finish(conn, device_id, doc, received, max_result_bytes)
    return cut


async def _add_part(
    conn: asyncpg.Connection, device_id: str, doc: dict[str, Any], at: str, bound: PartsBound
) -> int:
    """Store one result part once, within the action's bound; return the lines cut."""
    if (numbered := part_lines(doc)) is None:
        return 0
    part, lines = numbered
    if (
        await conn.fetchval(
            "SELECT 1 FROM actions WHERE id = $1 AND device_id = $2", doc["id"], device_id
        )
        is None
        or await conn.fetchval(
            "SELECT 1 FROM action_parts WHERE action_id = $1 AND part_no = $2", doc["id"], part
        )
        is not None
    ):
        return 0  # not this device's action, or a part taken before
    row = await conn.fetchrow(
        "SELECT lines, bytes FROM action_part_totals WHERE action_id = $1", doc["id"]
    )
    held_lines, held_bytes = tuple(row) if row is not None else (0, 0)
    kept, size = lines_within(lines, bound.max_lines - held_lines, bound.max_bytes - held_bytes)
    cut = len(lines) - len(kept)
    await conn.execute(
        "INSERT INTO action_parts (action_id, part_no, received_at, lines, n_lines, n_bytes) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        doc["id"],
        part,
        at,
        rows.dumps(kept),
        len(kept),
        size,
    )
    await conn.execute(
        "INSERT INTO action_part_totals (action_id, parts, lines, bytes, cut_lines) "
        "VALUES ($1, 1, $2, $3, $4) ON CONFLICT (action_id) DO UPDATE SET "
        "parts = action_part_totals.parts + 1, lines = action_part_totals.lines + excluded.lines, "
        "bytes = action_part_totals.bytes + excluded.bytes, "
        "cut_lines = action_part_totals.cut_lines + excluded.cut_lines",
        doc["id"],
        len(kept),
        size,
        cut,
    )
    return cut


async def _finish(
    conn: asyncpg.Connection, device_id: str, doc: dict[str, Any], at: str, max_bytes: int
) -> int:
    row = await conn.fetchrow(
        "SELECT state, delivered_at FROM actions WHERE id = $1 AND device_id = $2 FOR UPDATE",
        doc["id"],
        device_id,
    )
    if row is None:
        return 0
    state = next_state(row[0], doc["state"], delivered=row[1] is not None)
    if state is None:
        return 0  # final already: a result is taken once
    reason, text, cut = result_values(doc, max_bytes)
    await conn.execute(
        "UPDATE actions SET state = $1, state_at = $2, reason = $3, result = $4, "
        "received_at = COALESCE(received_at, $2) WHERE id = $5",
        state,
        at,
        reason,
        text,
        doc["id"],
    )
    return cut


# host container reports (hub.store.sqlite_hosts.save_host_report) ----------------------


async def save_host_report(
    conn: asyncpg.Connection, device_id: str, status: StatusSnapshot, received: str
) -> None:
    """Replace the device's host report and update its sightings (after the status merge)."""
    containers = status.host_containers
    if containers is None:
        return
    total = max(status.host_containers_total or 0, len(containers))
    await conn.execute(
        "INSERT INTO host_reports (device_id, containers, total, reported_at) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (device_id) DO UPDATE SET "
        "containers = excluded.containers, total = excluded.total, "
        "reported_at = excluded.reported_at",
        device_id,
        rows.dumps([c.model_dump() for c in containers]),
        total,
        received,
    )
    release = await conn.fetchval("SELECT release FROM devices WHERE id = $1", device_id)
    keys = sighting_keys(containers, release)
    held = {
        r[0]
        for r in await conn.fetch("SELECT key FROM host_sightings WHERE device_id = $1", device_id)
    }
    if held - keys:
        await conn.execute(
            "DELETE FROM host_sightings WHERE device_id = $1 AND key = ANY($2::text[])",
            device_id,
            sorted(held - keys),
        )
    if keys - held:
        await conn.execute(
            "INSERT INTO host_sightings (device_id, key, first_seen) "
            "SELECT $1, k, $2 FROM unnest($3::text[]) AS s(k)",
            device_id,
            received,
            sorted(keys - held),
        )
