"""Technician holds: pause reconciliation, or pin the device to its current release.

A hold is ``pause`` or ``pin``, each bounded in time (``[technician] max_pause_minutes``,
``max_pin_minutes``) and kept in the store (table ``holds``, store migration 11), so it
survives an agent restart and expires on time after one. While paused the agent neither
converges nor restarts crashed containers nor activates a new target; while pinned it
keeps converging to the running release but activates no new target. A target received
meanwhile is stored and acknowledged as usual and activated when the last hold ends.

Setting, releasing and expiring a hold each write their audit row in the same
transaction as the change (expiry with the actor ``agent``). The decisions are the pure
functions at the top; ``Holds`` keeps the state and does the I/O.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.errors import HoldRefused
from edge_agent.outbox import AuditRow
from edge_agent.store import Store

log = logging.getLogger(__name__)

KINDS = ("pause", "pin")
MAX_REASON = 500  # characters of a hold's reason
MAX_SLEEP_S = 60.0  # the expiry loop re-reads the wall clock at least this often


@dataclass(frozen=True)
class Hold:
    """One active hold: who set it, why, and from when until when (epoch seconds)."""

    kind: str
    actor: str
    reason: str
    since: float
    until: float

    def report(self) -> dict[str, Any]:
        """Return the hold as the status reports it."""
        return {
            "by": self.actor,
            "reason": self.reason,
            "since": _iso(self.since),
            "until": _iso(self.until),
        }


# ---- pure decisions ------------------------------------------------------------------


class HoldRequest(BaseModel):
    """Body of POST /v1/pause and /v1/pin (the bound is the agent's configuration)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    minutes: float = Field(gt=0, allow_inf_nan=False, description="how long the hold lasts")
    reason: str = Field(min_length=1, max_length=MAX_REASON, pattern=r"\S")


def check_request(kind: str, body: Any, max_minutes: int) -> tuple[float, str]:
    """Return the (minutes, reason) of a pause/pin request; raise HoldRefused naming a field."""
    if not isinstance(body, dict):
        raise HoldRefused("body must be a JSON object", field="(body)")
    try:
        req = HoldRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"]) or "(body)"
        raise HoldRefused(f"{field}: {err['msg']}", field=field) from None
    minutes, reason = req.minutes, req.reason
    if minutes > max_minutes:
        bound = f"technician.max_{kind}_minutes"
        raise HoldRefused(f"minutes {minutes:g} is over {bound} ({max_minutes})", field="minutes")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
        raise HoldRefused(
            f"reason must be a non-empty string of at most {MAX_REASON} characters",
            field="reason",
        )
    return float(minutes), reason.strip()


def due(holds: Mapping[str, Hold], now: float) -> list[str]:
    """Return the kinds of the holds that have expired at ``now``."""
    return sorted(k for k, h in holds.items() if h.until <= now)


def is_paused(holds: Mapping[str, Hold]) -> bool:
    """Return whether reconciliation is paused (nothing converges, nothing restarts)."""
    return "pause" in holds


def holds_targets(holds: Mapping[str, Hold]) -> bool:
    """Return whether new targets wait (a pause or a pin holds them)."""
    return bool(holds.keys() & set(KINDS))


def sleep_s(holds: Mapping[str, Hold], now: float, cap_s: float = MAX_SLEEP_S) -> float:
    """Return how long the expiry loop may sleep: until the next expiry, at most ``cap_s``."""
    nearest = min((h.until for h in holds.values()), default=now + cap_s)
    return max(0.0, min(nearest - now, cap_s))


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


# ---- state and I/O -------------------------------------------------------------------


class Holds:
    """The device's active holds, persisted; ``run()`` expires them on time."""

    def __init__(
        self,
        store: Store,
        *,
        device_id: str,
        on_change: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.device_id = store, device_id
        self.on_change = on_change
        self.clock = clock
        self.active: dict[str, Hold] = {}
        self._wake = asyncio.Event()

    async def load(self) -> None:
        """Read the holds kept in the store (after a restart)."""
        async with self.store.db.execute(
            "SELECT kind, actor, reason, since, until FROM holds"
        ) as cur:
            self.active = {row[0]: Hold(*row) for row in await cur.fetchall()}

    def is_paused(self) -> bool:
        """Return whether reconciliation is paused."""
        return is_paused(self.active)

    def holds_targets(self) -> bool:
        """Return whether new targets wait."""
        return holds_targets(self.active)

    def report(self) -> dict[str, Any] | None:
        """Return the active holds by kind (None when there is none), for the status."""
        return {k: h.report() for k, h in sorted(self.active.items())} or None

    async def hold(self, kind: str, actor: str, minutes: float, reason: str) -> Hold:
        """Set (or replace) a hold with its audit row in one transaction."""
        now = self.clock()
        held = Hold(kind, actor, reason, now, now + minutes * 60)
        audit = AuditRow(
            actor,
            f"device.{kind}",
            f"device:{self.device_id}",
            "ok",
            {"until": _iso(held.until), "minutes": minutes, "reason": reason},
        )
        async with self.store.transaction() as db:
            await db.execute(
                "INSERT INTO holds (kind, actor, reason, since, until) VALUES (?,?,?,?,?) "
                "ON CONFLICT(kind) DO UPDATE SET actor = excluded.actor, "
                "reason = excluded.reason, since = excluded.since, until = excluded.until",
                (kind, actor, reason, held.since, held.until),
            )
            await self.store._append_audit(db, audit)
        self.active[kind] = held
        self._wake.set()
        log.info("%s by %s until %s: %s", kind, actor, _iso(held.until), reason)
        await self._changed()
        return held

    async def release(self, kind: str, actor: str, *, expired: bool = False) -> Hold | None:
        """End a hold with its audit row (actor ``agent`` on expiry); None if not held."""
        held = self.active.get(kind)
        action = f"device.{kind}_expired" if expired else f"device.un{kind}"
        if kind == "pause" and not expired:
            action = "device.resume"
        detail = {"held_by": held.actor, "since": _iso(held.since)} if held else {}
        audit = AuditRow(
            actor, action, f"device:{self.device_id}", "ok" if held else "not_held", detail
        )
        async with self.store.transaction() as db:
            await db.execute("DELETE FROM holds WHERE kind = ?", (kind,))
            await self.store._append_audit(db, audit)
        self.active.pop(kind, None)
        if held is not None:
            log.info("%s %s by %s", kind, "expired" if expired else "released", actor)
            await self._changed()
        return held

    async def expire_due(self) -> list[str]:
        """Release every hold past its end (actor ``agent``); return their kinds."""
        kinds = due(self.active, self.clock())
        for kind in kinds:
            await self.release(kind, "agent", expired=True)
        return kinds

    async def run(
        self,
        beat: Callable[[], None] = lambda: None,
        tick: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Expire holds on time (and call ``tick`` each round), until cancelled."""
        while True:
            beat()
            await self.expire_due()
            if tick is not None:
                await tick()
            self._wake.clear()
            try:
                async with asyncio.timeout(sleep_s(self.active, self.clock())):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _changed(self) -> None:
        if self.on_change is not None:
            await self.on_change()
