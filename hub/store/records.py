"""Plain records the store reads and writes; no I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pydantic_core

from edge_agent.protocol import HostContainerReport, OutboxEntry, SignedTarget, StatusSnapshot

# One outbox entry as the store keeps it: (seq, kind, created_at, payload), with
# created_at as ``iso_utc`` text and the payload as compact JSON (``payload_json``).
EntryRow = tuple[int, str, str, str]


def iso_utc(value: datetime) -> str:
    """Return a datetime as ISO 8601 UTC text with microseconds (sorts as time)."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def payload_json(payload: dict[str, Any]) -> str:
    """Return a payload as the compact JSON the store keeps."""
    return pydantic_core.to_json(payload).decode()


def entry_row(entry: OutboxEntry) -> EntryRow:
    """Return the stored form of a validated entry."""
    return entry.seq, entry.kind, iso_utc(entry.created_at), payload_json(entry.payload)


@dataclass(frozen=True)
class AuditRecord:
    """One audited action: who did what to which object, when, and how it ended."""

    actor: str
    action: str
    target: str
    outcome: str  # ok | denied | rejected | error
    at: datetime
    detail: dict[str, Any] = field(default_factory=dict)
    id: int = 0
    source_addr: str = ""  # the caller's remote address ("" for the hub's own decisions)
    prev_hash: str = ""  # the chain (hub.audit_chain); set by the store when written
    hash: str = ""


@dataclass(frozen=True)
class EnrollmentTokenRecord:
    """An enrollment token as stored: only the hash of its secret."""

    id: str
    secret_hash: str
    uses_total: int
    uses_left: int
    expires_at: datetime
    tags: dict[str, str]
    created_at: datetime
    created_by: str


@dataclass(frozen=True)
class NewDevice:
    """What enrollment knows about a device before it is stored."""

    id: str
    hostname: str
    agent_version: str
    cert_serial: str
    cert_fingerprint: str
    cert_not_after: datetime


@dataclass(frozen=True)
class CertLineage:
    """A device's newest certificate serial, the one it replaced, and the newest's key."""

    serial: str
    previous_serial: str
    key_sha256: str


@dataclass(frozen=True)
class RenewedCert:
    """A renewal to record: the new certificate and the one that asked for it."""

    serial: str
    fingerprint: str
    not_after: datetime
    key_sha256: str
    renewed_from: str
    from_previous: bool
    via: str


@dataclass(frozen=True)
class DeviceRecord:
    """A device as the hub knows it."""

    id: str
    hostname: str
    tags: dict[str, str]
    cert_serial: str
    cert_fingerprint: str
    cert_not_after: datetime
    enrolled_at: datetime
    enrollment_token: str
    disabled: bool
    last_contact: datetime | None
    agent_version: str
    applied_revision: int
    target_revision: int
    acked_seq: int
    state: str | None = None
    release: str | None = None
    services: list[dict[str, Any]] | None = None
    counters: dict[str, int] | None = None
    last_error: str | None = None
    status_at: datetime | None = None
    has_full_status: bool = False
    running_revision: int | None = None
    running_local_seq: int | None = None
    applying_revision: int | None = None
    rollout_state: str | None = None
    window_opens_at: datetime | None = None  # while waiting for its maintenance window
    release_trust_stale: bool | None = None  # its pinned release manifest expired (None: no pin)


@dataclass(frozen=True)
class TargetRecord:
    """One signed target revision of a device."""

    device_id: str
    revision: int
    signed: SignedTarget
    created_at: datetime
    created_by: str


@dataclass(frozen=True)
class EventRecord:
    """One outbox entry the hub holds."""

    device_id: str
    seq: int
    kind: str
    created_at: datetime
    received_at: datetime
    payload: dict[str, Any]


@dataclass(frozen=True)
class SyncBatch:
    """What one sync call asks the store to make durable (entries in increasing seq order)."""

    entries: list[EntryRow]
    status: StatusSnapshot | None
    applied_revision: int
    known_target_revision: int
    epoch: str = ""  # the agent store's generation (protocol 3); "" before
    protocol: int = 0
    features: tuple[str, ...] | None = None  # what the agent understands; None: unchanged


@dataclass(frozen=True)
class SyncResult:
    """What the store made durable; ``target`` only if newer than the agent's known one."""

    acked_seq: int
    target: SignedTarget | None
    want_full_status: bool
    inserted: int


