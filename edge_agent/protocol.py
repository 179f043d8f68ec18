"""Wire models shared by the agent and the hub (the hub imports these; never the reverse).

Every call is opened by the agent over HTTPS with mutual TLS, except enrollment, which
authenticates with a one-time token because the device has no certificate yet.

    POST /v1/enroll            EnrollRequest  -> EnrollResponse        (token, no client cert)
    POST /v1/renew             RenewRequest   -> RenewResponse         (mTLS)
    POST /v1/renew/challenge   RenewChallengeRequest -> RenewChallenge (no client cert)
    POST /v1/renew/expired     ExpiredRenewRequest   -> RenewResponse  (no client cert;
                               the expired certificate's key signs challenge and CSR)
    POST /v1/sync              SyncRequest    -> SyncResponse          (mTLS; body gzip;
                               JSON, or the lines format (SYNC_LINES_TYPE) to a hub
                               whose answer listed "lines" in body_formats)
    GET  /v1/target?after=N&wait=S            -> 200 SignedTarget | 204 (mTLS; long-poll;
                               204 at once with X-Edgefleet-Actions when actions wait)

Errors are JSON ``{"error": code, "message": text, "fields": [...]}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

from edge_agent.models import Service, Target, is_relative_bind

# 2: an entry may omit ``seq`` (then it is the previous entry's seq + 1) and
#    ``created_at`` (then it is the previous entry's); the first entry carries both.
# 3: ``epoch`` names the agent store's sequence space (a wiped store starts a new one);
#    ``features`` lists the target features the agent understands.
PROTOCOL_VERSION = 3
MIN_PROTOCOL_VERSION = 1  # the oldest a hub still accepts

# Features of a target an agent must understand to apply it, each with the test of
# whether a target uses it. From protocol 3 an agent reports the ones it has at every
# sync; an older agent is taken to have BASELINE_FEATURES (what protocol 2 understood).
# A hub refuses to set a target that uses a feature the device's agent has not reported.
# A new optional Target field that an old agent would ignore to harm gets a feature here.
FEATURE_TESTS: dict[str, Callable[[Target], bool]] = {
    "depends_on": lambda t: any(s.depends_on for s in t.release.services),
    "healthcheck": lambda t: any(s.healthcheck for s in t.release.services),
    "registry_auth": lambda t: bool(t.release.registry_auth),
    "overrides": lambda t: bool(t.overrides),
    "expires_at": lambda t: t.expires_at is not None,
    "container_options": lambda t: any(_uses_container_options(s) for s in t.release.services),
    "networks": lambda t: bool(t.release.networks),
    "completed_dependency": lambda t: any(
        d.condition == "completed" for s in t.release.services for d in s.depends_on.values()
    ),
    "window": lambda t: t.window is not None or t.immediate,
    "release_trust": lambda t: t.release_trust is not None,
    "secrets": lambda t: bool(t.secrets) or bool(t.secret_names()),
    "device_policy": lambda t: (
        t.policy is not None
        or any(is_relative_bind(v) for s in t.release.services for v in s.volumes)
    ),
}
BASELINE_FEATURES = frozenset(
    {"depends_on", "healthcheck", "registry_auth", "overrides", "expires_at"}
)
# What this agent understands: a feature joins when the agent implements it.
AGENT_FEATURES = BASELINE_FEATURES | {
    "container_options",
    "networks",
    "completed_dependency",
    "window",
    # Not a target feature: this agent reads SyncResponse.technicians (the hub sends the
    # field only to agents that list it, so an older agent never sees it).
    "technicians",
    # Not a target feature: this agent reads SyncResponse.entry_kinds and sends additive
    # outbox kinds (metrics) only to a hub that lists them.
    "entry_kinds",
    # Not a target feature: this agent reads SyncResponse.actions and the long-poll's
    # X-Edgefleet-Actions header (edge_agent/actions.py); older agents get neither.
    "actions",
    # Not a target feature: this agent reads SyncResponse.log_policy (sent only to agents
    # that list it; an older agent keeps shipping every log line).
    "log_policy",
    # Target.release_trust: operator signatures of the release (edge_agent/release_trust.py).
    "release_trust",
    # Service.secret_env, RegistryAuth.password_secret and Target.secrets (the values, put
    # in by the hub only for devices whose release names them).
    "secrets",
    # Target.policy: the agent refuses a target whose release the policy refuses.
    "device_policy",
    # Not a target feature: this agent reads SyncResponse.body_formats and then sends its
    # sync bodies in the lines format (SYNC_LINES_TYPE) to a hub that lists "lines".
    "body_formats",
}

# A sync body in the lines format: the SyncRequest's JSON on the first line, its entries
# without ``payload``; then each entry's payload (a JSON object) on a line of its own, in
# entry order. The hub stores each payload line as sent instead of serializing it again.
SYNC_LINES_TYPE = "application/vnd.edgefleet.sync-lines"
BODY_FORMATS = ("lines",)  # what a hub lists in SyncResponse.body_formats


def _uses_container_options(service: Service) -> bool:
    return "container_options" in service.hashed_extras()


def required_features(target: Target) -> set[str]:
    """Return the features ``target`` uses."""
    return {name for name, uses in FEATURE_TESTS.items() if uses(target)}


# Every integer on the wire fits a signed 64-bit column: the hub stores them in SQLite.
INT64_MAX = 2**63 - 1
Count = Annotated[int, Field(ge=0, le=INT64_MAX, strict=True)]  # a bool is no count


def _time_text(value: Any) -> Any:
    """A time on the wire is ISO 8601 text: a number is not taken for a Unix time."""
    if isinstance(value, (str, datetime)):
        return value
    raise ValueError("must be an ISO 8601 date-time string")


# Text is parsed (strict mode would take only datetime objects from a decoded dict).
WireTime = Annotated[datetime, BeforeValidator(_time_text), Field(strict=False)]
Int64 = Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX, strict=True)]

# "metrics" (additive): sent only to a hub whose sync answer lists it in ``entry_kinds``.
OutboxKind = Literal["status", "event", "audit", "log", "dropped", "metrics"]


class Wire(BaseModel):
    """Base for wire messages: unknown fields are rejected, and so are values of another
    JSON type (``0`` for a bool, ``false`` for a count, a number for a time)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class HubDocument(BaseModel):
    """Base for what the hub sends: fields this agent does not know are set aside, not errors.

    A newer hub may add optional fields; an older agent must keep working. They land in
    ``model_extra`` and ``unknown_fields`` names them so the agent can count them.
    """

    model_config = ConfigDict(extra="allow")


