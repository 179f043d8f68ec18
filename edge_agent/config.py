"""Agent configuration: a TOML file plus EDGE_AGENT_* environment overrides, validated at start.

Environment variables name a field by its path, upper-cased, sections joined by ``__``:
``EDGE_AGENT_DATA_DIR``, ``EDGE_AGENT_HUB__URL``, ``EDGE_AGENT_SUPERVISOR__BACKOFF_CAP_S``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_agent.device_policy import PERMISSIVE, DevicePolicy
from edge_agent.errors import ConfigError

ENV_PREFIX = "EDGE_AGENT_"
# Variables under the prefix that are not configuration fields.
ENV_RESERVED = frozenset({"EDGE_AGENT_CONFIG", "EDGE_AGENT_BIN"})


class Section(BaseModel):
    """Base for config sections: unknown keys are errors (catches typos)."""

    model_config = ConfigDict(extra="forbid")


class DockerConfig(Section):
    """How to reach the engine and how much disk to leave free."""

    url: str | None = None
    root: str = "/var/lib/docker"
    disk_reserve_mb: int = Field(500, ge=0)


class ApiConfig(Section):
    """The technicians' local API."""

    socket: str = "/run/edge-agent/api.sock"
    socket_mode: int = 0o600
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    # Optional LAN listener; technicians then authenticate with their own tokens.
    lan_listen: str | None = None
    technicians: dict[str, str] = Field(
        default_factory=dict, description="name -> sha256 hex of that technician's token"
    )
    # The LAN listener is HTTPS only: the enrolled device certificate, or these files.
    lan_cert_file: str | None = None
    lan_key_file: str | None = None
    # Hub-issued technician tokens: clock skew allowed on expiry; refusals audited one
    # by one up to this many per minute, the rest counted in one record per minute.
    technician_skew_s: float = Field(60.0, ge=0, le=3600)
    refusal_audit_per_minute: int = Field(60, ge=1)
    # Optional plain-HTTP listener "host:port" serving only GET /metrics (Prometheus text):
    # no authentication, figures only (edge_agent.prom_api); off unless set.
    prometheus_listen: str | None = Field(None, pattern=r"^$|^[^\s]*:[0-9]{1,5}$")
    # GET /v1/logs (edge_agent.log_api): tail and lines per answer; followers at once
    # (over it 503 + Retry-After, counted), how often a follower reads new lines, and
    # how long one follow lasts at most (then the answer ends; the client asks again).
    logs_max_tail: int = Field(10_000, ge=1)
    logs_max_lines: int = Field(10_000, ge=1)
    logs_max_followers: int = Field(4, ge=1, le=1000)
    logs_follow_poll_s: float = Field(0.5, gt=0, le=60)
    logs_follow_max_s: float = Field(8 * 3600.0, gt=0)  # a follow ends after this long
    logs_follow_retry_after_s: int = Field(5, ge=1, le=3600)

    @model_validator(mode="after")
    def _lan_pair(self) -> ApiConfig:
        if (self.lan_cert_file is None) != (self.lan_key_file is None):
            raise ValueError("lan_cert_file and lan_key_file go together")
        return self


class SupervisorConfig(Section):
    """Restart backoff, crash-loop detection and the safety-net timer."""

    backoff_base_s: float = Field(1.0, gt=0)
    backoff_cap_s: float = Field(300.0, gt=0)
    stable_after_s: float = Field(60.0, gt=0)
    crash_loop_exits: int = Field(5, ge=2)
    crash_loop_window_s: float = Field(120.0, gt=0)
    # services whose restart history is kept (the longest-gone are forgotten beyond it)
    max_tracked_services: int = Field(1000, ge=1)
    restart_unhealthy: bool = True
    safety_interval_s: float = Field(30.0, gt=0)
    # A target's images must be present within this bound (its apply deadline starts then);
    # a target whose pull failed is retried after pull_retry_base_s, doubling to the cap.
    pull_timeout_s: float = Field(1800.0, gt=0)
    pull_retry_base_s: float = Field(60.0, gt=0)
    pull_retry_cap_s: float = Field(3600.0, gt=0)
    # A "completed" dependency must exit 0 within this bound, or the apply fails.
    completed_wait_s: float = Field(120.0, gt=0)
    # The read-only report of every container on the host: at most this many, and the
    # engine must answer within the timeout (else the report is left out, logged once).
    host_containers_max: int = Field(200, ge=0, le=200)
    host_report_timeout_s: float = Field(5.0, gt=0)
    # A report younger than this is reused by status reads (0: every read asks the engine).
    host_report_max_age_s: float = Field(2.0, ge=0)
    # After busy spells the C heap's free pages go back to the system (glibc): checked
    # every heap_trim_interval_s (0: only the one trim after start-up), trimmed when the
    # agent spent at least heap_trim_busy_cpu_s of CPU since its last trim and less than
    # that in the last interval (the spell has ended).
    heap_trim_interval_s: float = Field(5.0, ge=0, le=3600)
    heap_trim_busy_cpu_s: float = Field(0.25, gt=0)

    @model_validator(mode="after")
    def _cap(self) -> SupervisorConfig:
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError("backoff_cap_s must be >= backoff_base_s")
        return self