@dataclass(frozen=True)
class GroupRecord:
    """A named tag selector (canonical text) and its environment overrides."""

    name: str
    selector: str
    overrides: dict[str, dict[str, str]]
    created_at: datetime
    created_by: str


@dataclass(frozen=True)
class EnvChange:
    """Set and unset variables of one service's overrides, within ``max_vars`` in all."""

    service: str
    set_vars: dict[str, str]
    unset: tuple[str, ...]
    max_vars: int


@dataclass(frozen=True)
class ReleaseRecord:
    """A release on the hub: immutable once created; only its retirement is added later.

    ``document`` is the release as devices get it (every image ``repo@sha256:``),
    ``source`` the release as it was submitted (canonical JSON; a repeated create is
    compared with it), ``images`` per service the requested and the pinned image.
    """

    name: str
    version: str
    document: str
    source: str
    images: list[dict[str, Any]]
    created_at: datetime
    created_by: str
    retired_at: datetime | None = None
    retired_by: str | None = None
    retired_reason: str | None = None
    id: int = 0

    @property
    def ref(self) -> str:
        """Return ``name@version``."""
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class HostReport:
    """The latest host container report the hub keeps of one device."""

    containers: list[HostContainerReport]
    total: int
    reported_at: datetime
    sightings: dict[str, datetime] = field(default_factory=dict)  # key -> first seen


@dataclass(frozen=True)
class RolloutRecord:
    """A rollout as stored: its spec and state as JSON (``hub.rollout_models``)."""

    id: str
    release: str
    spec: str
    state: str
    status: str
    created_at: datetime
    created_by: str
    updated_at: datetime


@dataclass(frozen=True)
class AuditCursor:
    """A position in the audit listing: (hub id last seen, 0 hub | 1 device, row id)."""

    pos: int = 0
    rank: int = 0
    id: int = 0

    def text(self) -> str:
        """Return the cursor as the API hands it out ("pos.rank.id")."""
        return f"{self.pos}.{self.rank}.{self.id}"


@dataclass(frozen=True)
class AuditQuery:
    """Filters of the audit listing (None: any); ``devices`` already resolved from groups."""

    cursor: AuditCursor
    limit: int
    actor: str | None = None
    action: str | None = None  # exact, or a prefix ending in "*"
    devices: frozenset[str] | None = None
    since: str | None = None  # iso_utc text, inclusive
    until: str | None = None  # iso_utc text, exclusive
    source: str = "all"  # all | hub | device
    scope: AuditScope | None = None  # a scoped caller's view (None: everything)


@dataclass(frozen=True)
class AuditEntry:
    """One record of the audit listing, from the hub's chain or a device's."""

    cursor: AuditCursor
    source: str  # hub | device
    id: int
    device_id: str
    record_id: int  # the device's own record id (0 for hub rows)
    at: str
    received_at: str
    actor: str
    action: str
    target: str
    outcome: str
    detail: dict[str, Any]
    source_addr: str
    hash: str
    chain_broken: str | None  # why this device record broke its device's chain
    held: bool = False  # a device record held ahead of a gap: not judged yet (no verdict)


@dataclass(frozen=True)
class DeviceAuditChain:
    """How a device's audit chain verified at the hub: counts and the first break."""

    last_id: int
    verified: int
    unverifiable: int
    breaks: int
    broken_id: int | None
    broken_at: str | None
    broken_reason: str | None
    held: int = 0  # records held ahead of a gap, not judged yet
    held_since: str | None = None  # since when the oldest of them waits
    pending: str | None = None  # "held: waiting for record(s) X..Y since T"
    held_overflows: int = 0  # gaps declared at once: the held records passed their bound


@dataclass(frozen=True)
class TechnicianRecord:
    """One issued technician token (without the token)."""

    id: str
    name: str
    role: str
    scope: str
    issued_at: datetime
    expires_at: datetime
    created_by: str
    revoked_at: datetime | None = None
    revoked_by: str | None = None


@dataclass(frozen=True)
class MetricsSample:
    """One metrics sample a device sent: its hub seq, when it was taken and received."""

    seq: int
    at: datetime
    received_at: datetime
    sample: dict[str, Any]


