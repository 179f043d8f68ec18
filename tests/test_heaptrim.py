"""heaptrim: freed C-heap pages go back to the system (glibc)."""

from __future__ import annotations

from pathlib import Path

import pytest
from agentproc import AgentProcess
from docker_env import wait_for
from pydantic import ValidationError

from edge_agent.config import SupervisorConfig
from edge_agent.heaptrim import HeapTrimmer, trim_heap


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def test_trim_returns_freed_heap_pages() -> None:
    # 40 MB in 8 KB pieces: below glibc's mmap threshold, so they live in the heap and
    # stay resident after they are freed, until the heap is trimmed.
    chunks = [bytearray(8192) for _ in range(5000)]
    for c in chunks:
        c[::4096] = b"x" * len(c[::4096])  # touch every page
    keep = bytearray(8192)  # allocated last: the freed pages are not at the heap's top
    del chunks
    before = _rss_kb()
    assert trim_heap() is True
    after = _rss_kb()
    assert before - after > 20_000, (before, after)
    del keep


def test_trimmer_trims_only_after_an_interval_with_enough_work() -> None:
    clock = [100.0]
    trims: list[float] = []

    def fake_trim() -> bool:
        trims.append(clock[0])
        clock[0] += 0.01  # the trim's own CPU: not counted as the next interval's work
        return len(trims) % 2 == 1

    t = HeapTrimmer(interval_s=10.0, busy_cpu_s=0.25, cpu=lambda: clock[0], trim=fake_trim)
    t._cpu_at_trim = clock[0]
    clock[0] += 0.1  # an idle interval: 0.1 s of CPU
    assert t.check() is False
    clock[0] += 0.2  # 0.3 s since the last trim (the idle interval's work adds up)
    assert t.check() is True
    clock[0] += 0.24  # just below the bound, the trim's 0.01 s left out
    assert t.check() is False
    clock[0] += 0.01
    assert t.check() is True
    assert trims == [100.3, 100.56]
    assert t.status() == {"checks": 4, "trims": 2, "released": 1}


@pytest.mark.parametrize(
    "field, value", [("heap_trim_interval_s", -1), ("heap_trim_busy_cpu_s", 0)]
)
def test_trim_bounds_out_of_range_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        SupervisorConfig(**{field: value})


@pytest.mark.docker
async def test_a_running_agent_trims_after_work_and_reports_it(tmp_path: Path) -> None:
    # A bound so small that every check trims: the agent's status shows the counts grow.
    supervisor = {"heap_trim_interval_s": 0.2, "heap_trim_busy_cpu_s": 1e-6}
    agent = await AgentProcess(None, tmp_path / "a", supervisor=supervisor).start()
    try:

        async def trimmed_twice() -> dict[str, int] | None:
            trim: dict[str, int] = (await agent.status()).get("heap_trim", {})
            return trim if trim.get("trims", 0) >= 2 else None

        trim = await wait_for(trimmed_twice, timeout_s=20)
        assert trim["checks"] >= trim["trims"] >= 2
        assert (await agent.status())["tasks"]["heap-trim"]["state"] == "running"
    finally:
        await agent.stop()
        agent.cleanup()


@pytest.mark.docker
async def test_interval_zero_runs_no_trimmer(tmp_path: Path) -> None:
    agent = await AgentProcess(None, tmp_path / "a", supervisor={"heap_trim_interval_s": 0}).start()
    try:
        status = await agent.status()
        assert "heap_trim" not in status
        assert "heap-trim" not in status["tasks"]
    finally:
        await agent.stop()
        agent.cleanup()
