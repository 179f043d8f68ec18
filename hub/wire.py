"""HTTP plumbing shared by the APIs: bounded (gzip) bodies, JSON in and out, errors as JSON.

The application must run with ``auto_decompress=False`` (``hub.app.make_runner`` does)
so ``read_body`` sees the bytes on the wire and bounds both them and their gunzipped
size: a small gzip bomb must not become a large allocation.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from edge_agent.errors import InvalidDocument
from edge_agent.models import parse_document
from hub.errors import HubError, InvalidRequest, PayloadTooLarge

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