@dataclass(frozen=True)
class MetricsHistory:
    """A device's held samples (oldest first) and what its bounds cost so far."""

    samples: list[MetricsSample]
    held: int = 0  # samples the hub holds for the device now
    trimmed: int = 0  # older samples deleted to keep history_per_device
    oversize: int = 0  # samples not stored: over max_sample_bytes


@dataclass(frozen=True)
class ActionRecord:
    """One queued device action (hub.action_api) and what became of it."""

    id: str
    device_id: str
    kind: str
    args: dict[str, Any]
    created_by: str
    created_at: datetime
    expires_at: datetime
    signed: str  # the SignedAction JSON, as delivered
    state: str = "queued"
    state_at: datetime | None = None
    delivered_at: datetime | None = None
    received_at: datetime | None = None  # the device recorded it (its receipt arrived)
    reason: str | None = None
    result: dict[str, Any] | None = None
    group: str | None = None  # the group it was fanned out to, if any


@dataclass(frozen=True)
class ActionPart:
    """One result part of an action answered in batches (a ``logs`` action)."""

    part: int
    lines: list[str]
    received_at: datetime


@dataclass(frozen=True)
class PartTotals:
    """What an action's parts hold, and the lines the hub's bound cut."""

    parts: int = 0
    lines: int = 0
    bytes: int = 0
    cut_lines: int = 0


@dataclass(frozen=True)
class MetricsBound:
    """How much metrics history the hub keeps (``[metrics]`` of the hub config)."""

    history_per_device: int = 1440
    max_sample_bytes: int = 64 * 1024


@dataclass(frozen=True)
class AuditGapBound:
    """How device audit records ahead of a gap are held (``[audit]`` of the hub config):
    a gap is waited for ``grace_s``, and at most ``max_held`` records are held per device."""

    grace_s: float = 600.0
    max_held: int = 10_000


@dataclass(frozen=True)
class PartsBound:
    """The most lines and bytes the hub keeps of one action's parts."""

    max_lines: int = 100_000
    max_bytes: int = 8 * 2**20


@dataclass(frozen=True)
class UserRecord:
    """An operator user (hub.access): its tokens are kept apart, hashed."""

    name: str
    created_at: datetime
    created_by: str
    disabled: bool = False


@dataclass(frozen=True)
class TeamRecord:
    """A team: its members and its grants as (role, scope) with scope "all" or a selector."""

    name: str
    created_at: datetime
    members: tuple[str, ...] = ()
    grants: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class UserTokenRecord:
    """An operator API token without its secret (only sha256 of the secret is kept)."""

    id: str
    user: str
    secret_hash: str
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class SecretRecord:
    """A hub secret as listed: its name and history, never its value."""

    name: str
    key_id: str  # the secret key its value is sealed under
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True)
class SealedSecret:
    """A secret's value as stored: sealed (``hub.secrets.SecretBox``), never in clear."""

    name: str
    sealed: str
    key_id: str


@dataclass(frozen=True)
class SessionRecord:
    """A dashboard session (hub migration 21): the hash of its id, never the id."""

    id_hash: str
    principal: str
    token_id: str  # the user token signed in with; "admin" for the data-dir admin token
    csrf: str
    created_at: datetime
    last_seen_at: datetime


@dataclass(frozen=True)
class FleetSample:
    """The fleet's counts at one moment (hub migration 23, ``hub.fleet_history``)."""

    at: datetime
    online: int
    offline: int
    stale: int  # silent longer than fleet.stale_after_s (heard from once)
    never: int  # never heard from
    in_sync: int
    updating: int
    drifted: int
    no_target: int
    total: int


@dataclass(frozen=True)
class ContactSpan:
    """A run of a device's syncs no further apart than fleet.online_after_s (migration 24)."""

    started_at: datetime
    last_at: datetime


@dataclass(frozen=True)
class WriterStats:
    """The store writer's queue and counters, and the database files' sizes (for metrics)."""

    queue_depth: int
    groups: int
    jobs: int
    wal_truncations: int
    db_bytes: int
    wal_bytes: int
    point_read_fallbacks: int = 0  # loop-thread point reads that found the database busy


@dataclass(frozen=True)
class AuditScope:
    """What a scoped caller may read of the audit: filtered in the query, so pages are full.

    Device records of ``devices``; hub records by ``actor`` or about one of ``targets``.
    """

    actor: str
    devices: frozenset[str]
    targets: frozenset[str]
