"""The local log part of the agent store: every container log line kept, bounded, readable.

Mixed into ``Store`` next to the outbox (one file, one writer). ``append_logs`` (outbox.py)
keeps every line here, in the same transaction that queues the lines the shipping policy
lets through (``logpolicy.py``). Bounds, each configurable (``[logs]`` in the agent config)
and counted:

- ``max_bytes_per_container``: each service's container (a container replaced by an
  update continues its service's quota). Over it, the service's oldest lines are dropped
  and one marker row takes their place, "N lines dropped" — the outbox's drop markers
  extended to this table: the first dropped line's row becomes the marker, and a later
  drop grows the marker at the head of the service's log instead of writing another.
  Counter ``log_lines_dropped_quota``.
- ``max_age_s``: lines (and markers) older than this are deleted, oldest first, at most
  ``prune_batch`` rows per pass, in the transaction of a write of new lines: a pass at
  most every ``prune_interval_s``, or at the next write when a pass found more old rows
  than it could take. Counter ``log_lines_expired``.

``read_logs`` answers bounded batches (``limit`` rows; at most ``max_scan`` rows examined
per call) with a cursor to continue from; markers are always returned, so a reader sees
where lines are missing.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiosqlite

from edge_agent.errors import InvalidLogQuery

if TYPE_CHECKING:
    from edge_agent.drop_audit import DropAudit
    from edge_agent.outbox import AuditRow

LOCAL = "local:"  # prefix of the per-service totals kept next to the outbox kinds
_ROW_OVERHEAD = 32  # bytes a row costs beyond its text (id, ts, stream, bytes)
_MARKER_ROOM = 256  # a new marker's bytes, freed with the lines it replaces (names < 64)
_CORE = ("service", "ts", "stream", "line")


@dataclass(frozen=True)
class LogLimits:
    """Bounds of the local container log store."""

    max_bytes_per_container: int = 16 * 2**20
    max_age_s: float = 7 * 86400.0
    prune_interval_s: float = 60.0
    prune_batch: int = 5000
    drop_audit_interval_s: float = 300.0  # one audit row per service and interval of drops


@dataclass
class LogBatch:
    """One bounded answer of ``read_logs``: rows oldest first, and where to go on."""

    lines: list[dict[str, Any]] = field(default_factory=list)
    next_after: int = 0  # the id to pass as ``after`` to continue (follow) from here
    more: bool = False  # a bound stopped the read: more matching rows may follow


# One encoder for every compact dump on the log path: ``json.dumps`` with any keyword
# builds a new encoder per call (~2 us of a line's ~25 us).
compact_json = json.JSONEncoder(separators=(",", ":")).encode


def local_row(payload: dict[str, Any]) -> tuple[str, float, str, str, str | None, int]:
    """Return a log payload as (service, ts, stream, line, extra JSON, bytes)."""
    extra = {k: v for k, v in payload.items() if k not in _CORE}
    extra_json = compact_json(extra) if extra else None
    line = str(payload.get("line", ""))
    nbytes = len(line.encode()) + len(extra_json or "") + _ROW_OVERHEAD
    ts = float(payload.get("ts") or 0.0)
    return str(payload["service"]), ts, str(payload.get("stream", "")), line, extra_json, nbytes


def _marker_text(count: int, service: str, quota: int) -> str:
    return f"{count} lines dropped (local log quota of {quota} bytes for {service})"


def _epoch(value: float | datetime | None) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else value


class LogStoreMixin:
    """Local log rows of ``Store``: kept, bounded per container and by age, read back."""

    log_limits: LogLimits
    _last_prune: float

    if TYPE_CHECKING:  # provided by Store and OutboxMixin

        @property
        def db(self) -> aiosqlite.Connection: ...

        def _count(self, kind: str, n: int, nbytes: int) -> None: ...

        def _queued(self, kind: str) -> tuple[int, int]: ...

        async def _append_audit(self, db: aiosqlite.Connection, row: AuditRow) -> int: ...

        drop_audit: DropAudit

    async def _keep_logs(self, db: aiosqlite.Connection, payloads: list[dict[str, Any]]) -> int:
        """Keep every payload in the local table, within quotas; return lines dropped."""
        rows = [local_row(p) for p in payloads]
        await db.executemany(
            "INSERT INTO logs (service, ts, stream, line, extra, bytes) VALUES (?,?,?,?,?,?)",
            rows,
        )
        for service, *_rest, nbytes in rows:
            self._count(LOCAL + service, 1, nbytes)
        dropped = 0
        for service in {r[0] for r in rows}:
            dropped += await self._enforce_log_quota(db, service)
        return dropped

    async def _enforce_log_quota(self, db: aiosqlite.Connection, service: str) -> int:
        quota = self.log_limits.max_bytes_per_container
        over = self._queued(LOCAL + service)[1] - quota
        if quota <= 0 or over <= 0:
            return 0
        head: tuple[int, int, int] | None = None  # the marker at the head, which grows
        victims: list[int] = []
        freed = 0
        async with db.execute(
            "SELECT id, bytes, dropped FROM logs WHERE service = ? ORDER BY id", (service,)
        ) as cur:
            async for id_, nbytes, dropped in cur:
                if not victims and head is None and dropped:
                    head = (id_, nbytes, dropped)
                    continue
                if freed >= over + (0 if head else _MARKER_ROOM):
                    break
                victims.append(id_)
                freed += nbytes
        if not victims:
            return 0
        await self._mark_dropped(db, service, head, victims, freed, quota)
        return len(victims)

    async def _mark_dropped(
        self,
        db: aiosqlite.Connection,
        service: str,
        head: tuple[int, int, int] | None,
        victims: list[int],
        freed: int,
        quota: int,
    ) -> None:
        """Delete the victims; the head marker (or the first victim's row) says how many."""
        if head is not None:
            marker_id, old_bytes, before = head
            gone = victims
            removed_rows = len(victims)
        else:
            marker_id, old_bytes, before = victims[0], 0, 0
            gone = victims[1:]
            removed_rows = len(victims) - 1
        count = before + len(victims)
        text = _marker_text(count, service, quota)
        extra = json.dumps({"dropped": count}, separators=(",", ":"))
        new_bytes = len(text) + len(extra) + _ROW_OVERHEAD
        await db.execute(
            "UPDATE logs SET stream = 'agent', line = ?, extra = ?, bytes = ?, dropped = ?"
            " WHERE id = ?",
            (text, extra, new_bytes, count, marker_id),
        )
        if gone:
            await db.execute(
                "DELETE FROM logs WHERE service = ? AND id BETWEEN ? AND ?",
                (service, gone[0], gone[-1]),
            )
        # The first victim's bytes are in ``freed`` and its row now holds the marker's.
        self._count(LOCAL + service, -removed_rows, -freed + new_bytes - old_bytes)
        await db.execute(
            "INSERT INTO counters (name, value) VALUES ('log_lines_dropped_quota', ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (len(victims),),
        )
        await self._audit_drop(db, service, len(victims), quota)

    async def _audit_drop(
        self, db: aiosqlite.Connection, service: str, lines: int, quota: int
    ) -> None:
        """Write the agent's drop decision to the audit chain, one row per interval."""
        from edge_agent.outbox import AuditRow  # outbox imports this module

        count = self.drop_audit.take(f"logs:{service}", lines)
        if count is None:
            return
        detail = {
            "lines": count,
            "bound": "logs.local_max_bytes_per_container",
            "bytes": quota,
            "interval_s": self.drop_audit.interval_s,
        }
        row = AuditRow("agent", "logs.dropped", f"service:{service}", "dropped", detail)
        await self._append_audit(db, row)

    async def _prune_logs(self, db: aiosqlite.Connection, now: float | None = None) -> int:
        """Delete the oldest rows older than the age limit (one bounded pass); return how many."""
        now = time.time() if now is None else now
        mono = time.monotonic()
        if mono - self._last_prune < self.log_limits.prune_interval_s:
            return 0
        self._last_prune = mono
        if self.log_limits.max_age_s <= 0:
            return 0
        cutoff = now - self.log_limits.max_age_s
        gone: list[tuple[int, str, int, int]] = []
        async with db.execute(
            "SELECT id, service, bytes, dropped, ts FROM logs ORDER BY id LIMIT ?",
            (self.log_limits.prune_batch,),
        ) as cur:
            async for id_, service, nbytes, dropped, ts in cur:
                if ts >= cutoff:
                    break  # rows arrive in time order: the rest is younger
                gone.append((id_, service, nbytes, dropped))
        if not gone:
            return 0
        if len(gone) >= self.log_limits.prune_batch:
            self._last_prune = float("-inf")  # more is old: the next write prunes again
        await db.execute("DELETE FROM logs WHERE id <= ?", (gone[-1][0],))
        for _, service, nbytes, _ in gone:
            self._count(LOCAL + service, -1, -nbytes)
        lines = sum(1 for g in gone if not g[3])
        await db.execute(
            "INSERT INTO counters (name, value) VALUES ('log_lines_expired', ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (lines,),
        )
        return len(gone)

    async def _load_log_totals(self) -> dict[str, list[int]]:
        async with self.db.execute(
            "SELECT service, COUNT(*), COALESCE(SUM(bytes), 0) FROM logs GROUP BY service"
        ) as cur:
            return {LOCAL + s: [n, b] for s, n, b in await cur.fetchall()}

    async def read_logs(
        self,
        service: str | None = None,
        since: float | datetime | None = None,
        until: float | datetime | None = None,
        grep: str | None = None,
        tail: int | None = None,
        limit: int = 1000,
        *,
        after: int = 0,
        max_scan: int = 50_000,
    ) -> LogBatch:
        """Return kept log rows, oldest first, within ``limit`` rows and ``max_scan`` examined.

        ``since``/``until``: Unix seconds or aware datetimes (until excluded); ``grep`` a
        regular expression searched in each line (markers always pass); ``tail``: the last
        N matching rows; ``after``: the ``next_after`` of the previous batch.
        """
        if limit < 1 or (tail is not None and tail < 0) or max_scan < 1:
            raise InvalidLogQuery("limit and max_scan must be >= 1, tail >= 0")
        try:
            pattern = re.compile(grep) if grep else None
        except re.error as exc:
            raise InvalidLogQuery(f"grep: not a regular expression: {exc}") from exc
        where, args = ["id > ?"], [after]
        for clause, value in (
            ("service = ?", service),
            ("ts >= ?", _epoch(since)),
            ("ts < ?", _epoch(until)),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = (
            "SELECT id, service, ts, stream, line, extra, dropped FROM logs WHERE "
            + " AND ".join(where)
        )
        want = limit if tail is None else min(tail, limit)
        desc = tail is not None
        batch = LogBatch(next_after=after)
        if want == 0:
            return batch
        scanned = 0
        sql += f" ORDER BY id {'DESC' if desc else 'ASC'} LIMIT ?"
        async with self.db.execute(sql, (*args, max_scan)) as cur:
            async for row in cur:
                scanned += 1
                id_ = row[0]
                batch.next_after = max(batch.next_after, id_)
                if pattern is None or row[6] or pattern.search(row[4]):
                    batch.lines.append(_row_dict(row))
                    if len(batch.lines) >= want:
                        break
        if desc:
            batch.lines.reverse()
        else:
            batch.more = len(batch.lines) >= want or scanned >= max_scan
        return batch


def _row_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    id_, service, ts, stream, line, extra, dropped = row
    out: dict[str, Any] = {"id": id_, "service": service, "ts": ts, "stream": stream}
    out["line"] = line
    if extra:
        out.update(json.loads(extra))
    if dropped:
        out["dropped"] = dropped
    return out