def unknown_fields(doc: BaseModel, path: str = "") -> list[str]:
    """Return the dotted paths of fields in ``doc`` (and nested hub documents) not in its model."""
    found = [f"{path}{k}" for k in (doc.model_extra or {})]
    for name in type(doc).model_fields:
        value = getattr(doc, name)
        if isinstance(value, HubDocument):
            found += unknown_fields(value, f"{path}{name}.")
    return found


class EnrollRequest(Wire):
    """First contact: a one-time token and a CSR whose key never leaves the device."""

    token: str = Field(min_length=8, max_length=256)
    csr_pem: str = Field(min_length=100, max_length=16384)
    hostname: str = Field("", max_length=255)
    agent_version: str = Field("", max_length=64)


class EnrollResponse(HubDocument):
    """The device's identity: its id, client certificate, and the keys it pins."""

    device_id: str
    certificate_pem: str
    ca_pem: str
    signing_public_key_pem: str
    tags: dict[str, str] = Field(default_factory=dict)


class RenewRequest(Wire):
    """Ask for a fresh client certificate for a new CSR (authenticated by the old one)."""

    csr_pem: str = Field(min_length=100, max_length=16384)


class RenewResponse(HubDocument):
    """The renewed client certificate."""

    certificate_pem: str


class RenewChallengeRequest(Wire):
    """Ask for a challenge to renew an expired certificate (no client certificate)."""

    device_id: str = Field(min_length=1, max_length=64)


