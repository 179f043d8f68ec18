"""Container log collection into the store, by persisted position, bounded per container.

Every collected line is kept in the store's local log table (``logstore.py``) and those
the hub's shipping policy lets through are queued in the outbox (``logpolicy.py``), in
the one ``append_logs`` transaction that also moves the read position.

The agent follows each container's log as a stream (``logfollow.py``), with this
collector's positions, bounds and per-line rules; ``collect_once`` reads every container
to its current end (what tests call, and the drain when no follower runs).

Each managed container is read from its stored position: the engine
time of the last stored line and how many stored lines share that exact time. New lines
and the position they reach are written in one store transaction, so a kill -9 at any
moment neither loses nor repeats a line; after a restart reading resumes there (``since=``
that time, skipping the lines already stored), also for what was written while the agent
was down. A container never read before starts at the store's log epoch.

Bounds, each counted: a read stops after ``max_lines_per_read`` lines or
``max_bytes_per_read`` bytes (``log_reads_cut``; the rest is read next, nothing is lost);
a line longer than ``max_line_bytes`` is cut (``log_lines_truncated``); a container
writing more than ``max_lines_per_minute`` has the rest of that minute suppressed and a
line "suppressed N lines" takes their place (``log_lines_suppressed``). A container that
disappears is forgotten (memory and store); if it was removed before its log was read
to the end, a gap line (``"gap": {...}``, counter ``log_gaps``) says so. One container
whose log cannot be read never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from edge_agent.errors import AgentError
from edge_agent.logstream import LogLine
from edge_agent.models import CurrentService
from edge_agent.outbox import LogPosition
from edge_agent.readpace import ReadPacer

log = logging.getLogger(__name__)
_NS = 1_000_000_000


class LogSource(Protocol):
    """What the collector needs from the runtime."""

    async def list_services(self) -> list[CurrentService]: ...

    async def inspect(self, cid: str) -> CurrentService: ...

    def log_lines(
        self,
        container_id: str,
        *,
        since_ns: int | None,
        max_line_bytes: int,
        follow: bool = False,
        pace: ReadPacer | None = None,
    ) -> AsyncIterator[LogLine]: ...


class LogSink(Protocol):
    """Where collected lines and read positions go (the store)."""

    async def log_positions(self) -> dict[str, LogPosition]: ...

    async def log_epoch_ns(self) -> int: ...

    async def append_logs(
        self,
        payloads: list[dict[str, Any]],
        *,
        position: LogPosition | None = None,
        forget: str | None = None,
        counters: dict[str, int] | None = None,
        positions: Sequence[LogPosition] = (),
    ) -> None: ...


@dataclass
class _Budget:
    window_start: float = 0.0
    used: int = 0
    suppressed: int = 0


@dataclass
class Read:
    """One read (or stream) of one container: where it started, what it reached and
    counted; the rows taken and not yet written."""

    since: int
    skip: int  # lines at exactly ``since`` stored before
    ts_ns: int
    at_ts: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    lines: int = 0
    nbytes: int = 0
    cut: bool = False
    ended: bool = True  # read to the end of what the engine had
    counters: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, by: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by

    def take_out(self) -> tuple[list[dict[str, Any]], dict[str, int], int, int]:
        """Return and clear the rows, counters, lines and bytes taken so far."""
        out = (self.rows, self.counters, self.lines, self.nbytes)
        self.rows, self.counters, self.lines, self.nbytes = [], {}, 0, 0
        return out

    def put_back(self, taken: tuple[list[dict[str, Any]], dict[str, int], int, int]) -> None:
        """Undo ``take_out`` (the write failed): the rows go back in front, in order."""
        rows, counters, lines, nbytes = taken
        self.rows[:0] = rows
        for name, n in counters.items():
            self.count(name, n)
        self.lines += lines
        self.nbytes += nbytes


@dataclass
class LogCollector:
    """Reads new container log lines and queues them, within per-container bounds."""

    source: LogSource
    sink: LogSink
    max_line_bytes: int = 16 * 1024
    max_lines_per_minute: int = 6000
    max_lines_per_read: int = 2000
    max_bytes_per_read: int = 2 * 2**20
    clock: Callable[[], float] = time.time
    # Where the containers come from; default: ask the source (an engine call per tick).
    # The agent passes the reconciler's last view instead, so idle ticks cost no listing;
    # whether a known container is gone is always asked of the engine.
    services: Callable[[], list[CurrentService]] | None = None
    _positions: dict[str, LogPosition] | None = None
    _epoch_ns: int = 0
    _budgets: dict[str, _Budget] = field(default_factory=dict)
    _failing: dict[str, int] = field(default_factory=dict)
    # collect_once and drain never read one container at the same time (no line twice)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def tracked(self) -> set[str]:
        """Return the container ids the collector holds state for."""
        return set(self._positions or {}) | set(self._budgets) | set(self._failing)

    async def collect_once(self) -> int:
        """Read every container's new lines; return how many log entries were queued."""
        async with self._lock:
            return await self._collect_all()

    async def drain(self, container_id: str) -> None:
        """Read a stopped container's last lines before it is removed (an update).

        Afterwards its position is marked drained, so its removal is no gap. A container
        still running, or one whose log cannot be read to the end within the per-read
        bounds, stays undrained: its removal is then recorded as a gap, as it should be.
        """
        async with self._lock:
            await self.load()
            try:
                svc = await self.source.inspect(container_id)
            except AgentError as exc:
                log.warning("log of %s not read before removal: %s", container_id[:12], exc.message)
                return
            queued = await self._collect_safely(svc)
            pos = (self._positions or {}).get(container_id)
            log.debug(
                "log of %s (%s) read before removal: %d lines, drained=%s",
                container_id[:12],
                svc.name,
                queued,
                pos.drained if pos else None,
            )

    async def _collect_all(self) -> int:
        positions = await self.load()
        current = await self.current(positions)
        live = {svc.container_id for svc in current}
        queued = 0
        for cid in [c for c in positions if c not in live]:
            queued += await self.gone(positions[cid])
        for cid in self.tracked() - live:  # gone before its first read: nothing to record
            self.forget(cid)
        for svc in current:
            queued += await self._collect_safely(svc)
        return queued

    async def load(self) -> dict[str, LogPosition]:
        if self._positions is None:
            self._epoch_ns = await self.sink.log_epoch_ns()
            self._positions = await self.sink.log_positions()
        return self._positions

    async def current(self, positions: dict[str, LogPosition]) -> list[CurrentService]:
        if self.services is None:
            return await self.source.list_services()
        view = self.services()
        seen = {svc.container_id for svc in view}
        if any(cid not in seen for cid in positions):
            return await self.source.list_services()  # the engine says what is gone
        return view

    async def gone(self, pos: LogPosition) -> int:
        rows = [] if pos.drained else [self._gap_row(pos)]
        await self.sink.append_logs(rows, forget=pos.container_id, counters={"log_gaps": len(rows)})
        self.forget(pos.container_id)
        if rows:
            log.warning(
                "log of container %s (%s) lost after %s: container removed",
                pos.container_id[:12],
                pos.service,
                _iso(pos.ts_ns),
            )
        return len(rows)

    def _gap_row(self, pos: LogPosition) -> dict[str, Any]:
        return {
            "service": pos.service,
            "ts": round(self.clock(), 3),
            "stream": "agent",
            "line": f"log gap: container {pos.container_id[:12]} was removed before its "
            f"log after {_iso(pos.ts_ns)} was read; how many lines were lost is unknown",
            "gap": {
                "container_id": pos.container_id,
                "after_ts": round(pos.ts_ns / _NS, 9),
                "lines": None,
                "reason": "container removed",
            },
        }

    async def _collect_safely(self, svc: CurrentService) -> int:
        cid = svc.container_id
        try:
            queued = await self._collect(svc)
        except AgentError as exc:
            failures = self._failing[cid] = self._failing.get(cid, 0) + 1
            if failures == 1:
                log.warning("log of %s (%s) unreadable: %s", svc.name, cid[:12], exc.message)
            return 0
        if self._failing.pop(cid, 0):
            log.info("log of %s (%s) readable again", svc.name, cid[:12])
        return queued

    async def _collect(self, svc: CurrentService) -> int:
        cid = svc.container_id
        pos = (self._positions or {}).get(cid)
        if pos is not None and pos.drained and not svc.is_running:
            return 0
        read = await self._read(svc, pos)
        drained = not svc.is_running and read.ended
        new = LogPosition(cid, svc.name, read.ts_ns, read.at_ts, drained)
        if read.rows or read.counters or new != pos:
            await self.sink.append_logs(read.rows, position=new, counters=read.counters)
        assert self._positions is not None
        self._positions[cid] = new
        return len(read.rows)

    async def _read(self, svc: CurrentService, pos: LogPosition | None) -> Read:
        since = pos.ts_ns if pos is not None else self._epoch_ns
        at_ts = pos.at_ts if pos is not None else 0
        read = Read(since, at_ts, since, at_ts)
        budget = self._budgets.setdefault(svc.container_id, _Budget(window_start=self.clock()))
        lines = self.source.log_lines(
            svc.container_id, since_ns=since, max_line_bytes=self.max_line_bytes
        )
        async with aclosing(lines) as stream:
            async for line in stream:
                if not self.take(read, budget, svc, line):
                    break
        read.rows.extend(self.roll_window(budget, svc))
        return read

    def take(self, read: Read, budget: _Budget, svc: CurrentService, line: LogLine) -> bool:
        """Add one line to the read; False to stop reading (bound reached, line unfinished)."""
        at_since = line.ts_ns == read.since
        if line.ts_ns is not None and (line.ts_ns < read.since or (at_since and read.skip > 0)):
            read.skip -= at_since
            return True  # stored before
        if not line.complete and svc.is_running:
            read.ended = False  # the engine has only part of it yet: read it whole next time
            return False
        if read.lines >= self.max_lines_per_read or read.nbytes >= self.max_bytes_per_read:
            read.cut, read.ended = True, False
            read.count("log_reads_cut")
            return False
        # The position only moves forward: a line of the other stream stamped a moment
        # earlier but written later is stored, and the engine's since= leaves it behind.
        if line.ts_ns is not None and line.ts_ns > read.ts_ns:
            read.ts_ns, read.at_ts = line.ts_ns, 1
        elif line.ts_ns == read.ts_ns:
            read.at_ts += 1
        read.lines += 1
        read.nbytes += len(line.text.encode())
        read.rows.extend(self._admit(budget, svc, line, read))
        return True

    def _admit(
        self, budget: _Budget, svc: CurrentService, line: LogLine, read: Read
    ) -> list[dict[str, Any]]:
        out = self.roll_window(budget, svc, now=line.ts)
        if budget.used >= self.max_lines_per_minute:
            budget.suppressed += 1
            read.count("log_lines_suppressed")
            return out
        budget.used += 1
        # Milliseconds are enough to order lines, and compress far better than nanoseconds.
        row = {"service": svc.name, "ts": round(line.ts, 3), "stream": line.stream}
        if line.truncated_bytes:
            read.count("log_lines_truncated")
            row |= {"line": line.text + " [truncated]", "truncated_bytes": line.truncated_bytes}
        else:
            row["line"] = line.text
        out.append(row)
        return out

    def roll_window(
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

    def budget(self, container_id: str) -> _Budget:
        """Return the container's lines-per-minute budget."""
        return self._budgets.setdefault(container_id, _Budget(window_start=self.clock()))

    def start_of(self, container_id: str) -> Read:
        """Return an empty read from the container's stored position (or the log epoch)."""
        pos = (self._positions or {}).get(container_id)
        since = pos.ts_ns if pos is not None else self._epoch_ns
        at_ts = pos.at_ts if pos is not None else 0
        return Read(since, at_ts, since, at_ts)

    def position(self, container_id: str) -> LogPosition | None:
        """Return the container's stored position, if any."""
        return (self._positions or {}).get(container_id)

    def stored(self, position: LogPosition) -> None:
        """Record that ``position`` is in the store."""
        if self._positions is not None:
            self._positions[position.container_id] = position

    def reset(self) -> None:
        """Forget everything held in memory; the next read starts from the store."""
        self._positions = None
        self._budgets.clear()
        self._failing.clear()

    def forget(self, container_id: str) -> None:
        """Drop every piece of state held for a container."""
        if self._positions is not None:
            self._positions.pop(container_id, None)
        self._budgets.pop(container_id, None)
        self._failing.pop(container_id, None)


def _iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / _NS, UTC).isoformat()
