"""The agent's local SQLite store: schema, migrations and every query.

One file, one writer connection (aiosqlite runs it on its own thread), WAL mode.
Writes that must survive a power cut (targets, audit) run with ``synchronous=FULL``;
bulk writes (logs) with ``NORMAL`` in batched transactions. Every write transaction
starts with ``BEGIN IMMEDIATE``; a state change and its audit row share one.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from edge_agent.audit import chain_hash
from edge_agent.errors import StoreError, StoreFull
from edge_agent.protocol import OutboxEntry, OutboxKind

# Numbered migrations; each runs with its schema_migrations row in one transaction.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE targets (
            revision INTEGER PRIMARY KEY,
            document TEXT NOT NULL,
            source TEXT NOT NULL,
            received_at TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            reason TEXT,
            applied_at TEXT
        );
        CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            created_at TEXT NOT NULL,
            payload TEXT NOT NULL,
            bytes INTEGER NOT NULL
        );
        CREATE INDEX outbox_kind_seq ON outbox (kind, seq);
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            object TEXT NOT NULL,
            outcome TEXT NOT NULL,
            detail TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        """,
    ),
]

TARGET_STATES = ("pending", "applying", "good", "failed", "rolled_back", "rejected")


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


@dataclass(frozen=True)
class StoredTarget:
    """A target as kept in history."""

    revision: int
    document: str
    source: str
    state: str
    reason: str | None
    received_at: str
    applied_at: str | None


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Store:
    """All reads and writes of the agent's state file."""

    def __init__(
        self,
        path: str | Path,
        *,
        limits: StoreLimits | None = None,
        free_bytes: Callable[[], int] | None = None,
    ) -> None:
        self.path = Path(path)
        self.limits = limits or StoreLimits()
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._sync_mode = ""
        self._free_bytes = free_bytes or self._statvfs_free
        self._free_cache: tuple[float, int] = (0.0, 0)
        # Entries with seq <= this have been handed to the sync client; a drop marker is
        # only coalesced into an entry above it, so the hub never misses a count.
        self.inflight_upto = 0
        self.on_append: Callable[[], None] | None = None
        # Queued entries and bytes per kind, kept in step with the outbox so quota checks
        # are O(1) however much is queued; a transaction's changes land only at COMMIT.
        self._totals: dict[str, list[int]] = {}
        self._tx_delta: dict[str, list[int]] = {}

    # ---- lifecycle -------------------------------------------------------------

    async def open(self) -> Store:
        """Open the file, set pragmas and apply pending migrations."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute("PRAGMA foreign_keys=ON")
            await self._db.execute("PRAGMA busy_timeout=5000")
            await self._set_sync("FULL")
            await self._migrate()
            await self._load_totals()
            # Whatever is queued may have reached the hub before a restart: treat it as
            # handed out, so no drop marker the hub may already hold is rewritten.
            async with self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox") as cur:
                self.inflight_upto = (await cur.fetchone())[0]  # type: ignore[index]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        os.chmod(self.path, 0o600)
        return self

    async def close(self) -> None:
        """Checkpoint and close the connection."""
        if self._db is not None:
            async with self._lock:
                await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        """Return the open connection."""
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    async def _set_sync(self, mode: str) -> None:
        if self._sync_mode != mode:
            await self.db.execute(f"PRAGMA synchronous={mode}")
            self._sync_mode = mode

    async def _migrate(self) -> None:
        await self.db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        async with self.db.execute("SELECT version FROM schema_migrations") as cur:
            done = {row[0] for row in await cur.fetchall()}
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            async with self.transaction():
                for stmt in filter(None, (s.strip() for s in sql.split(";"))):
                    await self.db.execute(stmt)
                await self.db.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, _now()),
                )

    @asynccontextmanager
    async def transaction(self, *, durable: bool = True) -> AsyncIterator[aiosqlite.Connection]:
        """Run a write transaction (BEGIN IMMEDIATE); durable ones fsync at commit."""
        async with self._lock:
            db = self.db
            await self._set_sync("FULL" if durable else "NORMAL")
            await db.execute("BEGIN IMMEDIATE")
            self._tx_delta = {}
            try:
                yield db
            except BaseException as exc:
                # SQLITE_FULL may already have rolled the transaction back.
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _translate(exc) from exc
                raise
            try:
                await db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise _translate(exc) from exc
            for kind, (n, b) in self._tx_delta.items():
                total = self._totals.setdefault(kind, [0, 0])
                total[0] += n
                total[1] += b

    # ---- metadata and counters -------------------------------------------------

    async def get_meta(self, key: str, default: str | None = None) -> str | None:
        """Return a metadata value."""
        async with self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return row[0] if row else default

    async def set_meta(self, key: str, value: str) -> None:
        """Set a metadata value durably."""
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    async def bump(self, name: str, by: int = 1) -> None:
        """Add to a named counter."""
        async with self.transaction(durable=False) as db:
            await _bump(db, name, by)

    async def counters(self) -> dict[str, int]:
        """Return every counter."""
        async with self.db.execute("SELECT name, value FROM counters ORDER BY name") as cur:
            return {name: value for name, value in await cur.fetchall()}

    # ---- targets ---------------------------------------------------------------

    async def save_target(
        self, revision: int, document: str, *, source: str, audit: AuditRow | None = None
    ) -> None:
        """Store a received target (and its audit row) durably in one transaction."""
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO targets (revision, document, source, received_at) VALUES (?,?,?,?)"
                " ON CONFLICT(revision) DO NOTHING",
                (revision, document, source, _now()),
            )
            if audit is not None:
                await self._append_audit(db, audit)

    async def set_target_state(
        self, revision: int, state: str, reason: str | None = None, *, audit: AuditRow | None = None
    ) -> None:
        """Record a target's outcome (good, failed, rolled_back, ...)."""
        if state not in TARGET_STATES:
            raise StoreError(f"unknown target state {state!r}")
        applied = _now() if state == "good" else None
        async with self.transaction() as db:
            await db.execute(
                "UPDATE targets SET state = ?, reason = ?, applied_at = COALESCE(?, applied_at)"
                " WHERE revision = ?",
                (state, reason, applied, revision),
            )
            if audit is not None:
                await self._append_audit(db, audit)

    async def latest_target(self) -> StoredTarget | None:
        """Return the newest stored target, whatever its state."""
        return await self._one_target("SELECT * FROM targets ORDER BY revision DESC LIMIT 1", ())

    async def get_target(self, revision: int) -> StoredTarget | None:
        """Return one stored target."""
        return await self._one_target("SELECT * FROM targets WHERE revision = ?", (revision,))

    async def last_good_target(self, before: int | None = None) -> StoredTarget | None:
        """Return the newest target that converged healthy (optionally older than ``before``)."""
        sql = "SELECT * FROM targets WHERE state = 'good'"
        args: tuple[Any, ...] = ()
        if before is not None:
            sql += " AND revision < ?"
            args = (before,)
        return await self._one_target(sql + " ORDER BY revision DESC LIMIT 1", args)

    async def target_history(self, limit: int = 50) -> list[StoredTarget]:
        """Return recent targets, newest first."""
        async with self.db.execute(
            "SELECT * FROM targets ORDER BY revision DESC LIMIT ?", (limit,)
        ) as cur:
            return [_target_row(r) for r in await cur.fetchall()]

    async def _one_target(self, sql: str, args: tuple[Any, ...]) -> StoredTarget | None:
        async with self.db.execute(sql, args) as cur:
            row = await cur.fetchone()
        return _target_row(row) if row else None

    # ---- outbox ----------------------------------------------------------------

    async def append(self, kind: OutboxKind, payload: dict[str, Any]) -> int | None:
        """Queue one record; returns its seq, or None if a log was refused for disk space."""
        return (await self.append_many(kind, [payload]))[0] if payload is not None else None

    async def append_many(
        self, kind: OutboxKind, payloads: Iterable[dict[str, Any]]
    ) -> list[int | None]:
        """Queue records of one kind in one transaction, enforcing that kind's quota."""
        if kind in ("audit", "dropped"):
            raise StoreError(f"{kind} records are written by the store itself")
        now = _now()
        rows = [(kind, now, json.dumps(p, separators=(",", ":"))) for p in payloads]
        if not rows:
            return []
        if kind == "log" and self._free_disk() < self.limits.log_disk_reserve_bytes:
            async with self.transaction(durable=False) as db:
                await _bump(db, "log_refused_disk_reserve", len(rows))
            return [None] * len(rows)
        async with self.transaction(durable=kind != "log") as db:
            await db.executemany(
                "INSERT INTO outbox (kind, created_at, payload, bytes) VALUES (?,?,?,?)",
                [(*r, len(r[2])) for r in rows],
            )
            async with db.execute("SELECT last_insert_rowid()") as cur:
                last = (await cur.fetchone())[0]  # type: ignore[index]
            self._count(kind, len(rows), sum(len(r[2]) for r in rows))
            await self._enforce_quota(db, kind)
        self._notify()
        # One writer and AUTOINCREMENT: the batch's seqs are consecutive, ending at ``last``.
        return list(range(last - len(rows) + 1, last + 1))

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
        at = row.at or _now()
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
            "SELECT seq, bytes FROM outbox WHERE kind = ? ORDER BY seq", (kind,)
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
        await _bump(db, f"dropped_{kind}", len(victims))
        await self._record_drop(db, kind, len(victims), victims[0], victims[-1])

    async def _record_drop(
        self, db: aiosqlite.Connection, kind: str, n: int, first: int, last: int, **extra: Any
    ) -> None:
        async with db.execute(
            "SELECT seq, payload FROM outbox WHERE kind = 'dropped' AND seq > ?"
            " AND json_extract(payload, '$.kind') = ? ORDER BY seq DESC LIMIT 1",
            (self.inflight_upto, kind),
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
            (_now(), body, len(body)),
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
        async with self.db.execute(
            "SELECT seq, kind, created_at, payload, bytes FROM outbox WHERE seq > ?"
            " ORDER BY seq LIMIT ?",
            (after, max_entries),
        ) as cur:
            for seq, kind, created_at, payload, nbytes in await cur.fetchall():
                if out and total + nbytes > max_bytes:
                    break
                total += nbytes
                out.append((seq, kind, created_at, payload))
        return out

    async def replace_with_marker(self, seq: int, reason: str) -> bool:
        """Replace one queued entry by a 'dropped' marker naming why; False if it is gone."""
        async with self.transaction() as db:
            async with db.execute("SELECT kind, bytes FROM outbox WHERE seq = ?", (seq,)) as cur:
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
            await _bump(db, f"dropped_{kind}", 1)
        return True

    async def ack(self, upto_seq: int) -> int:
        """Delete every entry the hub acknowledged (seq <= upto_seq); returns how many."""
        async with self.transaction(durable=False) as db:
            async with db.execute(
                "DELETE FROM outbox WHERE seq <= ? RETURNING kind, bytes", (upto_seq,)
            ) as cur:
                gone = await cur.fetchall()
            await db.execute(
                "INSERT INTO meta (key, value) VALUES ('acked_seq', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = "
                "MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                (str(upto_seq),),
            )
            for kind, nbytes in gone:
                self._count(kind, -1, -nbytes)
            return len(gone)

    async def outbox_stats(self) -> dict[str, dict[str, int]]:
        """Return queued entry count and bytes per kind."""
        return {k: {"entries": n, "bytes": b} for k, (n, b) in sorted(self._totals.items()) if n}

    async def _load_totals(self) -> None:
        async with self.db.execute(
            "SELECT kind, COUNT(*), COALESCE(SUM(bytes), 0) FROM outbox GROUP BY kind"
        ) as cur:
            self._totals = {k: [n, b] for k, n, b in await cur.fetchall()}

    def _count(self, kind: str, n: int, nbytes: int) -> None:
        delta = self._tx_delta.setdefault(kind, [0, 0])
        delta[0] += n
        delta[1] += nbytes

    def _queued(self, kind: str) -> tuple[int, int]:
        base = self._totals.get(kind, [0, 0])
        delta = self._tx_delta.get(kind, [0, 0])
        return base[0] + delta[0], base[1] + delta[1]

    # ---- audit -----------------------------------------------------------------

    async def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        """Return recent audit records, newest first."""
        async with self.db.execute(
            "SELECT id, at, actor, action, object, outcome, detail, prev_hash, hash"
            " FROM audit ORDER BY id DESC LIMIT ?",
            (limit,),
        ) as cur:
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in await cur.fetchall()]

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


@dataclass(frozen=True)
class AuditRow:
    """One audited action: who did what to which object, and how it ended."""

    actor: str
    action: str
    object: str
    outcome: str
    detail: dict[str, Any] = field(default_factory=dict)
    at: str | None = None


async def _bump(db: aiosqlite.Connection, name: str, by: int) -> None:
    await db.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
        (name, by),
    )


def _target_row(row: Any) -> StoredTarget:
    revision, document, source, received_at, state, reason, applied_at = row
    return StoredTarget(revision, document, source, state, reason, received_at, applied_at)


def _translate(exc: sqlite3.Error) -> StoreError:
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
        return StoreFull(f"disk full, nothing written: {exc}")
    return StoreError(f"store write failed: {exc}", retryable=True)
