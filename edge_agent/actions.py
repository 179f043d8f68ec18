"""Queued hub actions on the device: verified, recorded, run at most once, answered.

A sync answer carries signed actions (``edge_agent.actiondoc``). For each one the
``ActionRunner``:

1. verifies the signature with the pinned hub key, the device id and the expiry;
2. records the id durably (table ``actions``, store migration 7) with a ``received``
   receipt in the outbox, in one transaction, BEFORE running it. An id already recorded
   is a replay: refused and audited, never run again;
3. runs it on its own supervised loop (one at a time) with the handler of its kind;
4. writes the outcome, the result (bounded by the action's ``max_result_bytes``) as an
   outbox event of type ``action`` and the audit row in one transaction.

An action recorded but not finished when the agent died is ``interrupted`` at the next
start: reported as failed with that reason, never re-run. A new kind is one handler in
``HANDLERS`` here and one argument check in ``actiondoc.KINDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from edge_agent.actiondoc import ActionDoc, bound_result, check_action, read_action
from edge_agent.actionstore import ActionRow
from edge_agent.errors import ActionRefused, AgentError
from edge_agent.logparts import Batching, Emit, answer
from edge_agent.logread import read_lines
from edge_agent.outbox import AuditRow
from edge_agent.protocol import SignedAction
from edge_agent.store import Store

log = logging.getLogger(__name__)
ACTOR = "hub"
KEEP_EXPIRED_S = 86400  # ids are kept this long past their expiry (replays are refused anyway)
RESULT_MARGIN = 512  # room in max_result_bytes for the event's own fields


class ActionHost(Protocol):
    """What the handlers need of the agent."""

    config: Any
    store: Store
    runtime: Any

    async def restart_service(self, name: str, *, actor: str) -> None:
        """Restart one service, audited."""
        ...

    async def status(self, *, counters: bool = True) -> dict[str, Any]:
        """Return the agent's status."""
        ...


Handler = Callable[[ActionHost, dict[str, Any]], Awaitable[dict[str, Any]]]


async def _restart(host: ActionHost, args: dict[str, Any]) -> dict[str, Any]:
    await host.restart_service(args["service"], actor=ACTOR)
    return {"service": args["service"], "restarted": True}


def _release_hold(kind: str) -> Handler:
    """Return the handler that ends the device's hold of ``kind`` (audited by ``Holds``)."""

    async def release(host: ActionHost, args: dict[str, Any]) -> dict[str, Any]:
        holds = getattr(host, "holds", None)
        if holds is None:
            raise AgentError("technician holds are not running on this agent")
        held = await holds.release(kind, ACTOR)
        return {"released": kind, "was": held.report() if held is not None else None}

    return release


async def _selftest(host: ActionHost, args: dict[str, Any]) -> dict[str, Any]:
    from edge_agent.selftest import run_selftest

    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the selftest prints one line per check
        code = await run_selftest(Path(host.config.data_dir))
    lines = out.getvalue().splitlines()
    if code != 0:
        raise AgentError("selftest failed: " + "; ".join(lines[-5:]))
    return {"exit_code": code, "output": lines}


async def _prune_images(host: ActionHost, args: dict[str, Any]) -> dict[str, Any]:
    from edge_agent.image_gc import GcPolicy, ImageCollector

    g = host.config.image_gc
    policy = GcPolicy(g.keep_good, 0.0, g.max_removals_per_run)  # unused now is enough
    plan = await ImageCollector(host.runtime, host.store, policy).collect_once()
    removed = [r for r in plan.remove if r not in plan.in_use]
    return {"removed": removed, "kept": sorted(plan.kept), "deferred": len(plan.deferred)}


async def _service_logs(host: ActionHost, lines: int, service: str | None) -> dict[str, list[str]]:
    """Return the last ``lines`` log lines of each service (or of one), oldest first."""
    out: dict[str, list[str]] = {}
    for c in sorted(await host.runtime.list_services(), key=lambda c: c.name):
        if service is not None and c.name != service:
            continue
        got = out.setdefault(c.name, [])
        if lines:
            async for line in host.runtime.log_lines(c.container_id, tail=lines):
                got.append(f"{line.ts:.3f} {line.stream} {line.text}")
    return out


async def _collect_logs(host: ActionHost, args: dict[str, Any]) -> dict[str, Any]:
    service = args.get("service")
    logs = await _service_logs(host, args["lines"], service)
    if service is not None and service not in logs:
        raise AgentError(f"no managed container for service {service!r}")
    return {"logs": logs}


def _memory() -> dict[str, int]:
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("MemTotal", "MemAvailable", "SwapTotal", "SwapFree"):
                found[name] = int(value.split()[0]) * 1024
    return found


