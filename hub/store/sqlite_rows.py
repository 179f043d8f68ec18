"""Conversions between SQLite rows and store records; column lists. No I/O."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from hub.audit_chain import redact
from hub.overrides import change_env
from hub.store.records import (
    ActionRecord,
    AuditRecord,
    DeviceRecord,
    EnrollmentTokenRecord,
    EnvChange,
    EventRecord,
    FleetSample,
    GroupRecord,
    MetricsSample,
    ReleaseRecord,
    RolloutRecord,
    SecretRecord,
    SessionRecord,
    TeamRecord,
    TechnicianRecord,
    UserRecord,
    UserTokenRecord,
    iso_utc,
)

DEVICE_COLUMNS = (
    "id, hostname, tags, cert_serial, cert_fingerprint, cert_not_after, enrolled_at, "
    "enrollment_token, disabled, last_contact, agent_version, applied_revision, "
    "target_revision, acked_seq, state, release, services, counters, last_error, "
    "status_at, has_full_status, running_revision, running_local_seq, applying_revision, "
    "rollout_state, window_opens_at, release_trust_stale"
)
TOKEN_COLUMNS = "id, secret_hash, uses_total, uses_left, expires_at, tags, created_at, created_by"
EVENT_COLUMNS = "device_id, seq, kind, created_at, received_at, payload"
AUDIT_COLUMNS = "id, at, actor, action, target, outcome, detail, source_addr, prev_hash, hash"
# The next id and the previous row's hash are read in the inserting transaction (the one
# writer serializes them): the chain is total. ``audit_hash`` is hub.audit_chain.record_hash.
INSERT_AUDIT = (
    "INSERT INTO audit (id, at, actor, action, target, outcome, detail, source_addr, "
    "prev_hash, hash) SELECT n, ?1, ?2, ?3, ?4, ?5, ?6, ?7, p, "
    "audit_hash(n, p, ?1, ?2, ?3, ?4, ?5, ?6, ?7) FROM (SELECT "
    "COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'audit'), 0) + 1 AS n, "
    "COALESCE((SELECT hash FROM audit ORDER BY id DESC LIMIT 1), '') AS p)"
)


def ts(value: datetime) -> str:
    """Return a datetime as ISO 8601 UTC text (sorts as time)."""
    return iso_utc(value)


def dt(value: str | None) -> datetime | None:
    """Return ISO text as a datetime (None stays None)."""
    return datetime.fromisoformat(value) if value else None


def dumps(value: Any) -> str:
    """Return compact JSON."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def loads(value: str | None) -> Any:
    """Return decoded JSON (None stays None)."""
    return json.loads(value) if value is not None else None


def audit_args(audit: AuditRecord) -> tuple[Any, ...]:
    """Return the parameters of INSERT_AUDIT."""
    return (
        ts(audit.at),
        audit.actor,
        audit.action,
        audit.target,
        audit.outcome,
        dumps(redact(audit.detail)),
        audit.source_addr,
    )


def device(row: tuple[Any, ...]) -> DeviceRecord:
    """Return a DeviceRecord from a row of DEVICE_COLUMNS."""
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
        running,
        running_local,
        applying,
        rollout_state,
        window_opens_at,
        trust_stale,
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
        last_contact=dt(last_contact),
        agent_version=agent_version,
        applied_revision=applied,
        target_revision=target,
        acked_seq=acked,
        state=state,
        release=release,
        services=loads(services),
        counters=loads(counters),
        last_error=last_error,
        status_at=dt(status_at),
        has_full_status=bool(has_full),
        running_revision=running,
        running_local_seq=running_local,
        applying_revision=applying,
        rollout_state=rollout_state,
        window_opens_at=dt(window_opens_at),
        release_trust_stale=None if trust_stale is None else bool(trust_stale),
    )


