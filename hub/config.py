"""Hub configuration: a TOML file, then ``EDGE_HUB_<SECTION>_<FIELD>`` environment overrides.

Example (every key optional except ``server.data_dir``)::

    [server]
    host = "0.0.0.0"
    port = 8443
    data_dir = "/var/lib/edge-hub"
    public_names = ["hub.example.com"]   # SANs of the server certificate, with 127.0.0.1/localhost
    tls_handshake_timeout_s = 10  # a connection must finish TLS within this ...
    header_timeout_s = 10         # ... then send a request's headers within this
    keepalive_timeout_s = 75      # an idle kept-alive connection is closed after this
    body_timeout_s = 60           # a request's body must arrive within this (else 408)
    max_connections_per_source = 4096  # concurrent connections of one peer address

    [store]
    url = ""                      # "" = sqlite:///<data_dir>/hub.db; "sqlite:///path";
                                  # "postgresql://..." (EDGE_HUB_DATABASE_URL): docs/scaling.md
    pool_max = 10                 # PostgreSQL: connections per hub process
    listen_check_s = 10           # PostgreSQL, many processes (docs/scaling.md): LISTEN checked
    listen_reconnect_max_s = 5    # ... reconnect backoff cap
    listen_degraded_poll_s = 5    # ... while it is down, held polls re-read the database
    signal_max_pending = 100000   # ... device ids waiting to be sent (more: counted, dropped)
    leader_retry_s = 2            # ... a follower tries for the leader lock this often
    synchronous = "FULL"          # FULL: an ack survives a power cut
    wal_max_bytes = 67108864      # WAL truncated (between commits) when it grows past this

    [fleet]
    online_after_s = 90           # contact within this is "online"
    stale_after_s = 86400         # no contact for longer than this is "stale"; between: "offline"

    [limits]
    max_body_bytes = 4194304              # request body on the wire (compressed)
    max_decompressed_bytes = 16777216     # request body after gunzip
    max_entries_per_batch = 5000
    long_poll_max_wait_s = 60
    long_poll_jitter = 0.25               # granted wait shortened by up to this fraction
    max_long_polls = 20000                # held at once; over it: 503 + Retry-After
    long_poll_retry_max_s = 30            # Retry-After drawn from 1..this (full, shutdown)
    max_tls_handshakes = 32               # at once; further connections wait in the backlog
    max_token_uses = 100000
    max_token_lifetime_s = 2592000
    auth_failure_burst = 60               # refused credentials per source before 429 ...
    auth_failure_per_s = 1.0              # ... refilled at this rate
    refusal_audit_window_s = 60           # refusals per source aggregated into counted rows
    max_error_fields = 20                 # fields listed in a 422; then "N more"
    inline_body_bytes = 262144            # larger sync bodies are parsed in worker processes
    parse_workers = 2
    prestart_parse_workers = true         # started with the hub, not by the first large body

    [registries]                  # resolving image tags to digests (hub.registry)
    insecure = []                 # host[:port] or CIDR spoken to over plain HTTP (as
                                  # Docker's insecure-registries); loopback always is
    timeout_s = 15                # one registry or token request, connect to last byte
    max_manifest_bytes = 4194304  # a manifest or index read to digest it
    max_answer_bytes = 65536      # an error body or a token answer
    max_parallel = 8              # images of one release resolved at once

    [pki]
    device_cert_days = 30
    renew_grace_days = 60
    server_cert_days = 365

    [log_policy]                  # container log lines devices ship unasked (hub.log_policy)
    default_mode = "errors"       # for devices no group with a policy matches: none|errors|all
    default_pattern = "(?i)\\b(error|warn|warning|fatal|panic|exception)\\b"

    [device_policy.default]       # what releases may do on devices no group with a policy
    bind_paths = []               # matches (hub.device_policy); fields: docs/security.md
    privileged = false

    [retention]                   # what devices sent (logs, events, status), hub.retention
    max_age_s = 2592000           # rows received longer ago are deleted (0: no age bound)
    max_bytes_per_device = 268435456  # per device, oldest deleted first (0: no size bound)
    interval_s = 300              # a pass every this long
    batch_rows = 1000             # rows deleted per write transaction (short write locks)

    [audit]                       # device audit chains (hub.device_audit)
    device_gap_grace_s = 600      # records ahead of a gap are held this long, then: a gap
    device_max_held = 10000       # records held per device; past it the gap is declared
    gap_sweep_interval_s = 60     # expired gaps of silent devices are declared this often

Environment: ``EDGE_HUB_SERVER_PORT=9443``, ``EDGE_HUB_LIMITS_MAX_BODY_BYTES=1048576``,
``EDGE_HUB_SERVER_PUBLIC_NAMES=a.example,b.example`` (lists are comma-separated).
``EDGE_HUB_DATABASE_URL`` is another name of ``EDGE_HUB_STORE_URL``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_agent.device_policy import RESTRICTIVE, DevicePolicy
from edge_agent.protocol import DEFAULT_LOG_PATTERN, check_log_pattern
from hub.errors import ConfigError

ENV_PREFIX = "EDGE_HUB_"
DATABASE_URL_ENV = "EDGE_HUB_DATABASE_URL"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    """Where the hub listens and keeps its files."""

    host: str = "127.0.0.1"
    port: int = Field(8443, ge=0, le=65535)
    data_dir: Path
    public_names: list[str] = Field(default_factory=list)
    shutdown_timeout_s: float = Field(5.0, ge=0, le=600)
    access_log: bool = False
    # Bounds on a connection before it is a request (hub.conn_guard).
    tls_handshake_timeout_s: float = Field(10.0, gt=0, le=600)
    header_timeout_s: float = Field(10.0, gt=0, le=600)
    keepalive_timeout_s: float = Field(75.0, gt=0, le=3600)
    max_connections_per_source: int = Field(4096, ge=1)
    # A request's body must arrive within this once its headers did (hub.wire.read_raw).
    body_timeout_s: float = Field(60.0, gt=0, le=3600)


class StoreConfig(_Section):
    """The database."""

    url: str = ""
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    max_group_commit: int = Field(256, ge=1, le=10000)
    # The WAL file is truncated (by the writer, between groups) once a commit leaves it
    # larger than this; PASSIVE checkpoints alone let it grow during a long catch-up.
    wal_max_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024)
    # PostgreSQL only: the most connections one hub process opens.
    pool_max: int = Field(10, ge=1, le=1000)
    # PostgreSQL only, signals between hub processes (hub.store.pg_notify, docs/scaling.md):
    listen_check_s: float = Field(10.0, gt=0, le=3600)  # the LISTEN connection checked
    listen_reconnect_max_s: float = Field(5.0, gt=0, le=3600)  # reconnect backoff cap
    listen_degraded_poll_s: float = Field(5.0, gt=0, le=3600)  # held polls re-check, link down
    signal_max_pending: int = Field(100_000, ge=1, le=10_000_000)  # ids waiting to be sent
    # leader election (hub.leader): a follower tries for the lock this often
    leader_retry_s: float = Field(2.0, gt=0, le=3600)


class FleetConfig(_Section):
    """Thresholds of the fleet picture."""

    online_after_s: float = Field(90.0, gt=0)
    stale_after_s: float = Field(86400.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> FleetConfig:
        if self.stale_after_s < self.online_after_s:
            raise ValueError("stale_after_s must be >= online_after_s")
        return self


class LimitsConfig(_Section):
    """Every bound on what a client may send."""

    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_decompressed_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_entries_per_batch: int = Field(5000, ge=1)
    long_poll_max_wait_s: float = Field(60.0, gt=0, le=3600)
    # Long-polls: the wait granted is shortened by up to this fraction (random), so polls
    # opened together do not expire together; at most max_long_polls are held (over it,
    # and while shutting down, a poll is answered at once with a Retry-After drawn from
    # 1 s to long_poll_retry_max_s, so a fleet does not come back all at once).
    long_poll_jitter: float = Field(0.25, ge=0, lt=1)
    max_long_polls: int = Field(20_000, ge=1)
    long_poll_retry_max_s: float = Field(30.0, ge=1, le=3600)
    # TLS handshakes in progress at once; more connections wait in the listen backlog.
    max_tls_handshakes: int = Field(32, ge=1, le=100_000)
    max_token_uses: int = Field(100_000, ge=1)
    max_token_lifetime_s: int = Field(30 * 86400, ge=60)
    max_events_page: int = Field(1000, ge=1)
    # Devices, tags and groups: tags per device, groups on the hub, override variables
    # per group or device (all services together), characters per override value.
    max_device_tags: int = Field(64, ge=1, le=10_000)
    max_groups: int = Field(1000, ge=1, le=1_000_000)
    max_override_vars: int = Field(256, ge=1, le=100_000)
    max_override_value_chars: int = Field(4096, ge=1, le=1_048_576)
    # Refused credentials (unknown operator token, refused enrollment) per source:
    # a bucket of auth_failure_burst refilled at auth_failure_per_s; empty -> 429.
    auth_failure_burst: int = Field(60, ge=1, le=1_000_000)
    auth_failure_per_s: float = Field(1.0, gt=0, le=1_000_000)
    max_tracked_sources: int = Field(100_000, ge=1)
    refusal_audit_window_s: float = Field(60.0, gt=0, le=86400)
    max_refusal_groups: int = Field(10_000, ge=1)
    # Sync bodies: errors listed in a refusal; decoded size parsed on the event loop
    # (larger ones are parsed in worker processes); how many such workers.
    max_error_fields: int = Field(20, ge=1, le=1000)
    inline_body_bytes: int = Field(256 * 1024, ge=0)
    parse_workers: int = Field(2, ge=1, le=64)
    # Start them with the hub (the first catch-up after a restart does not wait 1-2 s for
    # a worker to spawn); false: started by the first large body (test hubs, tiny hubs).
    prestart_parse_workers: bool = True


class PkiConfig(_Section):
    """Certificate lifetimes and the renewal grace of an expired device certificate."""

    # Days, fractions allowed (tests use lifetimes of seconds).
    device_cert_days: float = Field(30, gt=0, le=3650)
    # How long after its device certificate expired a device may still renew it by
    # proving its key (POST /v1/renew/expired); 0 turns the expired path off.
    renew_grace_days: float = Field(60, ge=0, le=3650)
    server_cert_days: int = Field(365, ge=1, le=3650)
    ca_days: int = Field(3650, ge=1, le=36500)


class RegistriesConfig(_Section):
    """How the hub asks registries for image digests (hub.registry)."""

    insecure: list[str] = Field(default_factory=list)
    timeout_s: float = Field(15.0, gt=0, le=600)
    max_manifest_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_answer_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_parallel: int = Field(8, ge=1, le=256)


class RolloutsConfig(_Section):
    """The rollout engine (hub.rollout_engine): how often it plans, how much it holds."""

    tick_s: float = Field(1.0, gt=0, le=3600)
    max_active: int = Field(100, ge=1, le=100_000)
    # Woken by members' reports, the engine waits this long so the rest of the burst
    # joins the same tick: at most one woken tick per this many seconds.
    wake_coalesce_s: float = Field(0.1, ge=0, le=60)
    # Targets a tick issues at once (each its own transaction; group commit shares fsyncs).
    issue_parallel: int = Field(16, ge=1, le=256)


class TechniciansConfig(_Section):
    """Technician tokens the hub issues (hub.technician_api)."""

    max_expires_s: float = Field(7 * 86400.0, gt=0)  # the longest lifetime of a token
    # unexpired tokens the hub holds (revoked ones too: each sync lists those)
    max_active: int = Field(1000, ge=1, le=100_000)


class MetricsConfig(_Section):
    """Device metrics history (hub.metrics_api): the latest samples per device."""

    # samples held per device (1440: a day at the agent's default interval); older ones
    # are deleted as new ones arrive and counted
    history_per_device: int = Field(1440, ge=1, le=100_000)
    # a sample over this many bytes of JSON is not stored (counted)
    max_sample_bytes: int = Field(64 * 1024, ge=1024, le=2**20)
    # samples one GET returns at most
    max_listed: int = Field(10_000, ge=1, le=100_000)


class ActionsConfig(_Section):
    """Queued device actions (hub.action_api)."""

    max_queued_per_device: int = Field(50, ge=1, le=10_000)  # not yet finished, per device
    max_result_bytes: int = Field(256 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_expires_s: float = Field(7 * 86400.0, gt=0)
    default_expires_s: float = Field(3600.0, gt=0)
    max_per_sync: int = Field(20, ge=1, le=1000)  # actions one sync answer carries
    # a delivered action whose receipt has not arrived is offered again after this long
    redeliver_after_s: float = Field(120.0, gt=0)
    max_group_devices: int = Field(10_000, ge=1)  # devices one group action fans out to
    keep_finished_s: float = Field(30 * 86400.0, gt=0)  # finished actions are kept this long
    # a logs action's result parts: the most lines and bytes kept per action (the rest is
    # counted as cut); the byte bound is also the one the device stops sending at
    logs_max_lines: int = Field(100_000, ge=1, le=10_000_000)
    logs_max_bytes: int = Field(8 * 2**20, ge=1024, le=256 * 2**20)
    # a part missing between stored ones (or after the final result) is waited for this
    # long before readers are shown what follows it (hub.part_order)
    parts_gap_grace_s: float = Field(60.0, gt=0, le=3600)


class LogPolicyConfig(_Section):
    """The log shipping policy of devices no group with a policy matches (hub.log_policy)."""

    default_mode: Literal["none", "errors", "all"] = "errors"  # suits a metered link
    default_pattern: str = Field(DEFAULT_LOG_PATTERN, min_length=1)

    @model_validator(mode="after")
    def _pattern(self) -> LogPolicyConfig:
        check_log_pattern(self.default_pattern)
        return self


class DevicePolicyConfig(_Section):
    """The device policy of devices no group with a policy matches (hub.device_policy).

    Restrictive: binds only under the release's data directory, no Docker socket, no
    privileged mode, host network, devices or added capabilities; ports on any address
    and no limits required (see docs/security.md "Device policy").
    """

    default: DevicePolicy = Field(default_factory=lambda: RESTRICTIVE)


class RetentionConfig(_Section):
    """Retention of what devices send (hub.retention); audit records are never deleted."""

    max_age_s: float = Field(30 * 86400.0, ge=0)
    max_bytes_per_device: int = Field(256 * 2**20, ge=0)
    interval_s: float = Field(300.0, gt=0, le=86400)
    batch_rows: int = Field(1000, ge=1, le=100_000)
    pause_s: float = Field(0.01, ge=0, le=10)  # between batches: other writers go first


class AuditConfig(_Section):
    """Device audit chains verified as their records arrive (hub.device_audit)."""

    # a record ahead of a gap in its device's chain is held (stored, not judged) this long
    # for the records before it; then the gap is declared (tamper evidence)
    device_gap_grace_s: float = Field(600.0, gt=0, le=30 * 86400)
    # records held per device at most; past it the gap is declared at once (counted)
    device_max_held: int = Field(10_000, ge=1, le=1_000_000)
    # expired gaps of devices that send nothing more are declared this often (leader)
    gap_sweep_interval_s: float = Field(60.0, gt=0, le=86400)


class AccessConfig(_Section):
    """Operator users and their API tokens (hub.access, hub.route_access)."""

    # last_used of a token is written at most once per this many seconds per token
    token_touch_interval_s: float = Field(60.0, ge=0, le=86400)
    max_token_lifetime_s: float = Field(365 * 86400.0, gt=0)  # the longest a token may live
    max_tokens_per_user: int = Field(100, ge=1, le=100_000)  # unrevoked ones


class DashboardConfig(_Section):
    """The web dashboard's sessions (hub.dashboard)."""

    idle_timeout_s: float = Field(1800.0, ge=1, le=7 * 86400)  # unused this long: signed out
    absolute_timeout_s: float = Field(12 * 3600.0, ge=1, le=30 * 86400)  # then sign in again
    max_sessions: int = Field(1000, ge=1, le=100_000)  # live sessions the hub holds
    page_size: int = Field(50, ge=1, le=500)  # devices per page of the devices table
    poll_interval_s: float = Field(5.0, ge=1, le=3600)  # live parts of pages refresh this often
    # fleet history (hub.fleet_history): counts sampled this often, kept this long
    history_interval_s: float = Field(300.0, ge=1, le=86400)
    history_days: float = Field(30.0, gt=0, le=3650)
    history_trim_batch: int = Field(1000, ge=1, le=100_000)  # rows deleted per trim write
    contact_spans_per_device: int = Field(500, ge=1, le=100_000)  # device contact spans kept
    # live logs on the device page (a ``logs`` action with ``follow``, hub.dashboard.log_pages)
    max_log_follows: int = Field(20, ge=1, le=10_000)  # follows from the dashboard at once
    log_follow_max_s: int = Field(600, ge=1, le=86400)  # the longest follow one may ask for
    log_tail_lines: int = Field(200, ge=1, le=10_000)  # lines a log request's page shows
    log_request_expires_s: float = Field(120.0, gt=0, le=86400)  # a log request waits this long


