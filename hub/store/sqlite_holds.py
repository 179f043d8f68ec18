"""Technician holds as the hub knows them: from the device's newest status report.

No table of its own: the agent's status entries (outbox kind ``status``, kept in
``events`` within the hub's retention) carry its ``hold``; the newest one is the truth.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any


class HoldsMixin:
    """The newest status report of a device, on SQLite."""

    if TYPE_CHECKING:

        async def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]: ...

    async def latest_status_report(self, device_id: str) -> dict[str, Any] | None:
        """Return the payload of the device's newest status entry (None: none kept)."""
        found = await self._read(
            "SELECT payload FROM events WHERE device_id = ? AND kind = 'status' "
            "ORDER BY seq DESC LIMIT 1",
            (device_id,),
        )
        if not found:
            return None
        payload = json.loads(found[0][0])
        return payload if isinstance(payload, dict) else None
