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


def test_trimmer_trims_once_a_busy_spell_has_ended() -> None:
    clock = [100.0]
    trims: list[float] = []

    def fake_trim() -> bool:
        trims.append(clock[0])
        clock[0] += 0.01  # the trim's own CPU: not counted as the next spell's work
        return len(trims) % 2 == 1

    t = HeapTrimmer(interval_s=5.0, busy_cpu_s=0.25, cpu=lambda: clock[0], trim=fake_trim)
    t._cpu_at_trim = t._cpu_at_check = clock[0]
    clock[0] += 0.1  # idle: 0.1 s of CPU in the interval
    assert t.check() is False
    clock[0] += 1.0  # busy: the spell goes on, its memory is in use
    assert t.check() is False
    clock[0] += 0.5
    assert t.check() is False
    clock[0] += 0.05  # quiet again: the spell (1.65 s since the last trim) has ended
    assert t.check() is True
    clock[0] += 0.2  # quiet intervals whose work adds up to the bound
    assert t.check() is False
    clock[0] += 0.04  # 0.24 s since the trim (its own 0.01 s left out)
    assert t.check() is False
    clock[0] += 0.01
    assert t.check() is True
    assert trims == pytest.approx([101.65, 101.91])
    assert t.status() == {"checks": 7, "trims": 2, "released": 1}


@pytest.mark.parametrize(
    "field, value", [("heap_trim_interval_s", -1), ("heap_trim_busy_cpu_s", 0)]
)
def test_trim_bounds_out_of_range_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        SupervisorConfig(**{field: value})


@pytest.mark.docker
async def test_a_running_agent_trims_after_a_busy_spell_and_reports_it(tmp_path: Path) -> None:
    supervisor = {"heap_trim_interval_s": 0.5, "heap_trim_busy_cpu_s": 0.05}
    agent = await AgentProcess(None, tmp_path / "a", supervisor=supervisor).start()
    try:
        before = (await agent.status())["heap_trim"]
        assert (await agent.status())["tasks"]["heap-trim"]["state"] == "running"
        # A busy spell: 300 status reads cost the agent ~0.2 s of CPU (~0.7 ms each).
        for _ in range(300):
            await agent.status()

        async def trimmed() -> dict[str, int] | None:
            trim: dict[str, int] = (await agent.status())["heap_trim"]
            return trim if trim["trims"] > before["trims"] else None

        after = await wait_for(trimmed, timeout_s=20)
        assert after["checks"] > before["checks"]
        assert after["released"] <= after["trims"]
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
