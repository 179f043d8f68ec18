"""Cross-process signals of a hub on PostgreSQL: LISTEN/NOTIFY, no other broker.

Whatever wakes a held long-poll (``TargetNotifier.notify``: a target set, an action
queued, a device disabled) is sent, right after its write committed, as a NOTIFY on
channel ``edgefleet_signal`` through a pooled connection; every hub process LISTENs on one
dedicated connection and wakes its own polls. Sends are coalesced: ids notified while a
send is under way go together in the next one (one ``pg_notify`` per 7,000 bytes of ids).

A payload is the sender's token, then one item per line: a device id, or ``!engine``
(wake the rollout engine, which runs in the leader process only: ``hub.leader``). A
process skips its own payloads (it woke its polls before sending).

The listening connection is checked every ``listen_check_s``; when it is lost the process
reconnects with backoff (doubling up to ``listen_reconnect_max_s``, jittered) and counts
it. While it is down, held polls re-read the database every ``listen_degraded_poll_s``
(``TargetNotifier.recheck_s``): a change notified meanwhile is seen late, never missed.
Every reconnection wakes the held polls once, so they re-read what they may have missed.
Sends that fail are retried with the next batch; at most ``max_pending`` ids wait (more
are counted as ``dropped``: their polls still see the change at their deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
from collections.abc import Callable
from typing import Any

import asyncpg

from hub.background import BackgroundTask
from hub.errors import StoreError
from hub.notify import TargetNotifier

log = logging.getLogger("hub.signals")
CHANNEL = "edgefleet_signal"
ENGINE_ITEM = "!engine"
PAYLOAD_MAX = 7000  # bytes of one NOTIFY payload (PostgreSQL's limit is 8000)
APPLICATION_NAME = "edgefleet-hub-listen"  # then "-PID"


def pack(sender: str, items: list[str], limit: int = PAYLOAD_MAX) -> list[str]:
    """Return payloads ``sender\\nitem\\nitem...``, each at most ``limit`` bytes."""
    payloads: list[str] = []
    chunk: list[str] = [sender]
    size = len(sender)
    for item in items:
        if size + 1 + len(item) > limit and len(chunk) > 1:
            payloads.append("\n".join(chunk))
            chunk, size = [sender], len(sender)
        chunk.append(item)
        size += 1 + len(item)
    if len(chunk) > 1:
        payloads.append("\n".join(chunk))
    return payloads


def unpack(payload: str) -> tuple[str, list[str]]:
    """Return the sender and the items of a payload."""
    sender, _, rest = payload.partition("\n")
    return sender, [item for item in rest.split("\n") if item]


class PgNotifyMixin:
    """PostgresStore: send NOTIFY payloads on a pooled connection (outside any write)."""

    async def send_notifications(self, channel: str, payloads: list[str]) -> None:
        """Send each payload as one NOTIFY on ``channel`` (one statement)."""
        # one statement, autocommitted: not a write (writer statistics do not count it)
        await self._read(  # type: ignore[attr-defined]
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", channel, payloads
        )


class PgSignals:
    """One process's LISTEN connection and its coalesced NOTIFY sender."""

    def __init__(
        self,
        url: str,
        store: PgNotifyMixin,
        notifier: TargetNotifier,
        *,
        check_s: float = 10.0,
        reconnect_max_s: float = 5.0,
        degraded_poll_s: float = 5.0,
        max_pending: int = 100_000,
    ) -> None:
        self.url = url
        self.store = store
        self.notifier = notifier
        self.check_s = check_s
        self.reconnect_max_s = reconnect_max_s
        self.degraded_poll_s = degraded_poll_s
        self.max_pending = max_pending
        self.sender = secrets.token_hex(6)
        self.on_engine: Callable[[], None] | None = None  # set by the leader's engine
        self.connected = asyncio.Event()
        self._pending: dict[str, None] = {}  # ordered set of items to send
        self._send_wanted = asyncio.Event()
        self._listen = BackgroundTask("hub-signals-listen", self._listen_loop)
        self._send = BackgroundTask("hub-signals-send", self._send_loop)
        self.connects = 0
        self.reconnects = 0
        self.connect_failures = 0
        self.sent = 0  # NOTIFY payloads sent
        self.received = 0  # payloads from other processes
        self.send_failures = 0
        self.dropped = 0  # items not sent: max_pending were waiting
        self.last_error: str | None = None
        self._stopping = False
        notifier.recheck_s = degraded_poll_s  # until the first connection
        notifier.relay = self.relay

    # sending ---------------------------------------------------------------------------

    def relay(self, item: str) -> None:
        """Queue ``item`` (a device id or ``!engine``) for every other hub process."""
        if item not in self._pending:
            if len(self._pending) >= self.max_pending:
                self.dropped += 1
                return
            self._pending[item] = None
        self._send_wanted.set()

    async def _send_loop(self) -> None:
        delay = 0.05
        while True:
            await self._send_wanted.wait()
            self._send_wanted.clear()
            items = list(self._pending)
            self._pending.clear()
            try:
                await self.store.send_notifications(CHANNEL, pack(self.sender, items))
            except StoreError as exc:
                self.send_failures += 1
                self.last_error = str(exc)
                log.warning("cannot send %d signal(s): %s; retrying", len(items), exc)
                for item in items:
                    self.relay(item)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max_s)
                continue
            self.sent += 1
            delay = 0.05

    # listening -------------------------------------------------------------------------

    def _on_payload(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        sender, items = unpack(payload)
        if sender == self.sender:
            return
        self.received += 1
        for item in items:
            if item == ENGINE_ITEM:
                if self.on_engine is not None:
                    self.on_engine()
            else:
                self.notifier.wake(item)

    async def _listen_loop(self) -> None:
        delay = 0.1
        while True:
            try:
                conn = await asyncpg.connect(
                    self.url,
                    timeout=10,
                    server_settings={"application_name": f"{APPLICATION_NAME}-{os.getpid()}"},
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                self.connect_failures += 1
                self.last_error = f"connect: {exc}"
                log.warning("signal listener cannot connect: %s", exc)
            else:
                await self._hold(conn)
                delay = 0.1
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, self.reconnect_max_s)

    async def _hold(self, conn: asyncpg.Connection) -> None:
        """Listen on ``conn`` until it fails; polls meanwhile rely on the signals."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            await conn.add_listener(CHANNEL, self._on_payload)
            if self.connects:
                self.reconnects += 1
                log.info("signal listener reconnected (%d reconnects)", self.reconnects)
            self.connects += 1
            self.notifier.recheck_s = 0.0
            self.notifier.wake_all()  # re-read what a gap may have hidden
            self.connected.set()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), self.check_s)
                if not lost.is_set():
                    await conn.fetchval("SELECT 1", timeout=self.check_s)
            self.last_error = "connection lost"
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            self.last_error = str(exc) or type(exc).__name__
        finally:
            self.connected.clear()
            self.notifier.recheck_s = self.degraded_poll_s
            self.notifier.wake_all()  # the held polls now re-check on their own
            if not self._stopping:
                log.warning("signal listener lost its connection: %s", self.last_error)
            conn.terminate()

    # lifetime --------------------------------------------------------------------------

    async def start(self, wait_s: float = 10.0) -> None:
        """Start listening and sending; wait up to ``wait_s`` for the first connection."""
        self._listen.start()
        self._send.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), wait_s)
        if not self.connected.is_set():
            log.warning(
                "signal listener not connected yet; held polls re-check every %ss",
                self.degraded_poll_s,
            )

    async def stop(self) -> None:
        """Stop both tasks (the connection closes with the listener)."""
        self._stopping = True
        self.notifier.relay = None
        await self._send.stop()
        await self._listen.stop()

    def stats(self) -> dict[str, Any]:
        """Return the signal path's state and counters (on /healthz)."""
        return {
            "connected": self.connected.is_set(),
            "connects": self.connects,
            "reconnects": self.reconnects,
            "connect_failures": self.connect_failures,
            "sent": self.sent,
            "received": self.received,
            "send_failures": self.send_failures,
            "pending": len(self._pending),
            "max_pending": self.max_pending,
            "dropped": self.dropped,
            "degraded_poll_s": self.degraded_poll_s,
            "last_error": self.last_error,
        }
