"""The outbox part of the agent store: queued records, per-kind quotas, drop markers, ack.

Mixed into ``Store`` (one file, one writer connection). Per-kind totals (entries, bytes)
are kept in memory in step with the table, so a quota check is O(1) however much is
queued; a transaction's changes to them land only when it commits. A quota hit drops
the oldest entries of that kind and writes (or grows) a 'dropped' marker; audit records
are never dropped; below the free-disk reserve logs are refused first. Container log
lines are queued with their container's read position in one transaction
(``append_logs``), so the position never runs ahead of or behind what is stored.

An ack records the hub's position (meta ``acked_seq``, ``acked_upto``) and takes the
acknowledged entries out of the totals at once; the rows themselves are deleted later,
in one go: when more than ``StoreLimits.acked_keep_max_entries`` wait (counted in
``outbox_acked_purges``), or when the sync client finds the outbox drained
(``purge_acked``). Every read of queued entries starts above ``acked_upto``, so an
acknowledged entry is never sent again, also after a restart.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import aiosqlite

from edge_agent.audit import chain_hash
from edge_agent.errors import StoreError
from edge_agent.logpolicy import ShipPolicy
from edge_agent.logstore import LOCAL, LogLimits, compact_json
from edge_agent.protocol import OutboxEntry, OutboxKind


@dataclass(frozen=True)
class Quota:
    """Bound on queued outbox entries of one kind (count and bytes); 0 means unbounded."""

    max_entries: int = 0
    max_bytes: int = 0


@dataclass
class StoreLimits:
    """Per-kind outbox quotas and the free-disk reserve below which logs are refused."""

    quotas: dict[str, Quota] = field(
        default_factory=lambda: {
            "status": Quota(max_entries=1_000),
            "event": Quota(max_entries=100_000, max_bytes=64 * 2**20),
            "log": Quota(max_entries=1_000_000, max_bytes=256 * 2**20),
        }
    )
    log_disk_reserve_bytes: int = 200 * 2**20
    # Acknowledged entries left on disk until they are deleted in one go (0: at each ack).
    acked_keep_max_entries: int = 50_000
    # The kept container logs (logstore.py): per-container bytes, age.
    logs: LogLimits = field(default_factory=LogLimits)


@dataclass(frozen=True)
class AuditRow:
    """One audited action: who did what to which object, and how it ended."""

    actor: str
    action: str
    object: str
    outcome: str
    detail: dict[str, Any] = field(default_factory=dict)
    at: str | None = None


@dataclass(frozen=True)
class LogPosition:
    """How far a container's log has been stored: the engine time of the last stored line,
    how many stored lines share that exact time, and whether the container had stopped
    and was read to its end."""

    container_id: str
    service: str
    ts_ns: int
    at_ts: int
    drained: bool = False


def utc_now() -> str:
    """Return the current UTC time as ISO 8601 text."""
    return datetime.now(UTC).isoformat()


async def bump_counter(db: aiosqlite.Connection, name: str, by: int) -> None:
    """Add to a named counter inside the caller's transaction."""
    await db.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
        (name, by),
    )


