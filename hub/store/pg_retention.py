"""PostgresStore's part for retention of device data (SQLite's sqlite_logs and sqlite_metrics).

Deletes rows of ``events`` (never those of kind ``audit``, nor ``device_audit``) and
metrics samples in batches of at most ``batch`` rows, each batch one short transaction.
Sizes are the payload's bytes (``octet_length``, SQLite's ``length(CAST(.. AS BLOB))``).
Two hub processes trimming one device at once delete each row once; each returns what it
deleted itself.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.store import sqlite_rows as rows
from hub.store.sqlite_logs import DELETABLE

if TYPE_CHECKING:
    import asyncpg


async def _delete(conn: asyncpg.Connection, device_id: str, seqs: list[int]) -> int:
    if not seqs:
        return 0
    status = await conn.execute(
        "DELETE FROM events WHERE device_id = $1 AND seq = ANY($2::bigint[])", device_id, seqs
    )
    return int(status.rsplit(" ", 1)[1])


class PgRetentionMixin:
    """Retention of device data on PostgreSQL."""

    if TYPE_CHECKING:

        def _tx(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...

        async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]: ...

    async def retention_devices(self) -> list[str]:
        """Return every device id (retention walks them one by one)."""
        return [r[0] for r in await self._read('SELECT id FROM devices ORDER BY id COLLATE "C"')]

    async def trim_device_by_age(self, device_id: str, before: datetime, batch: int) -> int:
        """Delete up to ``batch`` of the device's oldest rows received before ``before``."""
        cutoff = rows.ts(before)
        async with self._tx() as conn:
            # Oldest first by seq, which follows arrival: stop at the first young row.
            seqs = []
            for seq, received in await conn.fetch(
                f"SELECT seq, received_at FROM events WHERE device_id = $1 AND {DELETABLE} "
                "ORDER BY seq LIMIT $2",
                device_id,
                batch,
            ):
                if received >= cutoff:
                    break
                seqs.append(seq)
            return await _delete(conn, device_id, seqs)

    async def device_data_cut(self, device_id: str, max_bytes: int) -> int | None:
        """Return the highest seq whose deletion brings the device within ``max_bytes``
        (None: within it). A read, off the write path."""
        found = await self._read(
            "SELECT seq FROM (SELECT seq, SUM(octet_length(payload)) OVER (ORDER BY seq DESC) "
            f"AS newer FROM events WHERE device_id = $1 AND {DELETABLE}) AS sized "
            "WHERE newer > $2 ORDER BY seq DESC LIMIT 1",
            device_id,
            max_bytes,
        )
        return int(found[0][0]) if found else None

    async def trim_device_upto(self, device_id: str, cut: int, batch: int) -> int:
        """Delete up to ``batch`` of the device's oldest deletable rows with seq <= ``cut``."""
        async with self._tx() as conn:
            found = await conn.fetch(
                f"SELECT seq FROM events WHERE device_id = $1 AND seq <= $2 AND {DELETABLE} "
                "ORDER BY seq LIMIT $3",
                device_id,
                cut,
                batch,
            )
            return await _delete(conn, device_id, [r[0] for r in found])

    async def device_data_size(self, device_id: str) -> tuple[int, int]:
        """Return (rows, bytes) the device's deletable data holds."""
        found = await self._read(
            "SELECT COUNT(*), COALESCE(SUM(octet_length(payload)), 0) FROM events "
            f"WHERE device_id = $1 AND {DELETABLE}",
            device_id,
        )
        return int(found[0][0]), int(found[0][1])

    async def trim_metrics_by_age(self, device_id: str, before: datetime, batch: int) -> int:
        """Delete up to ``batch`` of the device's oldest samples received before ``before``
        (hub retention, one short transaction); return how many."""
        async with self._tx() as conn:
            status = await conn.execute(
                "DELETE FROM device_metrics WHERE device_id = $1 AND seq IN (SELECT seq FROM "
                "device_metrics WHERE device_id = $1 AND received_at < $2 ORDER BY seq "
                "LIMIT $3)",
                device_id,
                rows.ts(before),
                batch,
            )
            gone = int(status.rsplit(" ", 1)[1])
            if gone:
                await conn.execute(
                    "UPDATE device_metrics_state SET held = GREATEST(0, held - $1) "
                    "WHERE device_id = $2",
                    gone,
                    device_id,
                )
            return gone
