"""Wire models shared by the agent and the hub (the hub imports these; never the reverse).

Every call is opened by the agent over HTTPS with mutual TLS, except enrollment, which
authenticates with a one-time token because the device has no certificate yet.

    POST /v1/enroll            EnrollRequest  -> EnrollResponse        (token, no client cert)
    POST /v1/renew             RenewRequest   -> RenewResponse         (mTLS)
    POST /v1/sync              SyncRequest    -> SyncResponse          (mTLS; body gzip)
    GET  /v1/target?after=N&wait=S            -> 200 SignedTarget | 204 (mTLS; long-poll)

Errors are JSON ``{"error": code, "message": text, "fields": [...]}`` with a 4xx/5xx status.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL_VERSION = 1

OutboxKind = Literal["status", "event", "audit", "log", "dropped"]


class Wire(BaseModel):
    """Base for wire messages: unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid")


class EnrollRequest(Wire):
    """First contact: a one-time token and a CSR whose key never leaves the device."""

    token: str = Field(min_length=8, max_length=256)
    csr_pem: str = Field(min_length=100, max_length=16384)
    hostname: str = Field("", max_length=255)
    agent_version: str = Field("", max_length=64)


class EnrollResponse(Wire):
    """The device's identity: its id, client certificate, and the keys it pins."""

    device_id: str
    certificate_pem: str
    ca_pem: str
    signing_public_key_pem: str
    tags: dict[str, str] = Field(default_factory=dict)


class RenewRequest(Wire):
    """Ask for a fresh client certificate for a new CSR (authenticated by the old one)."""

    csr_pem: str = Field(min_length=100, max_length=16384)


class RenewResponse(Wire):
    """The renewed client certificate."""

    certificate_pem: str


class OutboxEntry(Wire):
    """One record the device produced; ``seq`` is unique and increasing per device."""

    seq: int = Field(ge=1)
    kind: OutboxKind
    created_at: datetime
    payload: dict[str, Any]


class ServiceReport(Wire):
    """One service as the device sees it."""

    name: str
    state: str
    health: str = "none"
    image: str = ""
    image_id: str = ""
    restarts: int = 0
    crash_loop: bool = False
    last_exit_code: int | None = None
    last_error: str | None = None


class StatusSnapshot(Wire):
    """The device's current state; in a delta, absent (None) fields did not change."""

    full: bool = True
    agent_version: str | None = None
    target_revision: int | None = None
    applied_revision: int | None = None
    release: str | None = None
    state: str | None = None  # converging | converged | rolled_back | failed | idle
    services: list[ServiceReport] | None = None
    counters: dict[str, int] | None = None
    last_error: str | None = None


class SyncRequest(Wire):
    """One round trip: a bounded batch of outbox entries plus a status delta."""

    protocol: int = PROTOCOL_VERSION
    entries: list[OutboxEntry] = Field(default_factory=list)
    status: StatusSnapshot | None = None
    applied_revision: int = 0
    known_target_revision: int = 0


class SignedTarget(Wire):
    """A target signed with the hub's Ed25519 key: base64 payload of canonical JSON."""

    payload: str
    signature: str
    key_id: str = ""


class SyncResponse(Wire):
    """The highest seq the hub durably holds, and a newer target if there is one."""

    acked_seq: int
    target: SignedTarget | None = None
    want_full_status: bool = False
    server_time: datetime | None = None


class ErrorBody(Wire):
    """The JSON body of every error response."""

    error: str
    message: str
    fields: list[dict[str, Any]] = Field(default_factory=list)
