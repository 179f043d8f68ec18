"""HTTP plumbing shared by the APIs: bounded (gzip) bodies, JSON in and out, errors as JSON.

The application must run with ``auto_decompress=False`` (``hub.app.make_runner`` does)
so ``read_body`` sees the bytes on the wire and bounds both them and their gunzipped
size: a small gzip bomb must not become a large allocation.
"""

from __future__ import annotations

import logging
import zlib
from datetime import datetime
from typing import Any, TypeVar, get_args

import pydantic_core
from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from edge_agent.errors import InvalidDocument
from edge_agent.models import parse_document
from edge_agent.protocol import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, OutboxKind, SyncRequest
from hub.errors import HubError, InvalidRequest, PayloadTooLarge
from hub.store.records import EntryRow, entry_row, iso_utc

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger(__name__)


async def read_body(request: web.Request, max_bytes: int, max_decompressed: int) -> bytes:
    """Return the request body, gunzipped if ``Content-Encoding: gzip``, within both bounds."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise _too_large(length, max_bytes, "limits.max_body_bytes")
    buf = bytearray()
    async for chunk in request.content.iter_any():
        buf += chunk
        if len(buf) > max_bytes:
            raise _too_large(len(buf), max_bytes, "limits.max_body_bytes")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("identity", ""):
        if len(buf) > max_decompressed:
            raise _too_large(len(buf), max_decompressed, "limits.max_decompressed_bytes")
        return bytes(buf)
    if encoding != "gzip":
        raise InvalidRequest(
            f"unsupported Content-Encoding {encoding!r} (use gzip or none)", status=415
        )
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(bytes(buf), max_decompressed + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"request body is not valid gzip: {exc}", status=400) from None
    if len(out) > max_decompressed or inflater.unconsumed_tail:
        raise _too_large(len(out), max_decompressed, "limits.max_decompressed_bytes")
    if not inflater.eof:
        raise InvalidRequest("request body is truncated gzip", status=400)
    return out


def _too_large(size: int, limit: int, setting: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body of {size}+ bytes is over the hub's limit of {limit} bytes ({setting}); "
        "split the batch"
    )


def parse(model: type[M], body: bytes | dict[str, Any]) -> M:
    """Validate a body as ``model``; 400 for malformed JSON, 422 naming each bad field."""
    try:
        result: M = parse_document(model, body)
    except InvalidDocument as exc:
        malformed = any(f.get("type") == "json_invalid" for f in exc.errors)
        raise InvalidRequest(
            exc.message, fields=exc.errors, status=400 if malformed else 422
        ) from None
    return result


def parse_sync(body: bytes) -> tuple[SyncRequest, list[EntryRow]]:
    """Validate a SyncRequest body; return it (without entries) and its entries as stored.

    The entries of a large batch are the hub's hot path, so a request in the shape the
    agent sends is checked by hand (``_fast_sync``) and turned straight into store rows.
    Anything that path does not accept as it is goes through the ``SyncRequest`` model,
    which alone decides whether it is valid and names every bad field: the fast path
    never accepts what the model refuses, and yields the rows the model's would.
    """
    fast = _fast_sync(body)
    if fast is not None:
        return fast
    req = parse(SyncRequest, body)
    return req.model_copy(update={"entries": []}), [entry_row(e) for e in req.entries]


_KINDS = frozenset(get_args(OutboxKind))
_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)
_INT64_MAX = 2**63 - 1
_MISSING: Any = object()


def _fast_sync(body: bytes) -> tuple[SyncRequest, list[EntryRow]] | None:
    """Return the request and rows if every entry is plainly valid, else None."""
    try:
        doc = pydantic_core.from_json(body)
    except ValueError:
        return None
    if type(doc) is not dict:
        return None
    entries = doc.get("entries", [])
    protocol = doc.get("protocol", PROTOCOL_VERSION)
    if (
        type(entries) is not list
        or type(protocol) is not int
        or not MIN_PROTOCOL_VERSION <= protocol <= PROTOCOL_VERSION
    ):
        return None
    try:
        head = SyncRequest.model_validate({**doc, "entries": []})
    except ValidationError:
        return None
    implied = "protocol" in doc and protocol >= 2  # as SyncRequest.expand_entries
    rows: list[EntryRow] = []
    append = rows.append
    to_json = pydantic_core.to_json
    kinds = _KINDS
    prev_seq = 0  # 0 only before the first entry (seqs are >= 1)
    prev_at: Any = _MISSING
    at_text = ""
    for e in entries:
        if type(e) is not dict:
            return None
        seq = e.get("seq", _MISSING)
        at = e.get("created_at", _MISSING)
        kind = e.get("kind")
        payload = e.get("payload")
        n_keys = 4
        if seq is _MISSING:
            if not (implied and prev_seq):
                return None
            seq = prev_seq + 1
            n_keys -= 1
        elif type(seq) is not int or not prev_seq < seq <= _INT64_MAX:
            return None  # also: >= 1, and strictly increasing
        if at is _MISSING:
            if not (implied and prev_seq):
                return None
            n_keys -= 1
        elif at != prev_at:
            if type(at) is not str:
                return None
            try:
                at_text = iso_utc(_DATETIME.validate_python(at))
            except ValidationError:
                return None
            prev_at = at
        if (
            type(kind) is not str
            or kind not in kinds
            or type(payload) is not dict
            or len(e) != n_keys  # a key the model does not know
        ):
            return None
        append((seq, kind, at_text, to_json(payload).decode()))
        prev_seq = seq
    return head, rows


def respond(model: BaseModel, status: int = 200) -> web.Response:
    """Return a wire model as a JSON response."""
    return web.Response(
        body=model.model_dump_json(exclude_none=False).encode(),
        status=status,
        content_type="application/json",
    )


def error_response(error: HubError) -> web.Response:
    """Return the JSON ``ErrorBody`` of an error."""
    return web.json_response(error.to_body(), status=error.status)


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn every error into an ``ErrorBody`` JSON response with the right status."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except HubError as exc:
        if exc.status >= 500:
            log.error("%s %s failed: %s", request.method, request.path, exc.message)
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = {"error": exc.reason.lower().replace(" ", "_"), "message": exc.reason, "fields": []}
        return web.json_response(body, status=exc.status, headers=_keep_allow(exc))
    except Exception:
        log.exception("%s %s: unexpected error", request.method, request.path)
        body = {"error": "internal", "message": "internal error; see the hub log", "fields": []}
        return web.json_response(body, status=500)


def _keep_allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}
