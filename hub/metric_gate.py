"""Device metrics in a rollout's health gate: pure, no I/O, no clock.

A stage's gate may bound a device's metrics while the release soaks (``HealthGate``
``max_cpu_percent``, ``max_memory_percent`` of the host; ``max_container_cpu_percent``,
``max_container_memory_mb`` of any container of the device). At the end of the soak the
mean of each figure over the samples the device took since its soak started is compared
with its bound: one over it fails the device, as an unhealthy one fails. The engine reads
the samples (``points``) from the hub's metrics history only when the gate has bounds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from hub.rollout_models import HealthGate, MetricPoint

MB = 1024 * 1024


def point(at: datetime, sample: dict[str, Any]) -> MetricPoint:
    """Return what the gate reads of one stored sample (tolerant: absent figures are None)."""
    cpu = sample.get("cpu_percent")
    memory = sample.get("memory") if isinstance(sample.get("memory"), dict) else {}
    total, used = memory.get("total_bytes"), memory.get("used_bytes")
    mem_pct = 100.0 * used / total if _num(total) and total > 0 and _num(used) else None
    containers = []
    for c in sample.get("containers") or []:
        if isinstance(c, dict) and isinstance(c.get("service"), str):
            c_cpu, c_mem = c.get("cpu_percent"), c.get("mem_bytes")
            containers.append(
                (c["service"], c_cpu if _num(c_cpu) else None, c_mem / MB if _num(c_mem) else None)
            )
    return MetricPoint(
        at=at,
        cpu_percent=cpu if _num(cpu) else None,
        memory_percent=mem_pct,
        containers=tuple(containers),
    )


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mean(values: Iterable[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return sum(found) / len(found) if found else None


def _over(name: str, mean: float | None, bound: float | None) -> str | None:
    if bound is None or mean is None or mean <= bound:
        return None
    return f"{name} {mean:.1f} over the gate's bound {bound:g} (mean over the soak)"


def metrics_verdict(gate: HealthGate, points: Sequence[MetricPoint], since: datetime) -> str | None:
    """Return why the device's metrics since ``since`` fail the gate, or None if they pass.

    ``points`` taken before ``since`` are ignored; with none left the caller decides
    (``has_samples``). A bound whose figure no sample carries is not judged.
    """
    taken = [p for p in points if p.at >= since]
    checks = [
        _over(
            "max_cpu_percent: host CPU %", _mean(p.cpu_percent for p in taken), gate.max_cpu_percent
        ),
        _over(
            "max_memory_percent: host memory %",
            _mean(p.memory_percent for p in taken),
            gate.max_memory_percent,
        ),
    ]
    for service in sorted({c[0] for p in taken for c in p.containers}):
        mine = [c for p in taken for c in p.containers if c[0] == service]
        checks.append(
            _over(
                f"max_container_cpu_percent: {service} CPU %",
                _mean(c[1] for c in mine),
                gate.max_container_cpu_percent,
            )
        )
        checks.append(
            _over(
                f"max_container_memory_mb: {service} MB",
                _mean(c[2] for c in mine),
                gate.max_container_memory_mb,
            )
        )
    return next((c for c in checks if c is not None), None)


def has_samples(points: Sequence[MetricPoint], since: datetime) -> bool:
    """Return whether any sample was taken at or after ``since``."""
    return any(p.at >= since for p in points)
