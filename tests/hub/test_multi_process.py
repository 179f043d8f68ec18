"""Several real hub processes on one real PostgreSQL database (issue 13, docs/scaling.md).

Each test starts its own hubs (``hub.testing.start_hub`` with ``[store] url``) sharing one
data directory (CA, signing key, admin token) and one fresh database (tests/pgkit.py).
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from hubdocs import release_doc
from test_hub_sync import entries, sync
from test_rollouts import SimDevice, make_release, start

from edge_agent.protocol import SignedTarget
from edge_agent.signing import load_public_key, verify_target
from hub.notify import TargetNotifier
from hub.store.pg_notify import PgSignals, pack, unpack
from hub.testing import REPO_ROOT, DeviceIdentity, RunningHub, start_hub, write_config

LIMITS = {"long_poll_max_wait_s": 30.0, "prestart_parse_workers": False}
STORE = {"leader_retry_s": 0.3, "listen_check_s": 1.0, "listen_reconnect_max_s": 0.5}


class Fleet:
    """Hub processes of one fleet: one database, one data directory."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url
        self.hubs: list[RunningHub] = []

    def sections(self, **extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
        sections: dict[str, dict[str, Any]] = {
            "store": {"url": self.url, **STORE},
            "limits": dict(LIMITS),
        }
        for name, values in extra.items():
            sections.setdefault(name, {}).update(values)
        return sections

    def work_dir(self, name: str) -> Path:
        """Return a hub's work dir; its ``data`` is the fleet's one data directory."""
        work_dir = self.root / name
        work_dir.mkdir(exist_ok=True)
        (self.root / "data").mkdir(exist_ok=True)
        if not (work_dir / "data").exists():
            (work_dir / "data").symlink_to(self.root / "data")
        return work_dir

    def start(self, name: str, port: int = 0, **extra: dict[str, Any]) -> RunningHub:
        hub = start_hub(self.work_dir(name), port=port, sections=self.sections(**extra))
        self.hubs.append(hub)
        return hub

    def close(self) -> None:
        for hub in self.hubs:
            hub.kill()


@pytest.fixture
def fleet(tmp_path: Path, pg_url: str) -> Iterator[Fleet]:
    """Return a fleet on a fresh database; its hubs are killed at the end."""
    made = Fleet(tmp_path, pg_url)
    yield made
    made.close()


async def health(hub: RunningHub, ctx: Any = None) -> dict[str, Any]:
    status, body = await hub.request("GET", "/healthz", ssl_context=ctx)
    assert status == 200, body
    return body


async def leads(hub: RunningHub) -> bool:
    return bool((await health(hub))["cluster"]["leadership"]["leader"])


async def wait_for(condition: Any, what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def poll_target(hub: RunningHub, device: DeviceIdentity, wait_s: float = 20.0) -> int:
    status, body = await hub.request(
        "GET",
        f"/v1/target?after=0&wait={wait_s}",
        ssl_context=device.ssl_context(),
        timeout_s=wait_s + 10,
    )
    assert status == 200, (status, body)
    pinned = load_public_key(device.signing_public_key_pem)
    signed = SignedTarget.model_validate(body)
    now = datetime.now(UTC)
    return verify_target(
        signed, pinned, device_id=device.device_id, applied_revision=0, now=now
    ).revision


async def stored(hub: RunningHub, device_id: str) -> list[int]:
    """Return every stored event seq of the device, in order (every page)."""
    seqs: list[int] = []
    while True:
        path = f"/api/v1/devices/{device_id}/events?limit=500&after={seqs[-1] if seqs else 0}"
        status, body = await hub.api("GET", path)
        assert status == 200, body
        if not body["events"]:
            return seqs
        seqs += [e["seq"] for e in body["events"]]


async def enroll(hub: RunningHub, root: Path, count: int) -> list[DeviceIdentity]:
    token = await hub.create_token(uses=count)
    return [await hub.enroll(token, root / f"dev{i}", hostname=f"d{i}") for i in range(count)]


async def test_target_set_through_one_process_wakes_polls_held_by_the_others(
    fleet: Fleet, tmp_path: Path
):
    a, b, c = fleet.start("a"), fleet.start("b"), fleet.start("c")
    d1, d2 = await enroll(a, tmp_path, 2)
    polls = [asyncio.create_task(poll_target(b, d1)), asyncio.create_task(poll_target(c, d2))]
    await b.wait_long_polls(1)
    await c.wait_long_polls(1)
    started = time.monotonic()
    await a.set_target(d1.device_id, release_doc("1"))
    await a.set_target(d2.device_id, release_doc("1"))
    done, _ = await asyncio.wait(polls, timeout=1.0)
    elapsed = time.monotonic() - started
    assert len(done) == 2, f"only {len(done)} of 2 polls woke within 1 s"
    assert [p.result() for p in polls] == [1, 1]
    assert elapsed < 1.0
    sent = (await health(a))["cluster"]["signals"]["sent"]
    received = [(await health(h))["cluster"]["signals"]["received"] for h in (b, c)]
    assert sent >= 1 and min(received) >= 1


async def test_a_lost_listener_reconnects_and_polls_still_wake(fleet: Fleet, tmp_path: Path):
    a, b = fleet.start("a"), fleet.start("b")
    [device] = await enroll(a, tmp_path, 1)
    listener = f"edgefleet-hub-listen-{b.pid}"
    conn = await asyncpg.connect(fleet.url)
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1",
            listener,
        )
    finally:
        await conn.close()
    assert killed == 1

    async def reconnected() -> bool:
        signals = (await health(b))["cluster"]["signals"]
        return signals["reconnects"] >= 1 and signals["connected"]

    await wait_for(reconnected, "hub b's listener to reconnect")
    poll = asyncio.create_task(poll_target(b, device))
    await b.wait_long_polls(1)
    await a.set_target(device.device_id, release_doc("2"))
    assert await asyncio.wait_for(poll, 1.0) == 1


async def test_batches_alternating_between_processes_are_stored_once_in_order(
    fleet: Fleet, tmp_path: Path
):
    hubs = [fleet.start("a"), fleet.start("b"), fleet.start("c")]
    [device] = await enroll(hubs[0], tmp_path, 1)
    seq = 0
    for n in range(12):
        batch = {"entries": entries(*range(seq + 1, seq + 6))}
        first = await sync(hubs[n % 3], device, batch)
        again = await sync(hubs[(n + 1) % 3], device, batch)  # the answer was "lost"
        assert first[0] == again[0] == 200
        seq += 5
        assert first[1]["acked_seq"] == again[1]["acked_seq"] == seq
    for hub in hubs:
        assert await stored(hub, device.device_id) == list(range(1, seq + 1))


async def test_killing_a_process_mid_batch_loses_and_duplicates_nothing(
    fleet: Fleet, tmp_path: Path
):
    a, b = fleet.start("a"), fleet.start("b")
    port = a.port
    [device] = await enroll(b, tmp_path, 1)
    rng = random.Random(13)
    seq = 0
    outcomes: list[int | str] = []
    while outcomes.count("killed") < 2 and len(outcomes) < 10:
        batch = {"entries": entries(*range(seq + 1, seq + 501), size=200)}
        sending = asyncio.create_task(sync(a, device, batch))
        # fault injection: SIGKILL at a random point of the request (before, during or
        # after its commit); the device then resends to the other process
        asyncio.get_running_loop().call_later(rng.uniform(0.0, 0.08), a.kill)
        try:
            outcomes.append((await sending)[0])
        except (aiohttp.ClientError, OSError):
            outcomes.append("killed")
        a.kill()
        status, body = await sync(b, device, batch)
        seq += 500
        assert status == 200 and body["acked_seq"] == seq
        fleet.hubs.remove(a)
        a = fleet.start("a", port=port)
    assert "killed" in outcomes, outcomes  # a kill landed before the answer
    assert await stored(a, device.device_id) == list(range(1, seq + 1))


async def test_workers_serve_one_port_and_both_answer(fleet: Fleet):
    root = fleet.work_dir("w")
    hub = start_hub(root, sections=fleet.sections(), serve_args=("--workers", "2"))
    fleet.hubs.append(hub)
    out = (root / "hub.out").read_text()
    assert "workers 2 pids" in out, out
    pids: set[int] = set()
    leaders = 0
    ctx = hub.ssl_context()
    for _ in range(400):
        body = await health(hub, ctx)  # a new connection each time: the kernel spreads them
        if body["cluster"]["pid"] not in pids:
            pids.add(body["cluster"]["pid"])
            leaders += body["cluster"]["leadership"]["leader"]
        if len(pids) == 2:
            break
    assert len(pids) == 2, f"only worker(s) {pids} answered"
    assert leaders == 1  # one leader among the workers
    assert hub.stop() == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"worker {pid} still runs"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


WORKERS = ("--workers", "2")


def test_workers_are_refused_on_sqlite(tmp_path: Path):
    write_config(tmp_path / "hub.toml", {"server": {"data_dir": str(tmp_path / "data")}})
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hub.cli",
            "serve",
            "--config",
            str(tmp_path / "hub.toml"),
            *WORKERS,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert done.returncode == 2, done
    assert "--workers 2 needs a PostgreSQL store" in done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was made


async def test_the_leader_dies_and_another_process_takes_over(fleet: Fleet):
    fast = {"tick_s": 0.2}
    a = fleet.start("a", rollouts=fast)

    await wait_for(lambda: leads(a), "hub a to lead")
    b = fleet.start("b", rollouts=fast)
    body = await health(b)
    assert body["cluster"]["leadership"]["leader"] is False
    assert body["rollout_engine"]["ticks"] == 0  # a follower's engine does not run
    a.kill()
    killed_at = time.monotonic()
    await wait_for(lambda: leads(b), "hub b to take over", timeout_s=10)
    took = time.monotonic() - killed_at

    async def ticking() -> bool:
        return int((await health(b))["rollout_engine"]["ticks"]) >= 2

    await wait_for(ticking, "hub b's rollout engine to tick")
    assert took < STORE["leader_retry_s"] + 2.0


async def test_while_the_listener_cannot_connect_held_polls_recheck_the_database(
    tmp_path: Path, pg_url: str
):
    """A role that may open no new connection: the listener, once cut, stays down."""
    role = f"hub_{os.urandom(6).hex()}"
    database = pg_url.rpartition("/")[2]
    admin = await asyncpg.connect(pg_url)
    await admin.execute(f'CREATE ROLE "{role}" LOGIN')
    await admin.execute(f'ALTER DATABASE "{database}" OWNER TO "{role}"')
    base, _, _ = pg_url.rpartition("/")
    url = base.replace("postgres@", f"{role}@", 1) + "/" + database
    fleet = Fleet(tmp_path, url)
    try:
        store = {"listen_degraded_poll_s": 0.3}
        a, b = fleet.start("a", store=store), fleet.start("b", store=store)
        [device] = await enroll(a, tmp_path, 1)
        poll = asyncio.create_task(poll_target(b, device))
        await b.wait_long_polls(1)
        await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT 0')  # open ones stay
        await admin.fetchval(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            f"edgefleet-hub-listen-{b.pid}",
        )

        async def cut_off() -> bool:
            signals = (await health(b))["cluster"]["signals"]
            return not signals["connected"] and signals["connect_failures"] >= 1

        await wait_for(cut_off, "hub b's listener to fail to reconnect")
        assert not poll.done()
        await a.set_target(device.device_id, release_doc("3"))
        # no NOTIFY reaches b: its held poll re-reads every 0.3 s and finds the target
        assert await asyncio.wait_for(poll, 2.0) == 1
        assert (await health(b))["cluster"]["signals"]["connected"] is False
        await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')

        async def back() -> bool:
            return bool((await health(b))["cluster"]["signals"]["connected"])

        await wait_for(back, "hub b's listener to reconnect")
    finally:
        fleet.close()
        await admin.execute(f'REASSIGN OWNED BY "{role}" TO postgres')
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.close()
        admin = await asyncpg.connect(pg_url.rpartition("/")[0] + "/postgres")
        try:
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await admin.close()


def test_signal_payloads_stay_under_the_notify_limit_and_round_trip():
    ids = [f"dev-{i:016x}" for i in range(2000)]
    payloads = pack("sender", ids, limit=1000)
    assert len(payloads) > 1 and all(len(p) <= 1000 for p in payloads)
    unpacked = [unpack(p) for p in payloads]
    assert {s for s, _ in unpacked} == {"sender"}
    assert [i for _, items in unpacked for i in items] == ids
    assert pack("sender", []) == []


async def test_signals_waiting_to_be_sent_are_bounded_and_counted():
    notifier = TargetNotifier()
    signals = PgSignals("postgresql://unused", None, notifier, max_pending=3)  # type: ignore[arg-type]
    for device_id in ["d1", "d2", "d1", "d3", "d4", "d5"]:
        notifier.notify(device_id)  # relayed: queued once per id, over the bound dropped
    stats = signals.stats()
    assert stats["pending"] == 3 and stats["dropped"] == 2
    assert notifier.recheck_s == signals.degraded_poll_s  # not connected yet: polls re-check


async def test_a_rollout_started_through_a_follower_wakes_the_leaders_engine(
    fleet: Fleet, tmp_path: Path
):
    hourly = {"tick_s": 3600, "wake_coalesce_s": 0.1}  # only a wake-up makes the engine plan
    a = fleet.start("a", rollouts=hourly)
    await wait_for(lambda: leads(a), "hub a to lead")
    b = fleet.start("b", rollouts=hourly)
    tag = "m" + os.urandom(4).hex()
    token = await b.create_token(uses=2, tags={"fleet": tag})
    devices = [SimDevice(identity=await b.enroll(token, tmp_path / f"s{i}")) for i in range(2)]
    await asyncio.gather(*(d.sync(b) for d in devices))
    status, body = await b.api("POST", "/api/v1/groups", {"name": tag, "selector": f"fleet={tag}"})
    assert status == 201, body
    release = await make_release(b, "multi-" + tag, "1")
    assert (await health(a))["rollout_engine"]["ticks"] == 0
    status, body = await start(b, release=release, group=tag, stages="100%", soak_s=0)
    assert status == 201, body

    async def issued() -> bool:
        await asyncio.gather(*(d.sync(b) for d in devices))
        return all(d.received for d in devices)

    await wait_for(issued, "the leader's engine to issue the stage through hub b", 10)
    assert (await health(a))["rollout_engine"]["ticks"] >= 1
    assert (await health(b))["rollout_engine"]["ticks"] == 0
