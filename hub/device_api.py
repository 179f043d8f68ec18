"""The agents' side of the hub: enrollment, renewal, sync, target long-poll, CA bootstrap.

    GET  /v1/ca                          the CA certificate (PEM); no client cert needed
    POST /v1/enroll   EnrollRequest  ->  EnrollResponse   token + CSR; no client cert
    POST /v1/renew    RenewRequest   ->  RenewResponse    mTLS (newest cert, or see hub.renewal)
    POST /v1/renew/challenge  RenewChallengeRequest -> RenewChallenge  no client cert
    POST /v1/renew/expired    ExpiredRenewRequest   -> RenewResponse   no client cert; proof
    POST /v1/sync     SyncRequest    ->  SyncResponse     mTLS; body may be gzip
    GET  /v1/target?after=N&wait=S   ->  200 SignedTarget | 204 on timeout (mTLS)

The device is identified only by the verified client certificate (never by anything in
the body); an unknown or disabled device is refused with 403.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import functools
import itertools
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator

from aiohttp import web
from pydantic import ValidationError

from edge_agent.models import Target, strip_unknown
from edge_agent.openapi import INT64, STRING, Query, described
from edge_agent.protocol import (
    BASELINE_FEATURES,
    BODY_FORMATS,
    INT64_MAX,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    SYNC_LINES_TYPE,
    EnrollRequest,
    EnrollResponse,
    ExpiredRenewRequest,
    RenewChallenge,
    RenewChallengeRequest,
    RenewRequest,
    RenewResponse,
    SignedTarget,
    SyncRequest,
    SyncResponse,
    renewal_proof_message,
    required_features,
)
from hub.action_api import take_for_sync, wake_header
from hub.auth import (
    check_enrollment_token,
    peer_cert,
    require_cert,
    require_newest,
    require_peer,
    split_enrollment_token,
)
from hub.context import HubContext, ctx
from hub.errors import (
    BadCSR,
    EnrollmentRefused,
    Forbidden,
    HubError,
    InvalidRequest,
    PayloadTooLarge,
)
from hub.guard import audit_refusal
from hub.log_policy import policy_for_sync
from hub.metrics_api import entry_kinds
from hub.notify import granted_wait, retry_after_s
from hub.pki import IssuedCert, load_csr, public_key_sha256, serial_hex
from hub.prom import count_stored
from hub.renewal import (
    check_challenge,
    check_grace,
    check_lineage,
    issue_challenge,
    load_issued_cert,
    verify_proof,
)
from hub.rollout_engine import ENGINE
from hub.secret_refs import SECRET_BOX, deliverable
from hub.store import AuditRecord, DeviceRecord, EntryRow, NewDevice, SyncBatch
from hub.store.records import RenewedCert
from hub.technician_api import technician_update
from hub.wire import content_encoding, parse, read_body, read_raw, respond

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

MAX_FEATURES = 256  # feature names a long-poll may list (as SyncRequest.features)
FEATURE_SETS_CACHED = 64  # distinct features lists parsed once (one per agent version)
# Enrollment and renewal bodies are a token and a CSR: a few KiB.
SMALL_BODY = 64 * 1024


def new_device_id() -> str:
    """Return a fresh device id (64 random bits)."""
    return "dev-" + secrets.token_hex(8)


@routes.get("/v1/ca")
@described(media="application/x-pem-file")
async def get_ca(request: web.Request) -> web.Response:
    """Return the CA certificate, so an agent holding only its fingerprint can bootstrap."""
    hub = ctx(request)
    return web.Response(
        text=hub.pki.ca_pem,
        content_type="application/x-pem-file",
        headers={"X-Edgefleet-CA-Fingerprint": hub.pki.ca_fingerprint()},
    )


@routes.post("/v1/enroll")
@described(body=EnrollRequest, response=EnrollResponse, status=201, errors=(404, 409, 410))
async def enroll(request: web.Request) -> web.Response:
    """Exchange an enrollment token and a CSR for a device identity."""
    hub = ctx(request)
    body = await read_body(request, SMALL_BODY, SMALL_BODY)
    req = parse(EnrollRequest, body)
    now = hub.now()
    token_id = "-"
    try:
        token_id, secret_hash = split_enrollment_token(req.token)
        await _precheck_token(hub, token_id, secret_hash)
        csr = load_csr(req.csr_pem)
        device_id = new_device_id()
        issued = hub.pki.issue_device_cert(csr, device_id, hub.config.pki.device_cert_days, now)
        device = await hub.store.enroll_device(
            token_id,
            secret_hash,
            NewDevice(
                id=device_id,
                hostname=req.hostname,
                agent_version=req.agent_version,
                cert_serial=issued.serial,
                cert_fingerprint=issued.fingerprint,
                cert_not_after=issued.not_after,
            ),
            now,
        )
    except (EnrollmentRefused, BadCSR) as exc:
        await _audit_refusal(hub, request, token_id, exc)
        raise
    log.info("enrolled %s (%s) with token %s", device.id, req.hostname or "-", token_id)
    return respond(
        EnrollResponse(
            device_id=device.id,
            certificate_pem=issued.pem,
            ca_pem=hub.pki.ca_pem,
            signing_public_key_pem=hub.pki.signing_public_pem,
            tags=device.tags,
        ),
        status=201,
    )


async def _precheck_token(hub: HubContext, token_id: str, secret_hash: str) -> None:
    """Refuse early (before any CA work); ``enroll_device`` checks again atomically."""
    token = await hub.store.get_enrollment_token(token_id)
    check_enrollment_token(token, secret_hash, hub.now())


async def _audit_refusal(
    hub: HubContext, request: web.Request, token_id: str, exc: HubError
) -> None:
    await audit_refusal(  # aggregated per source: a client must not drive our disk
        request,
        AuditRecord(
            actor=f"token:{token_id[:64]}",
            action="device.enroll",
            target="-",
            outcome="denied",
            at=hub.now(),
            detail={"reason": exc.code, "peer": request.remote or ""},
        ),
    )


async def _enrolled_device(hub: HubContext, request: web.Request) -> DeviceRecord:
    # One read per call: the device row also holds the newest certificate's serial.
    peer = require_cert(request)
    device = await hub.store.get_device(peer.device_id)
    if device is None:
        raise Forbidden(f"device {peer.device_id!r} is not enrolled")
    require_newest(peer, device.cert_serial)
    if device.disabled:
        raise Forbidden(f"device {peer.device_id!r} is disabled")
    return device


@routes.post("/v1/renew")
@described(body=RenewRequest, response=RenewResponse, errors=(409,))
async def renew(request: web.Request) -> web.Response:
    """Issue a fresh client certificate for the calling device's new CSR."""
    hub = ctx(request)
    peer = peer_cert(request)
    async with _renewal_refusals_audited(hub, request, peer.device_id if peer else "", "mtls"):
        peer = await require_peer(request, hub.store, renewing=True)
        req = parse(RenewRequest, await read_body(request, SMALL_BODY, SMALL_BODY))
        issued = await _renew_device(hub, peer.device_id, peer.serial, req.csr_pem, "mtls")
    return respond(RenewResponse(certificate_pem=issued.pem))