class RenewChallenge(Wire):
    """A short-lived, hub-authenticated nonce bound to one device id."""

    challenge: str
    expires_at: WireTime


class ExpiredRenewRequest(Wire):
    """Renew an expired certificate: the device key signs the challenge and the new CSR."""

    device_id: str = Field(min_length=1, max_length=64)
    certificate_pem: str = Field(min_length=100, max_length=16384)
    challenge: str = Field(min_length=1, max_length=1024)
    csr_pem: str = Field(min_length=100, max_length=16384)
    signature_b64: str = Field(min_length=1, max_length=2048)


def renewal_proof_message(device_id: str, challenge: str, csr_pem: str) -> bytes:
    """Return the bytes an expired certificate's key signs to renew it."""
    csr_digest = hashlib.sha256(csr_pem.encode()).hexdigest()
    return f"edgefleet-renew-v1\n{device_id}\n{challenge}\n{csr_digest}\n".encode()


class OutboxEntry(Wire):
    """One record the device produced; ``seq`` is unique and increasing per device."""

    seq: int = Field(ge=1, le=INT64_MAX, strict=True)
    kind: OutboxKind
    created_at: WireTime
    payload: dict[str, Any]

    @field_validator("created_at")
    @classmethod
    def _in_utc_range(cls, v: datetime) -> datetime:
        try:
            v.astimezone(UTC)
        except (OverflowError, ValueError):
            raise ValueError("time is out of range once converted to UTC") from None
        return v


class ServiceReport(Wire):
    """One service as the device sees it."""

    name: str
    state: str
    health: str = "none"
    image: str = ""
    image_id: str = ""
    restarts: Count = 0
    crash_loop: bool = False
    last_exit_code: Int64 | None = None
    last_error: str | None = None


# At most this many host containers in one status snapshot (the total is reported too).
HOST_CONTAINERS_MAX = 200


class HostContainerReport(Wire):
    """One container on the device's engine, managed by this agent or not (read-only)."""

    name: str = Field(max_length=256)
    image: str = Field("", max_length=1024)  # the reference it was created from
    image_id: str = Field("", max_length=128)
    digest: str = Field("", max_length=128)  # sha256:... of the manifest, "" if unknown
    state: str = Field(max_length=32)  # the engine's: running, exited, created, ...
    managed: bool = False  # carries this device's edgefleet labels


class StatusSnapshot(Wire):
    """The device's current state; in a delta, absent (None) fields did not change."""

    full: bool = True
    agent_version: str | None = None
    target_revision: Count | None = None
    applied_revision: Count | None = None
    release: str | None = None
    state: str | None = None  # converging | converged | rolled_back | failed | idle
    services: list[ServiceReport] | None = None
    counters: dict[str, Int64] | None = None
    last_error: str | None = None
    # Additive (optional): what runs and what is being rolled out, reported apart. A local
    # (technician) target is the hub revision it is based on plus a local sequence > 0.
    running_revision: Count | None = None
    running_local_seq: Count | None = None
    applying_revision: Count | None = None
    applying_local_seq: Count | None = None
    rollout_state: str | None = Field(None, max_length=32)  # applying|settling|good|...
    # Additive (optional): every container on the host, by name, at most
    # HOST_CONTAINERS_MAX of them; host_containers_total counts them all.
    host_containers: list[HostContainerReport] | None = Field(None, max_length=HOST_CONTAINERS_MAX)
    host_containers_total: Count | None = None
    # Additive (optional): while rollout_state is waiting_window, when the window next
    # opens (UTC). An older hub refuses the field; the agent then stops sending it.
    window_opens_at: (
        Annotated[AwareDatetime, BeforeValidator(_time_text), Field(strict=False)] | None
    ) = None
    # Additive (optional): the device's pinned release manifest has expired (release
    # signing; an indefinite freeze). None: no pin. Left out for a hub that refuses it.
    release_trust_stale: bool | None = None

    @field_validator("window_opens_at")
    @classmethod
    def _opening_in_utc(cls, v: datetime | None) -> datetime | None:
        try:
            return None if v is None else v.astimezone(UTC)
        except (OverflowError, ValueError):
            raise ValueError("time is out of range once converted to UTC") from None


