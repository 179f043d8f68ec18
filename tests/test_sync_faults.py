"""Lossless sync under faults: random proxy faults, kill -9 of the hub and of the agent side.

The agent side runs in a child process (this file, run as a script): a producer appends
events to the real store, numbering each with the seq it will get (one writer, no
quotas), while the real Syncer ships them through the fault proxy. The test kills and
restarts both processes at random moments; at the end the hub must hold exactly seqs
1..N with matching payloads, and the agent's outbox must be empty.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import sys
import time
from pathlib import Path

from faultproxy import MODES, FaultProxy
from hubproc import HubProcess
from synckit import enroll_device, open_device

from edge_agent.sync import SyncLimits

FAULT_SECONDS = float(os.environ.get("EDGEFLEET_FAULT_SECONDS", "45"))
TOTAL_EVENTS = int(os.environ.get("EDGEFLEET_FAULT_EVENTS", "20000"))
CHILD_LIMITS = SyncLimits(
    batch_max_entries=300,
    sync_interval_s=0.3,
    debounce_s=0.02,
    backoff_base_s=0.05,
    backoff_cap_s=0.5,
    request_timeout_s=2.0,
    long_poll_s=2.0,
)


# ---- the agent side (child process) ---------------------------------------------------


async def _produce(store: object, total: int, rng: random.Random) -> None:
    db = store.db  # type: ignore[attr-defined]
    while True:
        async with db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'") as cur:
            row = await cur.fetchone()
        done = row[0] if row else 0
        if done >= total:
            return
        n = min(rng.randint(1, 25), total - done)
        await store.append_many("event", [{"n": done + 1 + i} for i in range(n)])  # type: ignore[attr-defined]
        await asyncio.sleep(rng.uniform(0, 0.012))


async def _child(data_dir: Path, url: str, total: int, seed: int) -> None:
    dev = await open_device(data_dir, url, limits=CHILD_LIMITS)
    rng = random.Random(seed)
    await asyncio.gather(
        _produce(dev.store, total, rng), dev.syncer.run(), dev.syncer.run_long_poll()
    )


def child_main() -> None:
    """Run the agent side until killed."""
    p = argparse.ArgumentParser()
    p.add_argument("data_dir", type=Path)
    p.add_argument("url")
    p.add_argument("total", type=int)
    p.add_argument("seed", type=int)
    a = p.parse_args()
    asyncio.run(_child(a.data_dir, a.url, a.total, a.seed))


# ---- the test (parent) ----------------------------------------------------------------


class AgentProcess:
    """The child process running producer + syncer on one store."""

    def __init__(self, data_dir: Path, url: str, total: int) -> None:
        self.args = [str(data_dir), url, str(total)]
        self.proc: asyncio.subprocess.Process | None = None
        self.log = data_dir / "child.log"
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        log = await asyncio.to_thread(open, self.log, "ab")
        with log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, *self.args, str(self.starts),
                stdout=log, stderr=log,
            )  # fmt: skip

    async def kill(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise AssertionError(f"agent side died on its own: {self.log.read_text()[-3000:]}")
        self.proc.kill()
        await self.proc.wait()


def agent_position(db_path: Path) -> tuple[int, int]:
    """Return (events produced, entries still queued) from the agent's store."""
    db = sqlite3.connect(db_path, timeout=10)
    try:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        queued = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    finally:
        db.close()
    return (row[0] if row else 0), queued


async def _fault_round(
    rng: random.Random,
    proxy: FaultProxy,
    hub: HubProcess,
    agent: AgentProcess,
    tally: dict[str, int],
) -> None:
    """Inject one random fault, then let things run a little."""
    action = rng.choices(["proxy", "kill_agent", "kill_hub"], weights=[6, 2, 2])[0]
    if action == "proxy":
        mode = rng.choice(MODES)
        proxy.set_mode(mode, delay_ms=rng.randint(20, 400))
        tally[mode] += 1
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        proxy.set_mode("pass")
    elif action == "kill_agent":
        await asyncio.sleep(rng.uniform(0, 0.4))
        await agent.kill()
        await agent.start()
    else:
        await asyncio.sleep(rng.uniform(0, 0.4))
        hub.kill()
        await asyncio.sleep(rng.uniform(0, 0.5))
        await asyncio.to_thread(hub.start)
    tally[action] += 1
    await asyncio.sleep(rng.uniform(0.05, 0.4))


async def test_lossless_under_random_faults_and_kill9(tmp_path: Path) -> None:
    seed = int(os.environ.get("EDGEFLEET_FAULT_SEED", str(int(time.time()))))
    print(f"fault seed {seed} (EDGEFLEET_FAULT_SEED to replay)")
    rng = random.Random(seed)
    hub = HubProcess(tmp_path / "hub").start()
    proxy = await FaultProxy("127.0.0.1", hub.port, rng=random.Random(seed)).start()
    ident = await enroll_device(hub, tmp_path / "dev")
    agent = AgentProcess(tmp_path / "dev", proxy.url, TOTAL_EVENTS)
    tally = dict.fromkeys([*MODES, "proxy", "kill_agent", "kill_hub"], 0)
    try:
        await agent.start()
        deadline = time.monotonic() + FAULT_SECONDS
        while time.monotonic() < deadline:
            await _fault_round(rng, proxy, hub, agent, tally)
        proxy.set_mode("pass")
        produced, queued = 0, -1
        for _ in range(600):
            produced, queued = await asyncio.to_thread(agent_position, tmp_path / "dev/agent.db")
            if produced == TOTAL_EVENTS and queued == 0:
                break
            await asyncio.sleep(0.1)
        await agent.kill()
        print(f"faults: {tally}, proxy: {proxy.stats}")
        assert (produced, queued) == (TOTAL_EVENTS, 0), f"agent did not drain: {agent.log}"
        stored = await asyncio.to_thread(hub.events, ident.device_id)
        seqs = [s for s, _, _ in stored]
        missing = sorted(set(range(1, TOTAL_EVENTS + 1)) - set(seqs))
        assert not missing, f"hub lacks {len(missing)} seqs, first {missing[:10]}"
        assert seqs == list(range(1, TOTAL_EVENTS + 1))
        assert all(p == {"n": s} for s, _, p in stored), "payload does not match its seq"
        assert tally["kill_agent"] and tally["kill_hub"], tally
    finally:
        if agent.proc is not None and agent.proc.returncode is None:
            agent.proc.kill()
            await agent.proc.wait()
        await proxy.close()
        hub.stop()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    child_main()
