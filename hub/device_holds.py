"""A device's technician holds (pause, pin) as the hub's device view shows them.

The agent reports its holds in its status entries (``hold``: by kind, who, why, since,
until); the hub shows the newest report's, and drops a hold whose end has passed (the
agent has expired it by then; its next report says so).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

KINDS = ("pause", "pin")


def hold_view(report: dict[str, Any] | None, now: datetime) -> dict[str, Any] | None:
    """Return the active holds of a status report by kind, or None."""
    holds = (report or {}).get("hold")
    if not isinstance(holds, dict):
        return None
    out = {}
    for kind in KINDS:
        h = holds.get(kind)
        until = _until(h) if isinstance(h, dict) else None
        if isinstance(h, dict) and until is not None and until > now:
            out[kind] = {k: h.get(k) for k in ("by", "reason", "since", "until")}
    return out or None


def _until(hold: dict[str, Any]) -> datetime | None:
    try:
        until = datetime.fromisoformat(str(hold.get("until")))
    except ValueError:
        return None
    return until if until.tzinfo is not None else None
