"""SqliteStore's part for device metrics (hub migration 14).

A mixin, like ``hub.store.sqlite_technicians``. ``metrics`` entries a sync carries are
kept in ``device_metrics`` rather than ``events``, at most ``history_per_device`` per
device: each sync's job deletes the oldest beyond the bound and counts them in
``device_metrics_state``, with the samples refused for their size. Hub retention
(``hub.retention``) also deletes samples received longer than ``retention.max_age_s``
ago. A sample older than the newest one ever stored (a re-delivery after trimming) is
not stored again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.store import sqlite_rows as rows
from hub.store.records import EntryRow, MetricsBound, MetricsHistory, MetricsSample
from hub.store.sync_rules import MetricsState, has_metrics

if TYPE_CHECKING:
    from hub.store.writer import GroupCommitWriter

COLUMNS = "seq, at, received_at, sample"


def save_metrics(
    db: sqlite3.Connection,
    device_id: str,
    entries: Sequence[EntryRow],
    offset: int,
    floor: int,
    received: str,
    bound: MetricsBound,
) -> None:
    """Store the batch's metrics samples and trim the device's history (inside a sync's job)."""
    if not has_metrics(entries, floor):
        return
    row = db.execute(
        "SELECT high_seq, held, trimmed, oversize FROM device_metrics_state WHERE device_id = ?",
        (device_id,),
    ).fetchone()
    state = MetricsState(*row) if row is not None else MetricsState()
    keep = state.take(entries, offset, floor, bound.max_sample_bytes)
    before = db.total_changes
    db.executemany(
        "INSERT OR IGNORE INTO device_metrics VALUES (?,?,?,?,?)",
        [(device_id, seq, at, received, sample) for seq, at, sample in keep],
    )
    state.held += db.total_changes - before
    if excess := state.excess(bound.history_per_device):
        cur = db.execute(
            "DELETE FROM device_metrics WHERE device_id = ? AND seq IN (SELECT seq FROM "
            "device_metrics WHERE device_id = ? ORDER BY seq LIMIT ?)",
            (device_id, device_id, excess),
        )
        state.trim(cur.rowcount)
    db.execute(
        "INSERT OR REPLACE INTO device_metrics_state VALUES (?,?,?,?,?)",
        (device_id, *state.values()),
    )


class MetricsMixin:
    """Device metrics history on SQLite."""

    if TYPE_CHECKING:
        _w: GroupCommitWriter

        async def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]: ...

    async def trim_metrics_by_age(self, device_id: str, before: datetime, batch: int) -> int:
        """Delete up to ``batch`` of the device's oldest samples received before ``before``
        (hub retention, one short transaction); return how many."""
        cutoff = rows.ts(before)

        def job(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "DELETE FROM device_metrics WHERE device_id = ? AND seq IN (SELECT seq FROM "
                "device_metrics WHERE device_id = ? AND received_at < ? ORDER BY seq LIMIT ?)",
                (device_id, device_id, cutoff, batch),
            )
            if cur.rowcount:
                db.execute(
                    "UPDATE device_metrics_state SET held = MAX(0, held - ?) WHERE device_id = ?",
                    (cur.rowcount, device_id),
                )
            return cur.rowcount

        return int(await self._w.submit(job))

    async def list_metrics(
        self, device_id: str, since: datetime | None, limit: int
    ) -> MetricsHistory:
        """Return the device's newest ``limit`` samples taken at or after ``since``, oldest
        first, with the counts of its bounds."""
        found = await self._read(
            f"SELECT {COLUMNS} FROM (SELECT {COLUMNS} FROM device_metrics "
            "WHERE device_id = ? AND at >= ? ORDER BY seq DESC LIMIT ?) ORDER BY seq",
            (device_id, rows.ts(since) if since is not None else "", limit),
        )
        state = await self._read(
            "SELECT held, trimmed, oversize FROM device_metrics_state WHERE device_id = ?",
            (device_id,),
        )
        held, trimmed, oversize = state[0] if state else (0, 0, 0)
        return MetricsHistory([rows.metrics_sample(r) for r in found], held, trimmed, oversize)

    async def latest_metrics(self, device_id: str) -> MetricsSample | None:
        """Return the device's newest sample."""
        found = await self._read(
            f"SELECT {COLUMNS} FROM device_metrics WHERE device_id = ? ORDER BY seq DESC LIMIT 1",
            (device_id,),
        )
        return rows.metrics_sample(found[0]) if found else None
