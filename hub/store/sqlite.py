"""SQLite implementation of HubStore: WAL, one writer thread with group commit, aiosqlite reads.

Writes go through ``GroupCommitWriter`` (one ``sqlite3`` connection on its own thread,
``BEGIN IMMEDIATE``, a savepoint per job); reads use an aiosqlite connection, which
under WAL sees the last committed state and never blocks the writer. The few indexed
point reads every sync and long-poll makes (``_point_read``) run on the event loop's own
thread instead, on a connection of their own: a row by primary key costs microseconds,
while a hop to the reader thread and back costs two thread wake-ups, which on a busy
machine each wait for a CPU (at 10,000 devices the hop, not the read, was the cost).
``synchronous=FULL`` by default: an acked_seq the hub returns survives a power cut,
which the agent relies on when it deletes what was acknowledged.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from edge_agent.protocol import SignedTarget
from hub import audit_chain, device_audit
from hub.auth import check_enrollment_token
from hub.errors import StoreError
from hub.fleet import STATUS_FIELDS, is_target_newer
from hub.store import HubStore, checks, sqlite_actions, sqlite_releases, sync_rules
from hub.store import sqlite_rows as rows
from hub.store.checkpoint import WalCheckpointer
from hub.store.records import (
    AuditRecord,
    CertLineage,
    DeviceRecord,
    EnrollmentTokenRecord,
    EntryRow,
    EventRecord,
    NewDevice,
    ReleaseRecord,
    RenewedCert,
    SealedSecret,
    SyncBatch,
    SyncResult,
    TargetRecord,
)
from hub.store.sqlite_access import AccessMixin
from hub.store.sqlite_actions import ActionsMixin
from hub.store.sqlite_audit import AuditMixin
from hub.store.sqlite_groups import GroupsMixin
from hub.store.sqlite_history import HistoryMixin, observe_contact
from hub.store.sqlite_holds import HoldsMixin
from hub.store.sqlite_hosts import HostsMixin, save_host_report
from hub.store.sqlite_logs import LogsMixin
from hub.store.sqlite_metrics import MetricsBound, MetricsMixin, save_metrics
from hub.store.sqlite_policies import PoliciesMixin
from hub.store.sqlite_rollouts import RolloutsMixin
from hub.store.sqlite_schema import MIGRATIONS
from hub.store.sqlite_secret_moves import SecretMovesMixin
from hub.store.sqlite_secrets import SecretsMixin, upsert_secret
from hub.store.sqlite_sessions import SessionsMixin
from hub.store.sqlite_stats import StatsMixin
from hub.store.sqlite_technicians import TechniciansMixin
from hub.store.sqlite_trust import TrustMixin
from hub.store.sync_rules import SeqSpace
from hub.store.writer import GroupCommitWriter

POINT_READ_TARGETS = 4  # list_targets up to this many rows reads on the loop's thread
SELECT_DEVICE = f"SELECT {rows.DEVICE_COLUMNS} FROM devices WHERE id = ?"


def migrate(db: sqlite3.Connection) -> None:
    """Apply pending migrations, each with its record in one transaction."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    done = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
    for version, name, statements in MIGRATIONS:
        if version in done:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                if callable(statement):
                    statement(db)
                else:
                    db.execute(statement)
            db.execute(
                "INSERT INTO schema_migrations VALUES (?,?,?)",
                (version, name, rows.ts(datetime.now(UTC))),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def _point_connection(path: Path) -> sqlite3.Connection:
    """Open the read-only connection point reads use on the event loop's thread."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=0")  # never wait on the loop: fall back instead
    conn.execute("PRAGMA query_only=ON")
    return conn


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SqliteStore(
    ActionsMixin,
    AuditMixin,
    GroupsMixin,
    HostsMixin,
    LogsMixin,
    MetricsMixin,
    RolloutsMixin,
    TechniciansMixin,
    AccessMixin,
    TrustMixin,
    SecretsMixin,
    PoliciesMixin,
    HoldsMixin,
    SessionsMixin,
    HistoryMixin,
    StatsMixin,
    SecretMovesMixin,
    HubStore,
):
    """HubStore on one SQLite file."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "FULL",
        max_group_commit: int = 256,
        wal_max_bytes: int = 64 * 1024 * 1024,
        checkpoint_interval_s: float = 1.0,
        metrics: MetricsBound | None = None,
    ) -> None:
        self.path = path
        self._metrics_bound = metrics or MetricsBound()
        self._synchronous = synchronous
        self._max_group = max_group_commit
        self._wal_max_bytes = wal_max_bytes
        self._checkpoint_lock = threading.Lock()  # one checkpoint at a time (writer, checkpointer)
        self._checkpoint_interval_s = checkpoint_interval_s
        self._rconn: aiosqlite.Connection | None = None
        self._pconn: sqlite3.Connection | None = None  # point reads, event-loop thread only
        self.point_read_fallbacks = 0  # point reads that found the database busy
        self._writer: GroupCommitWriter | None = None
        self._checkpointer: WalCheckpointer | None = None
        self._commit_observer: Callable[[int, float], None] | None = None
        self._device_memo: dict[str, tuple[Any, DeviceRecord]] = {}  # list_devices

    async def open(self) -> None:
        """Open the writer (running migrations) and the reader."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # SQLite gives -wal/-shm the database's mode when it creates them: with this
        # umask all three are 0600 from the start (a chmod afterwards left the WAL 0644).
        old_umask = os.umask(0o077)
        try:
            wconn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            wal = self.path.with_name(self.path.name + "-wal")
            writer = GroupCommitWriter(
                wconn,
                self._max_group,
                wal=(wal, self._wal_max_bytes),
                checkpoint_lock=self._checkpoint_lock,
            )
            await writer.run(self._prepare_writer)
            self._rconn = await aiosqlite.connect(self.path, isolation_level=None)
            await self._rconn.execute("PRAGMA busy_timeout=5000")
            await self._rconn.execute("PRAGMA query_only=ON")
            self._pconn = _point_connection(self.path)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from exc
        finally:
            os.umask(old_umask)
        for suffix in ("", "-wal", "-shm"):  # also files an older version created 0644
            path = self.path.with_name(self.path.name + suffix)
            if path.exists():
                path.chmod(0o600)
        writer.on_commit = self._commit_observer
        writer.start()
        self._writer = writer
        self._checkpointer = WalCheckpointer(
            self.path,
            synchronous=self._synchronous,
            interval_s=self._checkpoint_interval_s,
            lock=self._checkpoint_lock,
        )
        await self._checkpointer.start()

    def _prepare_writer(self, db: sqlite3.Connection) -> None:
        for pragma in (
            "journal_mode=WAL",
            f"synchronous={self._synchronous}",
            "foreign_keys=ON",
            "busy_timeout=5000",
            "wal_autocheckpoint=0",  # WalCheckpointer does it off the commit path
        ):
            db.execute(f"PRAGMA {pragma}")
        audit_chain.register(db)
        migrate(db)

    async def close(self) -> None:
        """Drain the writer, checkpoint, and close every connection."""
        if self._writer is not None:
            await self._writer.stop()
            self._writer = None
        if self._rconn is not None:
            await self._rconn.close()
            self._rconn = None
        if self._pconn is not None:
            self._pconn.close()
            self._pconn = None
        if self._checkpointer is not None:
            await self._checkpointer.stop()
            self._checkpointer = None

    @property
    def _w(self) -> GroupCommitWriter:
        if self._writer is None:
            raise StoreError("store is not open")
        return self._writer

    async def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        if self._rconn is None:
            raise StoreError("store is not open")
        try:
            # One step on the reader thread (execute + fetchall + close), not three: a
            # statement left open between execute and fetchall would hold the connection's
            # read snapshot for the reads queued meanwhile, which then miss writes committed
            # since (a long-poll woken by a new target read the old one and waited out its
            # timeout); and each hop waits for the GIL, which the loop holds under load.
            return list(await self._rconn.execute_fetchall(sql, args))
        except sqlite3.Error as exc:
            raise StoreError(f"database read failed: {exc}") from exc

    async def _point_read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """Run an indexed read of a few rows on the loop's thread; busy: on the reader's.

        Only for statements that touch a handful of rows through an index: the loop
        waits for them. Under WAL a reader never waits for the writer; the connection
        has no busy timeout, so the rare busy answer (a checkpoint restarting the log,
        recovery) goes to the threaded reader instead of blocking the loop; counted in
        ``point_read_fallbacks``.
        """
        if self._pconn is None:
            raise StoreError("store is not open")
        try:
            return self._pconn.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise StoreError(f"database read failed: {exc}") from exc
            self.point_read_fallbacks += 1
        except sqlite3.Error as exc:
            raise StoreError(f"database read failed: {exc}") from exc
        return await self._read(sql, args)

    # enrollment ---------------------------------------------------------------------

    async def create_enrollment_token(
        self, token: EnrollmentTokenRecord, audit: AuditRecord
    ) -> None:
        """Store a new enrollment token and its audit row."""

        def job(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT INTO enrollment_tokens ({rows.TOKEN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
                (
                    token.id,
                    token.secret_hash,
                    token.uses_total,
                    token.uses_left,
                    rows.ts(token.expires_at),
                    rows.dumps(token.tags),
                    rows.ts(token.created_at),
                    token.created_by,
                ),
            )
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))

        await self._w.submit(job)

    async def get_enrollment_token(self, token_id: str) -> EnrollmentTokenRecord | None:
        """Return a token by id."""
        found = await self._read(
            f"SELECT {rows.TOKEN_COLUMNS} FROM enrollment_tokens WHERE id = ?", (token_id,)
        )
        return rows.token(found[0]) if found else None

    async def enroll_device(
        self, token_id: str, secret_hash: str, device: NewDevice, now: datetime
    ) -> DeviceRecord:
        """Consume one use of the token and create the device, atomically."""

        def job(db: sqlite3.Connection) -> DeviceRecord:
            row = db.execute(
                f"SELECT {rows.TOKEN_COLUMNS} FROM enrollment_tokens WHERE id = ?", (token_id,)
            ).fetchone()
            token = check_enrollment_token(rows.token(row) if row else None, secret_hash, now)
            db.execute(
                "UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE id = ?", (token_id,)
            )
            db.execute(
                "INSERT INTO devices (id, hostname, tags, cert_serial, cert_fingerprint, "
                "cert_not_after, enrolled_at, enrollment_token, last_contact, agent_version) "
                "VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    device.id,
                    device.hostname,
                    rows.dumps(token.tags),
                    device.cert_serial,
                    device.cert_fingerprint,
                    rows.ts(device.cert_not_after),
                    rows.ts(now),
                    token_id,
                    rows.ts(now),
                    device.agent_version,
                ),
            )
            audit = AuditRecord(
                f"token:{token_id}",
                "device.enroll",
                device.id,
                "ok",
                now,
                {"hostname": device.hostname, "cert_serial": device.cert_serial},
            )
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))
            return rows.device(db.execute(SELECT_DEVICE, (device.id,)).fetchone())

        return await self._w.submit(job)

    # devices ------------------------------------------------------------------------

    async def get_device(self, device_id: str) -> DeviceRecord | None:
        """Return a device by id."""
        found = await self._point_read(SELECT_DEVICE, (device_id,))
        return rows.device(found[0]) if found else None

    async def list_devices(self) -> list[DeviceRecord]:
        """Return every device, ordered by id.

        A row equal to the one the previous listing read answers with the (frozen) record
        parsed then: listing a steady fleet parses only the rows written since (5,000
        rows: ~100 ms of parsing saved per call). The memo holds one row and record per
        device of the last listing, so it is bounded by the fleet.
        """
        found = await self._read(f"SELECT {rows.DEVICE_COLUMNS} FROM devices ORDER BY id")
        memo, fresh = self._device_memo, {}
        for r in found:
            hit = memo.get(r[0])
            fresh[r[0]] = hit if hit is not None and hit[0] == r else (r, rows.device(r))
        self._device_memo = fresh
        return [record for _, record in fresh.values()]

    async def set_device_disabled(
        self, device_id: str, disabled: bool, audit: AuditRecord
    ) -> DeviceRecord:
        """Disable or enable a device, with its audit row."""

        def job(db: sqlite3.Connection) -> DeviceRecord:
            cur = db.execute(
                "UPDATE devices SET disabled = ? WHERE id = ?", (int(disabled), device_id)
            )
            if cur.rowcount == 0:
                raise checks.no_device(device_id)
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))
            return rows.device(db.execute(SELECT_DEVICE, (device_id,)).fetchone())

        return await self._w.submit(job)

    async def replace_device_cert(self, device_id: str, cert: RenewedCert, now: datetime) -> None:
        """Record a renewed client certificate; the replaced one becomes the previous."""

        def job(db: sqlite3.Connection) -> None:
            # Renewed from the previous certificate (a renewal whose answer was lost): the
            # previous stays previous; the unused newest one is dropped.
            cur = db.execute(
                "UPDATE devices SET prev_cert_serial = CASE WHEN ? THEN prev_cert_serial "
                "ELSE cert_serial END, cert_serial = ?, cert_fingerprint = ?, "
                "cert_not_after = ?, cert_key_sha256 = ?, last_contact = ? "
                "WHERE id = ? AND disabled = 0 AND (cert_serial = ? OR prev_cert_serial = ?)",
                (
                    int(cert.from_previous),
                    cert.serial,
                    cert.fingerprint,
                    rows.ts(cert.not_after),
                    cert.key_sha256,
                    rows.ts(now),
                    device_id,
                    cert.renewed_from,
                    cert.renewed_from,
                ),
            )
            if cur.rowcount == 0:
                raise checks.renewal_refused(device_id)
            detail = {
                "cert_serial": cert.serial,
                "renewed_from": cert.renewed_from,
                "via": cert.via,
            }
            audit = AuditRecord(f"device:{device_id}", "device.renew", device_id, "ok", now, detail)
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))

        await self._w.submit(job)

    async def get_cert_lineage(self, device_id: str) -> CertLineage | None:
        """Return the device's newest certificate serial and the one before it."""
        found = await self._read(
            "SELECT cert_serial, prev_cert_serial, cert_key_sha256 FROM devices WHERE id = ?",
            (device_id,),
        )
        return CertLineage(*found[0]) if found else None

    # sync ---------------------------------------------------------------------------

    async def ingest_sync(self, device_id: str, batch: SyncBatch, now: datetime) -> SyncResult:
        """Store entries once each, merge the status, advance the ack; one transaction."""
        received = rows.ts(now)
        status = batch.status
        metrics_bound = self._metrics_bound

        def job(db: sqlite3.Connection) -> tuple[int, int, bool, int]:
            row = db.execute(
                f"SELECT disabled, target_revision, has_full_status, "
                f"{', '.join(STATUS_FIELDS)} FROM devices WHERE id = ?",
                (device_id,),
            ).fetchone()
            _, target_revision, has_full, *current = sync_rules.check_device(device_id, row)
            space = _seq_space(db, device_id, batch.epoch)
            inserted = _insert_entries(db, device_id, space, batch.entries, received)
            device_audit.observe(
                db,
                device_id,
                batch.entries,
                space.offset,
                space.floor,
                received,
                self.audit_gap_bound,
            )
            save_metrics(
                db, device_id, batch.entries, space.offset, space.floor, received, metrics_bound
            )
            sqlite_actions.observe(
                db,
                device_id,
                batch.entries,
                space.floor,
                received,
                self.action_result_max_bytes,
                self.action_parts_bound,
            )
            sets, args = sync_rules.device_update(batch, current, received)
            if status is not None:
                has_full = has_full or status.full
            db.execute(f"UPDATE devices SET {', '.join(sets)} WHERE id = ?", (*args, device_id))
            if status is not None:
                save_host_report(db, device_id, status, received)
            self.contact_spans_trimmed += observe_contact(
                db, device_id, now, self.contact_gap_s, self.contact_max_spans
            )
            return space.acked, target_revision, bool(has_full), inserted

        acked, target_revision, has_full, inserted = await self._w.submit(job)
        target = None
        if is_target_newer(target_revision, batch.known_target_revision):
            record = await self.get_target(device_id)
            target = record.signed if record is not None else None
        return SyncResult(acked, target, not has_full, inserted)

    async def device_features(self, device_id: str) -> frozenset[str] | None:
        """Return the target features the device's agent reported (None: never reported)."""
        found = await self._point_read("SELECT features FROM devices WHERE id = ?", (device_id,))
        if not found or found[0][0] is None:
            return None
        return frozenset(rows.loads(found[0][0]))

    # targets ------------------------------------------------------------------------

    async def put_target(
        self,
        device_id: str,
        build: Callable[[int], SignedTarget],
        audit: AuditRecord,
        now: datetime,
        secrets: Sequence[tuple[SealedSecret, AuditRecord]] = (),
    ) -> TargetRecord:
        """Store the next revision of the device's target, with its audit row and secrets."""

        def job(db: sqlite3.Connection) -> TargetRecord:
            row = db.execute(
                "SELECT disabled, target_revision FROM devices WHERE id = ?", (device_id,)
            ).fetchone()
            if row is None:
                raise checks.no_device(device_id)
            revision = checks.next_target_revision(device_id, *row)
            signed = build(revision)
            for sealed, secret_audit in secrets:  # only with the target: none left behind
                upsert_secret(db, sealed, rows.ts(secret_audit.at), secret_audit.actor)
                db.execute(rows.INSERT_AUDIT, rows.audit_args(secret_audit))
            db.execute(
                "INSERT INTO targets VALUES (?,?,?,?,?)",
                (device_id, revision, signed.model_dump_json(), rows.ts(now), audit.actor),
            )
            db.execute("UPDATE devices SET target_revision = ? WHERE id = ?", (revision, device_id))
            db.execute(rows.INSERT_AUDIT, rows.audit_args(audit))
            return TargetRecord(device_id, revision, signed, now, audit.actor)

        return await self._w.submit(job)

    async def get_target(self, device_id: str) -> TargetRecord | None:
        """Return the device's newest target."""
        found = await self.list_targets(device_id, 1)
        return found[0] if found else None

    async def list_targets(self, device_id: str, limit: int) -> list[TargetRecord]:
        """Return the device's newest ``limit`` targets, newest first."""
        read = self._point_read if limit <= POINT_READ_TARGETS else self._read
        found = await read(
            "SELECT device_id, revision, document, created_at, created_by FROM targets "
            "WHERE device_id = ? ORDER BY revision DESC LIMIT ?",
            (device_id, limit),
        )
        return [
            TargetRecord(
                dev,
                revision,
                SignedTarget.model_validate_json(document),
                datetime.fromisoformat(created_at),
                created_by,
            )
            for dev, revision, document, created_at, created_by in found
        ]

    # releases -----------------------------------------------------------------------

    async def create_release(
        self,
        release: ReleaseRecord,
        audit: AuditRecord,
        secrets: Sequence[tuple[SealedSecret, AuditRecord]] = (),
    ) -> tuple[ReleaseRecord, bool]:
        """Store a new release (or find the identical one) with its audit row and secrets."""
        return await self._w.submit(lambda db: sqlite_releases.create(db, release, audit, secrets))

    async def get_release(self, name: str, version: str) -> ReleaseRecord | None:
        """Return a release by name and version."""
        found = await self._read(sqlite_releases.SELECT_ONE, (name, version))
        return rows.release(found[0]) if found else None

    async def list_releases(self, after_id: int, limit: int) -> list[ReleaseRecord]:
        """Return releases with id > after_id, oldest first."""
        found = await self._read(sqlite_releases.SELECT_PAGE, (after_id, limit))
        return [rows.release(r) for r in found]

    async def retire_release(
        self, name: str, version: str, reason: str, audit: AuditRecord
    ) -> ReleaseRecord:
        """Mark a release retired, with its audit row."""
        return await self._w.submit(
            lambda db: sqlite_releases.retire(db, name, version, reason, audit)
        )

    # events and audit ---------------------------------------------------------------

    async def list_events(self, device_id: str, after: int, limit: int) -> list[EventRecord]:
        """Return entries with seq > after, in seq order."""
        found = await self._read(
            f"SELECT {rows.EVENT_COLUMNS} FROM events WHERE device_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (device_id, after, limit),
        )
        return [rows.event(r) for r in found]

    async def record_audit(self, audit: AuditRecord) -> None:
        """Append one audit row."""
        args = rows.audit_args(audit)

        def job(db: sqlite3.Connection) -> None:
            db.execute(rows.INSERT_AUDIT, args)

        await self._w.submit(job)

    async def list_audit(self, after_id: int, limit: int) -> list[AuditRecord]:
        """Return audit rows with id > after_id, oldest first."""
        found = await self._read(
            f"SELECT {rows.AUDIT_COLUMNS} FROM audit WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [rows.audit(r) for r in found]


def _seq_space(db: sqlite3.Connection, device_id: str, epoch: str) -> SeqSpace:
    """Return the device's sequence space for ``epoch``, opening it if it is not current.

    A new generation (a wiped store, or another store with this identity) gets seqs
    above everything the hub holds, so no entry is taken for a duplicate of another
    generation's; the generation it replaces keeps its acked position in device_epochs.
    """
    cur, offset, floor, acked, high = db.execute(
        "SELECT store_epoch, seq_offset, seq_floor, acked_seq, seq_high FROM devices WHERE id = ?",
        (device_id,),
    ).fetchone()
    if cur == epoch:
        return SeqSpace(epoch, offset, floor, acked, high)
    db.execute(
        "INSERT INTO device_epochs VALUES (?,?,?) ON CONFLICT(device_id, epoch) "
        "DO UPDATE SET acked_seq = MAX(acked_seq, excluded.acked_seq)",
        (device_id, cur, acked),
    )
    seen = db.execute(
        "SELECT acked_seq FROM device_epochs WHERE device_id = ? AND epoch = ?",
        (device_id, epoch),
    ).fetchone()
    return SeqSpace.opened(epoch, high, seen[0] if seen else 0)


def _insert_entries(
    db: sqlite3.Connection,
    device_id: str,
    space: SeqSpace,
    entries: list[EntryRow],
    received: str,
) -> int:
    """Store the entries in ``space`` once each; update the device's position; return how many."""
    fresh = space.fresh(entries)
    inserted = 0
    if fresh:
        before = db.total_changes
        db.executemany(
            "INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?)",
            # metrics samples are kept apart, bounded per device (sqlite_metrics)
            [
                (device_id, s + space.offset, k, c, received, p)
                for s, k, c, p in fresh
                if k != "metrics"
            ],
        )
        inserted = db.total_changes - before
    space.advance(fresh, entries)
    db.execute(
        "UPDATE devices SET store_epoch = ?, seq_offset = ?, seq_floor = ?, acked_seq = ?, "
        "seq_high = ? WHERE id = ?",
        (space.epoch, space.offset, space.floor, space.acked, space.high, device_id),
    )
    return inserted
