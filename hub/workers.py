"""``edge-hub serve --workers N``: N hub processes on one port, started and watched here.

The parent makes the data directory's keys first (CA, server certificate, release
signing key, admin token, secret key: ``edge-hub init`` does the same), so every worker
loads the same ones; it reserves the port (port 0: the kernel picks one), then starts N
``edge-hub serve`` workers that each listen on it with SO_REUSEPORT: the kernel spreads
new connections over them. Workers share state only through the PostgreSQL database (a
SQLite hub is one process: more than one worker is refused).

The parent prints ``listening on https://HOST:PORT`` once every worker listens. A worker
that exits on its own is started again after a backoff (doubling from
``RESTART_MIN_S`` to ``RESTART_MAX_S``; reset once a worker ran ``RESTART_RESET_S``),
counted in ``restarts`` and logged. SIGTERM/SIGINT to the parent sends SIGTERM to every
worker (each drains: held polls answered, requests finished) and waits for them; a worker
still running after ``server.shutdown_timeout_s`` + ``STOP_GRACE_S`` is killed. Workers
die with the parent (PR_SET_PDEATHSIG), so a killed parent leaves none behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field

from hub.config import HubConfig
from hub.errors import ConfigError

log = logging.getLogger("hub.workers")
WORKER_ENV = "EDGEFLEET_HUB_WORKER"  # the worker's index, set by the parent
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
RESTART_RESET_S = 60.0
STOP_GRACE_S = 5.0
READY_TIMEOUT_S = 60.0
PR_SET_PDEATHSIG = 1


def check_workers(config: HubConfig, workers: int) -> None:
    """Refuse a worker count the store cannot serve (SQLite: one process)."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
    if workers > 1 and config.postgres_url is None:
        raise ConfigError(
            f"--workers {workers} needs a PostgreSQL store ([store] url = "
            '"postgresql://..."): a SQLite hub is one process (docs/scaling.md)'
        )


def prepare_keys(config: HubConfig) -> None:
    """Create every key of the data directory once, before the workers load them."""
    from hub.auth import ensure_admin_token
    from hub.pki import HubPKI
    from hub.secrets import SecretBox

    HubPKI.ensure(
        config.data_dir,
        config.server.public_names,
        ca_days=config.pki.ca_days,
        server_days=config.pki.server_cert_days,
    )
    ensure_admin_token(config.data_dir)
    SecretBox.ensure(config.data_dir)


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) a SO_REUSEPORT socket on ``host:port``; the port stays ours."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this worker when its parent dies (Linux)."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Worker:
    """One worker process and its restart history."""

    index: int
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = RESTART_MIN_S
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    """Starts N workers, restarts the ones that die, stops them all on SIGTERM."""

    def __init__(self, argv: list[str], count: int, port: int, stop_timeout_s: float) -> None:
        self.argv = argv  # ``serve`` arguments without --workers
        self.workers = [Worker(i) for i in range(count)]
        self.port = port
        self.stop_timeout_s = stop_timeout_s
        self.stopping = asyncio.Event()

    async def _spawn(self, worker: Worker) -> None:
        env = {**os.environ, WORKER_ENV: str(worker.index), "EDGE_HUB_SERVER_PORT": str(self.port)}
        worker.ready.clear()
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hub.cli",
            "serve",
            *self.argv,
            "--worker-index",
            str(worker.index),
            env=env,
            stdout=asyncio.subprocess.PIPE,
        )
        worker.started_at = asyncio.get_running_loop().time()
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)

    async def _read(self, worker: Worker) -> None:
        """Forward the worker's stdout lines to the log; note when it listens."""
        assert worker.process is not None and worker.process.stdout is not None
        async for raw in worker.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line.startswith("listening on https://"):
                worker.ready.set()
            else:
                log.info("worker %d: %s", worker.index, line)

    async def _watch(self, worker: Worker) -> None:
        """Keep ``worker`` running until the supervisor stops."""
        loop = asyncio.get_running_loop()
        while True:
            await self._spawn(worker)
            assert worker.process is not None
            await self._read(worker)
            status = await worker.process.wait()
            if self.stopping.is_set():
                return
            lived = loop.time() - worker.started_at
            if lived >= RESTART_RESET_S:
                worker.backoff_s = RESTART_MIN_S
            worker.restarts += 1
            log.error(
                "worker %d (pid %d) exited with %s after %.1fs; restart %d in %.1fs",
                worker.index,
                worker.process.pid,
                status,
                lived,
                worker.restarts,
                worker.backoff_s,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), worker.backoff_s)
            if self.stopping.is_set():
                return
            worker.backoff_s = min(worker.backoff_s * 2, RESTART_MAX_S)

    async def run(self, host: str) -> int:
        """Run until SIGTERM/SIGINT; return the exit status (0: every worker stopped cleanly)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        watchers = [asyncio.create_task(self._watch(w)) for w in self.workers]
        ready = asyncio.ensure_future(asyncio.gather(*(w.ready.wait() for w in self.workers)))
        stopped = asyncio.create_task(self.stopping.wait())
        await asyncio.wait([ready, stopped], timeout=READY_TIMEOUT_S, return_when="FIRST_COMPLETED")
        ready.cancel()
        stopped.cancel()
        if not all(w.ready.is_set() for w in self.workers) and not self.stopping.is_set():
            log.error("not every worker listened within %ss; stopping", READY_TIMEOUT_S)
            self.stopping.set()
            await self._stop_all(watchers)
            return 1
        if not self.stopping.is_set():
            pids = " ".join(str(w.process.pid) for w in self.workers if w.process)
            print(f"listening on https://{host}:{self.port}", flush=True)
            print(f"workers {len(self.workers)} pids {pids}", flush=True)
            await self.stopping.wait()
        return await self._stop_all(watchers)

    async def _stop_all(self, watchers: list[asyncio.Task[None]]) -> int:
        log.info("stopping %d worker(s)", len(self.workers))
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(signal.SIGTERM)
        status = 0
        for worker in self.workers:
            if worker.process is None:
                continue
            try:
                code = await asyncio.wait_for(
                    worker.process.wait(), self.stop_timeout_s + STOP_GRACE_S
                )
            except TimeoutError:
                log.error("worker %d did not stop; killing it", worker.index)
                worker.process.kill()
                code = await worker.process.wait()
            status = status or (0 if code == 0 else 1)
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        return status


def run(config: HubConfig, argv: list[str], count: int) -> int:
    """Run ``count`` workers of ``edge-hub serve ARGV``; return the exit status."""
    check_workers(config, count)
    prepare_keys(config)
    reserved = reserve_port(config.server.host, config.server.port)
    port = reserved.getsockname()[1]
    host = config.server.host if ":" not in config.server.host else f"[{config.server.host}]"
    try:
        supervisor = Supervisor(argv, count, port, config.server.shutdown_timeout_s)
        return asyncio.run(supervisor.run(host))
    finally:
        reserved.close()


def strip_workers(argv: list[str]) -> list[str]:
    """Return ``serve`` arguments without ``--workers N`` / ``--workers=N``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out