class HubConfig(_Section):
    """The whole configuration."""

    server: ServerConfig
    store: StoreConfig = Field(default_factory=lambda: StoreConfig())
    fleet: FleetConfig = Field(default_factory=lambda: FleetConfig())
    limits: LimitsConfig = Field(default_factory=lambda: LimitsConfig())
    pki: PkiConfig = Field(default_factory=lambda: PkiConfig())
    registries: RegistriesConfig = Field(default_factory=lambda: RegistriesConfig())
    rollouts: RolloutsConfig = Field(default_factory=lambda: RolloutsConfig())
    technicians: TechniciansConfig = Field(default_factory=lambda: TechniciansConfig())
    metrics: MetricsConfig = Field(default_factory=lambda: MetricsConfig())
    actions: ActionsConfig = Field(default_factory=lambda: ActionsConfig())
    log_policy: LogPolicyConfig = Field(default_factory=lambda: LogPolicyConfig())
    retention: RetentionConfig = Field(default_factory=lambda: RetentionConfig())
    audit: AuditConfig = Field(default_factory=lambda: AuditConfig())
    access: AccessConfig = Field(default_factory=lambda: AccessConfig())
    device_policy: DevicePolicyConfig = Field(default_factory=lambda: DevicePolicyConfig())
    dashboard: DashboardConfig = Field(default_factory=lambda: DashboardConfig())

    @property
    def data_dir(self) -> Path:
        """Return the data directory."""
        return self.server.data_dir

    @property
    def postgres_url(self) -> str | None:
        """Return ``store.url`` when it names a PostgreSQL database, else None."""
        url = self.store.url
        return url if url.startswith(POSTGRES_SCHEMES) else None

    @property
    def sqlite_path(self) -> Path:
        """Return the SQLite database file named by ``store.url`` (default in data_dir)."""
        url = self.store.url
        if not url:
            return self.server.data_dir / "hub.db"
        if url.startswith("sqlite:///"):
            return Path(url.removeprefix("sqlite://"))
        raise ConfigError(f"store.url: unsupported database url {url!r} (use sqlite:///PATH)")


