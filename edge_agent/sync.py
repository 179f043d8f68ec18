"""Outbound sync with the hub, by position: ship the outbox after the acknowledged seq.

``Syncer.sync_once()`` is the unit of work (tests call it): read a bounded batch from the
outbox, POST it gzip-compressed with a status delta, delete only what the hub
acknowledged, hand a newer target to the target gate; repeat until the outbox is drained
or a round cap is hit. A failed round leaves the outbox as it was, so the next call
starts again from the store — a batch sent twice is harmless (the hub keeps each
(device, seq) once). ``run()`` only schedules ``sync_once`` (on append, debounced; on an
interval; with capped, jittered backoff on failure) and ``run_long_poll()`` holds a
``GET /v1/target`` open so a new target arrives within a second.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import random
import re
import secrets
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp
from pydantic import ValidationError

from edge_agent.errors import AgentError, HubRefused, HubUnreachable, SyncError
from edge_agent.logpolicy import ShipPolicy
from edge_agent.metrics import HUB_ENTRY_KINDS_META
from edge_agent.protocol import (
    AGENT_FEATURES,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    SYNC_LINES_TYPE,
    LogPolicy,
    SignedAction,
    SignedTarget,
    StatusSnapshot,
    SyncResponse,
    compact_entries,
    lines_body,
    unknown_fields,
)
from edge_agent.store import Store
from edge_agent.target_gate import TargetGate
from edge_agent.technicians import save_update

log = logging.getLogger(__name__)
EPOCH_KEY = "store_epoch"
EPOCH_PROTOCOL = 3  # the first protocol with store epochs
# A hub's 422 naming a status field it does not know (``status.F: Extra inputs ...``).
_EXTRA_STATUS_FIELD = re.compile(r"status\.(\w+): Extra inputs are not permitted")
# Additive status fields an older hub may refuse: the agent leaves them out for it.
_OMITTABLE_STATUS_FIELDS = frozenset({"window_opens_at", "release_trust_stale"})
# A hub's 422 naming an entry kind it does not know; the kinds only a hub listing them gets.
_REFUSED_KIND = re.compile(r"entries\.\d+\.kind: Input should be")
_ADDITIVE_KINDS = frozenset({"metrics"})
FEATURES_PARAM = ",".join(sorted(AGENT_FEATURES))

StatusSource = Callable[[], Awaitable[StatusSnapshot]]
ActionSink = Callable[[list[SignedAction]], Awaitable[None]]
# A long-poll answered 204 with this header: actions wait at the hub; sync to take them.
ACTIONS_HEADER = "X-Edgefleet-Actions"
_M = TypeVar("_M", SyncResponse, SignedTarget)


@dataclass(frozen=True)
class SyncLimits:
    """Every bound and timing of the sync client (names follow ``HubConfig``)."""

    # A catch-up batch: fewer, larger requests (the hub's limits.max_entries_per_batch
    # is 5,000 by default; a hub with a lower one answers 413 and the batch is halved).
    batch_max_entries: int = 5000
    batch_max_bytes: int = 2 * 1024 * 1024  # queued payload bytes per request
    max_rounds: int = 50
    sync_interval_s: float = 30.0
    debounce_s: float = 0.5
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 300.0
    request_timeout_s: float = 30.0
    long_poll_s: float = 30.0
    # 5: a third less CPU than 6 for ~5% more bytes (wire 0.19 of raw log lines in the
    # lines format; the goal is < 0.20; benchmarks/README.md, bench_catchup.py).
    gzip_level: int = 5
    window: int = 2  # sync requests in flight at once (answers are applied in seq order)
    # Batches read, encoded and compressed ahead while ``window`` requests are on the
    # wire: each is sent the moment an answer frees a place, not after that answer's ack
    # and the next read (a catch-up kept the hub waiting ~25 ms a 5,000-line batch).
    prepare_ahead: int = 1
    # "lines": send bodies in the lines format to a hub that lists it (the hub then stores
    # each payload as sent instead of serializing it again); "json": always JSON.
    body_format: str = "lines"


@dataclass
class SyncResult:
    """What one ``sync_once`` call did."""

    rounds: int = 0
    sent: int = 0
    acked_seq: int = 0
    deleted: int = 0
    raw_bytes: int = 0
    wire_bytes: int = 0
    drained: bool = False
    targets: list[int] = field(default_factory=list)


# Entry kinds the hub judges in the order they were written (a device audit chain: a
# record stored before an earlier one reads as a gap). Two requests on the wire may be
# stored in either order, so a batch holding one travels alone.
ORDERED_KINDS = frozenset({"audit"})


@dataclass
class _Flight:
    """One sync request on the wire and what it carries."""

    last_seq: int  # 0 when it carries no entries
    entries: int
    head: tuple[int, str]  # (seq, kind) of its first entry
    raw_bytes: int
    status_doc: dict[str, object] | None  # the report it carries, if any
    lines: bool = False  # its body is in the lines format
    # It carries audit records: sent only once every earlier request is answered, and no
    # later one is sent before its answer (ORDERED_KINDS).
    ordered: bool = False
    wire_bytes: int = 0  # set once compressed (by its task)
    task: asyncio.Task[SyncResponse] = field(init=False)


async def _cancel(flights: deque[_Flight]) -> None:
    """Cancel requests still in flight and wait for them to end."""
    for f in flights:
        f.task.cancel()
    await asyncio.gather(*(f.task for f in flights), return_exceptions=True)
    flights.clear()


class HubClient:
    """The agent's HTTP calls to the hub over one mTLS session; errors translated."""

    def __init__(
        self,
        base_url: str,
        ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext],
        *,
        request_timeout_s: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._ssl = ssl_context
        self._timeout_s = request_timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ctx = self._ssl() if callable(self._ssl) else self._ssl
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ctx, limit=4, enable_cleanup_closed=True),
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            )
        return self._session

    async def reload_tls(self) -> None:
        """Drop the session so the next call builds a new TLS context (after renewal)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def close(self) -> None:
        """Close the HTTP session."""
        await self.reload_tls()

    async def sync(self, body_gz: bytes, *, lines: bool = False) -> SyncResponse:
        """POST one gzip-compressed SyncRequest body (JSON or the lines format); return
        the hub's answer."""
        kind = SYNC_LINES_TYPE if lines else "application/json"
        headers = {"Content-Type": kind, "Content-Encoding": "gzip"}
        _, data, _ = await self._call("POST", "/v1/sync", data=body_gz, headers=headers)
        return _parse(SyncResponse, data, "/v1/sync")

    async def wait_target(self, after: int, wait_s: float) -> SignedTarget | None:
        """Long-poll for a target newer than ``after``; None when the hub had none in time."""
        return (await self.wait(after, wait_s))[0]

    async def wait(self, after: int, wait_s: float) -> tuple[SignedTarget | None, bool]:
        """Long-poll as ``wait_target``; also return whether the hub said actions wait."""
        timeout = aiohttp.ClientTimeout(total=wait_s + self._timeout_s)
        # features: a hub holds back a target this agent could not apply (older hubs ignore it)
        params = {"after": str(after), "wait": f"{wait_s:g}", "features": FEATURES_PARAM}
        seen: dict[str, str] = {}
        status, data, retry_after = await self._call(
            "GET", "/v1/target", params=params, timeout=timeout, headers_out=seen
        )
        if status == 204 and retry_after is not None:  # the hub is shutting down
            raise HubUnreachable(
                "GET /v1/target: hub asked to come back later", retry_after_s=retry_after
            )
        if status == 204 or not data:
            return None, ACTIONS_HEADER in seen
        return _parse(SignedTarget, data, "/v1/target"), False

    async def _call(
        self, method: str, path: str, headers_out: dict[str, str] | None = None, **kw: object
    ) -> tuple[int, bytes, float | None]:
        try:
            async with self._session_now().request(method, self.base_url + path, **kw) as resp:  # type: ignore[arg-type]
                data = await resp.read()
                status = resp.status
                retry_after = _retry_after_s(resp.headers.get("Retry-After"))
                if headers_out is not None and ACTIONS_HEADER in resp.headers:
                    headers_out[ACTIONS_HEADER] = resp.headers[ACTIONS_HEADER]
        except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError) as exc:
            raise HubUnreachable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if status >= 500:
            raise HubUnreachable(
                f"{method} {path}: hub answered {status}: {_snippet(data)}",
                retry_after_s=retry_after,
            )
        if status >= 400:
            raise HubRefused(
                f"{method} {path}: hub answered {status}: {_snippet(data)}", status=status
            )
        return status, data, retry_after


