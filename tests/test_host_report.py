"""The host container report: reused for its bounded age, one refresh for concurrent reads."""

from __future__ import annotations

import asyncio
from typing import Any

from edge_agent.errors import EngineUnavailable
from edge_agent.host_report import HostReport


class _Host:
    """A host container lister of our own that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    async def __call__(self, *, limit: int) -> tuple[list[Any], int]:
        self.calls += 1
        await asyncio.sleep(0)
        if self.fail:
            raise EngineUnavailable("engine away", retryable=True)
        return [], self.calls


async def test_a_report_younger_than_max_age_is_reused_and_shared() -> None:
    now = [100.0]
    host = _Host()
    report = HostReport(host, limit=5, timeout_s=1, max_age_s=2, clock=lambda: now[0])
    first = await asyncio.gather(*(report.read() for _ in range(5)))
    assert host.calls == 1 and first == [([], 1)] * 5
    now[0] += 1.9
    assert await report.read() == ([], 1)
    now[0] += 0.1  # reaching the bound refreshes
    assert await report.read() == ([], 2)
    assert report.refreshes == host.calls == 2


async def test_max_age_zero_asks_the_engine_every_time_and_failure_is_none() -> None:
    host = _Host()
    report = HostReport(host, limit=5, timeout_s=1, max_age_s=0)
    await report.read()
    await report.read()
    assert host.calls == 2
    host.fail = True
    assert await report.read() == (None, None)
    assert await HostReport(None, limit=5, timeout_s=1, max_age_s=2).read() == (None, None)
