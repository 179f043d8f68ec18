"""Many hub processes on one PostgreSQL database: signals between them, and one leader.

The fleet-wide background parts (the rollout engine, retention, the fleet history
sampler, the audit gap sweep) must run once per fleet, not once per process. On
PostgreSQL every hub process tries for a session advisory lock
(``pg_try_advisory_lock(LEADER_LOCK)``) on a dedicated connection, every
``store.leader_retry_s``; the one that holds it is the leader and runs them. When the
leader dies its connection closes, the server releases the lock, and another process takes
it within ``leader_retry_s`` (plus, when a whole machine vanishes,
the TCP keepalive time set on that connection). A leader that loses its connection stops
its parts at once. Writes those parts make are safe even if two processes ran them for a
moment (rollouts are saved compare-and-set; retention deletes what is past its bound; a
gap the sweep declares is judged under the device row's lock, as a sync is).

A SQLite hub is one process: it runs them itself, as before (``install`` is not called).
``/healthz`` shows ``cluster``: leader or not, since when, terms, and the signal path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from hub.background import BackgroundTask
from hub.context import HUB

if TYPE_CHECKING:  # asyncpg is imported only by hubs on PostgreSQL
    import asyncpg

    from hub.store.pg_notify import PgSignals

log = logging.getLogger("hub.leader")
LEADER_LOCK = 0x65646765_6C656164  # "edgelead": the fleet's leader lock (session advisory)
APPLICATION_NAME = "edgefleet-hub-leader"
KEEPALIVES = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
}


class Part(Protocol):
    """A background part the leader runs: started and stopped as leadership comes and goes."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...


class Engine(Part, Protocol):
    """The rollout engine: woken locally, or through the other processes (``relay``)."""

    relay: Callable[[], None] | None

    def wake_local(self) -> None: ...


class Leadership:
    """Holds (or waits for) the leader lock on its own connection."""

    def __init__(
        self,
        url: str,
        *,
        retry_s: float,
        check_s: float,
        on_gain: Callable[[], Awaitable[None]],
        on_lose: Callable[[], Awaitable[None]],
    ) -> None:
        self.url = url
        self.retry_s = retry_s
        self.check_s = check_s
        self._on_gain = on_gain
        self._on_lose = on_lose
        self.leader = False
        self.since: str | None = None
        self.terms = 0  # times this process became leader
        self.losses = 0  # times it stopped being leader while running
        self.connect_failures = 0
        self.last_error: str | None = None
        self._stopping = False
        self._task = BackgroundTask("hub-leader", self._run)

    async def _run(self) -> None:
        import asyncpg

        delay = 0.1
        while True:
            try:
                conn = await asyncpg.connect(
                    self.url,
                    timeout=10,
                    server_settings={"application_name": APPLICATION_NAME, **KEEPALIVES},
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                self.connect_failures += 1
                self.last_error = f"connect: {exc}"
            else:
                try:
                    await self._campaign(conn)
                    delay = 0.1
                finally:
                    await self._step_down()
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_s)

    async def _campaign(self, conn: asyncpg.Connection) -> None:
        import asyncpg

        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), self.retry_s)
                if lost.is_set():
                    return
            self.leader = True
            self.terms += 1
            self.since = datetime.now(UTC).isoformat()
            log.info("this process (pid %d) leads the fleet's background parts", os.getpid())
            await self._on_gain()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), self.check_s)
                if not lost.is_set():
                    await conn.fetchval("SELECT 1", timeout=self.check_s)
            self.last_error = "connection lost"
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            self.last_error = str(exc) or type(exc).__name__

    async def _step_down(self) -> None:
        if self.leader:
            self.leader = False
            self.since = None
            if not self._stopping:  # a clean stop is not a loss
                self.losses += 1
                log.warning("this process stopped leading: %s", self.last_error)
            await self._on_lose()

    def start(self) -> None:
        """Start campaigning."""
        self._task.start()

    async def stop(self) -> None:
        """Stop (the parts stop, the lock goes with the connection)."""
        self._stopping = True
        await self._task.stop()

    def view(self) -> dict[str, Any]:
        """Return the leadership state for /healthz."""
        return {
            "leader": self.leader,
            "since": self.since,
            "terms": self.terms,
            "losses": self.losses,
            "retry_s": self.retry_s,
            "connect_failures": self.connect_failures,
            "last_error": self.last_error,
        }


class Cluster:
    """What one hub process on PostgreSQL adds: signals, leadership, the leader's parts."""

    def __init__(self, signals: PgSignals, leadership: Leadership | None = None) -> None:
        self.signals = signals
        self.leadership = leadership

    def view(self) -> dict[str, Any]:
        """Return the process's place in the cluster for /healthz."""
        return {
            "pid": os.getpid(),
            "worker": _worker_index(),
            "signals": self.signals.stats(),
            "leadership": self.leadership.view() if self.leadership else None,
        }


CLUSTER = web.AppKey("cluster", Cluster)


def _worker_index() -> int | None:
    raw = os.environ.get("EDGEFLEET_HUB_WORKER")
    return int(raw) if raw and raw.isdigit() else None


def view(app: web.Application) -> dict[str, Any]:
    """Return the cluster view of the app (single process: pid and worker only)."""
    cluster = app.get(CLUSTER)
    if cluster is None:
        return {"pid": os.getpid(), "worker": _worker_index(), "signals": None, "leadership": None}
    return cluster.view()


def install(app: web.Application, url: str, engine: Engine, parts: list[Part]) -> None:
    """Run ``parts`` in the leader only; relay poll and engine wake-ups between processes."""
    from hub.store.pg_notify import ENGINE_ITEM, PgSignals

    hub = app[HUB]
    cfg = hub.config.store
    signals = PgSignals(
        url,
        hub.store,  # type: ignore[arg-type]
        hub.notifier,
        check_s=cfg.listen_check_s,
        reconnect_max_s=cfg.listen_reconnect_max_s,
        degraded_poll_s=cfg.listen_degraded_poll_s,
        max_pending=cfg.signal_max_pending,
    )
    signals.on_engine = engine.wake_local
    engine.relay = lambda: signals.relay(ENGINE_ITEM)

    async def gain() -> None:
        for part in parts:
            part.start()

    async def lose() -> None:
        for part in reversed(parts):
            await part.stop()

    leadership = Leadership(
        url, retry_s=cfg.leader_retry_s, check_s=cfg.listen_check_s, on_gain=gain, on_lose=lose
    )
    app[CLUSTER] = Cluster(signals, leadership)

    async def lifetime(_app: web.Application) -> AsyncIterator[None]:
        await signals.start()
        leadership.start()
        yield
        await leadership.stop()
        await signals.stop()

    app.cleanup_ctx.append(lifetime)
