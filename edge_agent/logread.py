"""Reading a device's container logs for an on-demand request (the ``logs`` action).

``read_lines`` is the one place that reads: today from the engine (each managed
container's log), later from the agent's store (``store.read_logs``) by changing this
function alone. Lines come out as ``"SERVICE TS STREAM TEXT"``, oldest first per service;
with ``follow`` the services' new lines are merged as they are written, and the caller
ends the stream (closes the iterator, or cancels the task reading it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from edge_agent.errors import AgentError
from edge_agent.logstream import LogLine

log = logging.getLogger(__name__)
_NS = 1_000_000_000
_DONE = object()


def format_line(service: str, line: LogLine) -> str:
    """Return one line as a request's answer carries it."""
    return f"{service} {line.ts:.6f} {line.stream} {line.text}"


def _wanted(line: LogLine, until: float | None, pattern: re.Pattern[str] | None) -> bool:
    if until is not None and line.ts > until:
        return False
    return pattern is None or pattern.search(line.text) is not None


def _since_ns(args: dict[str, Any]) -> int | None:
    since = args.get("since")
    return int(since * _NS) if since is not None else None


async def _containers(runtime: Any, service: str | None) -> list[tuple[str, str]]:
    found = [(c.name, c.container_id) for c in await runtime.list_services()]
    if service is not None:
        found = [f for f in found if f[0] == service]
        if not found:
            raise AgentError(f"no managed container for service {service!r}")
    return found


async def read_lines(runtime: Any, store: Any, args: dict[str, Any]) -> AsyncGenerator[str, None]:
    """Yield the lines ``args`` ask for (a checked ``logs`` action's arguments).

    Without ``follow``: each service's lines (``since``/``until``/``grep`` applied, then
    the last ``tail``), services in name order. With ``follow``: the same up to now, then
    the new lines of all the services merged as they come, until the caller stops."""
    del store  # the switch to the store's read_logs happens here
    found = await _containers(runtime, args.get("service"))
    start = time.time()  # history up to here, followed lines from here: no gap, no twice
    until = args.get("until")
    history = {**args, "until": min(until, start) if until is not None else start}
    for name, cid in found:
        async for text in _history(runtime, name, cid, history):
            yield text
    if args.get("follow"):
        async for text in _merged(runtime, found, {**args, "since": start}):
            yield text


async def _history(runtime: Any, name: str, cid: str, args: dict[str, Any]) -> AsyncIterator[str]:
    """Yield one service's matching lines; with ``tail``, only the last that many."""
    pattern = re.compile(args["grep"]) if args.get("grep") else None
    want: int | None = args.get("tail")
    # The engine's tail counts all lines: it is used only when nothing is filtered out
    # but the lines after ``until`` (which is at most now, so few).
    engine_tail = want if pattern is None and want is not None else None
    kept: deque[str] = deque(maxlen=want)
    lines = runtime.log_lines(cid, since_ns=_since_ns(args), tail=engine_tail)
    async for line in lines:
        if not _wanted(line, args.get("until"), pattern):
            continue
        if want is None:
            yield format_line(name, line)  # no tail: stream, nothing held
        else:
            kept.append(format_line(name, line))
    for text in kept:
        yield text


async def _live(runtime: Any, name: str, cid: str, args: dict[str, Any]) -> AsyncIterator[str]:
    pattern = re.compile(args["grep"]) if args.get("grep") else None
    lines = runtime.log_lines(cid, since_ns=_since_ns(args), follow=True)
    async for line in lines:
        if _wanted(line, args.get("until"), pattern):
            yield format_line(name, line)


async def _merged(
    runtime: Any, found: list[tuple[str, str]], args: dict[str, Any]
) -> AsyncIterator[str]:
    """Yield the services' new lines as they come (each service's in its order)."""
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1000)

    async def pump(name: str, cid: str) -> None:
        try:
            async for text in _live(runtime, name, cid, args):
                await queue.put(text)
        except AgentError as exc:  # this service's stream ends; the others go on
            log.warning("following the log of %s ended: %s", name, exc.message)
        await queue.put(_DONE)  # not when cancelled: then nobody reads the queue

    tasks = [asyncio.create_task(pump(n, c)) for n, c in found]
    try:
        open_streams = len(tasks)
        while open_streams:
            item = await queue.get()
            if item is _DONE:
                open_streams -= 1
                continue
            yield str(item)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
