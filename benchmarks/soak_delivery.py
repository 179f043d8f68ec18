"""Exactly-once check of the soak: the agent's sequence numbers against the hub's events.

Pure: the caller reads the agent's store (highest seq ever assigned, seqs still queued,
drop counters) and the hub's ``events`` rows, and ``check_delivery`` tells what was
delivered, what is still queued, what the agent dropped (and counted, with a ``dropped``
marker naming the range) and what is missing or duplicated. The hub keeps each
(device, seq) once, so a duplicate by seq cannot be stored; a duplicate by *content* can
(a log line read twice after a kill -9 gets a new seq), so log lines are also compared by
(service, ts, stream, line).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AgentOutbox:
    """What the agent's store says at the end: seqs handed out, still queued, drops counted."""

    highest_seq: int
    queued: frozenset[int]
    dropped_counted: int


@dataclass
class Delivery:
    """The verdict of the exactly-once check."""

    highest_seq: int
    delivered: int
    queued: int
    dropped_marked: int
    dropped_counted: int
    missing: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)  # on the hub, never assigned by the agent
    log_duplicates: int = 0
    kinds: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every seq delivered once, queued or dropped-and-counted; no content duplicate."""
        return (
            not self.missing
            and not self.unknown
            and self.log_duplicates == 0
            and self.dropped_marked == self.dropped_counted
        )

    def summary(self) -> str:
        """One line for the report."""
        return (
            f"seqs 1..{self.highest_seq}: delivered {self.delivered}, still queued "
            f"{self.queued}, dropped {self.dropped_marked} (marked) / {self.dropped_counted} "
            f"(counted), missing {len(self.missing)}, unknown {len(self.unknown)}, "
            f"log lines stored twice {self.log_duplicates}"
        )


def drop_ranges(rows: list[tuple[int, str, dict[str, Any]]]) -> list[tuple[int, int, int]]:
    """Return (first_seq, last_seq, count) of every 'dropped' marker the hub stored."""
    return [
        (int(p["first_seq"]), int(p["last_seq"]), int(p["count"]))
        for _, kind, p in rows
        if kind == "dropped"
    ]


def log_duplicates(rows: list[tuple[int, str, dict[str, Any]]]) -> int:
    """Return how many stored log lines repeat an earlier one (same service, ts, stream, line)."""
    keys = Counter(
        json.dumps([p.get("service"), p.get("ts"), p.get("stream"), p.get("line")])
        for _, kind, p in rows
        if kind == "log"
    )
    return sum(n - 1 for n in keys.values() if n > 1)


def check_delivery(agent: AgentOutbox, rows: list[tuple[int, str, dict[str, Any]]]) -> Delivery:
    """Compare the agent's seqs with the hub's stored ``(seq, kind, payload)`` rows."""
    stored = {seq for seq, _, _ in rows}
    ranges = drop_ranges(rows)
    covered: set[int] = set()
    for first, last, _ in ranges:
        covered.update(range(first, last + 1))
    assigned = set(range(1, agent.highest_seq + 1))
    missing = sorted(assigned - stored - agent.queued - covered)
    return Delivery(
        highest_seq=agent.highest_seq,
        delivered=len(stored & assigned),
        queued=len(agent.queued - stored),
        dropped_marked=sum(n for _, _, n in ranges),
        dropped_counted=agent.dropped_counted,
        missing=missing,
        unknown=sorted(stored - assigned),
        log_duplicates=log_duplicates(rows),
        kinds=dict(Counter(kind for _, kind, _ in rows)),
    )