def _retry_after_s(raw: str | None) -> float | None:
    """Return a Retry-After header's seconds (the delta form), None if absent or not one."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None  # the HTTP-date form: not sent by our hub; back off as usual
    return value if 0 <= value < 86400 else None


def poll_delay_s(backoff_s: float, exc: AgentError, cap_s: float) -> float:
    """Return the long-poll's delay after a failure: its backoff, or what the hub asked
    for (Retry-After, already jittered by the hub) if longer, within the backoff cap."""
    asked = getattr(exc, "retry_after_s", None) or 0.0
    return min(cap_s, max(backoff_s, asked))


def _snippet(data: bytes) -> str:
    return data[:300].decode(errors="replace")


def _parse(model: type[_M], data: bytes, path: str) -> _M:
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise SyncError(f"{path}: unexpected answer: {exc}", retryable=True) from exc


async def store_epoch(store: Store) -> str:
    """Return the store's generation, made (random) on first use.

    A store that synced before epochs existed (it has an ``acked_seq``) keeps the legacy
    space "" so its queue continues where the hub holds it; a wiped store gets a new one.
    """
    epoch = await store.get_meta(EPOCH_KEY)
    if epoch is None:
        legacy = await store.get_meta("acked_seq") is not None
        epoch = "" if legacy else secrets.token_hex(8)
        await store.set_meta(EPOCH_KEY, epoch)
    return epoch


class Reachability:
    """Log once when the hub starts failing and once when it is back, with the count."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.failures = 0
        self._log = logger

    def failed(self, exc: BaseException) -> None:
        """Count a failed call; log only the first of a run."""
        self.failures += 1
        if self.failures == 1:
            self._log.warning("hub unreachable: %s", exc)

    def succeeded(self) -> None:
        """Note a successful call; log the recovery once."""
        if self.failures:
            self._log.info("hub is back after %d failed attempts", self.failures)
        self.failures = 0


