"""The hub's one door to its database: an interface, and ``open_store`` to pick a backend.

Handlers never see SQL. Every write that changes state and needs an audit row takes the
``AuditRecord`` and writes both in one transaction. Methods raise ``hub.errors`` types
(NotFound, Forbidden, UnknownToken, ...) so handlers map them to HTTP without knowing
the backend. A write's effects are visible (and its caller notified) only after commit.

Ack rule for sync (the agent deletes every entry <= acked_seq, and sends in seq order;
seqs may have gaps where the agent dropped entries)::

    acked_seq = max(previous acked_seq, highest seq in this batch)   -- after COMMIT
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from edge_agent.protocol import SignedTarget
from edge_agent.release_trust import SignedManifest, SignedRoot
from hub.config import HubConfig
from hub.store.records import (
    ActionPart,
    ActionRecord,
    AuditCursor,
    AuditEntry,
    AuditGapBound,
    AuditQuery,
    AuditRecord,
    AuditScope,
    CertLineage,
    ContactSpan,
    DeviceAuditChain,
    DeviceRecord,
    EnrollmentTokenRecord,
    EntryRow,
    EnvChange,
    EventRecord,
    FleetSample,
    GroupRecord,
    HostReport,
    MetricsBound,
    MetricsHistory,
    MetricsSample,
    NewDevice,
    PartsBound,
    PartTotals,
    ReleaseRecord,
    RenewedCert,
    RolloutRecord,
    SealedSecret,
    SecretRecord,
    SessionRecord,
    SyncBatch,
    SyncResult,
    TargetRecord,
    TeamRecord,
    TechnicianRecord,
    UserRecord,
    UserTokenRecord,
    WriterStats,
)

__all__ = [
    "ActionPart",
    "ActionRecord",
    "AuditCursor",
    "AuditEntry",
    "AuditGapBound",
    "AuditQuery",
    "AuditRecord",
    "AuditScope",
    "CertLineage",
    "DeviceAuditChain",
    "DeviceRecord",
    "EnrollmentTokenRecord",
    "EntryRow",
    "EnvChange",
    "EventRecord",
    "GroupRecord",
    "HostReport",
    "HubStore",
    "MetricsHistory",
    "MetricsSample",
    "NewDevice",
    "PartTotals",
    "PartsBound",
    "ReleaseRecord",
    "RolloutRecord",
    "SealedSecret",
    "SecretRecord",
    "SessionRecord",
    "SyncBatch",
    "SyncResult",
    "TargetRecord",
    "TechnicianRecord",
    "WriterStats",
    "open_store",
]


class HubStore(ABC):
    """Everything the hub persists."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and run pending migrations."""

    @abstractmethod
    async def close(self) -> None:
        """Finish pending writes and disconnect."""

    # enrollment ---------------------------------------------------------------------

    @abstractmethod
    async def create_enrollment_token(
        self, token: EnrollmentTokenRecord, audit: AuditRecord
    ) -> None:
        """Store a new enrollment token."""

    @abstractmethod
    async def get_enrollment_token(self, token_id: str) -> EnrollmentTokenRecord | None:
        """Return a token by id."""

    @abstractmethod
    async def enroll_device(
        self, token_id: str, secret_hash: str, device: NewDevice, now: datetime
    ) -> DeviceRecord:
        """Consume one use of the token and create the device, in one transaction.

        The device gets the token's tags. Raises UnknownToken, TokenExpired or
        TokenUsedUp and changes nothing when the token cannot be used.
        """

    # devices ------------------------------------------------------------------------

    @abstractmethod
    async def get_device(self, device_id: str) -> DeviceRecord | None:
        """Return a device by id."""

    @abstractmethod
    async def list_devices(self) -> list[DeviceRecord]:
        """Return every device, ordered by id."""

    @abstractmethod
    async def set_device_disabled(
        self, device_id: str, disabled: bool, audit: AuditRecord
    ) -> DeviceRecord:
        """Disable or enable a device (NotFound if unknown)."""

    @abstractmethod
    async def replace_device_cert(self, device_id: str, cert: RenewedCert, now: datetime) -> None:
        """Record a renewed client certificate (Forbidden if unknown, disabled, or the
        certificate it was renewed from is no longer the newest one)."""

    @abstractmethod
    async def get_cert_lineage(self, device_id: str) -> CertLineage | None:
        """Return the device's newest certificate serial and the one before it."""

    # sync ---------------------------------------------------------------------------

    @abstractmethod
    async def ingest_sync(self, device_id: str, batch: SyncBatch, now: datetime) -> SyncResult:
        """Store the batch's entries once each, merge the status, and return the ack.

        Raises Forbidden when the device is unknown or disabled (nothing stored).
        """

    @abstractmethod
    async def device_features(self, device_id: str) -> frozenset[str] | None:
        """Return the target features the device's agent reported (None: never reported)."""

    # targets ------------------------------------------------------------------------

    @abstractmethod
    async def put_target(
        self,
        device_id: str,
        build: Callable[[int], SignedTarget],
        audit: AuditRecord,
        now: datetime,
        secrets: Sequence[tuple[SealedSecret, AuditRecord]] = (),
    ) -> TargetRecord:
        """Store ``build(next_revision)`` as the device's newest target (revisions only grow).

        NotFound if the device is unknown, Conflict if it is disabled. ``secrets`` (the
        registry passwords its release gave in clear, each with its audit row) are stored
        in the same transaction, only with the target.
        """

    @abstractmethod
    async def get_target(self, device_id: str) -> TargetRecord | None:
        """Return the device's newest target."""

    @abstractmethod
    async def list_targets(self, device_id: str, limit: int) -> list[TargetRecord]:
        """Return the device's newest ``limit`` targets, newest first."""

    # tags, groups and overrides ----------------------------------------------------

    @abstractmethod
    async def update_device_tags(
        self,
        device_id: str,
        set_tags: dict[str, str],
        remove: list[str],
        max_tags: int,
        audit: AuditRecord,
    ) -> DeviceRecord:
        """Set and remove the device's tags (NotFound; InvalidRequest over ``max_tags``)."""

    @abstractmethod
    async def create_group(self, group: GroupRecord, max_groups: int, audit: AuditRecord) -> None:
        """Store a new group (Conflict if the name is taken or ``max_groups`` are held)."""

    @abstractmethod
    async def get_group(self, name: str) -> GroupRecord | None:
        """Return a group by name."""

    @abstractmethod
    async def list_groups(self) -> list[GroupRecord]:
        """Return every group, ordered by name."""

    @abstractmethod
    async def delete_group(self, name: str, audit: AuditRecord) -> None:
        """Delete a group and its overrides (NotFound if unknown)."""

    @abstractmethod
    async def change_group_env(
        self, name: str, change: EnvChange, audit: AuditRecord
    ) -> GroupRecord:
        """Set/unset the group's overrides of one service (NotFound; InvalidRequest over bound)."""

    @abstractmethod
    async def change_device_env(
        self, device_id: str, change: EnvChange, audit: AuditRecord
    ) -> dict[str, dict[str, str]]:
        """Set/unset the device's own overrides of one service; return them all."""

    @abstractmethod
    async def get_device_overrides(self, device_id: str) -> dict[str, dict[str, str]]:
        """Return the device's own overrides (empty if none)."""

    # releases -----------------------------------------------------------------------

    @abstractmethod
    async def create_release(
        self,
        release: ReleaseRecord,
        audit: AuditRecord,
        secrets: Sequence[tuple[SealedSecret, AuditRecord]] = (),
    ) -> tuple[ReleaseRecord, bool]:
        """Store a new release with its audit row; return it and whether it was created.

        A release with the same name and version and the same ``source`` is returned as
        it is (False: nothing but the audit row written); a different one is a Conflict.
        ``secrets`` (the registry passwords it gave in clear, each with its audit row) are
        stored in the same transaction, only when the release is inserted.
        """

    @abstractmethod
    async def get_release(self, name: str, version: str) -> ReleaseRecord | None:
        """Return a release by name and version."""

    @abstractmethod
    async def list_releases(self, after_id: int, limit: int) -> list[ReleaseRecord]:
        """Return releases with id > after_id, oldest first."""

    @abstractmethod
    async def retire_release(
        self, name: str, version: str, reason: str, audit: AuditRecord
    ) -> ReleaseRecord:
        """Mark a release retired by the audit's actor at its time (NotFound; Conflict if
        already retired)."""

    # host reports (drift, retired) -------------------------------------------------

    @abstractmethod
    async def list_host_reports(self) -> dict[str, HostReport]:
        """Return the latest host container report of every device that sent one, by id."""

    # rollouts -----------------------------------------------------------------------

    @abstractmethod
    async def create_rollout(
        self,
        rollout: RolloutRecord,
        superseded: Sequence[tuple[RolloutRecord, datetime]],
        audits: Sequence[AuditRecord],
    ) -> None:
        """Store a new rollout and end the ones it supersedes (each saved over the
        ``updated_at`` it was read with), with the audit rows, in one transaction.

        Conflict if the id is taken or a superseded rollout changed meanwhile.
        """

    @abstractmethod
    async def save_rollout(
        self, rollout: RolloutRecord, expected_updated_at: datetime, audits: Sequence[AuditRecord]
    ) -> None:
        """Save the rollout's new state and status if its stored ``updated_at`` is still
        ``expected_updated_at``, with the audit rows, in one transaction (Conflict if not)."""

    @abstractmethod
    async def get_rollout(self, rollout_id: str) -> RolloutRecord | None:
        """Return a rollout by id."""

    @abstractmethod
    async def list_rollouts(self, statuses: Sequence[str] | None = None) -> list[RolloutRecord]:
        """Return rollouts (only those in ``statuses`` if given), oldest first."""

    # events and audit ---------------------------------------------------------------

    @abstractmethod
    async def list_events(self, device_id: str, after: int, limit: int) -> list[EventRecord]:
        """Return the device's entries with seq > after, in seq order."""

    @abstractmethod
    async def record_audit(self, audit: AuditRecord) -> None:
        """Append an audit row on its own (for refused or failed actions)."""

    @abstractmethod
    async def list_audit(self, after_id: int, limit: int) -> list[AuditRecord]:
        """Return audit rows with id > after_id, oldest first."""

    @abstractmethod
    async def query_audit(self, q: AuditQuery) -> list[AuditEntry]:
        """Return one page of hub and device audit records matching ``q``, in feed order."""

    @abstractmethod
    async def device_audit_chain(self, device_id: str) -> DeviceAuditChain:
        """Return how the device's audit chain verified at the hub so far."""

    @abstractmethod
    async def settle_audit_gaps(self, now: datetime, grace_s: float) -> int:
        """Declare the gap of every device whose records held ahead of it waited
        ``grace_s`` by ``now`` (hub.device_audit); return how many gaps were declared."""

    # technician tokens ----------------------------------------------------------------

    @abstractmethod
    async def add_technician(
        self, record: TechnicianRecord, max_active: int, audit: AuditRecord
    ) -> None:
        """Store an issued token (bounded: at most ``max_active`` unexpired), with the audit row."""

    @abstractmethod
    async def list_technicians(self, now: datetime) -> list[TechnicianRecord]:
        """Return the unexpired tokens, oldest first."""

    @abstractmethod
    async def revoke_technician(self, token_id: str, audit: AuditRecord) -> TechnicianRecord:
        """Mark a token revoked (idempotent), with the audit row; NotFound if unknown."""

    @abstractmethod
    async def revoked_technicians(self, now: datetime) -> list[tuple[str, datetime]]:
        """Return (id, expires_at) of every revoked token that has not expired."""

    # device metrics -----------------------------------------------------------------

    @abstractmethod
    async def list_metrics(
        self, device_id: str, since: datetime | None, limit: int
    ) -> MetricsHistory:
        """Return the device's newest ``limit`` samples taken at or after ``since``, oldest
        first, with the counts of its bounds (held, trimmed, oversize)."""

    @abstractmethod
    async def latest_metrics(self, device_id: str) -> MetricsSample | None:
        """Return the device's newest metrics sample."""

    # queued device actions (hub.action_api, hub.store.sqlite_actions) -------------------

    @abstractmethod
    async def add_actions(
        self,
        records: Sequence[ActionRecord],
        max_queued: int,
        audit: Sequence[AuditRecord],
        *,
        forget_before: datetime,
    ) -> None:
        """Queue actions (all or none: Conflict if a device holds ``max_queued`` unfinished
        ones), with their audit rows, in one transaction; finished actions whose state
        changed before ``forget_before`` are deleted in it."""

    @abstractmethod
    async def get_action(self, action_id: str, now: datetime) -> ActionRecord | None:
        """Return one action (past its expiry without a result: expired)."""

    @abstractmethod
    async def list_actions(
        self,
        now: datetime,
        *,
        device_id: str | None,
        state: str | None,
        limit: int,
        device_ids: frozenset[str] | None = None,
    ) -> list[ActionRecord]:
        """Return actions, newest first, filtered by device, state and a device set (scope)."""

    @abstractmethod
    async def take_actions(
        self, device_id: str, now: datetime, *, redeliver_before: datetime, limit: int
    ) -> list[ActionRecord]:
        """Mark and return what a sync answer carries: queued, unexpired actions, and
        delivered ones without a receipt since before ``redeliver_before``."""

    @abstractmethod
    async def has_queued_actions(self, device_id: str, now: datetime) -> bool:
        """Return whether an unexpired action waits to be delivered to the device."""

    @abstractmethod
    async def list_action_parts(
        self, action_id: str, *, after: int, limit: int
    ) -> tuple[list[ActionPart], PartTotals]:
        """Return an action's result parts numbered above ``after`` (in order, at most
        ``limit``) and what all its parts hold (``PartTotals``: lines cut by the bound)."""

    # group log policies and retention of device data (hub.log_policy, hub.retention) ---

    @abstractmethod
    async def set_group_log_policy(
        self, name: str, policy: dict[str, Any] | None, audit: AuditRecord
    ) -> None:
        """Set (None: clear) a group's log policy, with the audit row; NotFound if no group."""

    @abstractmethod
    async def group_log_policies(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Return (name, selector, policy) of every group that sets a log policy, by name."""

    @abstractmethod
    async def retention_devices(self) -> list[str]:
        """Return every device id."""

    @abstractmethod
    async def trim_device_by_age(self, device_id: str, before: datetime, batch: int) -> int:
        """Delete up to ``batch`` of the device's oldest non-audit rows received before
        ``before`` (one short transaction); return how many."""

    @abstractmethod
    async def trim_metrics_by_age(self, device_id: str, before: datetime, batch: int) -> int:
        """Delete up to ``batch`` of the device's oldest metrics samples received before
        ``before`` (one short transaction); return how many."""

    @abstractmethod
    async def device_data_cut(self, device_id: str, max_bytes: int) -> int | None:
        """Return the highest seq whose deletion brings the device's non-audit data within
        ``max_bytes`` (None: within it already)."""

    @abstractmethod
    async def trim_device_upto(self, device_id: str, cut: int, batch: int) -> int:
        """Delete up to ``batch`` of the device's oldest non-audit rows with seq <= ``cut``."""

    @abstractmethod
    async def device_data_size(self, device_id: str) -> tuple[int, int]:
        """Return (rows, bytes) of the device's non-audit data."""

    # --- operator access (hub.access; migration 16) ---

    @abstractmethod
    async def add_user(self, user: UserRecord, audit: AuditRecord) -> None:
        """Create a user (Conflict if the name is taken), with the audit row."""

    @abstractmethod
    async def set_user_disabled(self, name: str, disabled: bool, audit: AuditRecord) -> None:
        """Disable or enable a user (NotFound if unknown), with the audit row."""

    @abstractmethod
    async def get_user(self, name: str) -> UserRecord | None:
        """Return the user called ``name``, or None."""

    @abstractmethod
    async def list_users(self) -> list[UserRecord]:
        """Return every user by name."""

    @abstractmethod
    async def add_team(self, name: str, at: datetime, audit: AuditRecord) -> None:
        """Create a team (Conflict if the name is taken), with the audit row."""

    @abstractmethod
    async def delete_team(self, name: str, audit: AuditRecord) -> None:
        """Delete a team with its members and grants (NotFound if unknown)."""

    @abstractmethod
    async def set_team_member(self, team: str, user: str, member: bool, audit: AuditRecord) -> None:
        """Add (``member``) or remove a user of a team, with the audit row."""

    @abstractmethod
    async def set_team_grant(
        self, team: str, role: str, scope: str, granted: bool, audit: AuditRecord
    ) -> None:
        """Add (``granted``) or remove a team's grant of ``role`` on ``scope``."""

    @abstractmethod
    async def list_teams(self) -> list[TeamRecord]:
        """Return every team with its members and grants, by name."""

    @abstractmethod
    async def user_grants(self, user: str) -> list[tuple[str, str, str]]:
        """Return the (team, role, scope) grants of every team ``user`` belongs to."""

    @abstractmethod
    async def add_user_token(
        self, token: UserTokenRecord, max_active: int, audit: AuditRecord
    ) -> None:
        """Store a new token of an existing user (NotFound if unknown), with the audit row;
        Conflict when the user holds ``max_active`` unrevoked, unexpired tokens."""

    @abstractmethod
    async def get_user_token(self, token_id: str) -> UserTokenRecord | None:
        """Return the token with ``token_id``, or None."""

    @abstractmethod
    async def list_user_tokens(self, user: str) -> list[UserTokenRecord]:
        """Return a user's tokens, oldest first."""

    @abstractmethod
    async def revoke_user_token(self, user: str, token_id: str, audit: AuditRecord) -> None:
        """Revoke a user's token (idempotent; NotFound if it is not the user's)."""

    @abstractmethod
    async def touch_user_token(self, token_id: str, at: datetime) -> None:
        """Record that the token was used at ``at``."""

    # release signing (hub/store/sqlite_trust.py) ------------------------------------

    @abstractmethod
    async def release_roots(self) -> list[SignedRoot]:
        """Return every release root, oldest version first."""

    @abstractmethod
    async def add_release_root(self, signed: SignedRoot, audit: AuditRecord) -> None:
        """Store the next root version with its audit row; Conflict if it is not the next."""

    @abstractmethod
    async def release_manifests(self, limit: int) -> list[SignedManifest]:
        """Return the newest ``limit`` vouched-release manifests, newest version first."""

    @abstractmethod
    async def put_release_manifest(self, signed: SignedManifest, audit: AuditRecord) -> None:
        """Store (or replace) the manifest of its version, with the audit row."""

    # ---- secrets (hub migration 19; values only ever sealed, see hub.secrets) ----

    @abstractmethod
    async def put_secrets(
        self, sealed: Sequence[SealedSecret], at: datetime, by: str, audit: AuditRecord | None
    ) -> list[bool]:
        """Store sealed values (new or replacing) with the audit row; return which were new."""

    @abstractmethod
    async def list_secrets(self) -> list[SecretRecord]:
        """Return every secret's metadata (never a value), by name."""

    @abstractmethod
    async def sealed_secrets(self, names: Sequence[str]) -> dict[str, SealedSecret]:
        """Return the sealed values of the named secrets that exist."""

    @abstractmethod
    async def delete_secret(self, name: str, audit: AuditRecord) -> None:
        """Delete a secret no release names (NotFound; Conflict naming the releases)."""

    # clear registry passwords from before the secret store (migration 22) -----------

    @abstractmethod
    async def pending_secret_moves(self) -> list[tuple[str, str, str, str]]:
        """Return the rows still holding a clear password: (kind, key, document, source)."""

    @abstractmethod
    async def move_secrets(
        self,
        kind: str,
        key: str,
        document: str,
        source: str,
        sealed: Sequence[SealedSecret],
        audits: Sequence[AuditRecord],
    ) -> None:
        """Rewrite one listed row with names only, store its values and audit, unlist it."""

    @abstractmethod
    async def reseal_secrets(
        self, reseal: Callable[[SealedSecret], SealedSecret], audit: AuditRecord
    ) -> int:
        """Re-seal every value with ``reseal`` in one transaction; return how many changed."""

    # group device policies (hub.device_policy) -----------------------------------------

    @abstractmethod
    async def set_group_device_policy(
        self, name: str, policy: dict[str, Any] | None, audit: AuditRecord
    ) -> None:
        """Set (None: clear) a group's device policy, with the audit row; NotFound if no group."""

    @abstractmethod
    async def group_device_policies(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Return (name, selector, policy) of every group that sets a device policy, by name."""

    # ---- technician holds (read from the device's status reports) ----

    @abstractmethod
    async def latest_status_report(self, device_id: str) -> dict[str, Any] | None:
        """Return the payload of the device's newest status entry (None: none kept)."""

    # ---- dashboard sessions and activity (hub migration 21, hub.dashboard) ----

    @abstractmethod
    async def add_session(
        self,
        record: SessionRecord,
        max_sessions: int,
        *,
        idle_before: datetime,
        created_before: datetime,
    ) -> None:
        """Store a session, deleting expired ones first; Conflict at ``max_sessions``."""

    @abstractmethod
    async def get_session(self, id_hash: str) -> SessionRecord | None:
        """Return the session whose id hashes to ``id_hash``, or None."""

    @abstractmethod
    async def touch_session(self, id_hash: str, at: datetime) -> None:
        """Record that the session was used at ``at``."""

    @abstractmethod
    async def delete_session(self, id_hash: str) -> None:
        """Forget a session (idempotent)."""

    @abstractmethod
    async def recent_events(self, device_id: str, limit: int) -> list[EventRecord]:
        """Return the device's newest ``limit`` event entries, newest first."""

    @abstractmethod
    async def events_per_hour(self, since: datetime) -> list[tuple[str, str, int, int]]:
        """Return (device_id, hour, events, errors) of event entries received since ``since``."""

    @abstractmethod
    async def device_host_report(self, device_id: str) -> HostReport | None:
        """Return the device's latest host container report, or None."""

    # ---- fleet history and contact spans (hub migrations 23, 24; hub.fleet_history) ----

    @abstractmethod
    async def record_fleet_sample(
        self, at: datetime, online_since: datetime, stale_since: datetime
    ) -> FleetSample:
        """Count the devices now and store the counts as the sample at ``at``; return it."""

    @abstractmethod
    async def fleet_samples(self, since: datetime, limit: int) -> list[FleetSample]:
        """Return the newest ``limit`` samples taken at or after ``since``, oldest first."""

    @abstractmethod
    async def trim_fleet_history(self, before: datetime, batch: int) -> int:
        """Delete at most ``batch`` of the oldest samples and contact spans that ended
        before ``before``; return how many rows went."""

    @abstractmethod
    async def contact_spans(self, device_id: str, since: datetime) -> list[ContactSpan]:
        """Return the device's contact spans that reach past ``since``, oldest first.

        A span is a run of syncs no further apart than fleet.online_after_s, recorded by
        the sync's own write (at most dashboard.contact_spans_per_device per device)."""

    # ---- monitoring (hub.prom reads these at every scrape: aggregates, not rows) ----

    @abstractmethod
    async def fleet_counts(
        self, online_since: datetime, stale_since: datetime
    ) -> dict[tuple[str, str], tuple[int, int]]:
        """Return (connectivity, drift) -> (devices, of them disabled), in one query."""

    @abstractmethod
    async def rollout_counts(self) -> dict[str, int]:
        """Return status -> how many rollouts are in it."""

    @abstractmethod
    def writer_stats(self) -> WriterStats:
        """Return the writer's queue and counters and the database files' sizes."""

    @abstractmethod
    def watch_commits(self, observer: Callable[[int, float], None]) -> None:
        """Call ``observer(jobs, seconds)`` after every group commit from now on."""


def open_store(config: HubConfig) -> HubStore:
    """Return the (unopened) store the configuration names."""
    if config.postgres_url is not None:
        return _open_postgres(config)
    from hub.store.sqlite import SqliteStore

    store = SqliteStore(
        config.sqlite_path,
        synchronous=config.store.synchronous,
        max_group_commit=config.store.max_group_commit,
        wal_max_bytes=config.store.wal_max_bytes,
        metrics=_metrics_bound(config),
    )
    _set_bounds(store, config)
    return store


def _open_postgres(config: HubConfig) -> HubStore:
    """Return the (unopened) PostgreSQL store, with the same bounds SQLite gets."""
    from hub.errors import ConfigError
    from hub.store.postgres import PostgresStore, missing_methods

    # A store method added to the interface but not yet to PostgreSQL: never run half on it.
    if missing := missing_methods():
        raise ConfigError(
            f"store.url: the PostgreSQL store is not complete yet ({len(missing)} of "
            f"{len(HubStore.__abstractmethods__)} store methods missing: {', '.join(missing)}); "
            "leave store.url empty for SQLite (docs/scaling.md)"
        )
    url = config.postgres_url
    assert url is not None
    store = PostgresStore(
        url,
        pool_max=config.store.pool_max,
        metrics=_metrics_bound(config),
        max_group_commit=config.store.max_group_commit,
    )
    _set_bounds(store, config)
    return store


def _metrics_bound(config: HubConfig) -> MetricsBound:
    return MetricsBound(config.metrics.history_per_device, config.metrics.max_sample_bytes)


def _set_bounds(store: Any, config: HubConfig) -> None:
    """Give either store the bounds of the side records a sync carries (the same on both)."""
    store.action_result_max_bytes = config.actions.max_result_bytes
    cfg = config.actions
    store.action_parts_bound = PartsBound(cfg.logs_max_lines, cfg.logs_max_bytes)
    store.contact_gap_s = config.fleet.online_after_s
    store.contact_max_spans = config.dashboard.contact_spans_per_device
    store.audit_gap_bound = AuditGapBound(
        config.audit.device_gap_grace_s, config.audit.device_max_held
    )