def token(row: tuple[Any, ...]) -> EnrollmentTokenRecord:
    """Return an EnrollmentTokenRecord from a row of TOKEN_COLUMNS."""
    id_, secret_hash, total, left, expires_at, tags, created_at, created_by = row
    return EnrollmentTokenRecord(
        id=id_,
        secret_hash=secret_hash,
        uses_total=total,
        uses_left=left,
        expires_at=datetime.fromisoformat(expires_at),
        tags=json.loads(tags),
        created_at=datetime.fromisoformat(created_at),
        created_by=created_by,
    )


def event(row: tuple[Any, ...]) -> EventRecord:
    """Return an EventRecord from a row of EVENT_COLUMNS."""
    device_id, seq, kind, created_at, received_at, payload = row
    return EventRecord(
        device_id=device_id,
        seq=seq,
        kind=kind,
        created_at=datetime.fromisoformat(created_at),
        received_at=datetime.fromisoformat(received_at),
        payload=json.loads(payload),
    )


def audit(row: tuple[Any, ...]) -> AuditRecord:
    """Return an AuditRecord from a row of AUDIT_COLUMNS."""
    id_, at, actor, action, target, outcome, detail, source_addr, prev_hash, hash_ = row
    return AuditRecord(
        actor,
        action,
        target,
        outcome,
        datetime.fromisoformat(at),
        json.loads(detail),
        id_,
        source_addr,
        prev_hash,
        hash_,
    )


# the values both stores insert for a new record (in its table's column order) ---------


def action_values(r: ActionRecord) -> tuple[Any, ...]:
    """Return a queued action's (id, device_id, kind, args, created_by, created_at,
    expires_at, signed, state_at, group_name): the row's state is 'queued', the rest NULL."""
    return (
        r.id,
        r.device_id,
        r.kind,
        dumps(r.args),
        r.created_by,
        ts(r.created_at),
        ts(r.expires_at),
        r.signed,
        ts(r.created_at),
        r.group,
    )


def rollout_values(r: RolloutRecord) -> tuple[Any, ...]:
    """Return a rollout's row values (sqlite_rollouts.COLUMNS)."""
    return (
        r.id,
        r.release,
        r.spec,
        r.state,
        r.status,
        ts(r.created_at),
        r.created_by,
        ts(r.updated_at),
    )


def release_values(r: ReleaseRecord) -> tuple[Any, ...]:
    """Return a new release's (name, version, document, source, images, created_at,
    created_by)."""
    return (
        r.name,
        r.version,
        r.document,
        r.source,
        dumps(r.images),
        ts(r.created_at),
        r.created_by,
    )


def technician_values(r: TechnicianRecord) -> tuple[Any, ...]:
    """Return an issued technician token's row values up to created_by (not yet revoked)."""
    return (r.id, r.name, r.role, r.scope, ts(r.issued_at), ts(r.expires_at), r.created_by)


def teams(
    found: Sequence[Sequence[Any]],
    members: Sequence[Sequence[Any]],
    grants: Sequence[Sequence[Any]],
) -> list[TeamRecord]:
    """Return the teams from rows of (name, created_at), each with its members from rows
    of (team, user) and its grants from rows of (team, role, scope), in the rows' order."""
    return [
        TeamRecord(
            name,
            datetime.fromisoformat(created),
            tuple(u for t, u in members if t == name),
            tuple((r, s) for t, r, s in grants if t == name),
        )
        for name, created in found
    ]


def fleet_sample(row: Sequence[Any]) -> FleetSample:
    """Return a FleetSample from a row of (at, the counts ...)."""
    at, *counts = row
    return FleetSample(datetime.fromisoformat(at), *(int(n) for n in counts))


def user_token(row: tuple[Any, ...]) -> UserTokenRecord:
    """Return a UserTokenRecord from a row of sqlite_access.TOKEN_COLUMNS."""
    id_, user, secret_hash, created, expires, used, revoked = row
    return UserTokenRecord(
        id_,
        user,
        secret_hash,
        datetime.fromisoformat(created),
        dt(expires),
        dt(used),
        dt(revoked),
    )


