"""SQLite implementation of HubStore (aiosqlite, WAL, one writer with group commit).

Writes go through ``GroupCommitWriter`` (one connection, ``BEGIN IMMEDIATE``); reads use
a second connection, which under WAL sees the last committed state and never blocks
the writer. ``synchronous=FULL`` by default: an acked_seq the hub returns survives a
power cut, which the agent relies on when it deletes what was acknowledged.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from edge_agent.protocol import SignedTarget
from hub.auth import check_enrollment_token
from hub.errors import (
    Conflict,
    Forbidden,
    NotFound,
    StoreError,
)
from hub.fleet import STATUS_FIELDS, is_target_newer, merge_status
from hub.store import HubStore
from hub.store.records import (
    AuditRecord,
    DeviceRecord,
    EnrollmentTokenRecord,
    EventRecord,
    NewDevice,
    SyncBatch,
    SyncResult,
    TargetRecord,
)
from hub.store.sqlite_schema import MIGRATIONS
from hub.store.writer import GroupCommitWriter

DEVICE_COLUMNS = (
    "id, hostname, tags, cert_serial, cert_fingerprint, cert_not_after, enrolled_at, "
    "enrollment_token, disabled, last_contact, agent_version, applied_revision, "
    "target_revision, acked_seq, state, release, services, counters, last_error, "
    "status_at, has_full_status"
)


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _loads(value: str | None) -> Any:
    return json.loads(value) if value is not None else None


def _device(row: sqlite3.Row | tuple[Any, ...]) -> DeviceRecord:
    (
        id_,
        hostname,
        tags,
        serial,
        fp,
        not_after,
        enrolled_at,
        token,
        disabled,
        last_contact,
        agent_version,
        applied,
        target,
        acked,
        state,
        release,
        services,
        counters,
        last_error,
        status_at,
        has_full,
    ) = row
    return DeviceRecord(
        id=id_,
        hostname=hostname,
        tags=json.loads(tags),
        cert_serial=serial,
        cert_fingerprint=fp,
        cert_not_after=datetime.fromisoformat(not_after),
        enrolled_at=datetime.fromisoformat(enrolled_at),
        enrollment_token=token,
        disabled=bool(disabled),
        last_contact=_dt(last_contact),
        agent_version=agent_version,
        applied_revision=applied,
        target_revision=target,
        acked_seq=acked,
        state=state,
        release=release,
        services=_loads(services),
        counters=_loads(counters),
        last_error=last_error,
        status_at=_dt(status_at),
        has_full_status=bool(has_full),
    )


async def _insert_audit(db: aiosqlite.Connection, audit: AuditRecord) -> None:
    await db.execute(
        "INSERT INTO audit (at, actor, action, target, outcome, detail) VALUES (?,?,?,?,?,?)",
        (
            _ts(audit.at),
            audit.actor,
            audit.action,
            audit.target,
            audit.outcome,
            _json(audit.detail),
        ),
    )


async def _one(db: aiosqlite.Connection, sql: str, args: tuple[Any, ...]) -> Any:
    async with db.execute(sql, args) as cur:
        return await cur.fetchone()


class SqliteStore(HubStore):
    """HubStore on one SQLite file."""

    def __init__(
        self, path: Path, *, synchronous: str = "FULL", max_group_commit: int = 256
    ) -> None:
        self.path = path
        self._synchronous = synchronous
        self._max_group = max_group_commit
        self._wconn: aiosqlite.Connection | None = None
        self._rconn: aiosqlite.Connection | None = None
        self._writer: GroupCommitWriter | None = None

    async def open(self) -> None:
        """Connect both connections and run pending migrations."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._wconn = await aiosqlite.connect(self.path, isolation_level=None)
            for pragma in (
                "journal_mode=WAL",
                f"synchronous={self._synchronous}",
                "foreign_keys=ON",
                "busy_timeout=5000",
            ):
                await self._wconn.execute(f"PRAGMA {pragma}")
            await self._migrate(self._wconn)
            self._rconn = await aiosqlite.connect(self.path, isolation_level=None)
            await self._rconn.execute("PRAGMA busy_timeout=5000")
            await self._rconn.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from exc
        self.path.chmod(0o600)
        self._writer = GroupCommitWriter(self._wconn, self._max_group)
        self._writer.start()

    async def close(self) -> None:
        """Drain the writer and close both connections."""
        if self._writer is not None:
            await self._writer.stop()
            self._writer = None
        for conn in (self._rconn, self._wconn):
            if conn is not None:
                await conn.close()
        self._rconn = self._wconn = None

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        async with db.execute("SELECT version FROM schema_migrations") as cur:
            done = {row[0] for row in await cur.fetchall()}
        for version, name, statements in MIGRATIONS:
            if version in done:
                continue
            await db.execute("BEGIN IMMEDIATE")
            try:
                for statement in statements:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_migrations VALUES (?,?,?)",
                    (version, name, _ts(datetime.now(UTC))),
                )
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise

    @property
    def _w(self) -> GroupCommitWriter:
        if self._writer is None:
            raise StoreError("store is not open")
        return self._writer

    @property
    def _r(self) -> aiosqlite.Connection:
        if self._rconn is None:
            raise StoreError("store is not open")
        return self._rconn

    async def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            async with self._r.execute(sql, args) as cur:
                return list(await cur.fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"database read failed: {exc}") from exc

    # enrollment ---------------------------------------------------------------------

    async def create_enrollment_token(
        self, token: EnrollmentTokenRecord, audit: AuditRecord
    ) -> None:
        """Store a new enrollment token and its audit row."""

        async def job(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT INTO enrollment_tokens VALUES (?,?,?,?,?,?,?,?)",
                (
                    token.id,
                    token.secret_hash,
                    token.uses_total,
                    token.uses_left,
                    _ts(token.expires_at),
                    _json(token.tags),
                    _ts(token.created_at),
                    token.created_by,
                ),
            )
            await _insert_audit(db, audit)

        await self._w.submit(job)

    async def get_enrollment_token(self, token_id: str) -> EnrollmentTokenRecord | None:
        """Return a token by id."""
        rows = await self._read("SELECT * FROM enrollment_tokens WHERE id = ?", (token_id,))
        return _token(rows[0]) if rows else None

    async def enroll_device(
        self, token_id: str, secret_hash: str, device: NewDevice, now: datetime
    ) -> DeviceRecord:
        """Consume one use of the token and create the device, atomically."""

        async def job(db: aiosqlite.Connection) -> DeviceRecord:
            row = await _one(db, "SELECT * FROM enrollment_tokens WHERE id = ?", (token_id,))
            token = check_enrollment_token(_token(row) if row else None, secret_hash, now)
            await db.execute(
                "UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE id = ?", (token_id,)
            )
            await db.execute(
                "INSERT INTO devices (id, hostname, tags, cert_serial, cert_fingerprint, "
                "cert_not_after, enrolled_at, enrollment_token, last_contact, agent_version) "
                "VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    device.id,
                    device.hostname,
                    _json(token.tags),
                    device.cert_serial,
                    device.cert_fingerprint,
                    _ts(device.cert_not_after),
                    _ts(now),
                    token_id,
                    _ts(now),
                    device.agent_version,
                ),
            )
            await _insert_audit(
                db,
                AuditRecord(
                    f"token:{token_id}",
                    "device.enroll",
                    device.id,
                    "ok",
                    now,
                    {"hostname": device.hostname, "cert_serial": device.cert_serial},
                ),
            )
            got = await _one(db, f"SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?", (device.id,))
            return _device(got)

        return await self._w.submit(job)

    # devices ------------------------------------------------------------------------

    async def get_device(self, device_id: str) -> DeviceRecord | None:
        """Return a device by id."""
        rows = await self._read(f"SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?", (device_id,))
        return _device(rows[0]) if rows else None

    async def list_devices(self) -> list[DeviceRecord]:
        """Return every device, ordered by id."""
        return [
            _device(r)
            for r in await self._read(f"SELECT {DEVICE_COLUMNS} FROM devices ORDER BY id")
        ]

    async def set_device_disabled(
        self, device_id: str, disabled: bool, audit: AuditRecord
    ) -> DeviceRecord:
        """Disable or enable a device, with its audit row."""

        async def job(db: aiosqlite.Connection) -> DeviceRecord:
            cur = await db.execute(
                "UPDATE devices SET disabled = ? WHERE id = ?", (int(disabled), device_id)
            )
            if cur.rowcount == 0:
                raise NotFound(f"no device {device_id!r}")
            await _insert_audit(db, audit)
            got = await _one(db, f"SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?", (device_id,))
            return _device(got)

        return await self._w.submit(job)

    async def replace_device_cert(
        self, device_id: str, serial: str, fingerprint: str, not_after: datetime, now: datetime
    ) -> None:
        """Record a renewed client certificate."""

        async def job(db: aiosqlite.Connection) -> None:
            cur = await db.execute(
                "UPDATE devices SET cert_serial = ?, cert_fingerprint = ?, cert_not_after = ?, "
                "last_contact = ? WHERE id = ? AND disabled = 0",
                (serial, fingerprint, _ts(not_after), _ts(now), device_id),
            )
            if cur.rowcount == 0:
                raise Forbidden(f"device {device_id!r} is unknown or disabled")
            await _insert_audit(
                db,
                AuditRecord(
                    f"device:{device_id}",
                    "device.renew",
                    device_id,
                    "ok",
                    now,
                    {"cert_serial": serial},
                ),
            )

        await self._w.submit(job)

    # sync ---------------------------------------------------------------------------

    async def ingest_sync(self, device_id: str, batch: SyncBatch, now: datetime) -> SyncResult:
        """Store entries once each, merge the status, advance the ack; one transaction."""
        status_cols = ", ".join(STATUS_FIELDS)
        received = _ts(now)
        rows = [
            (device_id, e.seq, e.kind, _ts(e.created_at), received, _json(e.payload))
            for e in batch.entries
        ]

        async def job(db: aiosqlite.Connection) -> tuple[int, int, bool, int]:
            row = await _one(
                db,
                f"SELECT disabled, acked_seq, target_revision, has_full_status, {status_cols} "
                "FROM devices WHERE id = ?",
                (device_id,),
            )
            if row is None:
                raise Forbidden(f"device {device_id!r} is not enrolled")
            disabled, acked, target_revision, has_full, *status = row
            if disabled:
                raise Forbidden(f"device {device_id!r} is disabled")
            inserted = 0
            if rows:
                cur = await db.executemany(
                    "INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?)", rows
                )
                inserted = max(cur.rowcount, 0)
                # Entries arrive in seq order; everything up to the batch's last seq is
                # now durable (gaps are entries the agent dropped, never to be sent).
                acked = max(acked, batch.entries[-1].seq)
            sets = ["last_contact = ?", "acked_seq = ?", "applied_revision = ?"]
            args: list[Any] = [received, acked, _applied_revision(batch)]
            if batch.status is not None:
                current = dict(zip(STATUS_FIELDS, status, strict=True))
                current["services"] = _loads(current["services"])
                current["counters"] = _loads(current["counters"])
                merged = merge_status(current, batch.status)
                for name in STATUS_FIELDS:
                    sets.append(f"{name} = ?")
                    value = merged[name]
                    args.append(
                        _json(value)
                        if name in ("services", "counters") and value is not None
                        else value
                    )
                sets.append("status_at = ?")
                args.append(received)
                if batch.status.agent_version is not None:
                    sets.append("agent_version = ?")
                    args.append(batch.status.agent_version)
                if batch.status.full:
                    has_full = 1
                    sets.append("has_full_status = 1")
            await db.execute(
                f"UPDATE devices SET {', '.join(sets)} WHERE id = ?", (*args, device_id)
            )
            return acked, target_revision, bool(has_full), inserted

        acked, target_revision, has_full, inserted = await self._w.submit(job)
        target = None
        if is_target_newer(target_revision, batch.known_target_revision):
            record = await self.get_target(device_id)
            target = record.signed if record is not None else None
        return SyncResult(acked, target, not has_full, inserted)

    # targets ------------------------------------------------------------------------

    async def put_target(
        self,
        device_id: str,
        build: Callable[[int], SignedTarget],
        audit: AuditRecord,
        now: datetime,
    ) -> TargetRecord:
        """Store the next revision of the device's target, with its audit row."""

        async def job(db: aiosqlite.Connection) -> TargetRecord:
            row = await _one(
                db,
                "SELECT disabled, target_revision, applied_revision FROM devices WHERE id = ?",
                (device_id,),
            )
            if row is None:
                raise NotFound(f"no device {device_id!r}")
            disabled, target_revision, applied_revision = row
            if disabled:
                raise Conflict(f"device {device_id!r} is disabled")
            # Revisions only grow, also past what the device applied (e.g. after a restore).
            revision = max(target_revision, applied_revision) + 1
            signed = build(revision)
            await db.execute(
                "INSERT INTO targets VALUES (?,?,?,?,?)",
                (device_id, revision, signed.model_dump_json(), _ts(now), audit.actor),
            )
            await db.execute(
                "UPDATE devices SET target_revision = ? WHERE id = ?", (revision, device_id)
            )
            await _insert_audit(db, audit)
            return TargetRecord(device_id, revision, signed, now, audit.actor)

        return await self._w.submit(job)

    async def get_target(self, device_id: str) -> TargetRecord | None:
        """Return the device's newest target."""
        rows = await self._read(
            "SELECT device_id, revision, document, created_at, created_by FROM targets "
            "WHERE device_id = ? ORDER BY revision DESC LIMIT 1",
            (device_id,),
        )
        if not rows:
            return None
        dev, revision, document, created_at, created_by = rows[0]
        return TargetRecord(
            dev,
            revision,
            SignedTarget.model_validate_json(document),
            datetime.fromisoformat(created_at),
            created_by,
        )

    # events and audit ---------------------------------------------------------------

    async def list_events(self, device_id: str, after: int, limit: int) -> list[EventRecord]:
        """Return entries with seq > after, in seq order."""
        rows = await self._read(
            "SELECT device_id, seq, kind, created_at, received_at, payload FROM events "
            "WHERE device_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (device_id, after, limit),
        )
        return [
            EventRecord(
                d, s, k, datetime.fromisoformat(c), datetime.fromisoformat(r), json.loads(p)
            )
            for d, s, k, c, r, p in rows
        ]

    async def record_audit(self, audit: AuditRecord) -> None:
        """Append one audit row."""

        async def job(db: aiosqlite.Connection) -> None:
            await _insert_audit(db, audit)

        await self._w.submit(job)

    async def list_audit(self, after_id: int, limit: int) -> list[AuditRecord]:
        """Return audit rows with id > after_id, oldest first."""
        rows = await self._read(
            "SELECT id, at, actor, action, target, outcome, detail FROM audit "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [
            AuditRecord(
                actor, action, target, outcome, datetime.fromisoformat(at), json.loads(detail), id_
            )
            for id_, at, actor, action, target, outcome, detail in rows
        ]


def _token(row: tuple[Any, ...]) -> EnrollmentTokenRecord:
    id_, secret_hash, total, left, expires_at, tags, created_at, created_by = row
    return EnrollmentTokenRecord(
        id_,
        secret_hash,
        total,
        left,
        datetime.fromisoformat(expires_at),
        json.loads(tags),
        datetime.fromisoformat(created_at),
        created_by,
    )


def _applied_revision(batch: SyncBatch) -> int:
    if batch.status is not None and batch.status.applied_revision is not None:
        return batch.status.applied_revision
    return batch.applied_revision
