"""SqliteStore's part for monitoring: fleet and rollout counts, writer and file sizes.

Read at every Prometheus scrape (``hub.prom``), so each is one aggregate query whose
answer is bounded by the label sets (connectivity x drift, rollout statuses), never a
row per device. The drift ``CASE`` is ``hub.fleet.drift`` in SQL; a test compares the
two over a table of device rows.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.store import sqlite_rows as rows
from hub.store.records import WriterStats

if TYPE_CHECKING:
    from hub.store.writer import GroupCommitWriter

ROLLING_OUT_SQL = "('waiting_window', 'applying', 'settling')"  # hub.fleet.ROLLING_OUT
DRIFT_SQL = f"""CASE
    WHEN target_revision <= 0 THEN 'no_target'
    WHEN rollout_state IS NULL THEN
        CASE WHEN applied_revision = target_revision THEN 'in_sync' ELSE 'drifted' END
    WHEN running_revision = target_revision AND COALESCE(running_local_seq, 0) = 0
        AND rollout_state = 'good' THEN 'in_sync'
    WHEN applying_revision = target_revision AND rollout_state IN {ROLLING_OUT_SQL}
        THEN 'updating'
    ELSE 'drifted' END"""
CONNECTIVITY_SQL = """CASE
    WHEN last_contact IS NULL THEN 'stale'
    WHEN last_contact >= ? THEN 'online'
    WHEN last_contact >= ? THEN 'offline'
    ELSE 'stale' END"""
FLEET_COUNTS = (
    f"SELECT {CONNECTIVITY_SQL} AS c, {DRIFT_SQL} AS d, SUM(disabled), COUNT(*) "
    "FROM devices GROUP BY c, d"
)


class StatsMixin:
    """Monitoring reads on SQLite."""

    if TYPE_CHECKING:
        path: Path
        _writer: GroupCommitWriter | None
        point_read_fallbacks: int
        _commit_observer: Callable[[int, float], None] | None

        async def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]: ...

    async def fleet_counts(
        self, online_since: datetime, stale_since: datetime
    ) -> dict[tuple[str, str], tuple[int, int]]:
        """Return (connectivity, drift) -> (devices, of them disabled), in one query."""
        found = await self._read(FLEET_COUNTS, (rows.ts(online_since), rows.ts(stale_since)))
        return {(c, d): (int(n), int(off or 0)) for c, d, off, n in found}

    async def rollout_counts(self) -> dict[str, int]:
        """Return status -> how many rollouts are in it."""
        found = await self._read("SELECT status, COUNT(*) FROM rollouts GROUP BY status")
        return {status: int(n) for status, n in found}

    def writer_stats(self) -> WriterStats:
        """Return the writer's queue and counters and the database files' sizes (stat only)."""
        writer = self._writer
        return WriterStats(
            queue_depth=writer.depth() if writer is not None else 0,
            groups=writer.groups if writer is not None else 0,
            jobs=writer.jobs if writer is not None else 0,
            wal_truncations=writer.wal_truncations if writer is not None else 0,
            db_bytes=_size(self.path),
            wal_bytes=_size(self.path.with_name(self.path.name + "-wal")),
            point_read_fallbacks=self.point_read_fallbacks,
        )

    def watch_commits(self, observer: Callable[[int, float], None]) -> None:
        """Call ``observer(jobs, seconds)`` after every group commit from now on."""
        self._commit_observer = observer
        if self._writer is not None:
            self._writer.on_commit = observer


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