_LIST_FIELDS = {("server", "public_names"), ("registries", "insecure")}


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Map ``EDGE_HUB_<SECTION>_<FIELD>`` variables onto the config tree."""
    sections = _section_models()
    out: dict[str, dict[str, Any]] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        if key == DATABASE_URL_ENV:
            _database_url(env, out)
            continue
        rest = key[len(ENV_PREFIX) :].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            raise ConfigError(f"{key}: unknown section (expected one of {', '.join(sections)})")
        field = rest[len(section) + 1 :]
        if field not in sections[section].model_fields:
            raise ConfigError(f"{key}: unknown field {section}.{field}")
        parsed: Any = value
        if (section, field) in _LIST_FIELDS:
            parsed = [v.strip() for v in value.split(",") if v.strip()]
        out.setdefault(section, {})[field] = parsed
    return out


def _database_url(env: Mapping[str, str], out: dict[str, dict[str, Any]]) -> None:
    """Apply EDGE_HUB_DATABASE_URL as store.url (refused if EDGE_HUB_STORE_URL differs)."""
    url = env[DATABASE_URL_ENV]
    other = env.get(ENV_PREFIX + "STORE_URL")
    if other is not None and other != url:
        raise ConfigError(
            f"{DATABASE_URL_ENV} and {ENV_PREFIX}STORE_URL name different databases; set one"
        )
    out.setdefault("store", {})["url"] = url


def _section_models() -> dict[str, type[BaseModel]]:
    return {
        "server": ServerConfig,
        "store": StoreConfig,
        "fleet": FleetConfig,
        "limits": LimitsConfig,
        "pki": PkiConfig,
        "registries": RegistriesConfig,
        "rollouts": RolloutsConfig,
        "technicians": TechniciansConfig,
        "metrics": MetricsConfig,
        "actions": ActionsConfig,
        "log_policy": LogPolicyConfig,
        "retention": RetentionConfig,
        "audit": AuditConfig,
        "access": AccessConfig,
    }


def build_config(
    data: Mapping[str, Any], env: Mapping[str, str] | None = None, *, source: str = "config"
) -> HubConfig:
    """Validate a config mapping with environment overrides applied on top."""
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for section, values in _env_overrides(os.environ if env is None else env).items():
        base = merged.get(section)
        merged[section] = {**(base if isinstance(base, Mapping) else {}), **values}
    try:
        return HubConfig.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise ConfigError(f"invalid hub configuration ({source}): {problems}") from None


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> HubConfig:
    """Read the TOML file (optional) and apply environment overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return build_config(data, env, source=str(path) if path else "environment")
