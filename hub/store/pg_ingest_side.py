"""What PostgresStore's sync ingest derives from a batch besides its entries (pg migration 5).

The PostgreSQL twins of what SQLite's ``ingest_sync`` job does after storing entries:
the device audit chain (``hub.device_audit``), metrics samples (``hub.store.sqlite_metrics``),
receipts, results and parts of queued actions (``hub.store.sqlite_actions``) and the host
container report (``hub.store.sqlite_hosts``). Each runs in the batch's transaction, with the
device row locked by ``pg_sync.ingest``: batches of one device are applied one after the
other, so each side record is taken once however often (or wherever) a batch is sent. The
decisions are the SQLite modules' pure parts, imported, not copied.

A device audit record is placed in the audit listing after the hub audit row that was last
when it arrived (``feed_after``). Taking that position under the hub audit chain's advisory
lock (``pg_core.AUDIT_LOCK``, held to commit) keeps the listing append-only across hub
processes: no hub row is committed with a lower id after the device record.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_agent.actiondoc import RESULTS, next_state
from edge_agent.protocol import StatusSnapshot
from hub.device_audit import ChainState, DeviceRecord, judge, row_values
from hub.device_audit import next_state as next_chain_state
from hub.drift import sighting_keys
from hub.store import sqlite_rows as rows
from hub.store.pg_core import AUDIT_LOCK
from hub.store.records import EntryRow, PartsBound
from hub.store.sqlite_actions import ACTION_MARK, _within
from hub.store.sqlite_metrics import KIND as METRICS_KIND
from hub.store.sqlite_metrics import MetricsBound

if TYPE_CHECKING:
    import asyncpg


@dataclass(frozen=True)
class SideBounds:
    """The bounds a batch's side records are kept within (the hub config's)."""

    metrics: MetricsBound = field(default_factory=MetricsBound)
    max_result_bytes: int = 256 * 1024
    parts: PartsBound = field(default_factory=PartsBound)


class PgIngestSideMixin:
    """The bounds of the side records, settable like SqliteStore's (``open_store``)."""

    action_result_max_bytes: int = 256 * 1024
    action_parts_bound: PartsBound = PartsBound()
    _metrics_bound: MetricsBound = MetricsBound()

    def _side_bounds(self) -> SideBounds:
        return SideBounds(
            self._metrics_bound, self.action_result_max_bytes, self.action_parts_bound
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
    await observe_audit(conn, device_id, entries, offset, floor, received)
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
) -> None:
    """Store and verify the batch's new audit records, as ``hub.device_audit.observe``."""
    audits = [
        (seq + offset, json.loads(p))
        for seq, kind, _c, p in entries
        if kind == "audit" and seq > floor
    ]
    if not audits:
        return
    await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK)
    feed_after = await conn.fetchval("SELECT COALESCE(MAX(id), 0) FROM audit")
    state, counts = await _load_chain(conn, device_id)
    parsed = [(seq, payload, DeviceRecord.parse(payload)) for seq, payload in audits]
    for i, (seq, payload, record) in enumerate(parsed):
        reason = None
        if record is not None:
            pending = {r.id for _s, _p, r in parsed[i + 1 :] if r is not None}
            reason = judge(state, record, pending)
        if not await _insert_record(conn, device_id, seq, payload, received, reason, feed_after):
            continue  # a re-delivered entry: judged when it first arrived
        if record is None:
            counts["unverifiable"] += 1
            continue
        counts["verified"] += 1
        if reason is not None:
            counts["breaks"] += 1
            await conn.execute(
                "INSERT INTO device_audit_chain (device_id, last_id, last_hash, broken_id, "
                "broken_at, broken_reason) VALUES ($1, 0, '', $2, $3, $4) "
                "ON CONFLICT (device_id) DO UPDATE SET "
                "broken_id = COALESCE(device_audit_chain.broken_id, excluded.broken_id), "
                "broken_at = COALESCE(device_audit_chain.broken_at, excluded.broken_at), "
                "broken_reason = COALESCE(device_audit_chain.broken_reason, "
                "excluded.broken_reason)",
                device_id,
                record.id,
                received,
                reason,
            )
        state = next_chain_state(state, record)
    last_id, last_hash = (state.last_id, state.last_hash) if state else (0, "")
    await conn.execute(
        "INSERT INTO device_audit_chain (device_id, last_id, last_hash, verified, unverifiable, "
        "breaks) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (device_id) DO UPDATE SET "
        "last_id = excluded.last_id, last_hash = excluded.last_hash, "
        "verified = excluded.verified, unverifiable = excluded.unverifiable, "
        "breaks = excluded.breaks",
        device_id,
        last_id,
        last_hash,
        counts["verified"],
        counts["unverifiable"],
        counts["breaks"],
    )