def _disk(paths: dict[str, str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for name, path in paths.items():
        with contextlib.suppress(OSError):
            usage = shutil.disk_usage(path)
            found[name] = {"path": path, "total": usage.total, "free": usage.free}
    return found


async def _diagnostics(host: ActionHost, args: dict[str, Any]) -> dict[str, Any]:
    try:
        engine: dict[str, Any] = await host.runtime.ping()
    except AgentError as exc:
        engine = {"error": exc.message}
    return {
        "status": await host.status(counters=True),
        "engine": engine,
        "disk": _disk({"data": str(host.config.data_dir), "docker": host.config.docker.root}),
        "memory": _memory(),
        "logs": await _service_logs(host, args["lines"], None),
    }


async def _logs(
    host: ActionHost, args: dict[str, Any], emit: Emit, max_bytes: int, stop: asyncio.Event
) -> dict[str, Any]:
    """Answer a ``logs`` action in parts (``logparts``), read by ``logread.read_lines``."""
    c = host.config.actions
    batching = Batching(c.logs_batch_lines, c.logs_batch_bytes, c.logs_flush_s)
    lines = read_lines(host.runtime, host.store, args)
    follow_s = float(args.get("follow", 0))
    try:
        return await answer(
            lines, emit, batching, max_bytes=max_bytes, follow_s=follow_s, stop=stop
        )
    finally:
        await lines.aclose()


# Kinds answered in parts as they go, which a ``cancel`` action stops:
# (host, args, emit a part, the byte bound, set when cancelled) -> result
StreamHandler = Callable[
    [ActionHost, dict[str, Any], Emit, int, asyncio.Event], Awaitable[dict[str, Any]]
]
STREAMING: dict[str, StreamHandler] = {"logs": _logs}

HANDLERS: dict[str, Handler] = {
    "restart": _restart,
    "selftest": _selftest,
    "prune_images": _prune_images,
    "diagnostics": _diagnostics,
    "collect_logs": _collect_logs,
    "resume": _release_hold("pause"),  # the hub ends a technician's pause
    "unpin": _release_hold("pin"),  # ... or pin; the action and the release both audited
}


class ActionRunner:
    """Receives signed actions from sync, records each once, runs them one at a time."""

    def __init__(
        self,
        host: ActionHost,
        public_key: Any,
        device_id: str,
        *,
        clock: Callable[[], float] = time.time,
        handlers: dict[str, Handler] | None = None,
    ) -> None:
        self.host = host
        self.store = host.store
        self.public_key = public_key
        self.device_id = device_id
        self.clock = clock
        self.handlers = handlers or HANDLERS
        self._queue: asyncio.Queue[tuple[ActionDoc, dict[str, Any]]] = asyncio.Queue()
        self._recovered = False
        self._lock = asyncio.Lock()
        # queued or running actions, each with what a cancel action sets; the running
        # streaming one (only those stop midway: a restart or a prune runs to its end)
        self._stops: dict[str, asyncio.Event] = {}
        self._running: tuple[str, bool] | None = None  # (id, stops when cancelled)
        self._receiving = asyncio.Lock()

    async def recover(self) -> int:
        """Report actions a previous run recorded but did not finish as interrupted (once)."""
        async with self._lock:
            if self._recovered:
                return 0
            rows = await self.store.unfinished_actions()
            for action_id, kind in rows:
                log.warning(
                    "action %s (%s) was interrupted by a restart; not run again", action_id, kind
                )
                await self._finish(
                    action_id, kind, "failed", reason="interrupted", state="interrupted"
                )
            self._recovered = True
            return len(rows)

    async def receive(self, signed: list[SignedAction]) -> None:
        """Take the actions of a sync answer: verify, record, queue (see module docstring)."""
        await self.recover()
        async with self._receiving:  # the runner starts nothing until the batch is in:
            for one in signed:  # a cancel in it finds the action it cancels not begun
                await self._receive_one(one)

    async def _receive_one(self, signed: SignedAction) -> None:
        try:
            doc = read_action(signed, self.public_key)
        except ActionRefused as exc:
            await self._refused(None, exc)
            return
        try:
            seen = await self.store.action_seen(doc.id)
            args = check_action(doc, device_id=self.device_id, now=self.clock(), seen=seen)
        except ActionRefused as exc:
            await self._refused(doc, exc)
            return
        await self._record(doc)
        if doc.kind == "cancel":
            await self._cancel(doc, args)
            return
        self._stops[doc.id] = asyncio.Event()
        self._queue.put_nowait((doc, args))

    async def _record(self, doc: ActionDoc) -> None:
        """Record the id and the receipt durably: from here on it is never run again."""
        floor = int(self.clock()) - KEEP_EXPIRED_S
        receipt = {"type": "action", "id": doc.id, "kind": doc.kind, "state": "received"}
        audit = AuditRow(ACTOR, f"action.{doc.kind}", f"action:{doc.id}", "received", doc.args)
        await self.store.record_action_received(_row(doc), floor, receipt, audit)

    async def _refused(self, doc: ActionDoc | None, exc: ActionRefused) -> None:
        """Audit a refusal; answer the hub for an action of ours seen for the first time."""
        log.warning("refused a hub action: %s", exc.message)
        target = f"action:{doc.id}" if doc else "action:?"
        audit = AuditRow(
            ACTOR,
            "action.refused",
            target,
            "refused",
            {"reason": exc.reason, "message": exc.message},
        )
        answer = doc is not None and exc.reason not in ("replay", "wrong_device")
        if answer and doc is not None:
            event = {"type": "action", "id": doc.id, "kind": doc.kind, "state": "refused"}
            await self.store.record_action_refused(
                _row(doc), {**event, "reason": exc.reason}, audit
            )
        else:
            await self.store.record_action_refused(None, None, audit)
        await self.store.bump(f"actions_refused_{exc.reason}")

    async def run(self) -> None:
        """Run the recorded actions one at a time, forever (a supervised loop)."""
        await self.recover()
        while True:
            doc, args = await self._queue.get()
            async with self._receiving:
                pass  # the rest of its sync answer is received (see receive)
            try:
                await self._run_one(doc, args)
            finally:
                self._stops.pop(doc.id, None)

    async def _call(self, doc: ActionDoc, args: dict[str, Any]) -> dict[str, Any]:
        stop = self._stops.setdefault(doc.id, asyncio.Event())
        if stop.is_set():
            raise AgentError("cancelled")  # by a cancel action before it ran
        stream = STREAMING.get(doc.kind)
        self._running = (doc.id, stream is not None)
        try:
            if stream is not None:
                emit = self._emitter(doc)
                return await stream(self.host, args, emit, doc.max_result_bytes, stop)
            return await self.handlers[doc.kind](self.host, args)
        finally:
            self._running = None

    async def _cancel(self, doc: ActionDoc, args: dict[str, Any]) -> None:
        """Run a ``cancel`` action at once (not behind the action it cancels)."""
        target = args["action"]
        running, stoppable = self._running or (None, False)
        if target == running:
            was = "running" if stoppable else "running_to_its_end"
        else:
            was = "queued" if target in self._stops else "not_here"  # finished or unknown
        cancelled = was in ("running", "queued")
        if cancelled:
            self._stops[target].set()
        result = {"action": target, "was": was, "cancelled": cancelled}
        await self._finish(doc.id, doc.kind, "succeeded", result=result)

    def _emitter(self, doc: ActionDoc) -> Emit:
        """Return what writes one result part of ``doc`` durably to the outbox."""

        async def emit(part: int, lines: list[str]) -> None:
            event = {"type": "action", "id": doc.id, "kind": doc.kind, "state": "part"}
            await self.store.queue_action_event({**event, "part": part, "lines": lines})

        return emit

    async def _run_one(self, doc: ActionDoc, args: dict[str, Any]) -> None:
        try:
            result = await self._call(doc, args)
        except AgentError as exc:
            await self._finish(doc.id, doc.kind, "failed", reason=exc.message)
            return
        except Exception as exc:  # a defect in a handler: reported, the loop goes on
            log.exception("action %s (%s) failed", doc.id, doc.kind)
            await self._finish(doc.id, doc.kind, "failed", reason=f"internal error: {exc!r}")
            return
        bounded = bound_result(result, max(1024, doc.max_result_bytes - RESULT_MARGIN))
        if bounded is not result:
            await self.store.bump("action_results_truncated")
        await self._finish(doc.id, doc.kind, "succeeded", result=bounded)

    async def _finish(
        self,
        action_id: str,
        kind: str,
        outcome: str,
        *,
        reason: str | None = None,
        result: dict[str, Any] | None = None,
        state: str | None = None,
    ) -> None:
        event: dict[str, Any] = {"type": "action", "id": action_id, "kind": kind, "state": outcome}
        if reason is not None:
            event["reason"] = reason[:1000]
        if result is not None:
            event["result"] = result
        detail = {"reason": reason[:1000]} if reason else {}
        audit = AuditRow(ACTOR, f"action.{kind}", f"action:{action_id}", state or outcome, detail)
        await self.store.finish_action(action_id, state or outcome, event, audit)


def _row(doc: ActionDoc) -> ActionRow:
    return ActionRow(doc.id, doc.kind, doc.expires_at)
