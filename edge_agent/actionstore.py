"""The hub actions part of the agent store: which actions were seen, how each ended.

Mixed into ``Store`` (one file, one writer connection). Each method changes the
``actions`` table and queues the matching event and audit row in ONE transaction, so an
action recorded as received always has its receipt queued for the hub and its audit row
in the chain, and a restart never runs it again (``edge_agent.actions``).
"""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiosqlite

from edge_agent.outbox import AuditRow, utc_now


@dataclass(frozen=True)
class ActionRow:
    """An action as the store keeps it (its id is never accepted twice)."""

    id: str
    kind: str
    expires_at: int


class ActionStoreMixin:
    """Seen actions of ``Store``: recorded with their events and audit rows."""

    if TYPE_CHECKING:  # provided by Store and OutboxMixin

        @property
        def db(self) -> aiosqlite.Connection: ...

        def transaction(
            self, *, durable: bool = True
        ) -> AbstractAsyncContextManager[aiosqlite.Connection]: ...

        async def _append_audit(self, db: aiosqlite.Connection, row: AuditRow) -> int: ...

        async def _insert(
            self,
            db: aiosqlite.Connection,
            kind: str,
            rows: list[tuple[str, ...]],
            *,
            seqs: bool = True,
        ) -> int: ...

        def _notify(self) -> None: ...

    async def action_seen(self, action_id: str) -> bool:
        """Return whether an action with this id was ever recorded."""
        async with self.db.execute("SELECT 1 FROM actions WHERE id = ?", (action_id,)) as cur:
            return await cur.fetchone() is not None

    async def unfinished_actions(self) -> list[tuple[str, str]]:
        """Return ``(id, kind)`` of actions recorded as running (a restart interrupted them)."""
        async with self.db.execute("SELECT id, kind FROM actions WHERE state = 'running'") as cur:
            return [(row[0], row[1]) for row in await cur.fetchall()]

    async def record_action_received(
        self, action: ActionRow, forget_before: float, event: dict[str, Any], audit: AuditRow
    ) -> None:
        """Record an action as running (durably: never run again) with its receipt.

        Actions expired before ``forget_before`` are forgotten in the same transaction.
        """
        async with self.transaction() as db:
            await db.execute("DELETE FROM actions WHERE expires_at < ?", (forget_before,))
            await db.execute(
                "INSERT INTO actions (id, kind, state, received_at, expires_at) "
                "VALUES (?, ?, 'running', ?, ?)",
                (action.id, action.kind, utc_now(), action.expires_at),
            )
            await self._queue_action_rows(db, event, audit)
        self._notify()

    async def record_action_refused(
        self, action: ActionRow | None, event: dict[str, Any] | None, audit: AuditRow
    ) -> None:
        """Audit a refused action; record it as refused (answered) when ``action`` is given."""
        async with self.transaction() as db:
            if action is not None:
                await db.execute(
                    "INSERT INTO actions (id, kind, state, received_at, expires_at, finished_at) "
                    "VALUES (?, ?, 'refused', ?, ?, ?)",
                    (action.id, action.kind, utc_now(), action.expires_at, utc_now()),
                )
            await self._queue_action_rows(db, event, audit)
        self._notify()

    async def finish_action(
        self, action_id: str, state: str, event: dict[str, Any], audit: AuditRow
    ) -> None:
        """Record how an action ended, with its result event and audit row."""
        async with self.transaction() as db:
            await db.execute(
                "UPDATE actions SET state = ?, finished_at = ? WHERE id = ?",
                (state, utc_now(), action_id),
            )
            await self._queue_action_rows(db, event, audit)
        self._notify()

    async def queue_action_event(self, event: dict[str, Any]) -> None:
        """Queue one event of a running action (a part of a streamed result) durably."""
        async with self.transaction() as db:
            await self._insert(db, "event", [("event", utc_now(), _compact(event))])
        self._notify()

    async def _queue_action_rows(
        self, db: aiosqlite.Connection, event: dict[str, Any] | None, audit: AuditRow
    ) -> None:
        await self._append_audit(db, audit)
        if event is not None:
            await self._insert(db, "event", [("event", utc_now(), _compact(event))])


def _compact(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))