class OutboxMixin:
    """Outbox queries of ``Store``; relies on its connection, transactions and limits."""

    limits: StoreLimits
    inflight_upto: int
    acked_upto: int  # the hub holds every entry up to here (rows may wait for a purge)
    _acked_rows: int  # acknowledged rows not deleted yet
    log_policy: ShipPolicy
    on_append: Callable[[], None] | None
    _totals: dict[str, list[int]]
    _tx_delta: dict[str, list[int]]
    _free_bytes: Callable[[], int]
    _free_cache: tuple[float, int]
    path: Any

    @property
    def db(self) -> aiosqlite.Connection:  # provided by Store
        raise NotImplementedError

    if TYPE_CHECKING:  # provided by LogStoreMixin

        async def _keep_logs(
            self, db: aiosqlite.Connection, payloads: list[dict[str, Any]]
        ) -> int: ...

        async def _prune_logs(self, db: aiosqlite.Connection) -> int: ...

        async def _load_log_totals(self) -> dict[str, list[int]]: ...

    def transaction(
        self, *, durable: bool = True
    ) -> AbstractAsyncContextManager[aiosqlite.Connection]:  # provided by Store
        raise NotImplementedError

    async def append(self, kind: OutboxKind, payload: dict[str, Any]) -> int | None:
        """Queue one record; returns its seq, or None if a log was refused for disk space."""
        return (await self.append_many(kind, [payload]))[0] if payload is not None else None

    async def append_many(
        self, kind: OutboxKind, payloads: Iterable[dict[str, Any]]
    ) -> list[int | None]:
        """Queue records of one kind in one transaction, enforcing that kind's quota."""
        if kind in ("audit", "dropped"):
            raise StoreError(f"{kind} records are written by the store itself")
        now = utc_now()
        rows = [(kind, now, compact_json(p)) for p in payloads]
        if not rows:
            return []
        if kind == "log" and self._free_disk() < self.limits.log_disk_reserve_bytes:
            async with self.transaction(durable=False) as db:
                await bump_counter(db, "log_refused_disk_reserve", len(rows))
            return [None] * len(rows)
        async with self.transaction(durable=kind != "log") as db:
            last = await self._insert(db, kind, rows)
        self._notify()
        # One writer and AUTOINCREMENT: the batch's seqs are consecutive, ending at ``last``.
        return list(range(last - len(rows) + 1, last + 1))

    async def _insert(
        self, db: aiosqlite.Connection, kind: str, rows: list[tuple[str, ...]], *, seqs: bool = True
    ) -> int:
        """Insert the rows; return the last seq (0 when ``seqs`` is False: three thread
        round trips fewer, which followed logs, written every second, do not need)."""
        await db.executemany(
            "INSERT INTO outbox (kind, created_at, payload, bytes) VALUES (?,?,?,?)",
            [(*r, len(r[2])) for r in rows],
        )
        last = 0
        if seqs:
            async with db.execute("SELECT last_insert_rowid()") as cur:
                last = (await cur.fetchone())[0]  # type: ignore[index]
        self._count(kind, len(rows), sum(len(r[2]) for r in rows))
        await self._enforce_quota(db, kind)
        return last

    async def append_logs(
        self,
        payloads: list[dict[str, Any]],
        *,
        position: LogPosition | None = None,
        forget: str | None = None,
        counters: dict[str, int] | None = None,
        positions: Sequence[LogPosition] = (),
    ) -> None:
        """Keep log lines locally, queue those the shipping policy lets through, and write
        the read positions they reach and their counters, in one transaction: after a
        crash a position never runs ahead of, or behind, the lines."""
        now = utc_now()
        counts = dict(counters or {})
        if payloads and self._free_disk() < self.limits.log_disk_reserve_bytes:
            counts["log_refused_disk_reserve"] = len(payloads)
            payloads = []
        shipped = [p for p in payloads if self.log_policy.ships(p)]
        counts["log_lines_not_shipped"] = len(payloads) - len(shipped)
        rows = [("log", now, compact_json(p)) for p in shipped]
        async with self.transaction(durable=False) as db:
            if payloads:
                await self._keep_logs(db, payloads)
            await self._prune_logs(db)
            if rows:
                await self._insert(db, "log", rows, seqs=False)
            reached = [*positions, *([position] if position is not None else [])]
            if reached:
                await db.executemany(
                    "INSERT INTO log_positions (container_id, service, ts_ns, at_ts, drained,"
                    " updated_at) VALUES (?,?,?,?,?,?) ON CONFLICT(container_id) DO UPDATE SET"
                    " service = excluded.service, ts_ns = excluded.ts_ns, at_ts = excluded.at_ts,"
                    " drained = excluded.drained, updated_at = excluded.updated_at",
                    [
                        (p.container_id, p.service, p.ts_ns, p.at_ts, p.drained, now)
                        for p in reached
                    ],
                )
            if forget is not None:
                await db.execute("DELETE FROM log_positions WHERE container_id = ?", (forget,))
            for name, n in counts.items():
                if n:
                    await bump_counter(db, name, n)
        if rows:
            self._notify()

    async def append_audit(self, row: AuditRow) -> int:
        """Append an audit record (hash-chained, durable, never dropped); returns its id."""
        async with self.transaction() as db:
            audit_id = await self._append_audit(db, row)
        self._notify()
        return audit_id

    async def _append_audit(self, db: aiosqlite.Connection, row: AuditRow) -> int:
        async with db.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1") as cur:
            last = await cur.fetchone()
        prev = last[0] if last else ""
        at = row.at or utc_now()
        detail = json.dumps(row.detail, sort_keys=True, separators=(",", ":"))
        digest = chain_hash(prev, at, row.actor, row.action, row.object, row.outcome, detail)
        cur = await db.execute(
            "INSERT INTO audit (at, actor, action, object, outcome, detail, prev_hash, hash)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (at, row.actor, row.action, row.object, row.outcome, detail, prev, digest),
        )
        audit_id = cur.lastrowid or 0
        payload = {
            "id": audit_id,
            "at": at,
            "actor": row.actor,
            "action": row.action,
            "object": row.object,
            "outcome": row.outcome,
            "detail": row.detail,
            "prev_hash": prev,
            "hash": digest,
        }
        body = json.dumps(payload, separators=(",", ":"))
        await db.execute(
            "INSERT INTO outbox (kind, created_at, payload, bytes) VALUES ('audit', ?, ?, ?)",
            (at, body, len(body)),
        )
        self._count("audit", 1, len(body))
        return audit_id

    async def _enforce_quota(self, db: aiosqlite.Connection, kind: str) -> None:
        quota = self.limits.quotas.get(kind)
        if quota is None or (quota.max_entries == 0 and quota.max_bytes == 0):
            return
        count, size = self._queued(kind)
        over_n = count - quota.max_entries if quota.max_entries else 0
        over_b = size - quota.max_bytes if quota.max_bytes else 0
        if over_n <= 0 and over_b <= 0:
            return
        victims: list[int] = []
        freed_n = freed_b = 0
        async with db.execute(
            "SELECT seq, bytes FROM outbox WHERE kind = ? AND seq > ? ORDER BY seq",
            (kind, self.acked_upto),
        ) as cur:
            async for seq, nbytes in cur:
                if freed_n >= over_n and freed_b >= over_b:
                    break
                victims.append(seq)
                freed_n += 1
                freed_b += nbytes
        await db.execute(
            "DELETE FROM outbox WHERE kind = ? AND seq BETWEEN ? AND ?",
            (kind, victims[0], victims[-1]),
        )
        self._count(kind, -freed_n, -freed_b)
        await bump_counter(db, f"dropped_{kind}", len(victims))
        await self._record_drop(db, kind, len(victims), victims[0], victims[-1])

    async def _record_drop(
        self, db: aiosqlite.Connection, kind: str, n: int, first: int, last: int, **extra: Any
    ) -> None:
        async with db.execute(
            "SELECT seq, payload FROM outbox WHERE kind = 'dropped' AND seq > ?"
            " AND json_extract(payload, '$.kind') = ? ORDER BY seq DESC LIMIT 1",
            (max(self.inflight_upto, self.acked_upto), kind),
        ) as cur:
            row = await cur.fetchone()
        if row is not None and not extra:
            marker = json.loads(row[1])
            marker["count"] += n
            marker["first_seq"] = min(marker["first_seq"], first)
            marker["last_seq"] = max(marker["last_seq"], last)
            body = json.dumps(marker, separators=(",", ":"))
            old = len(row[1])
            await db.execute(
                "UPDATE outbox SET payload = ?, bytes = ? WHERE seq = ?", (body, len(body), row[0])
            )
            self._count("dropped", 0, len(body) - old)
            return
        marker = {"kind": kind, "count": n, "first_seq": first, "last_seq": last, **extra}
        body = json.dumps(marker, separators=(",", ":"))
        await db.execute(
            "INSERT INTO outbox (kind, created_at, payload, bytes) VALUES ('dropped', ?, ?, ?)",
            (utc_now(), body, len(body)),
        )
        self._count("dropped", 1, len(body))

    async def pending(self, *, max_entries: int, max_bytes: int) -> list[OutboxEntry]:
        """Return the oldest queued entries, bounded by count and bytes (at least one)."""
        return [
            OutboxEntry(seq=seq, kind=kind, created_at=at, payload=json.loads(payload))
            for seq, kind, at, payload in await self.pending_raw(
                max_entries=max_entries, max_bytes=max_bytes
            )
        ]

    async def pending_raw(
        self, *, max_entries: int, max_bytes: int, after: int = 0
    ) -> list[tuple[int, str, str, str]]:
        """Return ``pending()`` rows with seq > after as (seq, kind, created_at, payload JSON)."""
        out: list[tuple[int, str, str, str]] = []
        total = 0
        # The rows as SQLite returns them, without the ``bytes`` column: every writer sets
        # it to len(payload), and a fifth column costs a catch-up ~0.17 ms a 1,000 rows.
        async with self.db.execute(
            "SELECT seq, kind, created_at, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (max(after, self.acked_upto), max_entries),
        ) as cur:
            rows = cast(list[tuple[int, str, str, str]], await cur.fetchall())
            for row in rows:
                nbytes = len(row[3])
                if out and total + nbytes > max_bytes:
                    break
                total += nbytes
                out.append(row)
        return out

    async def replace_with_marker(self, seq: int, reason: str) -> bool:
        """Replace one queued entry by a 'dropped' marker naming why; False if it is gone."""
        async with self.transaction() as db:
            async with db.execute(
                "SELECT kind, bytes FROM outbox WHERE seq = ? AND seq > ?", (seq, self.acked_upto)
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return False
            kind, nbytes = row
            marker = {"kind": kind, "count": 1, "first_seq": seq, "last_seq": seq}
            body = json.dumps({**marker, "reason": reason}, separators=(",", ":"))
            await db.execute(
                "UPDATE outbox SET kind = 'dropped', payload = ?, bytes = ? WHERE seq = ?",
                (body, len(body), seq),
            )
            self._count(kind, -1, -nbytes)
            self._count("dropped", 1, len(body))
            await bump_counter(db, f"dropped_{kind}", 1)
        return True

    async def ack(self, upto_seq: int) -> int:
        """Record that the hub holds every entry up to ``upto_seq``; returns how many left
        the queue. Their rows are deleted once more than ``acked_keep_max_entries`` wait."""
        if upto_seq <= self.acked_upto:
            return 0
        async with self.transaction(durable=False) as db:
            # Totals per kind in SQL: no row crosses into Python. NOT INDEXED: a range of
            # the primary key, not a walk of the whole (kind, seq) index.
            async with db.execute(
                "SELECT kind, COUNT(*), SUM(bytes) FROM outbox NOT INDEXED"
                " WHERE seq > ? AND seq <= ? GROUP BY kind",
                (self.acked_upto, upto_seq),
            ) as cur:
                gone = await cur.fetchall()
            await db.execute(
                "INSERT INTO meta (key, value) VALUES ('acked_seq', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = "
                "MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                (str(upto_seq),),
            )
            n = sum(k for _, k, _ in gone)
            purge = self._acked_rows + n > self.limits.acked_keep_max_entries
            if purge:
                await self._delete_acked(db, upto_seq)
            for kind, k, nbytes in gone:
                self._count(kind, -k, -nbytes)
        self.acked_upto = upto_seq
        self._acked_rows = 0 if purge else self._acked_rows + n
        return n

    async def purge_acked(self) -> int:
        """Delete the rows of acknowledged entries still on disk; returns how many."""
        if not self._acked_rows:
            return 0
        async with self.transaction(durable=False) as db:
            await self._delete_acked(db, self.acked_upto)
        n, self._acked_rows = self._acked_rows, 0
        return n

    async def _delete_acked(self, db: aiosqlite.Connection, upto_seq: int) -> None:
        await db.execute("DELETE FROM outbox WHERE seq <= ?", (upto_seq,))
        await bump_counter(db, "outbox_acked_purges", 1)

    async def highest_assigned_seq(self) -> int:
        """Return the highest seq this store has ever handed out (0 for a new store)."""
        async with self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def renumber_after(self, hub_seq: int) -> int:
        """Move every queued entry past ``hub_seq``; for a store that was wiped and restarted.

        The hub keeps each (device, seq) once, so entries reusing seqs it already holds
        would be ignored as duplicates. Adding ``hub_seq`` to every seq keeps their order
        and lifts them all above what the hub holds. Returns how many entries moved.
        """
        await self.purge_acked()  # only what still waits for the hub moves
        async with self.transaction() as db:
            cur = await db.execute("UPDATE outbox SET seq = seq + ?", (hub_seq,))
            moved = cur.rowcount
            await db.execute(
                "UPDATE sqlite_sequence SET seq = MAX(seq + ?, ?) WHERE name = 'outbox'",
                (hub_seq, hub_seq),
            )
            await bump_counter(db, "outbox_renumbered", moved)
        self.inflight_upto = 0
        return moved

    async def outbox_stats(self) -> dict[str, dict[str, int]]:
        """Return queued entry count and bytes per kind."""
        return {
            k: {"entries": n, "bytes": b}
            for k, (n, b) in sorted(self._totals.items())
            if n and not k.startswith(LOCAL)
        }

    async def oldest_queued_at(self) -> datetime | None:
        """Return when the oldest entry still waiting for the hub's ack was queued."""
        async with self.db.execute(
            "SELECT created_at FROM outbox WHERE seq > ? ORDER BY seq LIMIT 1", (self.acked_upto,)
        ) as cur:
            row = await cur.fetchone()
        return datetime.fromisoformat(row[0]) if row else None

    async def _load_totals(self) -> None:
        async with self.db.execute("SELECT value FROM meta WHERE key = 'acked_seq'") as cur:
            row = await cur.fetchone()
        self.acked_upto = int(row[0]) if row else 0
        async with self.db.execute(
            "SELECT COUNT(*) FROM outbox WHERE seq <= ?", (self.acked_upto,)
        ) as cur:
            self._acked_rows = (await cur.fetchone())[0]  # type: ignore[index]
        async with self.db.execute(
            "SELECT kind, COUNT(*), COALESCE(SUM(bytes), 0) FROM outbox WHERE seq > ?"
            " GROUP BY kind",
            (self.acked_upto,),
        ) as cur:
            self._totals = {k: [n, b] for k, n, b in await cur.fetchall()}
        self._totals |= await self._load_log_totals()

    def _count(self, kind: str, n: int, nbytes: int) -> None:
        delta = self._tx_delta.setdefault(kind, [0, 0])
        delta[0] += n
        delta[1] += nbytes

    def _queued(self, kind: str) -> tuple[int, int]:
        base = self._totals.get(kind, [0, 0])
        delta = self._tx_delta.get(kind, [0, 0])
        return base[0] + delta[0], base[1] + delta[1]

    # ---- helpers ---------------------------------------------------------------

    def _notify(self) -> None:
        if self.on_append is not None:
            self.on_append()

    def _statvfs_free(self) -> int:
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize

    def _free_disk(self) -> int:
        at, value = self._free_cache
        now = time.monotonic()
        if now - at > 5.0:
            value = self._free_bytes()
            self._free_cache = (now, value)
        return value
