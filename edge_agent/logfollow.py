"""Container logs followed as streams from the engine: lines arrive as written, no polling.

One stream per managed container (``follow=1&since=<position>&timestamps=1``), opened
when the container is seen running (the agent wakes the follower on every engine event;
every ``rescan_s`` the set is also checked against the reconciler's view, which costs no
engine call) and from the stored position (``LogCollector``'s semantics: the engine time
of the last stored line and how many stored lines share it). The engine ends a followed
stream when the container stops: the follower then asks the engine whether it runs again
(a restart: a new stream from the position) or is stopped (its position is marked
drained). A container that disappears is forgotten, with a gap line if its log was not
read to the end.

The follower wakes once per tick (every ``flush_interval_s``, aligned): a quiet stream's
connection is read only at ticks (``readpace.ReadPacer``), so ten
containers writing a line a second cost one wake-up a second, not ten; a stream that
flows is read without pause. Lines of every stream go into one batch, written in one
store transaction with every position it reaches: at the tick after its first line, or
at once when one
container has ``max_lines_per_read`` lines or ``max_bytes_per_read`` bytes in it
(``log_reads_cut``; its stream waits for the write, so memory stays bounded). A kill -9
loses the batch and its positions together: nothing lost, nothing repeated. Bounds on
line size and lines per minute are the collector's. A stream that fails is retried with a
capped exponential backoff, counted (``log_stream_failures``) and listed in ``status()``;
one stream's failure never stops the others. All streams are children of ``run()``, which
runs under the agent's task supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from edge_agent.errors import AgentError, RuntimeAdapterError
from edge_agent.logs import LogCollector, Read
from edge_agent.logstream import LogLine
from edge_agent.models import CurrentService
from edge_agent.outbox import LogPosition
from edge_agent.readpace import ReadPacer
from edge_agent.tasks import cancel_and_wait

log = logging.getLogger(__name__)


@dataclass
class _Stream:
    """One followed container: its reader task, the batch part it filled, its failures."""

    svc: CurrentService
    read: Read
    task: asyncio.Task[None] | None = None
    drained: bool = False
    failures: int = 0
    last_error: str | None = None
    opened: int = 0
    held: LogLine | None = field(default=None, repr=False)  # the stream ended inside it

    def is_alive(self) -> bool:
        return self.task is not None and not self.task.done()


@dataclass
class LogFollower:
    """Follows every managed container's log; batches the lines into the store."""

    collector: LogCollector
    flush_interval_s: float = 2.0
    rescan_s: float = 5.0
    retry_base_s: float = 1.0
    retry_cap_s: float = 60.0
    drain_timeout_s: float = 10.0
    beat: Callable[[], None] | None = None
    _streams: dict[str, _Stream] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _dirty: asyncio.Event = field(default_factory=asyncio.Event)
    _full: asyncio.Event = field(default_factory=asyncio.Event)
    _flush_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _group: asyncio.TaskGroup | None = None
    _batches: int = 0  # transactions written (a store counter would cost one more)
    _pacer: ReadPacer = field(init=False)

    def __post_init__(self) -> None:
        self._pacer = ReadPacer(self.flush_interval_s)

    def notice(self, action: str, container_id: str) -> None:
        """Re-check the followed containers against the engine if an event may change them."""
        stream = self._streams.get(container_id)
        followed = stream is not None and stream.is_alive()
        if action == "destroy" and stream is None and self.collector.position(container_id) is None:
            return  # never followed: nothing to forget
        if action != "destroy" and followed:
            return  # a start of a container already followed (its stream is open)
        self._wake.set()

    def status(self) -> dict[str, Any]:
        """Return the open streams and the failing ones (for the agent's status)."""
        failing = [
            {"container_id": cid[:12], "service": s.svc.name, "failures": s.failures}
            | {"last_error": s.last_error}
            for cid, s in self._streams.items()
            if s.failures
        ]
        return {
            "streams": sum(s.is_alive() for s in self._streams.values()),
            "failing": failing,
            "pending_lines": sum(s.read.lines for s in self._streams.values()),
            "opens": sum(s.opened for s in self._streams.values()),
            "batches": self._batches,
        }

    async def run(self) -> None:
        """Follow until cancelled; every stream is a child of this task."""
        self.collector.reset()  # a restart after a failure starts from the store
        self._streams.clear()
        self._wake.set()  # the first round asks the engine
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self._flusher(), name="logs-flush")
                await self._manage()
        finally:
            self._group = None
            # Every stream has ended: what they read is written, not read again at start.
            with contextlib.suppress(AgentError):
                await self.flush()

    async def drain(self, container_id: str) -> None:
        """Store a stopped container's last lines before it is removed (an update)."""
        if self._group is None:
            await self.collector.drain(container_id)
            return
        stream = self._streams.get(container_id)
        if stream is None or not stream.is_alive():
            try:
                svc = await self.collector.source.inspect(container_id)
            except AgentError as exc:
                log.warning("log of %s not read before removal: %s", container_id[:12], exc)
                return
            pos = (await self.collector.load()).get(container_id)
            if pos is not None and pos.drained:
                return
            stream = self._attach(svc)
        assert stream.task is not None
        await asyncio.wait({stream.task}, timeout=self.drain_timeout_s)
        await self.flush()

    # ---- the set of streams ----------------------------------------------------------

    async def _manage(self) -> None:
        while True:
            from_engine = self._wake.is_set()
            self._wake.clear()
            try:
                await self._rescan(from_engine)
            except AgentError as exc:  # the engine is away: its next event or tick retries
                log.warning("log streams not checked: %s", exc.message)
            if self.beat is not None:
                self.beat()
            try:
                async with asyncio.timeout(self.rescan_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _rescan(self, from_engine: bool) -> None:
        positions = await self.collector.load()
        if from_engine:
            current = await self.collector.source.list_services()
        else:
            current = await self.collector.current(positions)
        live = {svc.container_id: svc for svc in current}
        dead = [cid for cid in self._streams if cid not in live]
        for cid in dead:
            await cancel_and_wait(self._streams[cid].task)
        if dead or any(cid not in live for cid in positions):
            # What a gone container's stream read is written (and its position, drained or
            # not) before the container is forgotten: no line lost, no false gap.
            await self.flush()
        for cid in dead:
            del self._streams[cid]
        for pos in [pos for cid, pos in positions.items() if cid not in live]:
            await self.collector.gone(pos)
        for cid in self.collector.tracked() - live.keys():
            self.collector.forget(cid)
        for svc in current:
            self._follow(svc, positions.get(svc.container_id))

    def _follow(self, svc: CurrentService, pos: LogPosition | None) -> None:
        stream = self._streams.get(svc.container_id)
        if stream is not None and stream.is_alive():
            stream.svc = svc
            return
        # A stopped container is read to its end once (a crash's last words), not again.
        if not svc.is_running and ((pos and pos.drained) or (stream and stream.drained)):
            return
        self._attach(svc)

    def _attach(self, svc: CurrentService) -> _Stream:
        assert self._group is not None
        stream = self._streams.get(svc.container_id)
        if stream is None:
            stream = _Stream(svc, self.collector.start_of(svc.container_id))
            self._streams[svc.container_id] = stream
        stream.svc, stream.drained = svc, False
        name = f"logs-{svc.container_id[:12]}"
        stream.task = self._group.create_task(self._run_stream(stream), name=name)
        return stream

    # ---- one stream --------------------------------------------------------------------

    async def _run_stream(self, stream: _Stream) -> None:
        """Follow one container until it is stopped and read to its end."""
        while True:
            try:
                await self._follow_once(stream)
                running = await self._is_running(stream)
            except AgentError as exc:
                if isinstance(exc, RuntimeAdapterError) and exc.status == 404:
                    self._wake.set()  # removed: the rescan forgets it
                    return
                await self._failed(stream, exc)
                continue
            if running is None:
                self._wake.set()
                return
            if not running:
                self._end(stream)
                return

    async def _follow_once(self, stream: _Stream) -> None:
        read, cid = stream.read, stream.svc.container_id
        # What the engine re-sends from the position (lines at exactly that time) is skipped.
        read.since, read.skip, stream.held = read.ts_ns, read.at_ts, None
        lines = self.collector.source.log_lines(
            cid,
            since_ns=read.since,
            max_line_bytes=self.collector.max_line_bytes,
            follow=True,
            pace=self._pacer,
        )
        stream.opened += 1
        async with aclosing(lines) as source:
            async for line in source:
                if stream.failures:
                    log.info("log stream of %s readable again", stream.svc.name)
                    stream.failures, stream.last_error = 0, None
                if not line.complete:
                    stream.held = line  # only the end of a stream is unfinished
                    continue
                await self._take(stream, line)

    async def _take(self, stream: _Stream, line: LogLine) -> None:
        read, c, svc = stream.read, self.collector, stream.svc
        if read.lines >= c.max_lines_per_read or read.nbytes >= c.max_bytes_per_read:
            read.count("log_reads_cut")
            await self.flush()  # its stream waits: what is held stays within the bound
        c.take(read, c.budget(svc.container_id), svc, line)
        self._dirty.set()

    async def _is_running(self, stream: _Stream) -> bool | None:
        """Return whether the container runs (again); None if it is gone."""
        try:
            svc = await self.collector.source.inspect(stream.svc.container_id)
        except RuntimeAdapterError as exc:
            if exc.status == 404:
                return None
            raise
        stream.svc = svc
        return svc.is_running

    def _end(self, stream: _Stream) -> None:
        """The container stopped and its log is read to the end: mark it drained."""
        if stream.held is not None:
            c = self.collector
            c.take(stream.read, c.budget(stream.svc.container_id), stream.svc, stream.held)
            stream.held = None
        stream.drained = True
        self._dirty.set()
        self._full.set()  # a drain waits for this write

    async def _failed(self, stream: _Stream, exc: AgentError) -> None:
        stream.failures += 1
        stream.last_error = exc.message[:300]
        stream.read.count("log_stream_failures")
        self._dirty.set()
        if stream.failures == 1:
            log.warning("log stream of %s failing (retrying): %s", stream.svc.name, exc.message)
        delay = min(self.retry_cap_s, self.retry_base_s * 2 ** min(stream.failures - 1, 30))
        await asyncio.sleep(delay)

    # ---- writing batches ------------------------------------------------------------------

    def _next_tick(self) -> float:
        """Return the loop time of the next tick: a multiple of ``flush_interval_s``."""
        now = asyncio.get_running_loop().time()
        return (now // self.flush_interval_s + 1) * self.flush_interval_s

    async def _flusher(self) -> None:
        while True:
            await self._dirty.wait()
            try:
                async with asyncio.timeout_at(self._next_tick()):
                    await self._full.wait()
            except TimeoutError:
                pass
            try:
                await self.flush()
            except AgentError as exc:  # kept in memory (bounded: the streams wait)
                log.warning("log batch not written (retrying): %s", exc.message)
                await asyncio.sleep(self.flush_interval_s)

    async def flush(self) -> None:
        """Write every stream's new lines and positions in one transaction."""
        async with self._flush_lock:
            self._dirty.clear()
            self._full.clear()
            taken = [(s, s.read.take_out()) for s in self._streams.values()]
            rows = [r for s, t in taken for r in self._rolled(s) + t[0]]
            counters: dict[str, int] = {}
            for _, (_, counts, _, _) in taken:
                for name, n in counts.items():
                    counters[name] = counters.get(name, 0) + n
            positions = self._moved()
            if not rows and not counters and not positions:
                return
            try:
                await self.collector.sink.append_logs(rows, positions=positions, counters=counters)
            except BaseException:
                for s, t in taken:
                    s.read.put_back(t)
                self._dirty.set()
                raise
            self._batches += 1
            for pos in positions:
                self.collector.stored(pos)

    def _rolled(self, stream: _Stream) -> list[dict[str, Any]]:
        """Return the "suppressed N lines" row of a minute that ended in a quiet stream."""
        budget = self.collector.budget(stream.svc.container_id)
        return self.collector.roll_window(budget, stream.svc)

    def _moved(self) -> list[LogPosition]:
        out = []
        for cid, s in self._streams.items():
            pos = LogPosition(cid, s.svc.name, s.read.ts_ns, s.read.at_ts, s.drained)
            if self.collector.position(cid) != pos:
                out.append(pos)
        return out
