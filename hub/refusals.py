"""Audit of unauthenticated refusals, aggregated: counted exactly, written sparingly.

An unauthenticated client decides how often it is refused, so a durable audit row per
refusal lets it drive the hub's disk (~700 fsynced rows/s from one client). Refusals are
grouped by (source, action, outcome, reason) per window: the first of a group in a
window is written at once (``count`` 1), the rest are counted in memory and written as
one row with their ``count`` when the window ends, when more than ``max_groups`` groups
are open, and at shutdown. Nothing is dropped: the counts of a group's rows add up to
the refusals it had. Rows carry ``count`` and ``peer`` in ``detail``; a flushed group's
row also ``first_at`` and ``last_at``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hub.background import BackgroundTask
from hub.store import AuditRecord, HubStore

log = logging.getLogger(__name__)
GroupKey = tuple[str, str, str, str, str]  # peer, action, outcome, reason, route
MAX_TARGET = 200  # characters of a refused request's target kept in its audit row


@dataclass
class _Group:
    actor: str
    target: str
    pending: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def add(self, record: AuditRecord) -> None:
        if self.pending == 0:
            self.first_at, self.detail = record.at, dict(record.detail)
        self.pending += 1
        self.last_at = record.at
        if self.target != record.target[:MAX_TARGET]:
            self.target = "*"  # several objects were refused in this window


class RefusalAudit:
    """Aggregate refusal audit rows per source and window; see the module docstring."""

    def __init__(self, store: HubStore, window_s: float, max_groups: int) -> None:
        self._store, self.window_s, self.max_groups = store, window_s, max_groups
        self._groups: dict[GroupKey, _Group] = {}
        self._task = BackgroundTask("refusal-audit-flush", self._flush_loop)
        self.refusals = 0  # every refusal recorded, written or pending
        self.by_action: dict[tuple[str, str], int] = {}  # (action, outcome): both bounded
        self.rows_written = 0

    async def record(self, peer: str, record: AuditRecord) -> None:
        """Count one refusal; write it at once if it opens its group's window."""
        self.refusals += 1
        counted = (record.action, record.outcome)
        self.by_action[counted] = self.by_action.get(counted, 0) + 1
        # The route (from the route table: bounded) is part of the key: a refusal on
        # POST .../disable is not folded into one on GET /api/v1/devices.
        route = str(record.detail.get("route", ""))
        key = (peer, record.action, record.outcome, str(record.detail.get("reason", "")), route)
        group = self._groups.get(key)
        if group is not None:
            group.add(record)
            return
        self._groups[key] = _Group(record.actor, record.target[:MAX_TARGET])
        detail = {**record.detail, "peer": peer, "count": 1}
        target = record.target[:MAX_TARGET]
        await self._write(record.actor, record.action, target, record, detail, peer)
        if len(self._groups) > self.max_groups:
            await self.flush()

    async def flush(self) -> None:
        """Write every pending group as one counted row and start a new window."""
        groups, self._groups = self._groups, {}
        pending = [(k, g) for k, g in groups.items() if g.pending]
        for i, ((peer, action, outcome, _, _), group) in enumerate(pending):
            assert group.first_at is not None and group.last_at is not None
            detail = {
                **group.detail,
                "peer": peer,
                "count": group.pending,
                "first_at": group.first_at.isoformat(),
                "last_at": group.last_at.isoformat(),
            }
            record = AuditRecord(group.actor, action, group.target, outcome, group.last_at)
            try:
                await self._write(group.actor, action, group.target, record, detail, peer)
            except BaseException:
                self._restore(pending[i:])  # never dropped: the next flush writes them
                raise

    def _restore(self, unwritten: list[tuple[GroupKey, _Group]]) -> None:
        for key, group in unwritten:
            current = self._groups.get(key)
            if current is None:
                self._groups[key] = group
                continue
            current.pending += group.pending
            current.first_at = group.first_at
            current.detail = group.detail

    async def _write(
        self,
        actor: str,
        action: str,
        target: str,
        record: AuditRecord,
        detail: dict[str, Any],
        peer: str,
    ) -> None:
        row = AuditRecord(
            actor, action, target, record.outcome, record.at, detail, source_addr=peer
        )
        await self._store.record_audit(row)
        self.rows_written += 1

    def start(self) -> None:
        """Flush at the end of every window from now on."""
        self._task.start()

    async def stop(self) -> None:
        """Stop the timer and write what is pending (call before the store closes)."""
        await self._task.stop()
        await self.flush()

    async def _flush_loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.window_s)
            try:
                await self.flush()
            except Exception:
                if not failing:  # log once; the counts wait in memory for the next window
                    log.exception("writing aggregated refusal audit rows failed")
                failing = True
            else:
                if failing:
                    log.info("aggregated refusal audit rows written again")
                failing = False

    def stats(self) -> dict[str, int]:
        """Return the counters and how many refusals wait to be written."""
        return {
            "refusals": self.refusals,
            "audit_rows": self.rows_written,
            "pending": sum(g.pending for g in self._groups.values()),
        }