class SyncRequest(Wire):
    """One round trip: a bounded batch of outbox entries plus a status delta.

    From protocol 2 on, entries are compacted on the wire: an entry without ``seq`` has
    the previous entry's seq + 1, one without ``created_at`` the previous entry's (so
    consecutive entries queued together cost neither). After validation every entry is
    complete, whatever the version. ``expand_entries`` is the one statement of the rule.
    """

    protocol: int = PROTOCOL_VERSION
    # The store generation: random per agent store, so a wiped store's seqs are never
    # taken for the old store's. "" is the one space of agents before protocol 3.
    epoch: str = Field("", max_length=64, pattern=r"^[A-Za-z0-9_-]*$")
    # The target features this agent understands (protocol 3); None: BASELINE_FEATURES.
    features: list[Annotated[str, Field(max_length=64)]] | None = Field(None, max_length=256)
    entries: list[OutboxEntry] = Field(default_factory=list)
    status: StatusSnapshot | None = None
    applied_revision: Count = 0
    known_target_revision: Count = 0

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("entries"), list):
            protocol = data.get("protocol")
            if type(protocol) is int and protocol >= 2:
                return {**data, "entries": expand_entries(data["entries"])}
        return data


def expand_entries(entries: list[Any]) -> list[Any]:
    """Return protocol-2 entries with the implied ``seq`` and ``created_at`` filled in.

    Only what can be filled is: the first entry, or one after an entry whose seq is not
    an integer, is left as it is for validation to name what is missing or wrong.
    """
    out: list[Any] = []
    prev_seq: Any = None
    prev_at: Any = None
    for entry in entries:
        if isinstance(entry, dict):
            if "seq" not in entry and type(prev_seq) is int:
                entry = {**entry, "seq": prev_seq + 1}
            if "created_at" not in entry and prev_at is not None:
                entry = {**entry, "created_at": prev_at}
            prev_seq, prev_at = entry.get("seq"), entry.get("created_at")
        else:
            prev_seq = prev_at = None
        out.append(entry)
    return out


def lines_body(head_json: str, rows: list[tuple[int, str, str, str]]) -> str | None:
    """Return a lines-format body for ``head_json`` (a JSON object without ``entries``) and
    (seq, kind, created_at, payload JSON) rows; None if a payload spans lines."""
    texts = "\n".join([row[3] for row in rows])
    if "\n" in head_json or (rows and texts.count("\n") != len(rows) - 1):
        return None  # (never from json.dumps, which escapes newlines in strings)
    body = f'{head_json[:-1]},"entries":{compact_entries(rows, payloads=False)}}}'
    return f"{body}\n{texts}" if rows else body


def compact_entries(rows: list[tuple[int, str, str, str]], *, payloads: bool = True) -> str:
    """Return protocol-2 JSON for ``entries`` from (seq, kind, created_at, payload JSON) rows.

    Payloads are spliced in as given (already JSON); kind and created_at are JSON-safe
    text (an outbox kind; ISO 8601). ``seq``/``created_at`` are left out where implied.
    Without ``payloads`` each entry leaves its payload out (the lines format).
    """
    parts = []
    prev_seq = -1
    prev_at = None
    for seq, kind, at, payload in rows:
        head = "" if seq == prev_seq + 1 else f'"seq":{seq},'
        if at != prev_at:
            head += f'"created_at":"{at}",'
        if payloads:
            parts.append(f'{{{head}"kind":"{kind}","payload":{payload}}}')
        else:
            parts.append(f'{{{head}"kind":"{kind}"}}')
        prev_seq, prev_at = seq, at
    return "[" + ",".join(parts) + "]"