def user(row: tuple[Any, ...]) -> UserRecord:
    """Return a UserRecord from a row of sqlite_access.USER_COLUMNS."""
    name, created, by, disabled = row
    return UserRecord(name, datetime.fromisoformat(created), by, bool(disabled))


def group(row: tuple[Any, ...]) -> GroupRecord:
    """Return a GroupRecord from a row of sqlite_groups.GROUP_COLUMNS."""
    name, selector, overrides, created_at, created_by = row
    return GroupRecord(
        name, selector, loads(overrides), datetime.fromisoformat(created_at), created_by
    )


def changed_overrides(overrides: str, change: EnvChange) -> dict[str, dict[str, str]]:
    """Return stored overrides (JSON text) with ``change`` applied (hub.overrides.change_env)."""
    return change_env(
        loads(overrides), change.service, change.set_vars, change.unset, change.max_vars
    )


def metrics_sample(row: tuple[Any, ...]) -> MetricsSample:
    """Return a MetricsSample from a row of sqlite_metrics.COLUMNS."""
    seq, at, received_at, sample = row
    return MetricsSample(
        seq, datetime.fromisoformat(at), datetime.fromisoformat(received_at), json.loads(sample)
    )


def rollout(row: tuple[Any, ...]) -> RolloutRecord:
    """Return a RolloutRecord from a row of sqlite_rollouts.COLUMNS."""
    rid, release, spec, state, status, created_at, created_by, updated_at = row
    return RolloutRecord(
        rid,
        release,
        spec,
        state,
        status,
        datetime.fromisoformat(created_at),
        created_by,
        datetime.fromisoformat(updated_at),
    )


def secret(row: tuple[Any, ...]) -> SecretRecord:
    """Return a secret's metadata from a row of sqlite_secrets.COLUMNS."""
    name, key_id, created_at, created_by, updated_at, updated_by = row
    return SecretRecord(
        name,
        key_id,
        datetime.fromisoformat(created_at),
        created_by,
        datetime.fromisoformat(updated_at),
        updated_by,
    )


def session(row: tuple[Any, ...]) -> SessionRecord:
    """Return a SessionRecord from a row of sqlite_sessions.COLUMNS."""
    id_hash, principal, token_id, csrf, created, seen = row
    return SessionRecord(
        id_hash,
        principal,
        token_id,
        csrf,
        datetime.fromisoformat(created),
        datetime.fromisoformat(seen),
    )


def technician(row: tuple[Any, ...]) -> TechnicianRecord:
    """Return a TechnicianRecord from a row of sqlite_technicians.COLUMNS."""
    id_, name, role, scope, issued, expires, by, revoked_at, revoked_by = row
    return TechnicianRecord(
        id_,
        name,
        role,
        scope,
        datetime.fromisoformat(issued),
        datetime.fromisoformat(expires),
        by,
        dt(revoked_at),
        revoked_by,
    )


def action(row: tuple[Any, ...]) -> ActionRecord:
    """Return an ActionRecord from a row of sqlite_actions.COLUMNS."""
    (id_, device, kind, args, by, created, expires, signed, state, state_at) = row[:10]
    delivered, received, reason, result, group = row[10:]
    return ActionRecord(
        id_,
        device,
        kind,
        json.loads(args),
        by,
        datetime.fromisoformat(created),
        datetime.fromisoformat(expires),
        signed,
        state,
        dt(state_at),
        dt(delivered),
        dt(received),
        reason,
        loads(result),
        group,
    )


def release(row: tuple[Any, ...]) -> ReleaseRecord:
    """Return a release row as a record."""
    rid, name, version, document, source, images, created_at, created_by = row[:8]
    retired_at, retired_by, retired_reason = row[8:]
    return ReleaseRecord(
        name,
        version,
        document,
        source,
        loads(images) or [],
        dt(created_at),  # type: ignore[arg-type]
        created_by,
        dt(retired_at),
        retired_by,
        retired_reason,
        rid,
    )
