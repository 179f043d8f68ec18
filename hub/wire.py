"""HTTP plumbing shared by the APIs: bounded (gzip) bodies, JSON in and out, errors as JSON.

The application must run with ``auto_decompress=False`` (``hub.app.make_runner`` does)
so ``read_body`` sees the bytes on the wire and bounds both them and their gunzipped
size: a small gzip bomb must not become a large allocation.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from edge_agent.errors import InvalidDocument
from edge_agent.models import parse_document
from hub.errors import HubError, InvalidRequest, PayloadTooLarge

M = TypeVar("M", bound=BaseModel)
MAX_ERROR_FIELDS = 20  # default of limits.max_error_fields
log = logging.getLogger(__name__)
# How long a request's body may take to arrive once its headers did (server.body_timeout_s).
BODY_TIMEOUT = web.AppKey("body_timeout_s", float)
DEFAULT_BODY_TIMEOUT_S = 60.0


async def read_raw(request: web.Request, max_bytes: int) -> bytes:
    """Return the request body as sent (still compressed), within ``max_bytes``."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise _too_large(length, max_bytes, "limits.max_body_bytes")
    buf = bytearray()
    timeout_s = request.app.get(BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT_S)
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_any():
                buf += chunk
                if len(buf) > max_bytes:
                    raise _too_large(len(buf), max_bytes, "limits.max_body_bytes")
    except TimeoutError:
        raise InvalidRequest(
            f"request body not received within {timeout_s:g} s "
            f"({len(buf)} bytes arrived; server.body_timeout_s)",
            status=408,
        ) from None
    return bytes(buf)


def content_encoding(request: web.Request) -> str:
    """Return the request's Content-Encoding, normalized ("identity" when absent)."""
    return request.headers.get("Content-Encoding", "identity").strip().lower() or "identity"


async def read_body(request: web.Request, max_bytes: int, max_decompressed: int) -> bytes:
    """Return the request body, gunzipped if ``Content-Encoding: gzip``, within both bounds."""
    raw = await read_raw(request, max_bytes)
    return inflate(raw, content_encoding(request), max_decompressed)


def inflate(raw: bytes, encoding: str, max_decompressed: int) -> bytes:
    """Return ``raw`` decoded per ``encoding`` (identity or gzip), within ``max_decompressed``."""
    if encoding == "identity":
        if len(raw) > max_decompressed:
            raise _too_large(len(raw), max_decompressed, "limits.max_decompressed_bytes")
        return raw
    if encoding != "gzip":
        raise InvalidRequest(
            f"unsupported Content-Encoding {encoding!r} (use gzip or none)", status=415
        )
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(raw, max_decompressed + 1)
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


def parse(model: type[M], body: bytes | dict[str, Any], max_fields: int = MAX_ERROR_FIELDS) -> M:
    """Validate a body as ``model``; 400 for malformed JSON, 422 naming each bad field.

    The answer lists at most ``max_fields`` fields and then how many more there were, so
    a small body with many bad entries cannot make a large answer.
    """
    try:
        result: M = parse_document(model, body)
    except InvalidDocument as exc:
        malformed = any(f.get("type") == "json_invalid" for f in exc.errors)
        raise InvalidRequest(
            exc.message, fields=cap_fields(exc.errors, max_fields), status=400 if malformed else 422
        ) from None
    return result


def cap_fields(fields: list[dict[str, Any]], max_fields: int) -> list[dict[str, Any]]:
    """Return the first ``max_fields`` error fields, then one saying how many more there are."""
    if len(fields) <= max_fields:
        return fields
    more = len(fields) - max_fields
    return [*fields[:max_fields], {"field": "(more)", "message": f"{more} more errors not listed"}]


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
