"""PostgreSQL implementation of the hub store, on an asyncpg connection pool.

Every write is one transaction on a pooled connection; rows a write depends on are locked
(``SELECT ... FOR UPDATE``), so several hub processes can share one database: a device's
target revisions and sync positions advance one transaction at a time, and the hub audit
chain is serialized by an advisory lock (``pg_core.insert_audit``).

The whole ``HubStore`` (the mixins below; ``missing_methods()`` is empty, and
``open_store`` refuses a postgresql URL should a method ever be missing: no half-working
hub). ``ingest_sync`` stores entries, acks, status and features, and in the same
transaction the side records SQLite's ingest derives from a batch (device audit chain,
metrics samples, action results and parts, host container reports: ``pg_ingest_side``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg

from edge_agent.protocol import SignedTarget
from hub.auth import check_enrollment_token
from hub.errors import Conflict, StoreError
from hub.fleet import is_target_newer
from hub.store import HubStore, checks
from hub.store import sqlite_rows as rows
from hub.store.pg_access import PgAccessMixin
from hub.store.pg_actions import PgActionsMixin
from hub.store.pg_audit import PgAuditMixin
from hub.store.pg_core import insert_audit, migrate
from hub.store.pg_group_commit import IngestGroups
from hub.store.pg_groups import PgGroupsMixin
from hub.store.pg_history import PgHistoryMixin
from hub.store.pg_ingest_side import PgIngestSideMixin
from hub.store.pg_metrics import PgMetricsMixin
from hub.store.pg_notify import PgNotifyMixin
from hub.store.pg_policies import PgPoliciesMixin
from hub.store.pg_releases import PgReleasesMixin, upsert_secret
from hub.store.pg_retention import PgRetentionMixin
from hub.store.pg_rollouts import PgRolloutsMixin
from hub.store.pg_secrets import PgSecretsMixin
from hub.store.pg_sessions import PgSessionsMixin
from hub.store.pg_stats import PgStatsMixin
from hub.store.pg_sync import ingest
from hub.store.pg_technicians import PgTechniciansMixin
from hub.store.pg_trust import PgTrustMixin
from hub.store.pg_writer import PgWriterMixin, PoolMeter
from hub.store.records import (
    AuditRecord,
    CertLineage,
    DeviceRecord,
    EnrollmentTokenRecord,
    EventRecord,
    MetricsBound,
    NewDevice,
    RenewedCert,
    SealedSecret,
    SyncBatch,
    SyncResult,
    TargetRecord,
)

SELECT_DEVICE = f"SELECT {rows.DEVICE_COLUMNS} FROM devices WHERE id = $1"
SELECT_TOKEN = f"SELECT {rows.TOKEN_COLUMNS} FROM enrollment_tokens WHERE id = $1"


def missing_methods() -> list[str]:
    """Return the HubStore methods PostgresStore does not implement yet, sorted."""
    return sorted(m for m in HubStore.__abstractmethods__ if not hasattr(PostgresStore, m))


class PostgresStore(
    PgGroupsMixin,
    PgIngestSideMixin,
    PgAuditMixin,
    PgTechniciansMixin,
    PgMetricsMixin,
    PgActionsMixin,
    PgRetentionMixin,
    PgStatsMixin,
    PgReleasesMixin,
    PgRolloutsMixin,
    PgTrustMixin,
    PgPoliciesMixin,
    PgAccessMixin,
    PgSecretsMixin,
    PgSessionsMixin,
    PgWriterMixin,
    PgHistoryMixin,
    PgNotifyMixin,
):
    """The hub store on PostgreSQL."""

    def __init__(
        self,
        url: str,
        *,
        pool_min: int = 1,
        pool_max: int = 10,
        metrics: MetricsBound | None = None,
        max_group_commit: int = 256,
    ) -> None:
        self.url = url
        self._metrics_bound = metrics or MetricsBound()
        self._pool_min = pool_min
        self._pool_max = pool_max
        self._pool: asyncpg.Pool | None = None
        self.applied_migrations: list[int] = []
        self._meter = PoolMeter()  # pool waiters and commits (writer_stats, watch_commits)
        # Sync batches queued while every pooled connection is busy share a transaction.
        self.ingest_groups = IngestGroups(
            max_group_commit, pool_max, self._ingest_group, self._ingest_alone
        )

    async def open(self) -> None:
        """Create the pool and apply pending migrations."""
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=self._pool_min, max_size=self._pool_max
            )
            async with self._pool.acquire() as conn:
                self.applied_migrations = await migrate(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self.close()
            raise StoreError(f"cannot open database {_safe_url(self.url)}: {exc}") from exc

    async def close(self) -> None:
        """Close every pooled connection (waits for the ones in use)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @asynccontextmanager
    async def _tx(self, jobs: int = 1) -> AsyncIterator[asyncpg.Connection]:
        """Yield a pooled connection inside a transaction (of ``jobs`` writes, counted as
        such); database errors become StoreError."""
        if self._pool is None:
            raise StoreError("store is not open")
        try:
            async with (
                self._meter.connection(self._pool) as conn,
                self._meter.transaction(conn, jobs),
            ):
                yield conn
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(f"already exists: {exc.detail or exc}") from exc
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"database write failed: {exc}") from exc

    async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        if self._pool is None:
            raise StoreError("store is not open")
        try:
            async with self._meter.connection(self._pool) as conn:
                return list(await conn.fetch(sql, *args))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"database read failed: {exc}") from exc

    # enrollment ---------------------------------------------------------------------

    async def create_enrollment_token(
        self, token: EnrollmentTokenRecord, audit: AuditRecord
    ) -> None:
        """Store a new enrollment token and its audit row."""
        async with self._tx() as conn:
            await conn.execute(
                f"INSERT INTO enrollment_tokens ({rows.TOKEN_COLUMNS}) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                token.id,
                token.secret_hash,
                token.uses_total,
                token.uses_left,
                rows.ts(token.expires_at),
                rows.dumps(token.tags),
                rows.ts(token.created_at),
                token.created_by,
            )
            await insert_audit(conn, audit)

    async def get_enrollment_token(self, token_id: str) -> EnrollmentTokenRecord | None:
        """Return a token by id."""
        found = await self._read(SELECT_TOKEN, token_id)
        return rows.token(tuple(found[0])) if found else None

    async def enroll_device(
        self, token_id: str, secret_hash: str, device: NewDevice, now: datetime
    ) -> DeviceRecord:
        """Consume one use of the token (row locked) and create the device, atomically."""
        async with self._tx() as conn:
            row = await conn.fetchrow(SELECT_TOKEN + " FOR UPDATE", token_id)
            token = check_enrollment_token(
                rows.token(tuple(row)) if row else None, secret_hash, now
            )
            await conn.execute(
                "UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE id = $1", token_id
            )
            await conn.execute(
                "INSERT INTO devices (id, hostname, tags, cert_serial, cert_fingerprint, "
                "cert_not_after, enrolled_at, enrollment_token, last_contact, agent_version) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
            )
            detail = {"hostname": device.hostname, "cert_serial": device.cert_serial}
            audit = AuditRecord(f"token:{token_id}", "device.enroll", device.id, "ok", now, detail)
            await insert_audit(conn, audit)
            return rows.device(tuple(await conn.fetchrow(SELECT_DEVICE, device.id)))

    # devices ------------------------------------------------------------------------

    async def get_device(self, device_id: str) -> DeviceRecord | None:
        """Return a device by id."""
        found = await self._read(SELECT_DEVICE, device_id)
        return rows.device(tuple(found[0])) if found else None

    async def list_devices(self) -> list[DeviceRecord]:
        """Return every device, ordered by id."""
        found = await self._read(
            f'SELECT {rows.DEVICE_COLUMNS} FROM devices ORDER BY id COLLATE "C"'
        )
        return [rows.device(tuple(r)) for r in found]

    async def set_device_disabled(
        self, device_id: str, disabled: bool, audit: AuditRecord
    ) -> DeviceRecord:
        """Disable or enable a device, with its audit row."""
        async with self._tx() as conn:
            status = await conn.execute(
                "UPDATE devices SET disabled = $1 WHERE id = $2", int(disabled), device_id
            )
            if status == "UPDATE 0":
                raise checks.no_device(device_id)
            await insert_audit(conn, audit)
            return rows.device(tuple(await conn.fetchrow(SELECT_DEVICE, device_id)))

    async def replace_device_cert(self, device_id: str, cert: RenewedCert, now: datetime) -> None:
        """Record a renewed client certificate; the replaced one becomes the previous."""
        async with self._tx() as conn:
            # Renewed from the previous certificate (a renewal whose answer was lost): the
            # previous stays previous; the unused newest one is dropped.
            status = await conn.execute(
                "UPDATE devices SET prev_cert_serial = CASE WHEN $1 THEN prev_cert_serial "
                "ELSE cert_serial END, cert_serial = $2, cert_fingerprint = $3, "
                "cert_not_after = $4, cert_key_sha256 = $5, last_contact = $6 "
                "WHERE id = $7 AND disabled = 0 AND (cert_serial = $8 OR prev_cert_serial = $8)",
                cert.from_previous,
                cert.serial,
                cert.fingerprint,
                rows.ts(cert.not_after),
                cert.key_sha256,
                rows.ts(now),
                device_id,
                cert.renewed_from,
            )
            if status == "UPDATE 0":
                raise checks.renewal_refused(device_id)
            detail = {
                "cert_serial": cert.serial,
                "renewed_from": cert.renewed_from,
                "via": cert.via,
            }
            audit = AuditRecord(f"device:{device_id}", "device.renew", device_id, "ok", now, detail)
            await insert_audit(conn, audit)

    async def get_cert_lineage(self, device_id: str) -> CertLineage | None:
        """Return the device's newest certificate serial and the one before it."""
        found = await self._read(
            "SELECT cert_serial, prev_cert_serial, cert_key_sha256 FROM devices WHERE id = $1",
            device_id,
        )
        return CertLineage(*found[0]) if found else None

    # sync ---------------------------------------------------------------------------

    async def ingest_sync(self, device_id: str, batch: SyncBatch, now: datetime) -> SyncResult:
        """Store entries once each, merge the status, advance the ack; in one transaction,
        alone or with other devices' batches (``pg_group_commit``)."""
        applied = await self.ingest_groups.submit(device_id, batch, now)
        acked, target_revision, has_full, inserted = applied
        target = None
        if is_target_newer(target_revision, batch.known_target_revision):
            record = await self.get_target(device_id)
            target = record.signed if record is not None else None
        return SyncResult(acked, target, not has_full, inserted)

    async def _ingest_alone(
        self, device_id: str, batch: SyncBatch, now: datetime
    ) -> tuple[int, int, bool, int]:
        async with self._tx() as conn:
            applied = await ingest(conn, device_id, batch, now, self._side_bounds())
            await self._observe_contact(conn, device_id, now)
        return applied

    async def _ingest_group(
        self, jobs: list[tuple[str, SyncBatch, datetime]]
    ) -> list[tuple[int, int, bool, int]]:
        out = []
        async with self._tx(len(jobs)) as conn:
            # Every device row of the group locked first, in id order: no deadlock between
            # groups, whichever process runs them.
            await conn.execute(
                "SELECT 1 FROM devices WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
                sorted({device_id for device_id, _b, _n in jobs}),
            )
            for device_id, batch, now in jobs:  # arrival order: one device's batches in order
                out.append(await ingest(conn, device_id, batch, now, self._side_bounds()))
                await self._observe_contact(conn, device_id, now)
        return out

    async def device_features(self, device_id: str) -> frozenset[str] | None:
        """Return the target features the device's agent reported (None: never reported)."""
        found = await self._read("SELECT features FROM devices WHERE id = $1", device_id)
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
        """Store the next revision of the device's target (device row locked), with its audit
        row and the secrets it needs, in one transaction."""
        async with self._tx() as conn:
            row = await conn.fetchrow(
                "SELECT disabled, target_revision FROM devices WHERE id = $1 FOR UPDATE",
                device_id,
            )
            if row is None:
                raise checks.no_device(device_id)
            revision = checks.next_target_revision(device_id, *row)
            signed = build(revision)
            for sealed, secret_audit in secrets:  # only with the target: none left behind
                await upsert_secret(conn, sealed, rows.ts(secret_audit.at), secret_audit.actor)
                await insert_audit(conn, secret_audit)
            await conn.execute(
                "INSERT INTO targets VALUES ($1, $2, $3, $4, $5)",
                device_id,
                revision,
                signed.model_dump_json(),
                rows.ts(now),
                audit.actor,
            )
            await conn.execute(
                "UPDATE devices SET target_revision = $1 WHERE id = $2", revision, device_id
            )
            await insert_audit(conn, audit)
            return TargetRecord(device_id, revision, signed, now, audit.actor)

    async def get_target(self, device_id: str) -> TargetRecord | None:
        """Return the device's newest target."""
        found = await self.list_targets(device_id, 1)
        return found[0] if found else None

    async def list_targets(self, device_id: str, limit: int) -> list[TargetRecord]:
        """Return the device's newest ``limit`` targets, newest first."""
        found = await self._read(
            "SELECT device_id, revision, document, created_at, created_by FROM targets "
            "WHERE device_id = $1 ORDER BY revision DESC LIMIT $2",
            device_id,
            limit,
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

    # events and audit ---------------------------------------------------------------

    async def list_events(self, device_id: str, after: int, limit: int) -> list[EventRecord]:
        """Return entries with seq > after, in seq order."""
        found = await self._read(
            f"SELECT {rows.EVENT_COLUMNS} FROM events WHERE device_id = $1 AND seq > $2 "
            "ORDER BY seq LIMIT $3",
            device_id,
            after,
            limit,
        )
        return [rows.event(tuple(r)) for r in found]

    async def record_audit(self, audit: AuditRecord) -> None:
        """Append one audit row."""
        async with self._tx() as conn:
            await insert_audit(conn, audit)

    async def list_audit(self, after_id: int, limit: int) -> list[AuditRecord]:
        """Return audit rows with id > after_id, oldest first."""
        found = await self._read(
            f"SELECT {rows.AUDIT_COLUMNS} FROM audit WHERE id > $1 ORDER BY id LIMIT $2",
            after_id,
            limit,
        )
        return [rows.audit(tuple(r)) for r in found]


def _safe_url(url: str) -> str:
    """Return the URL without a password (for error messages)."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
