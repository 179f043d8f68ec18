"""``GET /v1/logs`` on the local API: the container lines kept in the agent's store.

    GET /v1/logs?service=&tail=&since=&grep=&limit=&format=ndjson|text&follow=true

Read from the store (``read_logs``), never from the engine, so it answers the same with
the engine down and shows where lines were dropped (markers carry ``dropped``). Without
``tail`` and ``since`` the last 100 lines; ``tail`` at most ``api.logs_max_tail``; with
``since`` (and no ``tail``) the lines from then on, at most ``limit`` (at most
``api.logs_max_lines``). A bad parameter is refused 422 naming it, before anything is
sent. The answer is chunked: NDJSON (one row object per line) or text ("SERVICE TS
STREAM LINE"). ``follow=true`` then keeps sending the lines stored after the answer,
read every ``api.logs_follow_poll_s``, until the client goes away (or, at the latest, after
``api.logs_follow_max_s``: the answer then ends and the client asks again); at most
``api.logs_max_followers`` follow at once per agent (both listeners together): over it
503 with ``Retry-After``, counted as ``api_log_followers_refused``. A technician's read is
audited like their other reads (``hold_api.ReadAudit``), before the first line is sent.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from edge_agent.config import ApiConfig
from edge_agent.errors import InvalidDocument
from edge_agent.hold_api import AUDITED_KEY, READS_KEY
from edge_agent.models import NAME_RE
from edge_agent.openapi import Query, described, enum

if TYPE_CHECKING:
    from edge_agent.agent import Agent

DEFAULT_TAIL = 100
PAGE = 1000  # rows per store read of a ``since`` answer or a follow
MAX_GREP_CHARS = 256
FORMATS = {"ndjson": "application/x-ndjson", "text": "text/plain"}
_DURATION = re.compile(r"^([0-9]{1,9})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_followers: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class LogQuery:
    """A checked ``GET /v1/logs`` query."""

    service: str | None
    tail: int | None
    since: float | None
    grep: str | None
    limit: int
    text: bool
    follow: bool


def _bad(field: str, message: str) -> InvalidDocument:
    return InvalidDocument(f"{field}: {message}", [{"field": field, "message": message}])


def _int(raw: str | None, field: str, low: int, high: int) -> int | None:
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 12 and low <= int(raw) <= high):
        raise _bad(field, f"must be an integer from {low} to {high}")
    return int(raw)


def parse_since(raw: str | None, now: float) -> float | None:
    """Return ``since`` as unix seconds: unix seconds, ISO 8601 with a zone, or 90s/15m/2h/7d."""
    if raw is None:
        return None
    message = "unix seconds, an ISO 8601 time with a zone, or an age like 90s, 15m, 2h, 7d"
    if len(raw) > 64:
        raise _bad("since", message)
    age = _DURATION.match(raw)
    if age:
        return now - int(age.group(1)) * _UNIT_S[age.group(2)]
    try:
        value = float(raw)
    except ValueError:
        value = None
    if value is not None and 0 <= value < 1e11:
        return value
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise _bad("since", message) from exc
    if parsed.tzinfo is None:
        raise _bad("since", message)
    return parsed.timestamp()


def _grep(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not 0 < len(raw) <= MAX_GREP_CHARS:
        raise _bad("grep", f"a regular expression of 1 to {MAX_GREP_CHARS} characters")
    try:
        re.compile(raw)
    except re.error as exc:
        raise _bad("grep", f"not a regular expression ({exc})") from exc
    return raw


def _choice(raw: str | None, field: str, values: tuple[str, ...], default: str) -> str:
    if raw is None:
        return default
    if raw not in values:
        raise _bad(field, f"one of {', '.join(values)}")
    return raw


def parse_query(query: Any, config: ApiConfig, now: float) -> LogQuery:
    """Return the checked query; InvalidDocument (422) naming the first bad field."""
    service = query.get("service")
    if service is not None and not NAME_RE.match(service):
        raise _bad("service", f"must match {NAME_RE.pattern}")
    tail = _int(query.get("tail"), "tail", 0, config.logs_max_tail)
    since = parse_since(query.get("since"), now)
    grep = _grep(query.get("grep"))
    limit = _int(query.get("limit"), "limit", 1, config.logs_max_lines)
    fmt = _choice(query.get("format"), "format", tuple(FORMATS), "ndjson")
    follow = _choice(query.get("follow"), "follow", ("true", "false", "1", "0"), "false")
    if tail is None and since is None:
        tail = min(DEFAULT_TAIL, config.logs_max_tail)
    return LogQuery(
        service,
        tail,
        since,
        grep,
        limit or config.logs_max_lines,
        fmt == "text",
        follow in ("true", "1"),
    )


def render(rows: list[dict[str, Any]], text: bool) -> bytes:
    """Return rows as the answer carries them (NDJSON objects, or text lines)."""
    if text:
        out = (f"{r['service']} {r['ts']:.6f} {r['stream']} {r['line']}\n" for r in rows)
    else:
        out = (json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
    return "".join(out).encode()


async def history(store: Any, q: LogQuery) -> tuple[list[dict[str, Any]], int]:
    """Return the lines the query asks for now, and the cursor new lines come after."""
    if q.tail == 0:  # no lines: only where a follow starts
        return [], (await store.read_logs(q.service, tail=1)).next_after
    if q.tail is not None:
        batch = await store.read_logs(q.service, q.since, grep=q.grep, tail=q.tail, limit=q.tail)
        return batch.lines, batch.next_after
    rows: list[dict[str, Any]] = []
    after = 0
    while len(rows) < q.limit:
        want = min(PAGE, q.limit - len(rows))
        batch = await store.read_logs(q.service, q.since, grep=q.grep, limit=want, after=after)
        rows += batch.lines
        after = batch.next_after
        if not batch.more:
            break
    return rows, after


def _gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


async def follow(
    request: web.Request, resp: web.StreamResponse, store: Any, q: LogQuery, cursor: int
) -> None:
    """Send the lines stored after ``cursor`` as they come, until the client goes away
    (or ``api.logs_follow_max_s`` has passed)."""
    config = request.app[CONFIG_KEY]
    poll_s = config.logs_follow_poll_s
    loop = asyncio.get_running_loop()
    ends = loop.time() + config.logs_follow_max_s
    while not _gone(request) and loop.time() < ends:
        batch = await store.read_logs(q.service, q.since, grep=q.grep, limit=PAGE, after=cursor)
        cursor = batch.next_after
        if batch.lines:
            await resp.write(render(batch.lines, q.text))
        if not batch.more:
            await asyncio.sleep(poll_s)


CONFIG_KEY = web.AppKey("log_api_config", ApiConfig)


def _agent(request: web.Request) -> Agent:
    from edge_agent.api import AGENT_KEY

    return request.app[AGENT_KEY]


def _busy(config: ApiConfig) -> web.Response:
    message = f"api.logs_max_followers ({config.logs_max_followers}) are following already"
    body = {"error": "busy", "message": message, "fields": [{"field": "follow", "message": "busy"}]}
    headers = {"Retry-After": str(config.logs_follow_retry_after_s)}
    return web.json_response(body, status=503, headers=headers)


async def _audit_now(request: web.Request) -> None:
    """Audit a technician's read before it is answered (the middleware would after it)."""
    from edge_agent.api import ACTOR

    actor = request[ACTOR]
    if actor.startswith("technician:") and READS_KEY in request.app:
        await request.app[READS_KEY].record(actor, "/v1/logs")
        request[AUDITED_KEY] = True


