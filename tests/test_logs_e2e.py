"""Container log collection on the real engine: hostile output, kills, removals, bursts.

Issue 7 items 3, 11 (log parts) and 12. The collector and the runtime are real; the
store is a real SQLite file; the agent scenarios run a real agent process.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiodocker
import docker_env
import pytest
from agentproc import AgentProcess
from docker_env import TestImages, make_release, make_service, wait_for

from edge_agent.errors import EngineUnavailable
from edge_agent.logfollow import LogFollower
from edge_agent.logs import LogCollector
from edge_agent.logstream import LogLine
from edge_agent.runtime import DockerRuntime
from edge_agent.store import Store, StoreLimits
from edge_agent.tasks import cancel_and_wait

pytestmark = pytest.mark.docker

# ~40 lines a second, each with its own sequence number.
COUNTER = 'i=0; while true; do i=$((i+1)); echo "seq $i"; usleep 25000; done'
# One carriage return, invalid UTF-8, a 1 MB line, then a line proving the stream goes on.
HOSTILE = (
    'printf "a\\rb\\n"; printf "\\377\\376 bad\\n"; '
    "head -c 1048576 /dev/zero | tr '\\0' x; echo; echo after; "
    "while true; do sleep 1 & wait $!; done"
)
SEQ = re.compile(r"^seq (\d+)$")
NO_POLL_S = 3600.0  # the largest interval_s: a poller would read once an hour


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store(tmp_path / "agent.db", limits=StoreLimits(log_disk_reserve_bytes=0)).open()
    try:
        yield s
    finally:
        await s.close()


async def _start(runtime: DockerRuntime, images: TestImages, name: str, script: str) -> str:
    service = make_service(name, images.local("good"), command=["sh", "-c", script])
    cid = await runtime.create(service, release=make_release([service]), revision=1)
    await runtime.start(cid)
    return cid


async def _log_rows(store: Store) -> list[dict[str, Any]]:
    async with store.db.execute(
        "SELECT payload FROM outbox WHERE kind = 'log' ORDER BY seq"
    ) as cur:
        return [json.loads(p) for (p,) in await cur.fetchall()]


def _seqs(rows: list[dict[str, Any]], service: str) -> list[int]:
    out = []
    for row in rows:
        m = SEQ.match(row.get("line", "")) if row.get("service") == service else None
        if m:
            out.append(int(m.group(1)))
    return out


async def test_carriage_return_invalid_utf8_and_huge_line_do_not_stop_collection(
    runtime: DockerRuntime, images: TestImages, store: Store
) -> None:
    """Issue 7.3: one `\\r` stopped log collection for the whole device."""
    await _start(runtime, images, "hostile", HOSTILE)
    await _start(runtime, images, "counter", COUNTER)
    collector = LogCollector(runtime, store, max_line_bytes=1024)

    async def collected() -> list[dict[str, Any]] | None:
        await collector.collect_once()
        rows = await _log_rows(store)
        hostile = [r["line"] for r in rows if r["service"] == "hostile"]
        return rows if "after" in hostile and len(_seqs(rows, "counter")) >= 80 else None

    rows = await wait_for(collected, timeout_s=30, interval_s=0.5)
    hostile = [r for r in rows if r["service"] == "hostile"]
    lines = [r["line"] for r in hostile]
    assert lines[0] == "a\rb"
    assert lines[1].endswith(" bad") and "\ufffd" in lines[1]
    big = hostile[2]
    assert big["line"].startswith("x" * 1000) and big["truncated_bytes"] == 2**20 - 1024
    assert len(big["line"].encode()) <= 1024 + len(" [truncated]")
    assert lines[3] == "after"
    assert (await store.counters())["log_lines_truncated"] == 1
    # The well-behaved service kept arriving, in order, each line once.
    seqs = _seqs(rows, "counter")
    assert seqs == list(range(1, len(seqs) + 1))


async def test_read_bound_cuts_a_burst_and_counts_it(
    runtime: DockerRuntime, images: TestImages, store: Store
) -> None:
    """Issue 7.11: runtime.logs buffered every line since the last read."""
    burst = 'for i in $(seq 3000); do echo "seq $i"; done; while true; do sleep 1 & wait $!; done'
    cid = await _start(runtime, images, "burst", burst)
    await wait_for(lambda: _engine_has(runtime, cid, "seq 3000"), timeout_s=20)
    collector = LogCollector(runtime, store, max_lines_per_read=1000)
    assert await collector.collect_once() == 1000
    assert (await store.counters())["log_reads_cut"] == 1
    for _ in range(5):
        await collector.collect_once()
    assert _seqs(await _log_rows(store), "burst") == list(range(1, 3001))


async def _engine_has(runtime: DockerRuntime, cid: str, text: str) -> bool:
    return text in [line async for _, _, line in runtime.logs(cid, tail=5)]


async def test_collector_forgets_a_removed_container(
    runtime: DockerRuntime, images: TestImages, store: Store, docker: aiodocker.Docker
) -> None:
    """Issue 7.11: per-container collector state was never forgotten."""
    cid = await _start(runtime, images, "counter", COUNTER)
    collector = LogCollector(runtime, store)
    await wait_for(collector.collect_once, timeout_s=10)
    assert cid in collector.tracked()
    await runtime.remove(cid)
    await collector.collect_once()
    assert collector.tracked() == set()
    assert await store.log_positions() == {}
    gap = [r for r in await _log_rows(store) if r.get("gap")]
    assert gap and gap[0]["gap"]["container_id"] == cid
    assert (await store.counters())["log_gaps"] == 1


# ---- the follower on the real engine ------------------------------------------------


class FlakySource:
    """The runtime, whose first ``fail`` log opens fail (a boundary we own: LogSource)."""

    def __init__(self, runtime: DockerRuntime, fail: int) -> None:
        self.runtime, self.fail, self.opens = runtime, fail, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runtime, name)

    async def log_lines(self, cid: str, **kw: Any) -> AsyncIterator[LogLine]:
        self.opens += 1
        if self.opens <= self.fail:
            raise EngineUnavailable("read logs: engine unreachable (injected)")
        async for item in self.runtime.log_lines(cid, **kw):
            yield item


async def _following(follower: LogFollower) -> asyncio.Task[None]:
    task = asyncio.create_task(follower.run())
    await asyncio.sleep(0)
    return task


async def test_a_burst_is_written_in_bounded_batches_not_a_transaction_per_line(
    runtime: DockerRuntime, images: TestImages, store: Store
) -> None:
    """Issue 9: a followed burst is batched; one container holds at most the batch bound."""
    burst = 'for i in $(seq 3000); do echo "seq $i"; done; while true; do sleep 1 & wait $!; done'
    cid = await _start(runtime, images, "burst", burst)
    await wait_for(lambda: _engine_has(runtime, cid, "seq 3000"), timeout_s=20)  # a backlog
    collector = LogCollector(runtime, store, max_lines_per_read=1000)
    # A deadline long enough that only the bound can write a batch before it.
    follower = LogFollower(collector, flush_interval_s=5.0, rescan_s=3600)
    task = await _following(follower)
    try:

        async def all_lines() -> list[int] | None:
            seqs = _seqs(await _log_rows(store), "burst")
            return seqs if len(seqs) >= 3000 else None

        seqs = await wait_for(all_lines, timeout_s=30, interval_s=0.2)
        assert seqs == list(range(1, 3001))
        assert 3 <= follower.status()["batches"] <= 4, follower.status()
        assert (await store.counters())["log_reads_cut"] == 2
        assert follower.status()["pending_lines"] <= 1000
    finally:
        await cancel_and_wait(task)


async def test_a_failing_stream_is_retried_counted_and_visible(
    runtime: DockerRuntime, images: TestImages, store: Store
) -> None:
    """Issue 9: a stream that fails is retried with backoff, counted and shown in status."""
    await _start(runtime, images, "counter", COUNTER)
    source = FlakySource(runtime, fail=2)
    collector = LogCollector(source, store)  # type: ignore[arg-type]
    follower = LogFollower(collector, flush_interval_s=0.2, rescan_s=3600, retry_base_s=0.5)
    task = await _following(follower)
    try:

        async def failing() -> list[dict[str, Any]] | None:
            return follower.status()["failing"] or None

        (shown,) = await wait_for(failing, timeout_s=10, interval_s=0.05)
        assert shown["service"] == "counter" and "injected" in shown["last_error"]

        async def recovered() -> list[int] | None:
            seqs = _seqs(await _log_rows(store), "counter")
            return seqs if len(seqs) >= 40 and not follower.status()["failing"] else None

        seqs = await wait_for(recovered, timeout_s=30, interval_s=0.2)
        assert seqs == list(range(1, len(seqs) + 1))
        assert (await store.counters())["log_stream_failures"] == 2
        assert not task.done()
    finally:
        await cancel_and_wait(task)


async def test_a_stopped_container_is_read_to_its_end_once(
    runtime: DockerRuntime, images: TestImages, store: Store
) -> None:
    """A container that exited is read once (its last words), then left alone."""
    cid = await _start(runtime, images, "oneshot", 'echo "last words"')
    await wait_for(lambda: _exited(runtime, cid), timeout_s=20)
    source = FlakySource(runtime, fail=0)
    follower = LogFollower(LogCollector(source, store), rescan_s=0.05)  # type: ignore[arg-type]
    task = await _following(follower)
    try:

        async def drained() -> bool:
            pos = (await store.log_positions()).get(cid)
            return pos is not None and pos.drained

        await wait_for(drained, timeout_s=10)
        await asyncio.sleep(0.5)  # ten rescans: none may open the stream again
        assert source.opens == 1
        assert [r["line"] for r in await _log_rows(store)] == ["last words"]
    finally:
        await cancel_and_wait(task)


async def test_lines_read_from_a_container_removed_before_they_were_written_are_kept(
    runtime: DockerRuntime, images: TestImages, store: Store
) -> None:
    """The stream of a removed container was dropped with the lines it held unwritten."""
    cid = await _start(runtime, images, "counter", COUNTER)
    # Ticks 10 s apart: lines read at one tick wait for the next to be written.
    follower = LogFollower(LogCollector(runtime, store), flush_interval_s=10.0, rescan_s=3600)
    task = await _following(follower)
    try:

        async def pending() -> bool:
            return follower.status()["pending_lines"] >= 20

        await wait_for(pending, timeout_s=25, interval_s=0.05)
        stored = len(_seqs(await _log_rows(store), "counter"))
        held = follower.status()["pending_lines"]
        await runtime.remove(cid)
        follower.notice("destroy", cid)

        # Wait for the held lines themselves: when no tick had written yet, there was no
        # position to remove and "no positions" held before the lines were written.
        async def kept() -> bool:
            rows = len(_seqs(await _log_rows(store), "counter"))
            return rows >= stored + held and await _no_positions(store)

        await wait_for(kept, timeout_s=10)
        seqs = _seqs(await _log_rows(store), "counter")
        assert len(seqs) >= stored + held >= 20 and seqs == list(range(1, len(seqs) + 1))
    finally:
        await cancel_and_wait(task)


async def _no_positions(store: Store) -> bool:
    return not await store.log_positions()


async def _exited(runtime: DockerRuntime, cid: str) -> bool:
    return not (await runtime.inspect(cid)).is_running


# ---- a real agent process, killed -------------------------------------------------


@pytest.fixture
async def agent(
    tmp_path: Path, device_id: str, docker: aiodocker.Docker
) -> AsyncIterator[AgentProcess]:
    # No poll interval to lean on: every line must come from the followed stream.
    proc = AgentProcess(device_id, tmp_path / "agent", logs={"interval_s": NO_POLL_S})
    try:
        yield await proc.start()
    finally:
        await proc.stop()
        proc.cleanup()
        await docker_env.cleanup_device(docker, device_id)


def _stored(agent: AgentProcess) -> list[dict[str, Any]]:
    db = sqlite3.connect(f"file:{agent.data_dir / 'agent.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT payload FROM outbox WHERE kind = 'log' ORDER BY seq").fetchall()
    finally:
        db.close()
    return [json.loads(p) for (p,) in rows]


async def _deploy_counter(agent: AgentProcess, images: TestImages) -> None:
    svc = {"name": "counter", "image": images.ref("good"), "command": ["sh", "-c", COUNTER]}
    code, body = await agent.call(
        "POST", "/v1/apply", {"name": "app", "version": "1", "services": [svc]}
    )
    assert code == 202, body


def _seq_at_least(agent: AgentProcess, n: int) -> Callable[[], Any]:
    async def check() -> list[int] | None:
        seqs = _seqs(_stored(agent), "counter")
        return seqs if seqs and max(seqs) >= n else None

    return check


async def _engine_seq(docker: aiodocker.Docker, device_id: str) -> int:
    cid = (await _containers(docker, device_id))["counter"]
    tail = await docker.containers.container(cid).log(stdout=True, tail="1")
    return int("".join(tail).split()[-1])


async def _containers(docker: aiodocker.Docker, device_id: str) -> dict[str, str]:
    filters = json.dumps({"label": [f"io.edgefleet.device={device_id}"]})
    found = await docker.containers.list(all=True, filters=filters)
    return {c._container["Labels"]["io.edgefleet.service"]: c.id for c in found}


async def test_log_lines_written_while_the_agent_is_down_are_kept_exactly_once(
    agent: AgentProcess, images: TestImages, docker: aiodocker.Docker
) -> None:
    """Issue 7.12: lines written during a kill -9 and a restart 3 s later were lost."""
    await _deploy_counter(agent, images)
    await wait_for(_seq_at_least(agent, 40), timeout_s=30, interval_s=0.3)
    await agent.kill()
    down = time.monotonic()
    await asyncio.sleep(3.0)  # the deliberate downtime: ~120 lines written meanwhile
    written = await _engine_seq(docker, agent.device_id)
    await agent.start()
    assert time.monotonic() - down >= 3.0
    seqs = await wait_for(_seq_at_least(agent, written + 40), timeout_s=30, interval_s=0.3)
    assert sorted(seqs) == seqs, "out of order"
    assert seqs == list(range(1, max(seqs) + 1)), "lost or duplicated lines"
    assert not [r for r in _stored(agent) if r.get("gap")]


async def test_container_removed_while_the_agent_is_down_is_a_counted_gap(
    agent: AgentProcess, images: TestImages, docker: aiodocker.Docker
) -> None:
    """Issue 7.12: what cannot be recovered is recorded as a counted gap."""
    await _deploy_counter(agent, images)
    await wait_for(_seq_at_least(agent, 20), timeout_s=30, interval_s=0.3)
    old = (await _containers(docker, agent.device_id))["counter"]
    await agent.kill()
    await docker.containers.container(old).delete(force=True)
    await agent.start()

    async def gap() -> dict[str, Any] | None:
        rows = [r for r in _stored(agent) if r.get("gap")]
        return rows[0] if rows else None

    marker = await wait_for(gap, timeout_s=30, interval_s=0.3)
    assert marker["gap"]["container_id"] == old and marker["service"] == "counter"
    counters = (await agent.status())["counters"]
    assert counters["log_gaps"] == 1
    # The replacement container's lines are collected from its first line: seq 1 twice.
    await wait_for(_seq_at_least(agent, 1), timeout_s=30, interval_s=0.3)

    async def replaced() -> bool:
        return _seqs(_stored(agent), "counter").count(1) == 2

    await wait_for(replaced, timeout_s=30, interval_s=0.3)


async def test_an_update_reads_the_replaced_containers_last_lines_and_records_no_gap(
    agent: AgentProcess, images: TestImages
) -> None:
    """An update stops, drains, then removes the old container: its last lines arrive."""
    script = "trap 'echo bye; exit 0' TERM; " + COUNTER
    for version, env in (("1", {}), ("2", {"GENERATION": "2"})):
        svc = {
            "name": "counter",
            "image": images.ref("good"),
            "command": ["sh", "-c", script],
            "environment": env,
        }
        release = {"name": "app", "version": version, "services": [svc]}
        code, body = await agent.call("POST", "/v1/apply", release)
        assert code == 202, body
        await wait_for(_seq_at_least(agent, 20), timeout_s=30, interval_s=0.3)

    async def second_generation() -> list[dict[str, Any]] | None:
        rows = [r for r in _stored(agent) if r.get("service") == "counter"]
        return rows if [r["line"] for r in rows].count("seq 1") == 2 else None

    rows = await wait_for(second_generation, timeout_s=30, interval_s=0.3)
    lines = [r["line"] for r in rows]
    first = lines[: lines.index("seq 1", 1)]
    assert first[-1] == "bye", first[-3:]
    assert _seqs([r for r in rows[: len(first)]], "counter") == list(range(1, len(first)))
    assert not [r for r in _stored(agent) if r.get("gap")]
    assert (await agent.status())["counters"].get("log_gaps", 0) == 0


async def test_lines_arrive_promptly_without_a_poll_interval(
    agent: AgentProcess, images: TestImages, docker: aiodocker.Docker
) -> None:
    """Issue 9: logs were polled every interval_s; followed, they arrive as written."""
    await _deploy_counter(agent, images)
    await wait_for(_seq_at_least(agent, 1), timeout_s=30, interval_s=0.3)
    # Once flowing, what the engine has is stored within two ticks (flush_interval_s: 2 s).
    for _ in range(3):
        written = await _engine_seq(docker, agent.device_id)
        await wait_for(_seq_at_least(agent, written), timeout_s=8, interval_s=0.2)
    status = await agent.status()
    assert status["logs"]["streams"] == 1 and status["logs"]["failing"] == []
    assert status["logs"]["batches"] >= 1


async def test_a_container_restarted_by_the_engine_is_followed_again(
    agent: AgentProcess, images: TestImages, docker: aiodocker.Docker
) -> None:
    """Issue 9: the engine ends a followed stream at a stop; a restart is a new stream."""
    await _deploy_counter(agent, images)
    await wait_for(_seq_at_least(agent, 20), timeout_s=30, interval_s=0.3)
    cid = (await _containers(docker, agent.device_id))["counter"]
    await docker.containers.container(cid).restart(timeout=1)

    async def second_generation() -> list[int] | None:
        seqs = _seqs(_stored(agent), "counter")
        restart = seqs.index(1, 1) if seqs.count(1) == 2 else None
        return seqs if restart is not None and len(seqs) - restart >= 40 else None

    seqs = await wait_for(second_generation, timeout_s=30, interval_s=0.3)
    restart = seqs.index(1, 1)
    assert seqs[:restart] == list(range(1, restart + 1)), "first run lost or repeated lines"
    assert seqs[restart:] == list(range(1, len(seqs) - restart + 1)), "second run"
    assert not [r for r in _stored(agent) if r.get("gap")]