@routes.post("/v1/renew/challenge")
@described(body=RenewChallengeRequest, response=RenewChallenge)
async def renew_challenge(request: web.Request) -> web.Response:
    """Answer a challenge for an expired certificate's renewal (stateless: no write)."""
    hub = ctx(request)
    req = parse(RenewChallengeRequest, await read_body(request, SMALL_BODY, SMALL_BODY))
    return respond(issue_challenge(hub.pki.challenge_secret(), req.device_id, hub.now()))


@routes.post("/v1/renew/expired")
@described(body=ExpiredRenewRequest, response=RenewResponse, errors=(409,))
async def renew_expired(request: web.Request) -> web.Response:
    """Renew a recently expired certificate, proven by its key (see ``hub.renewal``)."""
    hub = ctx(request)
    async with _renewal_refusals_audited(hub, request, "", "expired"):
        req = parse(ExpiredRenewRequest, await read_body(request, SMALL_BODY, SMALL_BODY))
    async with _renewal_refusals_audited(hub, request, req.device_id, "expired"):
        now = hub.now()
        check_challenge(hub.pki.challenge_secret(), req.challenge, req.device_id, now)
        cert = load_issued_cert(req.certificate_pem, hub.pki.ca_cert, req.device_id)
        message = renewal_proof_message(req.device_id, req.challenge, req.csr_pem)
        verify_proof(cert, message, req.signature_b64)
        grace = dt.timedelta(days=hub.config.pki.renew_grace_days)
        check_grace(cert.not_valid_after_utc, now, grace)
        serial = serial_hex(cert.serial_number)
        issued = await _renew_device(hub, req.device_id, serial, req.csr_pem, "expired")
    return respond(RenewResponse(certificate_pem=issued.pem))


@contextlib.asynccontextmanager
async def _renewal_refusals_audited(
    hub: HubContext, request: web.Request, device_id: str, via: str
) -> AsyncIterator[None]:
    """Audit a refused renewal (aggregated per source, like refused enrollments)."""
    try:
        yield
    except HubError as exc:
        await audit_refusal(
            request,
            AuditRecord(
                actor=f"device:{device_id[:128]}" if device_id else "anonymous",
                action="device.renew",
                target=device_id[:128] or "-",
                outcome="denied",
                at=hub.now(),
                detail={"reason": exc.code, "via": via, "peer": request.remote or ""},
            ),
        )
        raise