async def _load_chain(
    conn: asyncpg.Connection, device_id: str
) -> tuple[ChainState | None, dict[str, int]]:
    row = await conn.fetchrow(
        "SELECT last_id, last_hash, verified, unverifiable, breaks FROM device_audit_chain "
        "WHERE device_id = $1",
        device_id,
    )
    if row is None:
        return None, {"verified": 0, "unverifiable": 0, "breaks": 0}
    last_id, last_hash, verified, unverifiable, breaks = row
    state = ChainState(last_id, last_hash) if last_hash else None
    return state, {"verified": verified, "unverifiable": unverifiable, "breaks": breaks}


async def _insert_record(
    conn: asyncpg.Connection,
    device_id: str,
    seq: int,
    payload: dict[str, Any],
    received: str,
    reason: str | None,
    feed_after: int,
) -> bool:
    status = await conn.execute(
        "INSERT INTO device_audit (device_id, seq, record_id, at, received_at, actor, action, "
        "object, outcome, detail, hash, broken, feed_after) VALUES "
        "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) "
        "ON CONFLICT (device_id, seq) DO NOTHING",
        *row_values(device_id, seq, payload, received, reason),
        feed_after,
    )
    return bool(status == "INSERT 0 1")


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
    fresh = [e for e in entries if e[1] == METRICS_KIND and e[0] > floor]
    if not fresh:
        return
    row = await conn.fetchrow(
        "SELECT high_seq, held, trimmed, oversize FROM device_metrics_state WHERE device_id = $1",
        device_id,
    )
    high, held, trimmed, oversize = tuple(row) if row is not None else (0, 0, 0, 0)
    keep: list[tuple[int, str, str]] = []
    for seq, _, at, payload in fresh:
        hub_seq = seq + offset
        if hub_seq <= high:
            continue
        high = hub_seq
        if len(payload) > bound.max_sample_bytes:
            oversize += 1
        else:
            keep.append((hub_seq, at, payload))
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
        held += int(status.rsplit(" ", 1)[1])
    if held > bound.history_per_device:
        status = await conn.execute(
            "DELETE FROM device_metrics WHERE device_id = $1 AND seq IN (SELECT seq FROM "
            "device_metrics WHERE device_id = $1 ORDER BY seq LIMIT $2)",
            device_id,
            held - bound.history_per_device,
        )
        gone = int(status.rsplit(" ", 1)[1])
        held -= gone
        trimmed += gone
    await conn.execute(
        "INSERT INTO device_metrics_state (device_id, high_seq, held, trimmed, oversize) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_id) DO UPDATE SET "
        "high_seq = excluded.high_seq, held = excluded.held, trimmed = excluded.trimmed, "
        "oversize = excluded.oversize",
        device_id,
        high,
        held,
        trimmed,
        oversize,
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
    for seq, kind, _c, payload in entries:
        if kind != "event" or seq <= floor or ACTION_MARK not in payload:
            continue
        doc = json.loads(payload)
        if not isinstance(doc, dict) or doc.get("type") != "action":
            continue
        if not isinstance(doc.get("id"), str):
            continue
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
    part, lines = doc.get("part"), doc.get("lines")
    if type(part) is not int or part < 1 or not isinstance(lines, list):
        return 0
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
    kept, size = _within(lines, bound.max_lines - held_lines, bound.max_bytes - held_bytes)
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
    result = doc.get("result")
    text = rows.dumps(result) if isinstance(result, dict) else None
    cut = 0
    if text is not None and len(text) > max_bytes:
        text, cut = rows.dumps({"truncated": True, "original_bytes": len(text)}), 1
    reason = doc.get("reason")
    await conn.execute(
        "UPDATE actions SET state = $1, state_at = $2, reason = $3, result = $4, "
        "received_at = COALESCE(received_at, $2) WHERE id = $5",
        state,
        at,
        str(reason)[:1000] if reason else None,
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
