"""The read-only report of every container on the host, reused for a bounded age.

Every status read carries it (the hub's drift view compares it with the target), and a
status is read often: by the hub link at every settle, by technicians and scripts that
poll ``GET /v1/status``. Each fresh report is two engine listings (all containers, all
images), so a report younger than ``max_age_s`` is reused and concurrent reads share one
refresh: polling the status while a release converges does not load the engine that
starts its containers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from edge_agent.errors import AgentError

log = logging.getLogger(__name__)

Report = tuple[list[dict[str, Any]] | None, int | None]


HostLister = Callable[..., Awaitable[tuple[list[Any], int]]]


class HostReport:
    """Read the host's containers (bounded, timed out) at most once per ``max_age_s``."""

    def __init__(
        self,
        lister: HostLister | None,
        *,
        limit: int,
        timeout_s: float,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lister = lister  # runtime.host_containers; None: the runtime has no report
        self.limit = limit
        self.timeout_s = timeout_s
        self.max_age_s = max_age_s
        self.clock = clock
        self.refreshes = 0  # engine reads made; status reads beyond them were reused
        self._failing = False
        self._last: Report | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    async def read(self) -> Report:
        """Return the containers (model dumps) and their total; (None, None) if unavailable."""
        if self.lister is None:
            return None, None
        if self._fresh():
            assert self._last is not None
            return self._last
        async with self._lock:  # one refresh for every reader waiting meanwhile
            if not self._fresh():
                self._last, self._at = await self._refresh(self.lister), self.clock()
            assert self._last is not None
            return self._last

    def _fresh(self) -> bool:
        return self._last is not None and self.clock() - self._at < self.max_age_s

    async def _refresh(self, lister: HostLister) -> Report:
        self.refreshes += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                found, total = await lister(limit=self.limit)
        except (AgentError, TimeoutError) as exc:
            if not self._failing:
                log.warning("host container report unavailable: %s", exc)
            self._failing = True
            return None, None
        if self._failing:
            log.info("host container report available again")
            self._failing = False
        return [h.model_dump() for h in found], total