async def _renew_device(
    hub: HubContext, device_id: str, presented_serial: str, csr_pem: str, via: str
) -> IssuedCert:
    device = await hub.store.get_device(device_id)
    lineage = await hub.store.get_cert_lineage(device_id)
    if device is None or lineage is None:
        raise Forbidden(f"device {device_id!r} is not enrolled")
    if device.disabled:
        raise Forbidden(f"device {device_id!r} is disabled")
    csr = load_csr(csr_pem)
    from_previous = check_lineage(presented_serial, public_key_sha256(csr.public_key()), lineage)
    now = hub.now()
    issued = hub.pki.issue_device_cert(csr, device_id, hub.config.pki.device_cert_days, now)
    renewed = RenewedCert(
        issued.serial,
        issued.fingerprint,
        issued.not_after,
        issued.key_sha256,
        renewed_from=presented_serial,
        from_previous=from_previous,
        via=via,
    )
    await hub.store.replace_device_cert(device_id, renewed, now)
    log.info(
        "renewed certificate of %s (%s) until %s", device_id, via, issued.not_after.isoformat()
    )
    return issued


@routes.post("/v1/sync")
@described(body=SyncRequest, response=SyncResponse, errors=(409,))
async def sync(request: web.Request) -> web.Response:
    """Store a batch of outbox entries and a status delta; answer the ack and a newer target."""
    started = time.perf_counter()
    hub = ctx(request)
    # Who is calling is settled before a byte of the body is read: an unknown or
    # disabled device costs one indexed read, whatever it sends.
    device = await _enrolled_device(hub, request)
    raw = await read_raw(request, hub.config.limits.max_body_bytes)
    try:
        req, entries = await hub.sync_decoder.decode(
            raw, content_encoding(request), lines=_is_lines(request)
        )
        _check_batch(req.protocol, entries)
    except (InvalidRequest, PayloadTooLarge) as exc:
        await _audit_sync_refusal(hub, device.id, exc)
        raise
    now = hub.now()
    result = await hub.store.ingest_sync(
        device.id,
        SyncBatch(
            entries,
            req.status,
            req.applied_revision,
            req.known_target_revision,
            epoch=req.epoch,
            protocol=req.protocol,
            features=tuple(req.features) if req.features is not None else None,
        ),
        now,
    )
    count_stored(request, result.inserted)
    request.app[ENGINE].on_report(device, req.status)  # a member's news: plan soon
    target = result.target
    if target is not None:
        known = frozenset(req.features) if req.features is not None else None
        if known is None:
            known = await hub.store.device_features(device.id)
        if not is_deliverable(target, known):
            target = None  # held: the device's agent cannot apply it (it was downgraded)
        else:
            target = await deliverable(hub, request.app[SECRET_BOX], target)
    response = respond(
        SyncResponse(
            acked_seq=result.acked_seq,
            target=target,
            want_full_status=result.want_full_status,
            server_time=now,
            technicians=await technician_update(hub, device, req.features),
            entry_kinds=entry_kinds(req.features),
            actions=await take_for_sync(hub, device.id, req.features),
            log_policy=await policy_for_sync(
                request, hub.store, hub.config.log_policy, device, req.features
            ),
            body_formats=list(BODY_FORMATS) if "body_formats" in (req.features or ()) else None,
        )
    )
    if target is not None:
        response.enable_compression()
    response.headers["Server-Timing"] = f"hub;dur={(time.perf_counter() - started) * 1e3:.2f}"
    return response


def _is_lines(request: web.Request) -> bool:
    """Return whether the sync body is in the lines format (by its Content-Type)."""
    return request.headers.get("Content-Type", "").split(";")[0].strip().lower() == (
        SYNC_LINES_TYPE
    )


async def _audit_sync_refusal(hub: HubContext, device_id: str, exc: HubError) -> None:
    """Record a refused sync (bounded detail: the code, message and first fields)."""
    await hub.store.record_audit(
        AuditRecord(
            actor=f"device:{device_id}",
            action="device.sync",
            target=device_id,
            outcome="rejected",
            at=hub.now(),
            detail={
                "reason": exc.code,
                "status": exc.status,
                "message": exc.message[:300],
                "fields": [str(f.get("field", ""))[:200] for f in exc.fields[:5]],
            },
        )
    )


def _check_batch(protocol: int, entries: list[EntryRow]) -> None:
    if not MIN_PROTOCOL_VERSION <= protocol <= PROTOCOL_VERSION:
        raise InvalidRequest(
            f"protocol {protocol} is not supported (hub speaks "
            f"{MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION})",
            fields=[{"field": "protocol", "message": "unsupported protocol version"}],
            status=400,
        )
    for prev, entry in itertools.pairwise(entries):
        if entry[0] <= prev[0]:
            raise InvalidRequest(
                f"entries must be in strictly increasing seq order ({prev[0]} then {entry[0]})",
                fields=[{"field": "entries", "message": "seq not strictly increasing"}],
            )