class Syncer:
    """Ships the outbox to the hub and receives targets; see the module docstring."""

    def __init__(
        self,
        store: Store,
        client: HubClient,
        gate: TargetGate,
        *,
        status: StatusSource | None = None,
        limits: SyncLimits | None = None,
        jitter: Callable[[], float] = random.random,
        reachability: Reachability | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.gate = gate
        self.limits = limits or SyncLimits()
        self._status_source = status
        self._jitter = jitter
        self.reach = reachability or Reachability()
        self._status_acked: dict[str, object] | None = None  # None: send a full snapshot
        self._batch_n = self.limits.batch_max_entries
        self.protocol = PROTOCOL_VERSION  # lowered once if the hub is older
        self.epoch = ""  # this store's generation, read at each sync_once
        self._unknown_seen: set[str] = set()
        self._status_omit: set[str] = set()  # status fields an older hub refused as unknown
        self._entry_kinds: str | None = None  # as last stored (HUB_ENTRY_KINDS_META)
        self.lines = False  # the hub listed the lines body format (and it was not refused)
        self._lock = asyncio.Lock()
        self._wire = asyncio.Semaphore(self.limits.window)  # requests on the wire
        self._synced_mono: float | None = None  # time.monotonic() of the last sync done
        self._polling = False  # run_long_poll's last poll succeeded: it syncs when due
        self.last_synced_at: float | None = None  # time.time() of the last sync_once done
        self._wake = asyncio.Event()
        self.on_actions: ActionSink | None = None  # takes the actions of a sync answer

    def notify(self) -> None:
        """Wake the background loop (wire as ``store.on_append``)."""
        self._wake.set()

    async def sync_once(self) -> SyncResult:
        """Ship queued entries until drained or the round cap; raise SyncError on failure."""
        async with self._lock:
            return await self._sync_locked()

    async def _sync_if_due(self, early_s: float) -> SyncResult | None:
        """Sync when the interval's sync is due within ``early_s``; None if it is not."""
        async with self._lock:  # a sync that just finished elsewhere moved the due time
            if self._due_in_s() > early_s:
                return None
            return await self._sync_locked()

    def _due_in_s(self) -> float:
        """Return the seconds until the interval's next sync (<= 0: due)."""
        if self._synced_mono is None:
            return 0.0
        return self._synced_mono + self.limits.sync_interval_s - time.monotonic()

    async def _sync_locked(self) -> SyncResult:
        """Run one sync_once body; the caller holds ``self._lock``."""
        await self.gate.load()
        self.epoch = await store_epoch(self.store)
        result = SyncResult()
        # Each call starts at the configured batch size; a 413 halves it for this call
        # only, so a hub limit costs at most log2(batch) refused requests per call.
        self._batch_n = self.limits.batch_max_entries
        self._wire = asyncio.Semaphore(self.limits.window)
        flights: deque[_Flight] = deque()
        try:
            await self._pump(result, flights)
        finally:
            await _cancel(flights)
        self.last_synced_at = time.time()  # wall clock: a Prometheus timestamp gauge
        self._synced_mono = time.monotonic()
        return result

    async def _pump(self, result: SyncResult, flights: deque[_Flight]) -> None:
        """Keep up to ``window`` requests on the wire and ``prepare_ahead`` more made ready
        to go; settle their answers in seq order."""
        cursor = 0  # highest seq handed to a request during this call
        exhausted = False
        launched_max = self.limits.window + self.limits.prepare_ahead
        while True:
            while (
                not exhausted
                and len(flights) < launched_max
                and result.rounds < self.limits.max_rounds
            ):
                flight = await self._launch(cursor, flights, first=result.rounds == 0)
                if flight is None:
                    exhausted = True
                    break
                result.rounds += 1
                flights.append(flight)
                exhausted = flight.entries == 0  # status only: the outbox is empty
                cursor = max(cursor, flight.last_seq)
            if not flights:
                result.drained = exhausted
                return
            flight = flights.popleft()
            try:
                resp = await flight.task
            except HubRefused as exc:
                if exc.status == 413:
                    await _cancel(flights)
                    await self._too_large(flight)
                elif (
                    self._older_hub(exc)
                    or self._status_field_refused(exc)
                    or await self._kind_refused(exc, flight)
                    or self._lines_refused(exc, flight)
                ):
                    await _cancel(flights)
                else:
                    raise
                cursor, exhausted = 0, False  # re-derive the position from the store
                continue
            await self._settle(flight, resp, result)
            if resp.want_full_status:
                exhausted = False

    async def _launch(self, cursor: int, flights: deque[_Flight], *, first: bool) -> _Flight | None:
        """Read the next batch after ``cursor`` and send it (after ``flights``' answers where
        order matters: ORDERED_KINDS); None if there is nothing to send."""
        alone = not flights
        lim = self.limits
        rows = await self.store.pending_raw(
            max_entries=self._batch_n, max_bytes=lim.batch_max_bytes, after=cursor
        )
        # Status rides only on a request with none other in flight, so reports stay ordered.
        status, doc = await self._status_delta() if alone else (None, {})
        if status is not None:
            # Until its answer arrives the hub may or may not hold this report; a lost
            # answer must not leave a base the hub has moved past: the next one is full.
            self._status_acked = None
        if not rows and status is None and not first:
            return None
        body, lines = self._encode(rows, status)
        last = rows[-1][0] if rows else 0
        self.store.inflight_upto = max(self.store.inflight_upto, last)
        flight = _Flight(
            last_seq=last,
            entries=len(rows),
            head=(rows[0][0], rows[0][1]) if rows else (0, ""),
            raw_bytes=len(body),
            status_doc=doc if status is not None else None,
            lines=lines,
            ordered=any(row[1] in ORDERED_KINDS for row in rows),
        )
        before = [f.task for f in flights if flight.ordered or f.ordered]
        # Compressed by the flight's own task: the pump settles the previous answer (the
        # store's ack) while this batch is compressed on a thread, not after it.
        flight.task = asyncio.create_task(self._compress_and_send(flight, body, before))
        return flight

    async def _compress_and_send(
        self, flight: _Flight, body: bytes, before: list[asyncio.Task[SyncResponse]]
    ) -> SyncResponse:
        level = self.limits.gzip_level
        if len(body) > 64 * 1024:
            body_gz = await asyncio.to_thread(gzip.compress, body, level, mtime=0)
        else:
            body_gz = gzip.compress(body, level, mtime=0)
        flight.wire_bytes = len(body_gz)
        if before:  # answered (or failed: the pump then cancels this one) before it leaves
            await asyncio.wait(before)
        async with self._wire:  # sent once fewer than ``window`` requests are on the wire
            if flight.lines:
                return await self.client.sync(body_gz, lines=True)
            return await self.client.sync(body_gz)

    async def _settle(self, flight: _Flight, resp: SyncResponse, result: SyncResult) -> None:
        """Apply one answer: delete what the hub holds, note the status, hand on a target."""
        await self._note_unknown(resp)
        result.sent += flight.entries
        result.raw_bytes += flight.raw_bytes
        result.wire_bytes += flight.wire_bytes
        if (
            self.protocol < EPOCH_PROTOCOL
            and flight.entries
            and resp.acked_seq > await self.store.highest_assigned_seq()
        ):
            # Only with a hub older than store epochs (protocol 3):
            # the hub holds seqs this store never handed out: the store was wiped and its
            # seqs restarted. Move the queue past the hub's position, then send again.
            moved = await self.store.renumber_after(resp.acked_seq)
            log.warning(
                "hub holds seq %d beyond this store's; renumbered %d queued entries",
                resp.acked_seq,
                moved,
            )
            raise SyncError("outbox renumbered after a store reset", retryable=True)
        if resp.log_policy is not None:  # kept: holds offline and across restarts
            await self._set_log_policy(resp.log_policy)  # (before the ack: a caller that
            # waits for the outbox to drain finds the policy written)
        if flight.entries:
            # Delete only what the hub holds, and never past what this batch carried.
            upto = min(resp.acked_seq, flight.last_seq)
            if upto > result.acked_seq:
                result.deleted += await self.store.ack(upto)
                result.acked_seq = upto
            if upto < flight.last_seq:
                raise SyncError(
                    f"hub acknowledged seq {resp.acked_seq} for a batch up to {flight.last_seq}",
                    retryable=True,
                )
        if resp.want_full_status:
            self._status_acked = None
        elif flight.status_doc is not None:
            self._status_acked = flight.status_doc
        if resp.technicians is not None:  # revocations hold offline and across restarts
            await save_update(self.store, resp.technicians)
        await self._note_entry_kinds(resp)
        self.lines = "lines" in (resp.body_formats or ()) and self.limits.body_format == "lines"
        if resp.actions and self.on_actions is not None:  # recorded before this returns
            await self.on_actions(resp.actions)
        if resp.target is not None:
            revision = await self.gate.deliver(resp.target, source="sync")
            if revision is not None:
                result.targets.append(revision)

    async def _note_entry_kinds(self, resp: SyncResponse) -> None:
        """Keep (in the store) the additive outbox kinds this hub stores; none if it is silent."""
        kinds = ",".join(sorted(set(resp.entry_kinds or ())))
        if kinds != self._entry_kinds:
            if await self.store.get_meta(HUB_ENTRY_KINDS_META, "") != kinds:
                await self.store.set_meta(HUB_ENTRY_KINDS_META, kinds)
            self._entry_kinds = kinds

    async def _set_log_policy(self, wire: LogPolicy) -> None:
        policy = ShipPolicy.of(wire.mode, wire.patterns)
        if await self.store.set_log_policy(policy):
            log.info("log shipping policy now %s %s", policy.mode, list(policy.patterns))

    async def _note_unknown(self, resp: SyncResponse) -> None:
        """Count a hub answer carrying fields this agent does not know; log each set once."""
        fields = unknown_fields(resp)
        if not fields:
            return
        await self.store.bump("wire_unknown_fields")
        key = ",".join(sorted(fields))
        if key not in self._unknown_seen:
            self._unknown_seen.add(key)
            log.warning("the hub's sync answer carries fields this agent ignores: %s", key)

    def _older_hub(self, exc: HubRefused) -> bool:
        """Speak protocol 1 from now on if the hub refused this one as unsupported.

        A protocol-1 hub says so (400), or, validating first, misses the fields protocol 2
        leaves out where implied (422 ``entries.N.seq: Field required``): the first entry
        of a batch always carries them, so a newer hub never answers that.
        """
        if exc.status not in (400, 422) or self.protocol <= MIN_PROTOCOL_VERSION:
            return False
        signs = (
            f"protocol {self.protocol} is not supported",
            ".seq: Field required",
            ".created_at: Field required",
            "epoch: Extra inputs are not permitted",  # a protocol-2 hub validating first
        )
        if not any(sign in exc.message for sign in signs):
            return False
        spoken = re.search(r"hub speaks (\d+)(?: to (\d+))?", exc.message)
        newest = int(spoken.group(2) or spoken.group(1)) if spoken else MIN_PROTOCOL_VERSION
        newest = max(MIN_PROTOCOL_VERSION, min(newest, self.protocol - 1))
        log.info("the hub does not speak sync protocol %d; using %d", self.protocol, newest)
        self.protocol = newest
        return True

    def _lines_refused(self, exc: HubRefused, flight: _Flight) -> bool:
        """Send JSON from now on if a hub refused a lines-format body (one downgraded
        since it listed the format reads it as JSON: 400, or 415)."""
        if not flight.lines or exc.status not in (400, 415):
            return False
        log.warning("the hub refused a sync body in the lines format; sending JSON: %s", exc)
        self.lines = False
        return True

    def _status_field_refused(self, exc: HubRefused) -> bool:
        """Stop reporting status fields a hub older than them refused (422, extra input).

        Additive status fields (``window_opens_at``) are unknown to an older hub, which
        refuses the whole sync naming them; leaving them out keeps the outbox moving.
        """
        if exc.status != 422:
            return False
        named = set(_EXTRA_STATUS_FIELD.findall(exc.message)) & _OMITTABLE_STATUS_FIELDS
        if not named - self._status_omit:
            return False
        log.warning("the hub does not know status field(s) %s; not reporting them", named)
        self._status_omit |= named
        self._status_acked = None  # the next report is a full one, without them
        return True

    async def _kind_refused(self, exc: HubRefused, flight: _Flight) -> bool:
        """Replace the batch's additive entries by markers if the hub refused their kind.

        Only a hub that listed a kind in ``entry_kinds`` gets entries of it; one that was
        downgraded since refuses the whole batch (422 ``entries.N.kind``). Its list is
        forgotten, so no more are queued, and the queued ones become 'dropped' markers.
        """
        if exc.status != 422 or not _REFUSED_KIND.search(exc.message) or not flight.entries:
            return False
        rows = await self.store.pending_raw(
            max_entries=flight.entries, max_bytes=2**62, after=flight.head[0] - 1
        )
        additive = [seq for seq, kind, _, _ in rows if kind in _ADDITIVE_KINDS]
        if not additive:
            return False
        log.warning("the hub refused %d queued metrics entries; dropping them", len(additive))
        await self.store.set_meta(HUB_ENTRY_KINDS_META, "")
        self._entry_kinds = ""
        for seq in additive:
            await self.store.replace_with_marker(seq, "hub_refused_kind")
        return True

    async def _too_large(self, flight: _Flight) -> None:
        if flight.entries > 1:
            self._batch_n = max(1, flight.entries // 2)
            log.info("hub refused a batch of %d entries as too large; halving", flight.entries)
            return
        if not flight.entries:
            raise HubRefused("hub refused a status-only sync as too large", status=413)
        seq, kind = flight.head
        # A single entry over the hub's limit is a bug upstream (bounds on line size);
        # replace it by a marker so the outbox behind it is not stuck forever.
        log.error("outbox entry seq=%d (%s) is over the hub's body limit; dropped", seq, kind)
        await self.store.bump("sync_entry_too_large")
        await self.store.replace_with_marker(seq, "too_large")

    async def _status_delta(self) -> tuple[StatusSnapshot | None, dict[str, object]]:
        """Return what changed since the last acknowledged report (full if asked or new)."""
        if self._status_source is None:
            return None, {}
        snap = await self._status_source()
        doc = snap.model_dump(mode="json", exclude={"full", *self._status_omit})
        if self._status_acked is None:
            return StatusSnapshot.model_validate({**doc, "full": True}), doc
        changed = {k: v for k, v in doc.items() if v != self._status_acked.get(k)}
        if not changed:
            return None, doc
        if any(v is None for v in changed.values()):
            # A delta cannot say "cleared" (None means unchanged): send everything.
            return StatusSnapshot.model_validate({**doc, "full": True}), doc
        return StatusSnapshot.model_validate({**changed, "full": False}), doc

    def _encode(
        self, rows: list[tuple[int, str, str, str]], status: StatusSnapshot | None
    ) -> tuple[bytes, bool]:
        """Build the SyncRequest body and say whether it is in the lines format; payloads
        are spliced in as stored (already JSON)."""
        head: dict[str, object] = {
            "protocol": self.protocol,
            "applied_revision": self.gate.applied_revision,
            "known_target_revision": self.gate.poll_after,
            "status": status.model_dump(mode="json", exclude_none=True) if status else None,
        }
        if self.protocol >= EPOCH_PROTOCOL:
            head["epoch"] = self.epoch
            head["features"] = sorted(AGENT_FEATURES)
        head_json = json.dumps(head, separators=(",", ":"))
        if self.lines and self.protocol >= EPOCH_PROTOCOL:
            body = lines_body(head_json, rows)
            if body is not None:
                return body.encode(), True
        if self.protocol >= 2:
            entries = compact_entries(rows)
        else:
            entries = (
                "["
                + ",".join(
                    f'{{"seq":{seq},"kind":"{kind}","created_at":"{at}","payload":{payload}}}'
                    for seq, kind, at, payload in rows
                )
                + "]"
            )
        return (head_json[:-1] + f',"entries":{entries}}}').encode(), False

    def backoff_s(self, failures: int) -> float:
        """Return the delay after ``failures`` consecutive failures (capped, jittered)."""
        lim = self.limits
        delay = min(lim.backoff_cap_s, lim.backoff_base_s * 2 ** min(failures - 1, 30))
        return delay * (0.5 + 0.5 * self._jitter())

    async def run(self) -> None:
        """Schedule ``sync_once`` forever: on notify (debounced), interval, backoff on failure.

        While ``run_long_poll`` is healthy it runs the interval's sync itself, on the
        connection its poll just freed; this loop then syncs on the interval only if that
        did not happen (a short grace later), so a device holds one connection, not two.
        """
        failures = 0
        woken = True
        while True:
            try:
                result = await (self.sync_once() if woken else self._sync_if_due(0.0))
            except AgentError as exc:  # hub, store or target trouble: retry later
                failures += 1
                self.reach.failed(exc)
                await asyncio.sleep(self.backoff_s(failures))
                woken = True
                continue
            failures = 0
            self.reach.succeeded()
            if result is not None and not result.drained:
                woken = True
                continue
            try:  # off the catch-up's path: acknowledged rows go once the outbox is drained
                await self.store.purge_acked()
            except AgentError as exc:
                log.warning("could not delete acknowledged outbox rows: %s", exc)
            woken = await self._idle()

    async def _idle(self) -> bool:
        """Wait until the interval's sync is due; return True if ``notify`` woke us first."""
        self._wake.clear()
        while True:
            grace_s = self._poll_early_s() + 1.0 if self._polling else 0.0
            remaining = self._due_in_s() + grace_s
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                continue  # re-read the due time: the long-poll loop may have synced
            await asyncio.sleep(self.limits.debounce_s)
            return True

    def _poll_early_s(self) -> float:
        """Return how early the long-poll loop may run the interval's sync.

        A hub shortens the wait it grants (jitter, by up to a quarter by default): the
        poll loop syncs when the rest of the interval is under a quarter of it rather than
        polling again for a few seconds (each poll is a request on the hub).
        """
        return 0.25 * self.limits.sync_interval_s

    def _poll_wait_s(self) -> float:
        """Return the wait to ask for: to the next interval sync, at most ``long_poll_s``."""
        return max(1.0, min(self.limits.long_poll_s, self._due_in_s()))

    async def run_long_poll(self) -> None:
        """Hold ``GET /v1/target`` open and deliver targets as soon as the hub has one.

        The wait asked for ends when the interval's sync is due; that sync then runs here,
        on the same (kept-alive) connection, before the next poll.
        """
        failures = 0
        while True:
            try:
                await self.gate.load()
                # before the first poll too: the first sync and poll share one connection
                await self._sync_if_due(self._poll_early_s())
                signed, actions_wait = await self.client.wait(
                    self.gate.poll_after, self._poll_wait_s()
                )
                if actions_wait:  # the hub holds actions for us: take them now
                    await self.sync_once()
            except AgentError as exc:
                failures += 1
                self._polling = False
                self.reach.failed(exc)
                await asyncio.sleep(
                    poll_delay_s(self.backoff_s(failures), exc, self.limits.backoff_cap_s)
                )
                continue
            failures = 0
            self._polling = True
            self.reach.succeeded()
            if signed is None:
                continue
            try:
                accepted = await self.gate.deliver(signed, source="long-poll")
            except AgentError as exc:
                log.warning("could not take the target from the long-poll: %s", exc)
                accepted = None
            if accepted is None:
                # Refused, seen or not stored: do not spin on a hub that keeps offering it.
                await asyncio.sleep(self.backoff_s(1))
