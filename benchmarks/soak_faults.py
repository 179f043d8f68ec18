"""The soak's fault schedule: a seeded, pure plan of what to break and when.

``plan_faults(random.Random(seed), seconds)`` returns the same list for the same seed and
duration, so a run that found something is replayed with ``--seed``. Each kind of fault
has its own clock (an interval drawn uniformly from its range after the previous one),
and the four streams are merged by time. Only the standard library.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

FaultKind = Literal["container_kill", "hub_restart", "net_cut", "agent_kill"]


@dataclass(frozen=True)
class Fault:
    """One fault: when (seconds from the start of the fault phase), what, and its knobs."""

    at_s: float
    kind: FaultKind
    duration_s: float = 0.0  # how long a net cut lasts, or how long the hub stays down
    pick: int = 0  # which of the release's containers a kill hits (index into a sorted list)


@dataclass(frozen=True)
class FaultRates:
    """The interval range (seconds) between two faults of each kind, and their durations."""

    container_kill: tuple[float, float] = (20.0, 60.0)
    hub_restart: tuple[float, float] = (60.0, 180.0)
    hub_down: tuple[float, float] = (1.0, 10.0)
    net_cut: tuple[float, float] = (45.0, 120.0)
    net_cut_length: tuple[float, float] = (5.0, 60.0)
    agent_kill: tuple[float, float] = (90.0, 240.0)


def _stream(
    rng: random.Random,
    kind: FaultKind,
    every: tuple[float, float],
    seconds: float,
    length: tuple[float, float] | None,
) -> list[Fault]:
    """Return faults of one kind at intervals drawn from ``every`` until ``seconds``.

    ``every`` of (0, 0) turns the kind off."""
    out: list[Fault] = []
    if every[1] <= 0:
        return out
    t = rng.uniform(*every)
    while t < seconds:
        duration = rng.uniform(*length) if length else 0.0
        out.append(Fault(round(t, 3), kind, round(duration, 3), rng.randrange(1_000_000)))
        t += rng.uniform(*every)
    return out


def plan_faults(rng: random.Random, seconds: float, rates: FaultRates | None = None) -> list[Fault]:
    """Return every fault of a ``seconds``-long fault phase, in time order."""
    r = rates or FaultRates()
    faults = [
        *_stream(rng, "container_kill", r.container_kill, seconds, None),
        *_stream(rng, "hub_restart", r.hub_restart, seconds, r.hub_down),
        *_stream(rng, "net_cut", r.net_cut, seconds, r.net_cut_length),
        *_stream(rng, "agent_kill", r.agent_kill, seconds, None),
    ]
    return sorted(faults, key=lambda f: (f.at_s, f.kind))