@routes.get("/v1/target")
@described(
    query=(
        Query("after", INT64),
        Query("wait", {"type": "number", "minimum": 0}),
        Query("features", STRING),
    ),
    response=SignedTarget,
    also=(204,),
)
async def long_poll_target(request: web.Request) -> web.Response:
    """Answer the newest target once its revision is > ``after``; 204 after ``wait`` s.

    The wait granted is jittered (``limits.long_poll_jitter``); over
    ``limits.max_long_polls`` held polls the answer is 503 with a jittered Retry-After,
    and while the hub shuts down 204 with one, so a fleet does not return all at once.
    """
    hub = ctx(request)
    limits = hub.config.limits
    notifier = hub.notifier
    after = _int_param(request, "after", 0)
    draw = notifier.rng.random()
    wait = granted_wait(
        _float_param(request, "wait", 0.0),
        limits.long_poll_max_wait_s,
        limits.long_poll_jitter,
        draw,
    )
    # Only the id is kept while the poll is held: at 10,000 held polls every object a
    # waiting handler keeps alive is paid 10,000 times (the device row, its decoded tags).
    device_id = (await _enrolled_device(hub, request)).id
    features = _features_param(request)
    if features is None:
        features = await hub.store.device_features(device_id)
    if notifier.is_full():
        return _come_back_later(hub, 503)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        with notifier.subscribe(device_id) as changed:
            target = await hub.store.get_target(device_id)
            if (
                target is not None
                and target.revision > after
                and is_deliverable(target.signed, features)
            ):
                signed = await deliverable(hub, request.app[SECRET_BOX], target.signed)
                if signed is not None:  # None: a secret does not open (logged); held
                    response = respond(signed)
                    response.enable_compression()
                    return response
            wake = await wake_header(hub, device_id, features, hub.now())
            if wake is not None:  # an action is queued: the agent syncs to take it
                return web.Response(status=204, headers=wake)
            if notifier.closed:
                return _come_back_later(hub, 204)
            if loop.time() >= deadline:
                return web.Response(status=204)
            woken = await changed.wait_until(notifier.recheck_at(loop.time(), deadline))
            if not woken and loop.time() >= deadline:
                return web.Response(status=204)
        await _enrolled_device(hub, request)  # disabled while waiting -> 403


def _come_back_later(hub: HubContext, status: int) -> web.Response:
    """Answer a poll at once with a jittered Retry-After (full, or shutting down)."""
    delay = retry_after_s(1.0, hub.config.limits.long_poll_retry_max_s, hub.notifier.rng.random())
    return web.Response(status=status, headers={"Retry-After": str(delay)})


def is_deliverable(signed: SignedTarget, features: frozenset[str] | None) -> bool:
    """Return whether the device's agent understands every feature the target uses.

    ``features`` None: the agent never reported any (before protocol 3): the baseline.
    """
    try:
        doc, _ = strip_unknown(Target, json.loads(base64.b64decode(signed.payload)))
        target = Target.model_validate(doc)
    except (ValueError, ValidationError):
        return True  # the hub signed it; the agent judges it
    known = BASELINE_FEATURES if features is None else features
    return required_features(target) <= known


def _features_param(request: web.Request) -> frozenset[str] | None:
    """Return the long-poll's ``features`` (comma-separated), None when absent; bounded."""
    raw = request.query.get("features")
    if raw is None:
        return None
    return _parse_features(raw)


@functools.lru_cache(maxsize=FEATURE_SETS_CACHED)
def _parse_features(raw: str) -> frozenset[str]:
    """Parse a ``features`` list; one shared set per distinct list (agents of one version
    send the same), so a held poll does not keep its own copy."""
    names = [n for n in raw.split(",") if n]
    if len(names) > MAX_FEATURES or any(len(n) > 64 for n in names):
        raise InvalidRequest(
            f"query parameter features: at most {MAX_FEATURES} names of up to 64 characters",
            fields=[{"field": "features", "message": "too many or too long"}],
            status=400,
        )
    return frozenset(names)


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= INT64_MAX:
        raise InvalidRequest(
            f"query parameter {name} must be an integer from 0 to 2^63-1",
            fields=[{"field": name, "message": "must be an integer from 0 to 2^63-1"}],
            status=400,
        )
    return value


def _float_param(request: web.Request, name: str, default: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise InvalidRequest(
            f"query parameter {name} must be a non-negative number of seconds",
            fields=[{"field": name, "message": "must be a non-negative number"}],
            status=400,
        )
    return value