class HubConfig(Section):
    """Where the hub is and how to sync with it; no url means standalone."""

    url: str | None = None
    enrollment_token: str | None = None
    ca_file: str | None = None
    ca_sha256: str | None = None
    sync_interval_s: float = Field(30.0, gt=0)
    long_poll_s: float = Field(30.0, gt=0, le=300)
    batch_max_entries: int = Field(1000, ge=1)
    batch_max_bytes: int = Field(512 * 1024, ge=1024)
    backoff_base_s: float = Field(1.0, gt=0)
    backoff_cap_s: float = Field(300.0, gt=0)
    request_timeout_s: float = Field(30.0, gt=0)


class OutboxConfig(Section):
    """Per-kind bounds on what waits for the hub; audit is never bounded."""

    status_max_entries: int = Field(1000, ge=1)
    event_max_entries: int = Field(100_000, ge=1)
    event_max_bytes: int = Field(64 * 2**20, ge=1024)
    log_max_entries: int = Field(1_000_000, ge=1)
    log_max_bytes: int = Field(256 * 2**20, ge=1024)
    log_disk_reserve_mb: int = Field(200, ge=0)
    # Acknowledged entries left on disk until deleted in one go (0: deleted at each ack).
    acked_keep_max_entries: int = Field(50_000, ge=0)


class LogsConfig(Section):
    """Container log collection: each container's log followed as a stream."""

    enabled: bool = True
    max_line_bytes: int = Field(16 * 1024, ge=64)
    max_lines_per_minute: int = Field(6000, ge=1)
    # one container's lines held for one batch (one store transaction) at most
    max_lines_per_read: int = Field(2000, ge=1)
    max_bytes_per_read: int = Field(2 * 2**20, ge=1024)
    # how often the followed containers are checked against the reconciler's view (no
    # engine call); lines never wait for it. Was the poll interval before issue 9.
    interval_s: float = Field(5.0, gt=0, le=3600)
    # a batch is written this long after its first line (or at once when full)
    flush_interval_s: float = Field(2.0, gt=0, le=60)
    stream_retry_base_s: float = Field(1.0, gt=0)
    stream_retry_cap_s: float = Field(60.0, gt=0)
    # Every line is kept in the store (read on demand, shipped as the hub's policy says):
    # at most this many bytes per service's container (oldest dropped first, behind a
    # marker "N lines dropped"), and for at most this long (0: no age limit).
    local_max_bytes_per_container: int = Field(16 * 2**20, ge=64 * 1024)
    local_max_age_s: float = Field(7 * 86400.0, ge=0)
    # Dropping lines at a bound is audited (actor "agent"): one row per bound and interval.
    drop_audit_interval_s: float = Field(300.0, gt=0, le=86400)


class TasksConfig(Section):
    """Supervision of the agent's own background loops (sync, long-poll, events, ...)."""

    backoff_base_s: float = Field(1.0, gt=0)
    backoff_cap_s: float = Field(60.0, gt=0)
    stable_after_s: float = Field(60.0, gt=0)
    # failures of one loop in a row (none lasting stable_after_s) that end the process
    max_failures: int = Field(10, ge=1)
    # added to a loop's expected beat interval before it counts as stalled (watchdog)
    heartbeat_grace_s: float = Field(600.0, gt=0)
    # how long stop() waits for events still being queued
    drain_timeout_s: float = Field(5.0, ge=0)

    @model_validator(mode="after")
    def _cap(self) -> TasksConfig:
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError("backoff_cap_s must be >= backoff_base_s")
        return self


