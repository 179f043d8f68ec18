"""The agent's local SQLite store: schema, migrations and every query.

One file, one writer connection (aiosqlite runs it on its own thread), WAL mode.
Writes that must survive a power cut (targets, audit) run with ``synchronous=FULL``;
bulk writes (logs) with ``NORMAL`` in batched transactions. Every write transaction
starts with ``BEGIN IMMEDIATE``; a state change and its audit row share one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from edge_agent.actionstore import ActionStoreMixin
from edge_agent.drop_audit import DropAudit
from edge_agent.errors import StoreError, StoreFull
from edge_agent.logpolicy import ShipPolicy
from edge_agent.logstore import LogBatch, LogLimits, LogStoreMixin
from edge_agent.outbox import (
    AuditRow,
    LogPosition,
    OutboxMixin,
    Quota,
    StoreLimits,
    bump_counter,
    utc_now,
)

log = logging.getLogger(__name__)

__all__ = [
    "AuditRow",
    "LogBatch",
    "LogLimits",
    "LogPosition",
    "Quota",
    "Store",
    "StoreLimits",
    "StoredTarget",
]

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
    (
        2,
        # Each container's log read position, written with the lines it covers: the
        # engine time of the last stored line and how many stored lines share it. The
        # epoch is where a container never read before starts (the store's birth, or
        # this migration's time for an older store).
        """
        CREATE TABLE log_positions (
            container_id TEXT PRIMARY KEY,
            service TEXT NOT NULL,
            ts_ns INTEGER NOT NULL,
            at_ts INTEGER NOT NULL,
            drained INTEGER NOT NULL DEFAULT 0,
            updated_at TEXT NOT NULL
        );
        INSERT OR IGNORE INTO meta (key, value) VALUES ('log_epoch_ns',
            CAST(CAST((julianday('now') - 2440587.5) * 86400000000000 AS INTEGER) AS TEXT))
        """,
    ),
    (
        3,
        # Local (technician) applies get their own sequence on top of the hub revision they
        # are based on, so they never consume the hub's revision space; history is ordered
        # by the row id (arrival), not by revision.
        """
        CREATE TABLE targets_v3 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            revision INTEGER NOT NULL,
            local_seq INTEGER NOT NULL DEFAULT 0,
            document TEXT NOT NULL,
            source TEXT NOT NULL,
            received_at TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            reason TEXT,
            applied_at TEXT,
            UNIQUE (source, revision, local_seq)
        );
        INSERT INTO targets_v3
            (revision, local_seq, document, source, received_at, state, reason, applied_at)
            SELECT revision, 0, document, source, received_at, state, reason, applied_at
            FROM targets ORDER BY revision;
        DROP TABLE targets;
        ALTER TABLE targets_v3 RENAME TO targets;
        """,
    ),
    (
        6,
        # Hub-revoked technician tokens (edge_agent/technicians.py), kept until they expire.
        """
        CREATE TABLE revoked_technicians (
            id TEXT PRIMARY KEY,
            expires_at INTEGER NOT NULL
        )
        """,
    ),
    (
        7,
        # Hub actions this agent took (edge_agent/actions.py): an id is recorded before the
        # action runs, so it runs at most once; kept a day past its expiry (replays refused).
        """
        CREATE TABLE actions (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            state TEXT NOT NULL,
            received_at TEXT NOT NULL,
            expires_at INTEGER NOT NULL,
            finished_at TEXT
        );
        CREATE INDEX actions_state ON actions (state)
        """,
    ),
    (
        8,
        # Every container log line kept locally (edge_agent/logstore.py), within a byte
        # quota per service's container and an age limit; a row with dropped > 0 is the
        # marker "N lines dropped" standing where those lines were.
        """
        CREATE TABLE logs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            service TEXT NOT NULL,
            ts REAL NOT NULL,
            stream TEXT NOT NULL,
            line TEXT NOT NULL,
            extra TEXT,
            bytes INTEGER NOT NULL,
            dropped INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX logs_by_service ON logs (service, id)
        """,
    ),
    (
        11,
        """
        CREATE TABLE holds (
            kind TEXT PRIMARY KEY,
            actor TEXT NOT NULL,
            reason TEXT NOT NULL,
            since REAL NOT NULL,
            until REAL NOT NULL
        )
        """,
    ),
]

TARGET_STATES = (
    "pending",
    "applying",
    "good",
    "failed",
    "rolled_back",
    "pull_failed",
    "rejected",
)
TARGET_COLUMNS = "id, revision, local_seq, document, source, received_at, state, reason, applied_at"


@dataclass(frozen=True)
class StoredTarget:
    """A target as kept in history.

    ``id`` orders history (arrival); ``revision`` is the hub's revision (for a local target
    the hub revision it is based on) and ``local_seq`` the technician's sequence on top
    of it (0 for a hub target).
    """

    revision: int
    document: str
    source: str
    state: str
    reason: str | None
    received_at: str
    applied_at: str | None
    id: int = 0
    local_seq: int = 0

    @property
    def label(self) -> str:
        """Return how the target is named in audit, events and status: 5, or 5+local.2."""
        return f"{self.revision}+local.{self.local_seq}" if self.local_seq else str(self.revision)


class Store(OutboxMixin, LogStoreMixin, ActionStoreMixin):
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
        self.log_limits: LogLimits = self.limits.logs
        self.drop_audit = DropAudit(self.log_limits.drop_audit_interval_s)
        self._last_prune = float("-inf")
        # What log lines go to the hub (logpolicy.py); loaded at open, set by sync.
        self.log_policy = ShipPolicy()
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._sync_mode = ""
        self._free_bytes = free_bytes or self._statvfs_free
        self._free_cache: tuple[float, int] = (0.0, 0)
        # Entries with seq <= this have been handed to the sync client; a drop marker is
        # only coalesced into an entry above it, so the hub never misses a count.
        self.inflight_upto = 0
        self.acked_upto = 0  # loaded at open (meta acked_seq); see outbox.py
        self._acked_rows = 0
        self.on_append: Callable[[], None] | None = None
        # Queued entries and bytes per kind, kept in step with the outbox so quota checks
        # are O(1) however much is queued; a transaction's changes land only at COMMIT.
        self._totals: dict[str, list[int]] = {}
        self._tx_delta: dict[str, list[int]] = {}

    # ---- lifecycle -------------------------------------------------------------

    async def open(self) -> Store:
        """Open the file, set pragmas and apply pending migrations."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # SQLite gives -wal/-shm the database's mode when it creates them: with this
        # umask all three are 0600 from the start (a chmod afterwards left the WAL 0644).
        old_umask = os.umask(0o077)
        try:
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute("PRAGMA foreign_keys=ON")
            await self._db.execute("PRAGMA busy_timeout=5000")
            # A small page cache: the agent's working set is tiny and RSS matters on devices.
            await self._db.execute("PRAGMA cache_size=-256")
            await self._set_sync("FULL")
            await self._migrate()
            await self._load_totals()
            self.log_policy = ShipPolicy.from_json(await self.get_meta("log_policy"))
            # Whatever is queued may have reached the hub before a restart: treat it as
            # handed out, so no drop marker the hub may already hold is rewritten.
            async with self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox") as cur:
                self.inflight_upto = (await cur.fetchone())[0]  # type: ignore[index]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        finally:
            os.umask(old_umask)
        for suffix in ("", "-wal", "-shm"):  # also files an older version created 0644
            path = self.path.with_name(self.path.name + suffix)
            if path.exists():
                path.chmod(0o600)
        return self

    async def close(self) -> None:
        """Checkpoint and close the connection."""
        if self._db is not None:
            async with self._lock:
                try:
                    await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.OperationalError as exc:
                    # "database table is locked": a read cancelled mid-await (a sync task
                    # stopped while it prepared a batch) left its statement open on this
                    # connection. Committed data is in the WAL, which SQLite replays at the
                    # next open: close anyway rather than fail the shutdown.
                    log.warning("store: no checkpoint at close (%s); the WAL is kept", exc)
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
                    (version, utc_now()),
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
            await bump_counter(db, name, by)

    async def counters(self) -> dict[str, int]:
        """Return every counter."""
        async with self.db.execute("SELECT name, value FROM counters ORDER BY name") as cur:
            return {name: value for name, value in await cur.fetchall()}

    # ---- log shipping policy ---------------------------------------------------

    async def set_log_policy(self, policy: ShipPolicy) -> bool:
        """Keep the hub's log shipping policy durably; return whether it changed."""
        if policy == self.log_policy:
            return False
        await self.set_meta("log_policy", policy.to_json())
        self.log_policy = policy
        return True

    # ---- log read positions ----------------------------------------------------

    async def log_positions(self) -> dict[str, LogPosition]:
        """Return every container's stored log read position, by container id."""
        async with self.db.execute(
            "SELECT container_id, service, ts_ns, at_ts, drained FROM log_positions"
        ) as cur:
            return {
                r[0]: LogPosition(r[0], r[1], r[2], r[3], bool(r[4])) for r in await cur.fetchall()
            }

    async def log_epoch_ns(self) -> int:
        """Return where a container never read before starts (Unix nanoseconds)."""
        return int(await self.get_meta("log_epoch_ns", "0") or 0)

    # ---- targets ---------------------------------------------------------------

    async def save_target(
        self,
        revision: int,
        document: str,
        *,
        source: str,
        local_seq: int = 0,
        audit: AuditRow | None = None,
    ) -> int:
        """Store a received target (and its audit row) durably in one transaction; return its id."""
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO targets (revision, local_seq, document, source, received_at)"
                " VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
                (revision, local_seq, document, source, utc_now()),
            )
            async with db.execute(
                "SELECT id FROM targets WHERE source = ? AND revision = ? AND local_seq = ?",
                (source, revision, local_seq),
            ) as cur:
                target_id: int = (await cur.fetchone())[0]  # type: ignore[index]
            if audit is not None:
                await self._append_audit(db, audit)
        return target_id

    async def set_target_state(
        self,
        target_id: int,
        state: str,
        reason: str | None = None,
        *,
        audit: AuditRow | None = None,
    ) -> None:
        """Record a target's outcome (good, failed, rolled_back, ...), by its id."""
        if state not in TARGET_STATES:
            raise StoreError(f"unknown target state {state!r}")
        applied = utc_now() if state == "good" else None
        async with self.transaction() as db:
            await db.execute(
                "UPDATE targets SET state = ?, reason = ?, applied_at = COALESCE(?, applied_at)"
                " WHERE id = ?",
                (state, reason, applied, target_id),
            )
            if audit is not None:
                await self._append_audit(db, audit)

    async def latest_target(self) -> StoredTarget | None:
        """Return the newest stored target (by arrival), whatever its state."""
        return await self._one_target(
            f"SELECT {TARGET_COLUMNS} FROM targets ORDER BY id DESC LIMIT 1", ()
        )

    async def max_hub_revision(self) -> int:
        """Return the highest revision ever accepted from the hub (0 if none)."""
        async with self.db.execute(
            "SELECT COALESCE(MAX(revision), 0) FROM targets WHERE source = 'hub'"
        ) as cur:
            return int((await cur.fetchone())[0])  # type: ignore[index]

    async def latest_hub_target(self) -> StoredTarget | None:
        """Return the newest target from the hub (by arrival), whatever its state."""
        return await self._one_target(
            f"SELECT {TARGET_COLUMNS} FROM targets WHERE source = 'hub' ORDER BY id DESC LIMIT 1",
            (),
        )

    async def max_local_seq(self) -> int:
        """Return the highest local (technician) sequence number handed out (0 if none)."""
        async with self.db.execute("SELECT COALESCE(MAX(local_seq), 0) FROM targets") as cur:
            return int((await cur.fetchone())[0])  # type: ignore[index]

    async def get_target(self, target_id: int) -> StoredTarget | None:
        """Return one stored target by id."""
        return await self._one_target(
            f"SELECT {TARGET_COLUMNS} FROM targets WHERE id = ?", (target_id,)
        )

    async def last_good_target(self, before: int | None = None) -> StoredTarget | None:
        """Return the newest target that converged healthy (optionally older than id ``before``)."""
        sql = f"SELECT {TARGET_COLUMNS} FROM targets WHERE state = 'good'"
        args: tuple[Any, ...] = ()
        if before is not None:
            sql += " AND id < ?"
            args = (before,)
        return await self._one_target(sql + " ORDER BY id DESC LIMIT 1", args)

    async def target_history(self, limit: int = 50) -> list[StoredTarget]:
        """Return recent targets, newest first."""
        async with self.db.execute(
            f"SELECT {TARGET_COLUMNS} FROM targets ORDER BY id DESC LIMIT ?", (limit,)
        ) as cur:
            return [_target_row(r) for r in await cur.fetchall()]

    async def _one_target(self, sql: str, args: tuple[Any, ...]) -> StoredTarget | None:
        async with self.db.execute(sql, args) as cur:
            row = await cur.fetchone()
        return _target_row(row) if row else None

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


def _target_row(row: Any) -> StoredTarget:
    id_, revision, local_seq, document, source, received_at, state, reason, applied_at = row
    return StoredTarget(
        revision, document, source, state, reason, received_at, applied_at, id_, local_seq
    )


def _translate(exc: sqlite3.Error) -> StoreError:
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
        return StoreFull(f"disk full, nothing written: {exc}")
    return StoreError(f"store write failed: {exc}", retryable=True)