class SignedTarget(HubDocument):
    """A target signed with the hub's Ed25519 key: base64 payload of canonical JSON."""

    payload: str
    signature: str
    key_id: str = ""


class RevokedTechnician(HubDocument):
    """A revoked technician token: refused until it expires (unix seconds)."""

    id: str = Field(max_length=64)
    expires_at: int = Field(ge=0, le=INT64_MAX)


class TechnicianUpdate(HubDocument):
    """What an agent needs to judge hub-issued technician tokens offline."""

    revoked: list[RevokedTechnician] = Field(default_factory=list)
    tags: dict[str, str] | None = None  # the device's tags now (token scopes match them)


class SignedAction(HubDocument):
    """A queued action signed with the hub's key for one device (``edge_agent.actiondoc``)."""

    payload: str = Field(max_length=32 * 1024)
    signature: str = Field(max_length=256)
    key_id: str = Field("", max_length=64)


LOG_POLICY_MODES = ("none", "errors", "all")
DEFAULT_LOG_PATTERN = r"(?i)\b(error|warn|warning|fatal|panic|exception)\b"
MAX_LOG_PATTERN_CHARS = 512
MAX_LOG_PATTERNS = 16


def check_log_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a regular expression of bounded length; else ValueError."""
    if len(pattern) > MAX_LOG_PATTERN_CHARS:
        raise ValueError(f"longer than {MAX_LOG_PATTERN_CHARS} characters")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from exc
    return pattern


class LogPolicy(HubDocument):
    """Which container log lines a device ships to the hub unasked (all are kept locally).

    ``none``: nothing; ``errors``: lines matching any of ``patterns`` (and the agent's own
    notices about its logs: gaps, suppressed lines); ``all``: every line.
    """

    mode: Literal["none", "errors", "all"]
    patterns: list[str] = Field(default_factory=list, max_length=MAX_LOG_PATTERNS)

    @field_validator("patterns")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        return [check_log_pattern(p) for p in v]


class SyncResponse(HubDocument):
    """The highest seq the hub durably holds, and a newer target if there is one."""

    acked_seq: int
    target: SignedTarget | None = None
    want_full_status: bool = False
    server_time: datetime | None = None
    # Additive: only for agents that list the "technicians" feature; left out when None.
    technicians: TechnicianUpdate | None = None
    # Additive: the outbox kinds beyond the baseline this hub stores ("metrics"); only for
    # agents that list the "entry_kinds" feature; left out when None.
    entry_kinds: list[Annotated[str, Field(max_length=32)]] | None = Field(None, max_length=32)
    # Additive: only for agents that list the "actions" feature; left out when None.
    actions: list[SignedAction] | None = None
    # Additive: only for agents that list the "log_policy" feature; left out when None.
    log_policy: LogPolicy | None = None
    # Additive: the sync body formats beyond JSON this hub takes ("lines"); only for
    # agents that list the "body_formats" feature; left out when None.
    body_formats: list[Annotated[str, Field(max_length=32)]] | None = Field(None, max_length=8)

    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler: Any) -> Any:
        doc = handler(self)
        if isinstance(doc, dict):
            for name in ("technicians", "entry_kinds", "actions", "log_policy", "body_formats"):
                if doc.get(name) is None:
                    doc.pop(name, None)
        return doc


class ErrorBody(Wire):
    """The JSON body of every error response."""

    error: str
    message: str
    fields: list[dict[str, Any]] = Field(default_factory=list)