class ImageGcConfig(Section):
    """Removal of images this device's old targets used (see edge_agent/image_gc.py)."""

    enabled: bool = True
    interval_s: float = Field(6 * 3600.0, gt=0)
    # how often to look whether a new target turned good (which triggers a run)
    check_interval_s: float = Field(60.0, gt=0)
    # good targets whose images stay: the current release and the previous one (rollback)
    keep_good: int = Field(2, ge=1)
    min_unused_s: float = Field(3600.0, ge=0)
    max_removals_per_run: int = Field(20, ge=1)


class MetricsConfig(Section):
    """Device metrics (see edge_agent/metrics.py): sampled locally, queued for the hub."""

    enabled: bool = True
    interval_s: float = Field(60.0, ge=1, le=3600)
    # managed containers sampled at most (the rest are counted in containers_total)
    max_containers: int = Field(100, ge=0, le=1000)
    # samples waiting for the hub at most (the oldest are dropped, counted, marked)
    outbox_max_entries: int = Field(1440, ge=1)


class ActionsConfig(Section):
    """Queued hub actions (edge_agent/actions.py): how a ``logs`` answer is batched."""

    # one result part (one outbox entry) holds at most this many lines and bytes
    logs_batch_lines: int = Field(500, ge=1, le=100_000)
    logs_batch_bytes: int = Field(64 * 1024, ge=1024, le=16 * 2**20)
    # a part leaves at the latest this long after its first line (followed lines)
    logs_flush_s: float = Field(0.2, gt=0, le=60)


class TrustConfig(Section):
    """Release signing (edge_agent/release_pin.py): the release root pinned at install."""

    # A signed release root JSON file (``edgectl trust root show --json``); None: the
    # first root a hub target carries is pinned (trust on first use).
    release_root: Path | None = None


class TechnicianConfig(Section):
    """Bounds of what a technician on site may hold: pause and pin, and read auditing."""

    max_pause_minutes: int = Field(240, ge=1, le=7 * 24 * 60)
    max_pin_minutes: int = Field(7 * 24 * 60, ge=1, le=90 * 24 * 60)
    # Technician reads are audited once per technician, route and this many minutes.
    read_audit_minutes: float = Field(10.0, gt=0, le=24 * 60)


class AgentConfig(Section):
    """The whole agent configuration."""

    device_id: str | None = Field(None, min_length=1, max_length=128)
    data_dir: Path = Path("/var/lib/edge-agent")
    log_level: str = "INFO"
    docker: DockerConfig = Field(default_factory=DockerConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig)
    hub: HubConfig = Field(default_factory=HubConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    logs: LogsConfig = Field(default_factory=LogsConfig)
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    image_gc: ImageGcConfig = Field(default_factory=ImageGcConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    actions: ActionsConfig = Field(default_factory=ActionsConfig)
    trust: TrustConfig = Field(default_factory=TrustConfig)
    # [policy]: what a release may do here when its target carries no policy (a hub or
    # target from before "device_policy"); default permissive, today's behaviour.
    policy: DevicePolicy = PERMISSIVE
    technician: TechnicianConfig = Field(default_factory=TechnicianConfig)

    @model_validator(mode="after")
    def _lan_is_https(self) -> AgentConfig:
        # Bearer tokens never cross the LAN in the clear: the listener needs a certificate,
        # the enrolled one (a hub) or its own files. Checked here, before anything starts.
        if self.api.lan_listen and self.api.lan_cert_file is None and not self.hub.url:
            raise ValueError(
                "api.lan_listen needs a TLS certificate: enroll the device with a hub, or set "
                "api.lan_cert_file and api.lan_key_file (the LAN API is HTTPS only)"
            )
        return self

    @property
    def store_path(self) -> Path:
        """Return the path of the agent's SQLite file."""
        return self.data_dir / "agent.db"


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key in ENV_RESERVED:
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def load_config(path: str | Path | None, environ: dict[str, str] | None = None) -> AgentConfig:
    """Load and validate the configuration; raise ConfigError naming each bad field."""
    environ = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    data = _merge(data, _env_overrides(environ))
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{where}: {problems}") from exc
