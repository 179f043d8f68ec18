"""Container log collection into the outbox, bounded per container.

Each running managed container is read from its last position every ``interval_s``.
A line longer than ``max_line_bytes`` is cut; a container writing more than
``max_lines_per_minute`` has the rest of that minute suppressed, counted, and a line
"suppressed N lines" takes their place — the bound is visible, never silent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_agent.errors import AgentError
from edge_agent.models import CurrentService

log = logging.getLogger(__name__)


class LogSource(Protocol):
    """What the collector needs from the runtime."""

    async def list_services(self) -> list[CurrentService]: ...

    def logs(
        self, container_id: str, *, since: float | None, tail: int | None
    ) -> AsyncIterator[tuple[float, str, str]]: ...


class LogSink(Protocol):
    """Where collected lines go (the store's outbox)."""

    async def append_many(self, kind: Any, payloads: Any) -> Any: ...

    async def bump(self, name: str, by: int = 1) -> None: ...


@dataclass
class _Budget:
    window_start: float = 0.0
    used: int = 0
    suppressed: int = 0


@dataclass
class LogCollector:
    """Reads new container log lines and queues them, within per-container bounds."""

    source: LogSource
    sink: LogSink
    max_line_bytes: int = 16 * 1024
    max_lines_per_minute: int = 6000
    interval_s: float = 5.0
    clock: Callable[[], float] = time.time
    # Where the containers come from; default: ask the source (an engine call per tick).
    # The agent passes the reconciler's last view instead, so idle ticks cost no listing.
    services: Callable[[], list[CurrentService]] | None = None
    _since: dict[str, float] = field(default_factory=dict)
    _budgets: dict[str, _Budget] = field(default_factory=dict)

    async def collect_once(self) -> int:
        """Read every running container's new lines; return how many were queued."""
        queued = 0
        current = self.services() if self.services else await self.source.list_services()
        for svc in current:
            if not svc.is_running and svc.container_id not in self._since:
                continue
            queued += await self._collect(svc)
        return queued

    async def _collect(self, svc: CurrentService) -> int:
        cid = svc.container_id
        since = self._since.get(cid)
        budget = self._budgets.setdefault(cid, _Budget(window_start=self.clock()))
        rows: list[dict[str, Any]] = []
        last = since
        tail = None if since else 100
        async for ts, stream, line in self.source.logs(cid, since=since, tail=tail):
            if since is not None and ts <= since:
                continue
            last = ts if last is None else max(last, ts)
            rows.extend(self._admit(budget, svc, ts, stream, line))
        if last is not None:
            self._since[cid] = last
        rows.extend(self._roll_window(budget, svc))
        if rows:
            await self.sink.append_many("log", rows)
        return len(rows)

    def _admit(
        self, budget: _Budget, svc: CurrentService, ts: float, stream: str, line: str
    ) -> list[dict[str, Any]]:
        out = self._roll_window(budget, svc, now=ts)
        if budget.used >= self.max_lines_per_minute:
            budget.suppressed += 1
            return out
        budget.used += 1
        raw = line.encode(errors="replace")
        if len(raw) > self.max_line_bytes:
            line = raw[: self.max_line_bytes].decode(errors="ignore") + " [truncated]"
        # Milliseconds are enough to order lines, and compress far better than nanoseconds.
        out.append({"service": svc.name, "ts": round(ts, 3), "stream": stream, "line": line})
        return out

    def _roll_window(
        self, budget: _Budget, svc: CurrentService, now: float | None = None
    ) -> list[dict[str, Any]]:
        now = self.clock() if now is None else now
        if now - budget.window_start < 60.0:
            return []
        out = []
        if budget.suppressed:
            out.append(
                {
                    "service": svc.name,
                    "ts": now,
                    "stream": "agent",
                    "line": f"suppressed {budget.suppressed} lines (limit "
                    f"{self.max_lines_per_minute}/min)",
                    "suppressed": budget.suppressed,
                }
            )
        budget.window_start, budget.used, budget.suppressed = now, 0, 0
        return out

    def forget(self, container_id: str) -> None:
        """Drop the position of a removed container."""
        self._since.pop(container_id, None)
        self._budgets.pop(container_id, None)

    async def run(self) -> None:
        """Collect every ``interval_s`` until cancelled; log once per failure streak."""
        failing = 0
        while True:
            try:
                await self.collect_once()
                if failing:
                    log.info("log collection recovered after %d failures", failing)
                failing = 0
            except AgentError as exc:
                if not failing:
                    log.warning("log collection failing: %s", exc.message)
                failing += 1
            await asyncio.sleep(self.interval_s)