QUERY = (
    Query("service", {"type": "string", "pattern": NAME_RE.pattern}, "one service's lines"),
    Query("tail", {"type": "integer", "minimum": 0}, "the last N lines (default 100)"),
    Query("since", {"type": "string"}, "unix seconds, ISO 8601 with a zone, or 90s/15m/2h/7d"),
    Query("grep", {"type": "string", "maxLength": MAX_GREP_CHARS}, "a regular expression"),
    Query("limit", {"type": "integer", "minimum": 1}, "lines of a since answer"),
    Query("format", enum(FORMATS), "ndjson (default) or text"),
    Query("follow", enum(("true", "false", "1", "0")), "keep sending new lines"),
)


@described(query=QUERY, errors=(422, 503), media="application/x-ndjson, text/plain", tags=("logs",))
async def logs(request: web.Request) -> web.StreamResponse:
    """Return the container log lines kept on the device (and follow new ones)."""
    config = request.app[CONFIG_KEY]
    agent = _agent(request)
    q = parse_query(request.query, config, time.time())
    owner = agent  # the bound is per agent: the unix socket and the LAN listener together
    if q.follow:
        if _followers.get(owner, 0) >= config.logs_max_followers:
            await agent.store.bump("api_log_followers_refused")
            return _busy(config)
        _followers[owner] = _followers.get(owner, 0) + 1  # taken before any await
    try:
        return await _answer(request, agent.store, q)
    finally:
        if q.follow:
            _followers[owner] -= 1


async def _answer(request: web.Request, store: Any, q: LogQuery) -> web.StreamResponse:
    """Send the lines asked for (chunked), then, for a follow, the new ones."""
    rows, cursor = await history(store, q)
    await _audit_now(request)  # before any line leaves (a stream's end comes much later)
    resp = web.StreamResponse()
    resp.content_type = "text/plain" if q.text else FORMATS["ndjson"]
    resp.charset = "utf-8"
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    if rows:
        await resp.write(render(rows, q.text))
    try:
        if q.follow:
            await follow(request, resp, store, q, cursor)
        await resp.write_eof()
    except ConnectionError:
        pass  # the client went away while a write was under way
    return resp


def install(app: web.Application, config: ApiConfig) -> None:
    """Add ``GET /v1/logs`` to a local API application."""
    app[CONFIG_KEY] = config
    app.router.add_get("/v1/logs", logs)
