"""Offline catch-up: a long (time-scaled) offline period fills the outbox past its quotas;
once the hub is reachable again everything left arrives in order, with drop records."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

from faultproxy import FaultProxy
from hubproc import HubProcess
from synckit import enroll_device, open_device, until

from edge_agent.store import AuditRow, Quota, StoreLimits
from edge_agent.sync import SyncLimits

HOURS = 24 * 7  # one simulated week offline, one burst per simulated hour
QUOTAS = {
    "status": Quota(max_entries=24),
    "event": Quota(max_entries=300),
    "log": Quota(max_entries=3000, max_bytes=400_000),
}


async def test_offline_week_catches_up_in_order_with_drop_records(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path / "hub").start()
    proxy = await FaultProxy("127.0.0.1", hub.port).start()
    ident = await enroll_device(hub, tmp_path / "dev")
    limits = SyncLimits(
        batch_max_entries=400, backoff_base_s=0.01, backoff_cap_s=0.05, request_timeout_s=2
    )
    store_limits = StoreLimits(quotas=QUOTAS, log_disk_reserve_bytes=0)
    dev = await open_device(tmp_path / "dev", proxy.url, limits=limits, store_limits=store_limits)
    rng = random.Random(7)
    produced: Counter[str] = Counter()
    proxy.set_mode("cut")
    task = asyncio.create_task(dev.syncer.run())
    try:
        for hour in range(HOURS):
            await dev.store.append("status", {"hour": hour})
            n_events = rng.randint(0, 6)
            await dev.store.append_many("event", [{"hour": hour, "i": i} for i in range(n_events)])
            lines = [
                {"service": "web", "stream": "stdout", "line": f"h{hour} line {i} " + "x" * 80}
                for i in range(rng.randint(20, 60))
            ]
            await dev.store.append_many("log", lines)
            if hour % 24 == 0:
                await dev.store.append_audit(AuditRow("tech", "restart", "web", "ok", {"h": hour}))
                produced["audit"] += 1
            produced.update(status=1, event=n_events, log=len(lines))
        assert dev.syncer.reach.failures > 0
        queued = await dev.store.outbox_stats()
        counters = await dev.store.counters()
        for kind in ("status", "event", "log"):
            assert counters[f"dropped_{kind}"] == produced[kind] - queued[kind]["entries"]
        assert queued["audit"]["entries"] == produced["audit"]

        proxy.set_mode("pass")

        async def drained() -> bool:
            return not await dev.store.outbox_stats()

        took = await until(drained, 60)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await dev.close()
        await proxy.close()
        hub.stop()

    stored = hub.events(ident.device_id)
    seqs = [s for s, _, _ in stored]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    by_kind: dict[str, list[dict]] = {}
    for _, kind, payload in stored:
        by_kind.setdefault(kind, []).append(payload)
    # Audit is never dropped; of the rest, the newest survive, in the order produced.
    assert len(by_kind["audit"]) == produced["audit"]
    assert [p["hour"] for p in by_kind["status"]] == list(range(HOURS - 24, HOURS))
    assert by_kind["event"] == sorted(by_kind["event"], key=lambda p: (p["hour"], p["i"]))
    assert by_kind["log"][-1]["line"].startswith(f"h{HOURS - 1} ")
    # Drop records account for every entry that did not make it, per kind.
    dropped = Counter()
    for marker in by_kind["dropped"]:
        dropped[marker["kind"]] += marker["count"]
    for kind in ("status", "event", "log"):
        assert dropped[kind] + len(by_kind[kind]) == produced[kind], kind
        assert dropped[kind] > 0, f"quota for {kind} was never hit"
    # Drops coalesce into a marker not yet handed to the hub, so there are few of them.
    assert len(by_kind["dropped"]) <= 20 < sum(dropped.values())
    print(f"caught up {len(stored)} entries in {took:.2f}s; dropped {dict(dropped)}")
