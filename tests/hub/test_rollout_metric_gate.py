"""Device metrics in a rollout's health gate: pure tables, then a real hub process.

The devices of the hub test are SIMULATED (enrolled for real, syncing the real protocol,
no Docker): each reports its release as running and good and sends a ``metrics`` entry
with every sync, as the agent's reporter does; one of them runs hot.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_rollouts import SimDevice, make_release, rhub, start, wait_for  # noqa: F401

from hub.metric_gate import metrics_verdict, point
from hub.rollout_gate import judge_device
from hub.rollout_models import (
    DeviceAssignment,
    DeviceObservation,
    HealthGate,
    RolloutSpec,
    ServiceObservation,
    Verdict,
)
from hub.testing import RunningHub

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MB = 1024 * 1024


def sample(cpu: float, mem_pct: float, web_cpu: float = 1.0, web_mb: float = 10.0) -> dict:
    total = 1000 * MB
    return {
        "cpu_percent": cpu,
        "memory": {"total_bytes": total, "used_bytes": int(total * mem_pct / 100)},
        "containers": [{"service": "web", "cpu_percent": web_cpu, "mem_bytes": int(web_mb * MB)}],
    }


GATE = HealthGate(
    max_cpu_percent=80,
    max_memory_percent=90,
    max_container_cpu_percent=50,
    max_container_memory_mb=100,
)


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([sample(70, 50), sample(85, 50)], None),  # mean 77.5: within
        ([sample(90, 50), sample(85, 50)], "max_cpu_percent"),
        ([sample(10, 95)], "max_memory_percent"),
        ([sample(10, 10, web_cpu=60)], "max_container_cpu_percent: web"),
        ([sample(10, 10, web_mb=150)], "max_container_memory_mb: web"),
        ([{"containers": "junk", "memory": 3}], None),  # nothing readable: nothing judged
    ],
)
def test_metric_bounds_judge_the_mean_over_the_soak(
    samples: list[dict], expected: str | None
) -> None:
    points = [point(T0 + timedelta(seconds=i), s) for i, s in enumerate(samples)]
    before = point(T0 - timedelta(seconds=5), sample(100, 100, 100, 1000))  # not in the soak
    reason = metrics_verdict(GATE, [before, *points], T0)
    assert (reason is None) if expected is None else (expected in (reason or "")), reason


def _judge(gate: HealthGate, metrics: list[dict], now_s: float) -> tuple[Verdict, Any]:
    spec = RolloutSpec(release="app@1", group="g", soak_s=10, stage_deadline_s=60, gate=gate)
    a = DeviceAssignment(
        stage=0, previous_release=None, issued_at=T0, seen_at=T0, soak_started_at=T0
    )
    obs = DeviceObservation(
        device_id="d",
        online=True,
        reported_at=T0 + timedelta(seconds=now_s),
        release="app@1",
        rollout_state="good",
        services=(ServiceObservation(name="web", running=True),),
        metrics=tuple(point(T0 + timedelta(seconds=1), m) for m in metrics),
    )
    return judge_device(spec, a, obs, T0 + timedelta(seconds=now_s))


def test_a_device_over_a_metric_bound_fails_the_gate_at_the_end_of_its_soak() -> None:
    gate = HealthGate(max_cpu_percent=50)
    assert _judge(gate, [sample(90, 10)], 5)[0] == Verdict.APPLYING  # soaking
    verdict, a = _judge(gate, [sample(90, 10)], 10)
    assert verdict == Verdict.FAILED and "max_cpu_percent" in a.failed_reason
    assert _judge(gate, [sample(20, 10)], 10)[0] == Verdict.HEALTHY
    assert _judge(HealthGate(), [sample(90, 10)], 10)[0] == Verdict.HEALTHY  # no bounds
    assert _judge(gate, [], 10)[0] == Verdict.APPLYING  # waits for a sample ...
    verdict, a = _judge(gate, [], 70)  # ... until the deadline and a soak
    assert verdict == Verdict.FAILED and "no metrics sample" in a.failed_reason


@dataclass(eq=False, kw_only=True)
class MeteredDevice(SimDevice):
    """A simulated device that also sends a metrics sample with each sync."""

    cpu: float = 10.0
    seq: int = 0
    sent: list[int] = field(default_factory=list)

    async def sync(self, hub: RunningHub) -> None:
        self.seq += 1
        entry = {
            "seq": self.seq,
            "kind": "metrics",
            "created_at": datetime.now(UTC).isoformat(),
            "payload": sample(self.cpu, 30),
        }
        body = {
            "protocol": 3,
            "epoch": "sim",
            "entries": [entry],
            "known_target_revision": self.revision,
            "status": self.status(),
        }
        raw = gzip.compress(json.dumps(body).encode())
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        status, answer = await hub.request(
            "POST", "/v1/sync", data=raw, headers=headers, ssl_context=self.identity.ssl_context()
        )
        assert status == 200, answer
        if answer.get("target"):
            self.take(answer["target"])


async def test_a_hot_simulated_device_fails_a_metric_gate_and_a_cool_one_passes(
    rhub: RunningHub,  # noqa: F811
    tmp_path: Path,
) -> None:
    tag = "m" + uuid.uuid4().hex[:8]
    token = await rhub.create_token(uses=2, tags={"fleet": tag})
    cool = MeteredDevice(identity=await rhub.enroll(token, tmp_path / "cool"), cpu=10)
    hot = MeteredDevice(identity=await rhub.enroll(token, tmp_path / "hot"), cpu=95)
    devices = [cool, hot]
    await asyncio.gather(*(d.sync(rhub) for d in devices))
    status, body = await rhub.api(
        "POST", "/api/v1/groups", {"name": tag, "selector": f"fleet={tag}"}
    )
    assert status == 201, body

    async def run() -> None:
        while True:
            await asyncio.gather(*(d.sync(rhub) for d in devices))
            await asyncio.sleep(0.1)

    task = asyncio.create_task(run())
    try:
        release = await make_release(rhub, "metered-" + tag, "1")
        status, body = await start(
            rhub,
            release=release,
            group=tag,
            soak_s=1.0,
            max_failed=1,
            rollback_on_failure=False,
            gate={"max_cpu_percent": 80},
        )
        assert status == 201, body
        done = await wait_for(rhub, body["id"], lambda b: b["status"] != "running", 60)
        verdicts = done["devices"]
        assert verdicts[cool.identity.device_id] == "healthy", done
        assert verdicts[hot.identity.device_id] == "failed", done
        why = done["failed_reasons"]
        assert (
            list(why) == [hot.identity.device_id]
            and "max_cpu_percent" in why[hot.identity.device_id]
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_edgectl_rollout_start_sends_the_gate_bounds() -> None:
    import argparse

    from hub.edgectl_rollout import add_parser, start_body

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    words = "rollout start app@2 --group g --gate max_cpu_percent=80"
    args = parser.parse_args([*words.split(), "--gate", "max_container_memory_mb=x"])
    body = start_body(args, lambda _: 600)
    assert body["gate"] == {"max_cpu_percent": 80.0, "max_container_memory_mb": "x"}
    with pytest.raises(ValueError, match="max_container_memory_mb"):
        RolloutSpec.model_validate({**body, "stages": "100%"})
