"""Log collection bounds: long lines cut, floods suppressed and counted, never silently."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from edge_agent.logs import LogCollector
from edge_agent.models import ContainerStatus, CurrentService


class Source:
    """A log source of our own (the runtime boundary), serving fixed lines."""

    def __init__(self, lines: list[tuple[float, str, str]]) -> None:
        self.lines = lines
        self.calls: list[float | None] = []

    async def list_services(self) -> list[CurrentService]:
        return [
            CurrentService(
                name="web",
                container_id="c1",
                config_hash="h",
                status=ContainerStatus.RUNNING,
                started_at=datetime.now(UTC),
            )
        ]

    async def logs(
        self, container_id: str, *, since: float | None, tail: int | None
    ) -> AsyncIterator[tuple[float, str, str]]:
        self.calls.append(since)
        for line in self.lines:
            if since is None or line[0] > since:
                yield line


class Sink:
    """Collects what would go to the outbox."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    async def append_many(self, kind: str, payloads: list[dict[str, Any]]) -> None:
        assert kind == "log"
        self.rows.extend(payloads)

    async def bump(self, name: str, by: int = 1) -> None:
        pass


async def test_reads_from_the_last_position_only() -> None:
    src = Source([(1.0, "stdout", "a"), (2.0, "stdout", "b")])
    sink = Sink()
    c = LogCollector(src, sink, clock=lambda: 0.0)
    assert await c.collect_once() == 2
    src.lines.append((3.0, "stderr", "c"))
    assert await c.collect_once() == 1
    assert [r["line"] for r in sink.rows] == ["a", "b", "c"]
    assert src.calls == [None, 2.0]


async def test_long_lines_are_cut_and_marked() -> None:
    sink = Sink()
    c = LogCollector(Source([(1.0, "stdout", "x" * 500)]), sink, max_line_bytes=100)
    await c.collect_once()
    assert sink.rows[0]["line"] == "x" * 100 + " [truncated]"


async def test_a_flood_is_suppressed_and_the_count_reported() -> None:
    flood = [(float(i) / 100, "stdout", f"line {i}") for i in range(250)]
    # 250 lines within the first 2.5 s, then one line a minute later.
    flood.append((100.0, "stdout", "after"))
    sink = Sink()
    c = LogCollector(Source(flood), sink, max_lines_per_minute=100, clock=lambda: 0.0)
    await c.collect_once()
    lines = [r["line"] for r in sink.rows]
    assert lines[:100] == [f"line {i}" for i in range(100)]
    assert "suppressed 150 lines (limit 100/min)" in lines
    assert lines[-1] == "after"
    marker = next(r for r in sink.rows if r.get("suppressed"))
    assert marker["suppressed"] == 150 and marker["stream"] == "agent"
